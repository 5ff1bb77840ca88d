"""``htapkv bench htap`` and ``htapkv bench report``.

The SQLite adapter runs ``bench.tpcc``'s transactions and consistency check
as they are; ``bench report`` renders hand-made results of every workload
and replaces only the marked README section; a ``--quick`` htap run against
a real local cluster produces every section of its report. Performance is
never asserted (DESIGN.md §6): only that the numbers exist and are sane.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import htap, summarize, tpcc
from tests.bench_helpers import REPO, alive, run_quick_bench, stop_leftover_clusters

SCALE = tpcc.Scale(districts=2, customers=5, items=20, initial_orders=2)


# ---------------------------------------------------------------- the SQLite peer
def test_tpcc_mix_runs_on_sqlite_and_keeps_the_consistency_conditions(tmp_path: Path) -> None:
    db = tmp_path / "tpcc.db"
    setup = htap.SqliteConnection(db)
    try:
        assert setup.settings() == {"journal_mode": "wal", "synchronous": "FULL"}
        setup.run_transaction(lambda cur: [cur.execute(s) for s in tpcc.SCHEMA])
        setup.run_transaction(lambda cur: tpcc.populate(htap._CursorConn(cur), 1, SCALE))
        assert tpcc.check_consistency(setup) == []
        workers = [htap.SqliteConnection(db) for _ in range(2)]
        try:
            phase = htap.run_oltp(
                "sqlite",
                "SQLite",
                "sqlite",
                [w.run_transaction for w in workers],
                htap.Budget(None, 40),
                1,
                SCALE,
                seed=3,
                progress=htap.live_progress(_quiet_console()),
            )
        finally:
            for w in workers:
                w.close()
        j = phase.to_json()
        assert j["transactions"] == 40 and j["failed"] == 0, j["first_errors"]
        assert j["by_type"]["new_order"]["committed"] > 0
        assert j["by_type"]["payment"]["committed"] > 0
        assert sum(j["tps_series"]) == 40
        result = htap.verify(setup, [phase], 1, SCALE)
        assert result["ok"], result["violations"]
        assert result["ledger"]["conclusive"]
        assert result["ledger"]["orders"] == 2 * 2 + j["by_type"]["new_order"]["committed"]
    finally:
        setup.close()


def test_the_ledger_check_catches_a_lost_order(tmp_path: Path) -> None:
    db = tmp_path / "tpcc.db"
    conn = htap.SqliteConnection(db)
    try:
        conn.run_transaction(lambda cur: [cur.execute(s) for s in tpcc.SCHEMA])
        conn.run_transaction(lambda cur: tpcc.populate(htap._CursorConn(cur), 1, SCALE))
        rng = random.Random(1)
        conn.run_transaction(lambda cur: tpcc.new_order(cur, rng, 1, SCALE))
        # A phase that claims two committed New-Orders where one ran.
        records = [htap.TxRecord("new_order", 0.1, 1000, 1, True) for _ in range(2)]
        phase = htap.PhaseResult("sqlite", "SQLite", "sqlite", 1.0, records)
        result = htap.verify(conn, [phase], 1, SCALE)
        assert not result["ok"]
        assert any(v.startswith("ledger: ") for v in result["violations"])
    finally:
        conn.close()


def test_targets_are_judged_only_on_numbers_that_exist() -> None:
    s = {
        "interference_pct": 12.0,
        "freshness_p99_ms": 250.0,
        "ratio_vs_sqlite": None,
    }
    t = htap.targets(s)
    assert t["interference"]["met"] is True
    assert t["freshness"]["met"] is False
    assert t["vs_sqlite"]["met"] is None
    assert t["met"] is None


def _quiet_console() -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=False)


# ---------------------------------------------------------------- bench report
MACHINE = {
    "processor": "Test CPU",
    "cpu_count": 2,
    "platform": "Linux-test",
    "python_version": "3.11.7",
    "libraries": {"htapkv": "0.1.0"},
    "git_revision": "abc1234",
}


def _result(name: str, ts: str, **body: Any) -> dict[str, Any]:
    return {
        "benchmark": name,
        "timestamp": ts,
        "command": f"htapkv bench {name} --marker-{ts}",
        "machine": MACHINE,
        "load_average": {"start": [0.5, 0.5, 0.5]},
        **body,
    }


def _results(folder: Path) -> None:
    folder.mkdir()
    lat = {"p50": 1500.0}
    files = {
        "storage": _result(
            "storage",
            "20260101-000000",
            results=[
                {"system": "rocksdict sync=on", "operation": "put", "ops_per_s": 3000.0},
                {
                    "system": "htapkv durable=True",
                    "operation": "txn 1-key put",
                    "ops_per_s": 1500.0,
                    "latency_us": lat,
                    "baseline": "rocksdict.sync_on.put",
                    "ratio_per_key_vs_baseline": 2.0,
                },
            ],
            target={"statement": "at most 8x per key", "met": True},
        ),
        "raft": _result(
            "raft",
            "20260101-000000",
            results=[
                {
                    "system": "htapkv raft, 3 stores",
                    "regions": 1,
                    "inflight": 256,
                    "ops_per_s": 13939.0,
                    "latency_us": lat,
                    "throughput_vs_baseline": 4.3,
                }
            ],
            target={"statement": "20,000 writes/s", "met": False},
        ),
        "ycsb": _result(
            "ycsb",
            "20260101-000000",
            parameters={"peer": "etcd"},
            results=[
                {"system": s, "phase": "put.c256", "operation": "all", "ops_per_s": n}
                for s, n in (("htapkv", 3202.0), ("etcd", 2581.0))
            ],
            target={"throughput": {"statement": "puts >= etcd's", "ratio": 1.24, "met": True}},
        ),
        "columnar": _result(
            "columnar",
            "20260101-000000",
            load={"rows": 1000, "rows_per_s": 3160.0},
            lag={"lag_ms": {"p50": 75.0, "p99": 128.0}},
            queries=[
                {
                    "label": "Q1 shape",
                    "columnar": {"median_ms": 130.0},
                    "row_store": {"median_ms": 6072.0},
                    "duckdb": {"median_ms": 19.1},
                    "row_store_over_columnar": 47.0,
                    "columnar_over_duckdb": 6.8,
                }
            ],
            target={"lag_p99": {"statement": "lag p99 <= 100 ms", "value": 128.0, "met": False}},
        ),
        "tpch": _result(
            "tpch",
            "20260101-000000",
            parameters={"sf": 0.1},
            load={"rows_per_s": 20000.0},
            queries=[{"query": "Q1", "ratio_vs_duckdb": 3.0}],
            geomean_ratio_vs_duckdb=3.0,
            answers_agree=True,
            target={"geomean_within_2x": False, "load_50k_rows_per_s": False},
        ),
        "htap": _result(
            "htap",
            "20260101-000000",
            parameters={"warehouses": 2, "concurrency": 4, "analytic_threads": 1, "duration_s": 20},
            phases={
                "oltp": {"label": "htapkv OLTP alone", "tps": 9.5, "latency_ms": {"p50": 300.0}},
                "sqlite": {"label": "SQLite OLTP alone", "tps": 1400.0, "latency_ms": {}},
            },
            analytics=[{"latency_ms": {"p50": 120.0}}],
            summary={"consistent": True, "analytic_runs": 80, "analytic_fallbacks": 0},
            target={
                "vs_sqlite": {"statement": "mix >= 0.5x SQLite", "value": 0.0068, "met": False}
            },
        ),
        "future": _result("future", "20260101-000000", target={"met": True}),
    }
    for name, data in files.items():
        (folder / f"{name}-20260101-000000.json").write_text(json.dumps(data))
    # An older htap result: never the one reported.
    old = _result("htap", "20250101-000000", phases={}, summary={})
    (folder / "htap-20250101-000000.json").write_text(json.dumps(old))
    (folder / "broken-1.json").write_text("{not json")


def test_report_renders_the_newest_result_of_every_workload(tmp_path: Path) -> None:
    _results(tmp_path / "r")
    results, skipped = summarize.newest_results(tmp_path / "r")
    assert set(results) == {"storage", "raft", "ycsb", "columnar", "tpch", "htap", "future"}
    assert [s.split(":")[0] for s in skipped] == ["broken-1.json"]
    text = summarize.render_section(results)
    assert text.startswith(summarize.START) and text.rstrip().endswith(summarize.END)
    order = [text.index(f"`htapkv bench {n}`") for n in (*summarize.ORDER, "future")]
    assert order == sorted(order)
    assert "--marker-20250101" not in text and "--marker-20260101" in text
    assert text.count("Machine: Test CPU, 2 CPUs") == 7
    for needle in (
        "| htapkv durable=True | txn 1-key put | 1,500 |",  # storage, beside its baseline
        "| htapkv raft, 3 stores | 1 | 256 | 13,939 | 1.50 | 4.30x |",
        "| put.c256 | - | 3,202 | - | 2,581 | - | 1.24x |",
        "| Q1 shape | 130.0 | 6,072 | 19.1 | 47x faster | 6.8x DuckDB's time |",
        "geometric mean 3.0x DuckDB's time",
        "| SQLite OLTP alone | 1,400.0 |",
        "mix >= 0.5x SQLite: 0.0068 — **missed**",
        "No summariser for this workload yet; overall target verdict: **met**",
        "Consistency after the run (TPC-C conditions 1-4): ok",
    ):
        assert needle in text, needle


def _report(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "bench", "report", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_write_replaces_only_the_marked_section(tmp_path: Path) -> None:
    _results(tmp_path / "r")
    readme = tmp_path / "README.md"
    before = "# Project\n\nIntro.\n\n## Benchmarks\n\nHand-written prose.\n\n"
    after = "\n\n## Next section\n\nMore prose.\n"
    readme.write_text(before + f"{summarize.START}\nold generated text\n{summarize.END}" + after)
    proc = _report(tmp_path, "--results", str(tmp_path / "r"), "--readme", str(readme), "--write")
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert "old generated text" not in text
    assert "`htapkv bench htap`" in text and "`htapkv bench htap`" in proc.stdout
    # Running it again changes nothing (the section is replaced, not appended).
    proc = _report(tmp_path, "--results", str(tmp_path / "r"), "--readme", str(readme), "--write")
    assert proc.returncode == 0 and readme.read_text() == text


def test_report_without_markers_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    _results(tmp_path / "r")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n{summarize.START}\nno end marker\n")
    proc = _report(tmp_path, "--results", str(tmp_path / "r"), "--readme", str(readme), "--write")
    assert proc.returncode == 2
    assert "no <!-- bench-report:end --> marker" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert readme.read_text() == f"# Project\n\n{summarize.START}\nno end marker\n"
    with pytest.raises(summarize.ReportError, match="wrong order"):
        summarize.replace_section(f"{summarize.END}\n{summarize.START}", "x")


def test_report_without_results_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _report(tmp_path, "--results", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no result files" in proc.stderr


# ---------------------------------------------------------------- smoke run
@pytest.mark.slow
def test_htap_quick_run_reports_every_section_and_stops_its_cluster(tmp_path: Path) -> None:
    try:
        proc, out, data_dir = run_quick_bench("htap", tmp_path, "--duration", "3")
    finally:
        stop_leftover_clusters(tmp_path / "data")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = list(out.glob("htap-*.json"))
    assert len(files) == 1, list(out.iterdir())
    assert files[0].with_suffix(".md").exists()
    data: dict[str, Any] = json.loads(files[0].read_text())
    assert data["command"].startswith("htapkv bench htap")
    assert data["machine"]["cpu_count"] and data["load"]["seconds"] > 0
    phases = data["phases"]
    assert list(phases) == ["oltp", "oltp_analytics", "sqlite"]
    for p in phases.values():
        assert p["transactions"] > 0 and p["tps"] > 0 and p["failed"] == 0, p
        assert p["latency_ms"]["p50"] <= p["latency_ms"]["p99"]
        assert sum(p["tps_series"]) == p["transactions"]
    queries = data["analytics"]
    assert [q["id"] for q in queries] == [q.id for q in htap.QUERIES]
    assert all(q["routed_columnar"] and q["errors"] == 0 for q in queries), queries
    assert sum(q["runs"] for q in queries) > 0
    assert data["summary"]["analytic_fallbacks"] == 0
    fresh = data["freshness"]["oltp_analytics"]
    assert fresh["samples"] > 0 and fresh["lag_ms_p99"] is not None
    assert data["verify"]["htapkv"]["ok"] and data["verify"]["sqlite"]["ok"]
    assert data["summary"]["consistent"] is True
    assert data["sqlite"]["available"] and data["sqlite"]["settings"]["synchronous"] == "FULL"
    s = data["summary"]
    assert s["tps_alone"] > 0 and s["sqlite_tps"] > 0 and s["ratio_vs_sqlite"] > 0
    for key in ("interference", "freshness", "vs_sqlite"):
        assert isinstance(data["target"][key]["met"], bool)
    assert set(data["plots"]) == {"throughput", "latency", "lag"}
    for name in data["plots"].values():
        assert (out / name).stat().st_size > 0
    assert "targets" in proc.stdout and "consistency (htapkv): ok" in proc.stdout
    pids = [x["pid"] for x in data["processes"]]
    assert len(pids) == 5 and all(pids)
    assert not any(alive(pid) for pid in pids)
    # The analytic client ran in a process of its own, stopped too.
    assert data["analytics_pid"] and data["analytics_pid"] not in pids
    assert not alive(data["analytics_pid"])
    assert not any(data_dir.iterdir())
