"""Smoke test of ``htapkv bench storage --quick``: it runs, and writes results
with every measured operation in them. Performance is never asserted here
(DESIGN.md §6): only that the numbers exist and are positive."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench_helpers import run_quick_bench

EXPECTED_IDS = {
    # the baselines
    "rocksdict.sync_off.put",
    "rocksdict.sync_off.get",
    "rocksdict.sync_on.put",
    "rocksdict.sync_on.get",
    # the baseline puts' second run, at the end
    "rocksdict.sync_off.put.again",
    "rocksdict.sync_on.put.again",
    # the store, both durability modes
    *(
        f"htapkv.{mode}.{op}"
        for mode in ("nondurable", "durable")
        for op in ("raw_put", "raw_get", "txn_1key", "txn_4key", "txn_rmw")
    ),
}


def test_bench_storage_quick_writes_results(tmp_path: Path) -> None:
    proc, out, data_dir = run_quick_bench("storage", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    json_files = list(out.glob("storage-*.json"))
    assert len(json_files) == 1, list(out.iterdir())
    assert json_files[0].with_suffix(".md").exists()
    data = json.loads(json_files[0].read_text())

    results = {r["id"]: r for r in data["results"]}
    assert set(results) == EXPECTED_IDS
    for r in results.values():
        assert r["ops"] > 0, r
        assert r["ops_per_s"] > 0, r
        assert r["latency_us"]["p50"] > 0, r
    # Every write of the store is compared with the matching baseline.
    for rid, r in results.items():
        if rid.startswith("htapkv.") and r["keys_written_per_op"]:
            expected = "rocksdict.sync_on.put" if ".durable." in rid else "rocksdict.sync_off.put"
            assert r["baseline"] == expected
            assert r["ratio_per_key_vs_baseline"] > 0
    assert isinstance(data["target"]["met"], bool)  # reported, whichever way it went

    machine = data["machine"]
    assert machine["cpu_count"] and machine["python_version"]
    assert machine["libraries"]["rocksdict"]
    assert data["command"].startswith("htapkv bench storage")
    assert "--quick" in data["command"]
    # The temporary databases are cleaned up.
    assert not any(data_dir.iterdir())
