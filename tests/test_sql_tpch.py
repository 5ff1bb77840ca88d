"""All 22 TPC-H queries through the SQL layer, answers compared with DuckDB's
on the same data (SF 0.01 from tpchgen-cli, loaded through ``sql.load``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

import sql
from bench import tpch

# Minutes, not seconds (a whole TPC-H load / fresh interpreters): the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tpch_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sql.Connection, Any]]:
    base = tmp_path_factory.mktemp("tpch")
    tables = tpch.generate(0.01, base / "data")
    conn = sql.connect(str(base / "db"), autocommit=True)
    try:
        tpch.create_schema(conn)
        n, _ = tpch.load_tables(conn, tables, batch=5000, threads=2)
        assert n == sum(t.num_rows for t in tables.values()) == 86_805
        yield conn, tpch.duckdb_tables(tables)
    finally:
        conn.close()


@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_query_matches_duckdb(tpch_db: tuple[sql.Connection, Any], n: int) -> None:
    conn, duck = tpch_db
    text = tpch.query_text(n)
    got = conn.cursor().execute(text).fetch_arrow_table()
    want = duck.sql(text).to_arrow_table()
    assert want.num_rows > 0  # the data is big enough for every query to answer
    assert tpch.compare(got, want) is None
    # An embedded store has no columnar replica: every scan names the row store.
    plan = "\n".join(r[0] for r in conn.cursor().execute("EXPLAIN " + text).fetchall())
    assert "row (no columnar replica)" in plan and "columnar (" not in plan


def test_compare_finds_differences() -> None:
    a = pa.table({"k": ["x", "y"], "v": [1.0, 2.0]})
    assert tpch.compare(a, a) is None
    assert (
        tpch.compare(a, pa.table({"k": ["y", "x"], "v": [2.0, 1.0]}))
        == "same rows in another order"
    )
    assert "expected" in (tpch.compare(a, pa.table({"k": ["x", "y"], "v": [1.0, 2.1]})) or "")
    assert "rows" in (tpch.compare(a, a.slice(1)) or "")
