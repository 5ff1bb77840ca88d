"""``htapkv check`` end to end: every workload on a real local cluster.

Each run starts its own :class:`kvstore.LocalCluster` (free ports, a
temporary directory) inside :func:`bench.check.runner.run`, which stops every
process it started (cluster and client processes) whatever happens. Checked:

* every workload with no fault and with the ``kill`` nemesis (SIGKILL of a
  random PD, store or columnar node, then restart) is judged valid, with
  completed operations in its history and its files written;
* a negative control: a deliberately broken client (the test-only
  ``inject="lose-ack"`` hook acknowledges adds it never commits) is caught by
  the set checker as lost writes, so a valid verdict above means something.

Runs are short (5 s of workload each) to keep this file near 3 minutes on 2
cores; ``htapkv check --time 60`` is the real thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.check.runner import RunConfig, run

pytestmark = pytest.mark.slow

RUN_S = 5.0


@pytest.mark.parametrize("nemesis", ["none", "kill"])
@pytest.mark.parametrize("workload", ["bank", "register", "set", "append", "columnar-eq"])
def test_workload_is_valid(workload: str, nemesis: str, tmp_path: Path) -> None:
    cfg = RunConfig(workload, nemesis, time=RUN_S, seed=7, output=tmp_path, clients=2)
    outcome = run(cfg)
    r = outcome.result
    assert r.valid is True, (r.anomalies[:5], r.stats, tmp_path)
    ok = [op for op in outcome.ops if op.outcome == "ok"]
    assert len(ok) > 10, outcome.meta["outcomes"]
    if nemesis == "kill":
        assert outcome.faults and all(f.end is not None for f in outcome.faults)
        assert not outcome.meta["nemesis_errors"]
    for name in ("history.json", "result.json", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["result"]["valid"] is True


def test_broken_client_is_caught(tmp_path: Path) -> None:
    cfg = RunConfig("set", "none", time=4.0, seed=3, output=tmp_path, clients=2, inject="lose-ack")
    outcome = run(cfg)
    r = outcome.result
    assert r.valid is False
    assert {a.kind for a in r.anomalies} == {"lost"}
    assert r.stats["final"]["lost"] > 0
    assert outcome.exit_code == 1


def test_append_under_every_available_fault(tmp_path: Path) -> None:
    """``all``: kills, pauses and (where root and iptables-legacy allow)
    partitions, one at a time; the history must still be valid."""
    cfg = RunConfig("append", "all", time=6.0, seed=5, output=tmp_path, clients=2)
    outcome = run(cfg)
    assert outcome.result.valid is True, (outcome.result.anomalies[:5], tmp_path)
    assert outcome.faults and not outcome.meta["nemesis_errors"]
