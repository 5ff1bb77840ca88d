"""``htapkv bench tpch``: a ``--quick`` run against a real local cluster
(the numbers exist, every answer agrees with DuckDB's, the files are
written, no process outlives the run) and the query-spec parser.
Performance is never asserted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.tpch import parse_queries
from tests.bench_helpers import run_quick_bench


def test_query_specs() -> None:
    assert parse_queries("1-3,6") == [1, 2, 3, 6]
    with pytest.raises(SystemExit):
        parse_queries("0-2")


@pytest.mark.slow
def test_quick_run(tmp_path: Path) -> None:
    proc, out, data_dir = run_quick_bench("tpch", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = out.glob("tpch-*.json")
    data = json.loads(result.read_text())
    assert data["answers_agree"] is True
    assert [q["query"] for q in data["queries"]] == [f"Q{n}" for n in range(1, 23)]
    assert all(q["columnar_s"] and q["duckdb_s"] for q in data["queries"])
    assert data["load"]["rows"] > 10_000 and data["load"]["rows_per_s"] > 0
    assert all(q["engines"] == "columnar" for q in data["queries"])
    assert result.with_suffix(".png").stat().st_size > 0
    assert result.with_suffix(".md").read_text().startswith("# htapkv bench tpch")
    left = subprocess.run(
        ["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False
    )
    assert left.stdout == ""
