"""Smoke test of ``htapkv bench raft --quick``: it runs end to end (two
follower processes, the leader in the benchmark process), and writes results
with a positive number for every configuration. Performance is never asserted
here (DESIGN.md §6): only that the numbers exist."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.bench_helpers import run_quick_bench

EXPECTED_IDS = {
    # the fsync'd local write, one thread and as many threads as in flight
    "baseline.fsync_put.t1",
    "baseline.fsync_put.t16",
    "baseline.fsync_put.t1.again",
    # --quick: one Region, 1 and 16 proposals in flight
    "raft.r1.inflight1",
    "raft.r1.inflight16",
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reusing the id
        return False
    return True


def test_bench_raft_quick_writes_results(tmp_path: Path) -> None:
    proc, out, data_dir = run_quick_bench("raft", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "htapkv bench raft" in proc.stdout  # the table, on stdout

    json_files = list(out.glob("raft-*.json"))
    assert len(json_files) == 1, list(out.iterdir())
    assert json_files[0].with_suffix(".md").exists()
    data = json.loads(json_files[0].read_text())

    results = {r["id"]: r for r in data["results"]}
    assert set(results) == EXPECTED_IDS
    for r in results.values():
        assert r["ops"] > 0, r
        assert r["ops_per_s"] > 0, r
        assert r["latency_us"]["p50"] > 0, r
        assert r["latency_us"]["p99"] >= r["latency_us"]["p50"], r
    for rid, r in results.items():
        if not rid.startswith("raft."):
            continue
        assert r["regions"] == 1 and r["inflight"] in (1, 16), r
        # Replicated writes took Raft log entries and leader fsyncs...
        assert r["raft_entries"] > 0, r
        assert r["writes_per_entry"] > 0, r
        assert r["leader_fsyncs"] > 0, r
        assert r["writes_per_fsync"] > 0, r
        assert r["cpu"]["leader_cores"] > 0, r
        assert r["cpu"]["followers_cores"] > 0, r
        # ...and each is compared with the baseline of as many threads.
        assert r["baseline"] == f"baseline.fsync_put.t{r['inflight']}", r
        assert r["throughput_vs_baseline"] > 0, r
    # The latency target is judged (whichever way it went); the throughput
    # target needs 256 in flight, which --quick does not run.
    target = data["target"]
    assert isinstance(target["p50"]["met"], bool)
    assert target["throughput"]["met"] is None

    machine = data["machine"]
    assert machine["cpu_count"] and machine["python_version"]
    assert machine["libraries"]["pysyncobj"] and machine["libraries"]["rocksdict"]
    assert data["command"].startswith("htapkv bench raft")
    assert "--quick" in data["command"]
    # The follower processes were stopped and the data cleaned up.
    pids = [pid for c in data["clusters"] for pid in c["follower_pids"]]
    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)
    assert not any(data_dir.iterdir())
