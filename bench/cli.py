"""``htapkv bench``: registers the workloads."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a benchmark beside its baseline")
    workloads = p.add_subparsers(dest="workload", metavar="WORKLOAD")
    workloads.required = True
    from bench import columnar, htap, raft, storage, summarize, tpch, ycsb

    storage.register(workloads)
    raft.register(workloads)
    ycsb.register(workloads)
    columnar.register(workloads)
    tpch.register(workloads)
    htap.register(workloads)
    summarize.register(workloads)  # `htapkv bench report`
