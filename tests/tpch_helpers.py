"""TPC-H test data: generate it with tpchgen-cli, load it as the catalog would.

``tpch_tables(dir)`` returns the 8 tables as Arrow tables whose column types
are the ones the SQL layer's catalog gives (``kvstore.tablecodec``:
INT/BIGINT -> int64, DECIMAL(p,s) -> decimal128(p,s), DATE -> date32,
VARCHAR -> string), so the engine is tested on what storage will hand it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import sqlglot
from sqlglot import exp

from bench import tpch
from bench.tpch import SQL_DIR as TPCH_DIR
from bench.tpch import TABLES, query_text
from kvstore.tablecodec import ColumnInfo

__all__ = ["TABLES", "generate", "load", "planner_schema", "primary_keys", "query_text"]


def schema_sql() -> dict[str, list[ColumnInfo]]:
    """The columns of bench/tpch_sql/schema.sql, as the catalog describes them."""
    out: dict[str, list[ColumnInfo]] = {}
    text = (TPCH_DIR / "schema.sql").read_text()
    for stmt in sqlglot.parse(text, read="mysql"):
        assert isinstance(stmt, exp.Create)
        table = stmt.this
        cols = []
        for i, c in enumerate(table.expressions):
            if isinstance(c, exp.ColumnDef):
                kind = c.args["kind"].sql("mysql").replace(" ", "")
                cols.append(ColumnInfo(i + 1, c.name, kind))
        out[table.this.name] = cols
    return out


def primary_keys() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = (TPCH_DIR / "schema.sql").read_text()
    for stmt in sqlglot.parse(text, read="mysql"):
        table = stmt.this
        for c in table.expressions:
            if isinstance(c, exp.PrimaryKey):
                out[table.this.name] = [e.name for e in c.expressions]
    return out


def planner_schema() -> dict[str, dict[str, str]]:
    """table -> column -> SQL type, the ``schema`` argument of plan_query."""
    return {t: {c.name: c.type for c in cols} for t, cols in schema_sql().items()}


def generate(scale: float, out_dir: Path) -> dict[str, pa.Table]:
    """The 8 tables at ``scale`` (tpchgen-cli, deterministic)."""
    return tpch.generate(scale, out_dir)


def load(raw: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The tables cast to the catalog's column types."""
    tables = {}
    for name, cols in schema_sql().items():
        t = raw[name]
        arrays = [t.column(c.name).cast(c.arrow_type) for c in cols]
        tables[name] = pa.Table.from_arrays(arrays, schema=pa.schema([c.arrow_field for c in cols]))
        tables[name] = tables[name].combine_chunks()
    return tables
