"""``htapkv bench columnar``: the pieces that decide what is reported (data
generation, answer comparison, verdicts) and a ``--quick`` run against a real
local cluster. Performance is never asserted (DESIGN.md §6): only that the
numbers exist, the three paths agree, and no process outlives the run.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from rich.progress import Progress

from bench.columnar import (
    Q1_CUTOFF,
    Contender,
    QueryResult,
    Timing,
    canonical,
    generate,
    queries,
    same_answer,
    target_summary,
    timed,
)
from tests.bench_helpers import alive, run_quick_bench, stop_leftover_clusters


# ---------------------------------------------------------------- pure parts
def test_generated_rows_are_deterministic_and_tpch_like() -> None:
    a, b = generate(2000, seed=7), generate(2000, seed=7)
    assert a.batch(0, 2000) == b.batch(0, 2000)
    assert a.batch(0, 50) != generate(2000, seed=8).batch(0, 50)
    rows = a.batch(0, 2000)
    assert len({(r["l_orderkey"], r["l_linenumber"]) for r in rows}) == 2000
    assert all(1 <= r["l_quantity"] <= 50 and 0 <= r["l_discount"] <= 0.1 for r in rows)
    groups = {(r["l_returnflag"], r["l_linestatus"]) for r in rows}
    assert groups == {("R", "F"), ("A", "F"), ("N", "O")}
    assert any(r["l_shipdate"] <= Q1_CUTOFF for r in rows)
    assert a.row(5) == rows[5]  # plain Python values, as the write load re-encodes them
    assert all(type(v) in (int, float, str) for v in a.row(5).values())


def test_answers_compare_by_group_with_a_tolerance_on_sums() -> None:
    x = pa.table({"k": ["b", "a"], "s": [1.0, 2.0], "n": [3, 4]})
    y = pa.table({"k2": ["a", "b"], "sum": [2.0 + 1e-13, 1.0], "cnt": [4, 3]})
    assert same_answer(canonical(x, ["k"]), canonical(y, ["k"]))
    z = pa.table({"k": ["a", "b"], "s": [2.0, 1.0], "n": [4, 2]})
    assert not same_answer(canonical(x, ["k"]), canonical(z, ["k"]))
    assert not same_answer(canonical(x, ["k"]), canonical(x.slice(1), ["k"]))


def test_a_fallback_is_never_counted_as_the_replica_meeting_a_target() -> None:
    q = queries()[0]
    fast = Timing([1.0, 1.0])
    slow = Timing([100.0, 100.0])
    fell_back = QueryResult(q, Timing([1.0, 1.0], fallbacks=1), slow, fast, {})
    ok = QueryResult(q, fast, slow, fast, {})
    lag = {"lag_ms": {"p99": 50.0}, "not_seen": 0, "fallbacks": 0}
    t = target_summary([fell_back], lag)
    assert t["q1_vs_row_store"]["value"] == 100.0 and t["q1_vs_row_store"]["met"] is False
    t = target_summary([ok], lag)
    assert t["q1_vs_row_store"]["met"] is True and t["q1_vs_duckdb"]["met"] is True
    assert t["lag_p99"]["met"] is True and t["met"] is True
    assert target_summary([ok], None)["lag_p99"]["met"] is None


# ---------------------------------------------------------------- smoke run
@pytest.mark.slow
def test_columnar_quick_run_reports_agreeing_answers_and_stops_its_cluster(
    tmp_path: Path,
) -> None:
    try:
        proc, out, data_dir = run_quick_bench("columnar", tmp_path)
    finally:
        stop_leftover_clusters(tmp_path / "data")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = list(out.glob("columnar-*.json"))
    assert len(files) == 1, list(out.iterdir())
    assert files[0].with_suffix(".md").exists()
    data: dict[str, Any] = json.loads(files[0].read_text())
    assert data["command"].startswith("htapkv bench columnar")
    assert data["machine"]["cpu_count"] and data["load_average"]["start"] is not None
    p = data["parameters"]
    assert data["load"]["rows"] == p["rows"] and data["load"]["rows_per_s"] > 0
    assert data["duckdb_data"]["rows"] == p["rows"] and data["duckdb_data"]["answered_by_replica"]
    assert [q["id"] for q in data["queries"]] == ["q1", "q6"]
    for q in data["queries"]:
        assert q["answers_agree"], q["mismatches"]
        assert q["answered_by_replica"], q["columnar"]
        for path in ("columnar", "row_store", "duckdb"):
            t = q[path]
            assert t["error"] is None and t["median_ms"] > 0 and t["min_ms"] <= t["median_ms"]
        assert q["row_store_over_columnar"] > 0 and q["columnar_over_duckdb"] > 0
    # Q1's groups: the count column adds up to the rows the filter keeps.
    q1 = data["queries"][0]["answer"]
    assert len(q1) == 3 and 0 < sum(r[-1] for r in q1) <= p["rows"]
    assert data["answers_agree"] is True
    lag = data["lag"]
    assert lag["seen"] == lag["markers"] > 0 and lag["fallbacks"] == 0
    assert 0 < lag["lag_ms"]["p50"] <= lag["lag_ms"]["p99"] <= lag["lag_ms"]["max"]
    assert lag["write_load"]["ops"] > 0 and lag["write_load"]["errors"] == 0
    assert lag["status_samples"] > 0
    for key in ("q1_vs_row_store", "q1_vs_duckdb", "q6_vs_row_store", "q6_vs_duckdb", "lag_p99"):
        assert isinstance(data["target"][key]["met"], bool)
    assert (out / data["plot"]).stat().st_size > 0
    assert "targets" in proc.stdout and "MISMATCH" not in proc.stdout
    # Every process of the cluster is gone, and so is the data.
    pids = [x["pid"] for x in data["processes"]]
    assert len(pids) == 5 and all(pids)
    assert not any(alive(pid) for pid in pids)
    assert not any(data_dir.iterdir())


def test_timed_contenders_take_turns_and_a_failure_stops_only_its_own() -> None:
    calls: list[str] = []

    def answer(name: str, fail_on: int | None = None) -> Any:
        def fn() -> pa.Table:
            calls.append(name)
            if fail_on is not None and calls.count(name) == fail_on:
                raise RuntimeError(f"{name} broke")
            return pa.table({"n": [len(calls)]})

        return fn

    a, b = Contender("a", answer("a")), Contender("b", answer("b", fail_on=3))
    with Progress(disable=True) as progress:
        timed([a, b], 3, progress, warmup=1)
    # Warm-ups first, then turns; b's third call (its second timed run) fails.
    assert calls == ["a", "b", "a", "b", "a", "b", "a"]
    assert len(a.timing.samples_ms) == 3 and a.timing.error is None
    assert len(b.timing.samples_ms) == 1 and b.timing.error == "RuntimeError: b broke"
    assert a.answer is not None and a.answer["n"].to_pylist() == [7]


def test_a_terminated_bench_stops_the_cluster_it_started(tmp_path: Path) -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds the command like Ctrl-C: the
    local cluster's servers are stopped, not left running."""
    import signal
    import subprocess
    import sys
    import time

    from tests.bench_helpers import REPO

    out, data_dir = tmp_path / "results", tmp_path / "data"
    cmd = [sys.executable, "-m", "kvstore.cli", "bench", "columnar", "--quick"]
    proc = subprocess.Popen(
        [*cmd, "--output", str(out), "--data-dir", str(data_dir)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        pids: list[int] = []
        while not pids and time.monotonic() < deadline and proc.poll() is None:
            for f in data_dir.glob("*/htapkv-cluster/cluster.json"):
                with contextlib.suppress(ValueError):  # being written
                    pids = [p["pid"] for p in json.loads(f.read_text())["processes"]]
            time.sleep(0.05)  # polling for the file, not standing in for it
        assert pids and all(alive(p) for p in pids), "the bench started no cluster"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert not any(alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop_leftover_clusters(data_dir)
