"""The SQL query engine (sql.planner + sql.executor + sql.expr).

All 22 TPC-H queries at SF 0.01 are checked against DuckDB over the same
Arrow tables: same row count, same column order (and names, where the query
names them), values equal (numbers within 1e-6 relative), and the same order
wherever the query's ORDER BY fixes it. Each runs twice: with a scan that
applies the pushed filters and with one that ignores them.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlglot
import tpch_helpers as th
from sqlglot import exp

from kvstore.client.columnar import aggregate as client_aggregate
from kvstore.types import ColumnRef
from sql.errors import DataError, NotSupportedError, ProgrammingError, SQLError
from sql.executor import execute
from sql.planner import PushedAggregate, QueryPlan, ScanNode, parse_select, plan_query

REL_TOL = 1e-6


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def tpch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pa.Table]:
    out = th.generate(0.01, tmp_path_factory.mktemp("tpch-sf001"))
    return th.load(out)


@pytest.fixture(scope="session")
def duck(tpch: dict[str, pa.Table]) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    for name, table in tpch.items():
        con.register(name, table)
    yield con
    con.close()


def _apply_filters(table: pa.Table, node: ScanNode) -> pa.Table:
    """What a storage engine that honours pushed filters returns."""
    import pyarrow.compute as pc

    fns = {
        "=": pc.equal,
        "!=": pc.not_equal,
        "<": pc.less,
        "<=": pc.less_equal,
        ">": pc.greater,
        ">=": pc.greater_equal,
    }
    for col, op, value in node.filters:
        column = table.column(col)
        if isinstance(value, ColumnRef):
            table = table.filter(fns[op](column, table.column(value.name)))
            continue
        scalar = pa.scalar(value, column.type) if not isinstance(value, float) else pa.scalar(value)
        table = table.filter(fns[op](column, scalar))
    for col, keys in node.runtime.items():  # runtime filters: join keys
        table = table.filter(pc.is_in(table.column(col), value_set=keys))
    return table


def scan_of(
    tables: dict[str, pa.Table], apply_filters: bool, seen: list[ScanNode] | None = None
) -> Callable[[ScanNode], pa.Table]:
    def scan(node: ScanNode) -> pa.Table:
        if seen is not None:
            seen.append(node)
        t = tables[node.table]
        if apply_filters:  # the filters may name columns the scan does not return
            t = _apply_filters(t, node)
        return t.select(node.columns)

    return scan


def aggregate_of(
    tables: dict[str, pa.Table], calls: list[PushedAggregate] | None = None
) -> Callable[[PushedAggregate], pa.Table]:
    """What a storage engine that takes pushed aggregates answers: the
    client's own aggregation (the columnar read's row-store fallback)."""

    def aggregate(p: PushedAggregate) -> pa.Table:
        if calls is not None:
            calls.append(p)
        rows = _apply_filters(tables[p.scan.table], p.scan)
        return client_aggregate(rows, p.group_by, p.aggregates)

    return aggregate


def run_sql(
    sql: str,
    tables: dict[str, pa.Table],
    apply_filters: bool = True,
    params: tuple[Any, ...] = (),
    pushdown: bool = False,
) -> pa.Table:
    schema = {n: {f.name: _sql_type(f.type) for f in t.schema} for n, t in tables.items()}
    plan = plan_query(parse_select(sql), schema, th.primary_keys())
    aggregate = aggregate_of(tables) if pushdown else None
    return execute(plan, scan_of(tables, apply_filters), params, aggregate)


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    return {
        pa.int64(): "BIGINT",
        pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR(100)",
        pa.date32(): "DATE",
        pa.bool_(): "BOOLEAN",
    }[t]


# ------------------------------------------------------------------ comparison
def _norm(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def _close(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-9)
    return bool(a == b)


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    out = []
    for raw in row:
        v = _norm(raw)
        if v is None:
            out.append((0, ""))
        elif isinstance(v, float):
            out.append((1, float(f"{v:.9g}")))
        elif isinstance(v, (int, datetime.date, str)):
            out.append((1, v))
        else:
            out.append((1, str(v)))
    return tuple(out)


def _order_columns(sql: str, names: list[str]) -> list[str]:
    """The output columns the query's ORDER BY sorts on (top level)."""
    tree = sqlglot.parse_one(sql, read="mysql")
    order = tree.args.get("order")
    if order is None:
        return []
    cols = []
    for o in order.expressions:
        if isinstance(o.this, exp.Column) and o.this.name in names:
            cols.append(o.this.name)
        else:
            return []
    return cols


def assert_same_result(sql: str, got: pa.Table, want: pa.Table) -> None:
    assert got.num_rows == want.num_rows, f"rows: got {got.num_rows}, want {want.num_rows}"
    assert got.num_columns == want.num_columns
    for g, w in zip(got.column_names, want.column_names, strict=True):
        if not g.startswith("_col_"):  # an unaliased expression: engines name it differently
            assert g == w
    got_rows = list(zip(*[c.to_pylist() for c in got.columns], strict=True))
    want_rows = list(zip(*[c.to_pylist() for c in want.columns], strict=True))
    # Where ORDER BY fixes the order, the sort keys must come in the same sequence.
    keys = _order_columns(sql, want.column_names)
    idx = [want.column_names.index(k) for k in keys]
    for i, (g, w) in enumerate(zip(got_rows, want_rows, strict=True)):
        for j in idx:
            assert _close(g[j], w[j]), (
                f"row {i}: ORDER BY key {want.column_names[j]} {g[j]!r} != {w[j]!r}"
            )
    # As multisets, every value equal.
    for g, w in zip(sorted(got_rows, key=_sort_key), sorted(want_rows, key=_sort_key), strict=True):
        for j, (a, b) in enumerate(zip(g, w, strict=True)):
            assert _close(a, b), f"column {want.column_names[j]}: {a!r} != {b!r} (rows {g} / {w})"


# ------------------------------------------------------------------ TPC-H
@pytest.mark.parametrize(
    "mode", ["pushed", "ignored", "aggregated"]
)  # filters applied by storage / ignored by it / aggregates computed by it
@pytest.mark.parametrize("q", range(1, 23), ids=[f"q{i:02d}" for i in range(1, 23)])
def test_tpch_matches_duckdb(
    q: int, mode: str, tpch: dict[str, pa.Table], duck: duckdb.DuckDBPyConnection
) -> None:
    sql = th.query_text(q)
    plan = plan_query(parse_select(sql), th.planner_schema(), th.primary_keys())
    calls: list[PushedAggregate] = []
    aggregate = aggregate_of(tpch, calls) if mode == "aggregated" else None
    got = execute(plan, scan_of(tpch, mode != "ignored"), (), aggregate)
    want = duck.sql(sql).to_arrow_table()
    assert_same_result(sql, got, want)
    # Every pushdown the plan offers is taken (once per aggregate).
    assert len(calls) == (len(plan.pushdowns) if mode == "aggregated" else 0)


def test_runtime_filters_read_only_the_joining_rows(
    tpch: dict[str, pa.Table], duck: duckdb.DuckDBPyConnection
) -> None:
    """Q3: customer (filtered) -> orders -> lineitem, each read with the
    keys of the one before as a runtime filter; the answer is DuckDB's."""
    sql = th.query_text(3)
    plan = plan_query(parse_select(sql), th.planner_schema(), th.primary_keys())
    assert {s.table for s in plan.runtime_filtered} == {"orders", "lineitem"}
    text = "\n".join(plan.explain())
    assert "lineitem: runtime filter l_orderkey IN orders.o_orderkey" in text
    seen: list[ScanNode] = []
    got = execute(plan, scan_of(tpch, True, seen))
    assert_same_result(sql, got, duck.sql(sql).to_arrow_table())
    by_table = {n.table: n for n in seen}
    assert list(by_table["orders"].runtime) == ["o_custkey"]
    keys = by_table["lineitem"].runtime["l_orderkey"]
    # Only the keys of the orders that qualified: far fewer than all orders.
    assert 0 < len(keys) < tpch["orders"].num_rows // 4
    assert [n.table for n in seen][-1] == "lineitem"  # read last, after its sources


def test_runtime_filter_from_an_empty_or_null_keyed_side(t: dict[str, pa.Table]) -> None:
    tables = {
        "f": pa.table({"id": [1, 2, 3, 4], "k": pa.array([10, 20, None, 10], pa.int64())}),
        "d": pa.table({"k": pa.array([10, 20, 30], pa.int64()), "name": ["x", "y", "z"]}),
    }
    schema = {n: {f.name: _sql_type(f.type) for f in tb.schema} for n, tb in tables.items()}
    pks = {"d": ["k"], "f": ["id"]}
    for where, want in [
        ("d.name = 'x'", [(1, "x"), (4, "x")]),
        ("d.name = 'nobody'", []),  # an empty key set: the fact scan keeps nothing
        ("d.name <> 'z'", [(1, "x"), (2, "y"), (4, "x")]),  # NULL keys never join
    ]:
        sql = f"SELECT f.id, d.name FROM f JOIN d ON f.k = d.k WHERE {where} ORDER BY f.id"
        plan = plan_query(parse_select(sql), schema, pks)
        assert [s.table for s in plan.runtime_filtered] == ["f"]
        seen: list[ScanNode] = []
        out = execute(plan, scan_of(tables, True, seen))
        assert [tuple(r.values()) for r in out.to_pylist()] == want
        assert "k" in seen[-1].runtime and seen[-1].table == "f"


def test_single_table_aggregates_are_pushed_down() -> None:
    def pushdowns(q: int) -> list[PushedAggregate]:
        sql = th.query_text(q)
        return plan_query(parse_select(sql), th.planner_schema(), th.primary_keys()).pushdowns

    # The TPC-H aggregates straight over one table scan whose whole WHERE is
    # pushed: Q1, Q6, and the grouped subqueries of Q4 (whose WHERE compares
    # two columns), Q15, Q17, Q18, Q20 and Q22.
    assert {q for q in range(1, 23) if pushdowns(q)} == {1, 4, 6, 15, 17, 18, 20, 22}
    (q4,) = pushdowns(4)
    assert q4.scan.filters == [("l_commitdate", "<", ColumnRef("l_receiptdate"))]
    (q1,) = pushdowns(1)
    assert q1.scan.table == "lineitem" and q1.group_by == ["l_returnflag", "l_linestatus"]
    assert ("l_shipdate", "<=", datetime.date(1998, 9, 2)) in q1.scan.filters
    # SUM of a DECIMAL column stays DECIMAL; arithmetic over DECIMALs is
    # DOUBLE in sql.expr, so it is sent cast; AVG is a DOUBLE sum and a count.
    assert ("sum", "l_quantity") in q1.aggregates
    assert (
        "sum",
        "(double(l_extendedprice) * ((1.0) - double(l_discount)))",
    ) in q1.aggregates
    avg_qty = [
        q1.aggregates.index(("sum", "double(l_quantity)")),
        q1.aggregates.index(("count", "l_quantity")),
    ]
    assert ("avg", avg_qty) in q1.finals
    assert q1.finals[-1] == ("value", [q1.aggregates.index(("count", "*"))])
    # EXPLAIN says where it runs.
    plan = plan_query(parse_select(th.query_text(1)), th.planner_schema(), th.primary_keys())
    lines = plan.explain(lambda s: "columnar", lambda p: "columnar")
    assert any(ln.strip().startswith("partial aggregation pushed to columnar: ") for ln in lines)
    assert not any("pushed to" in ln for ln in plan.explain(lambda s: "row", lambda p: None))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(DISTINCT t.a) AS x FROM t",  # DISTINCT stays here
        "SELECT SUM(t.a / 2) AS x FROM t",  # division: NULL on zero in SQL
        "SELECT SUM(t.a) AS x FROM t WHERE t.s LIKE 'a%'",  # condition storage cannot apply
        "SELECT SUM(t.a + 1 + 2) AS x FROM t WHERE t.a IS NOT NULL OR t.b",
        "SELECT SUM(-t.m) AS x FROM t",  # DECIMAL negation stays DECIMAL in sql.expr
        "SELECT SUM(t.a) AS x FROM t JOIN u ON t.id = u.id",  # a join
        "SELECT t.a + 1 AS k, COUNT(*) AS x FROM t GROUP BY t.a + 1",  # computed key
    ],
)
def test_aggregates_that_stay_here(sql: str, t: dict[str, pa.Table]) -> None:
    tables = {**t, "u": t["t"].select(["id"])}
    schema = {n: {f.name: _sql_type(f.type) for f in tb.schema} for n, tb in tables.items()}
    plan = plan_query(parse_select(sql), schema)
    assert plan.pushdowns == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) AS n, COUNT(t.a) AS na, SUM(t.a) AS s, MIN(t.s) AS lo, MAX(t.d) AS hi,"
        " AVG(t.a) AS av, SUM(t.m) AS sm, AVG(t.m) AS am, MIN(t.m) AS mm FROM t",
        "SELECT SUM(t.a * 2 - 1) AS x, SUM(t.m * (1 - t.m)) AS y, SUM(t.m * 2) AS z,"
        " MAX(-t.a) AS w, SUM(t.a * 0.5) AS v FROM t",
        "SELECT COUNT(*) AS n, SUM(t.a) AS s, AVG(t.m) AS a FROM t WHERE t.id > 100",  # no rows
        "SELECT t.b AS b, COUNT(*) AS n, SUM(t.m) AS s FROM t GROUP BY t.b HAVING COUNT(*) >= 1"
        " ORDER BY t.b",
        "SELECT t.s AS s, AVG(t.a) AS a FROM t WHERE t.id >= 2 AND t.d < DATE '2024-01-01'"
        " GROUP BY t.s ORDER BY t.s",
        "SELECT t.b AS b FROM t GROUP BY t.b ORDER BY t.b",  # keys alone (DISTINCT)
        "SELECT 2 * SUM(t.a) + COUNT(*) AS x, SUM(t.a) / COUNT(t.a) AS y FROM t",
        "SELECT COUNT(*) AS n, SUM(t.m) AS s FROM t WHERE t.id > t.a",  # two columns
    ],
)
def test_pushed_aggregates_answer_as_computed_here(sql: str, t: dict[str, pa.Table]) -> None:
    schema = {n: {f.name: _sql_type(f.type) for f in tb.schema} for n, tb in t.items()}
    plan = plan_query(parse_select(sql), schema)
    assert len(plan.pushdowns) == 1
    here = execute(plan, scan_of(t, True))
    calls: list[PushedAggregate] = []
    pushed = execute(plan, scan_of(t, True), (), aggregate_of(t, calls))
    assert len(calls) == 1
    assert pushed.schema == here.schema
    assert pushed.to_pylist() == here.to_pylist()


def test_a_declined_pushdown_is_computed_here(t: dict[str, pa.Table]) -> None:
    """An engine that does not take the aggregate (the row store) returns
    None: the executor scans and aggregates itself."""
    schema = {n: {f.name: _sql_type(f.type) for f in tb.schema} for n, tb in t.items()}
    plan = plan_query(parse_select("SELECT SUM(t.a) AS x FROM t"), schema)
    scanned: list[str] = []

    def scan(node: ScanNode) -> pa.Table:
        scanned.append(node.table)
        return t[node.table].select(node.columns)

    assert execute(plan, scan, (), lambda p: None).to_pylist() == [{"x": 4}]
    assert scanned == ["t"]


def test_comparison_catches_a_wrong_result(
    tpch: dict[str, pa.Table], duck: duckdb.DuckDBPyConnection
) -> None:
    """The checker is not vacuous: a result off by one row or one value fails."""
    sql = th.query_text(1)
    got = run_sql(sql, tpch)
    want = duck.sql(sql).to_arrow_table()
    assert_same_result(sql, got, want)
    with pytest.raises(AssertionError):
        assert_same_result(sql, got.slice(1), want)
    bumped = got.set_column(2, "sum_qty", pa.array([v.as_py() + 1 for v in got.column(2)]))
    with pytest.raises(AssertionError):
        assert_same_result(sql, bumped, want)
    reordered = got.take([1, 0, 2, 3])
    with pytest.raises(AssertionError):
        assert_same_result(sql, reordered, want)


def test_a_scan_that_breaks_filters_is_caught(
    tpch: dict[str, pa.Table], duck: duckdb.DuckDBPyConnection
) -> None:
    """A storage bug (a pushed filter applied with the wrong operator) shows."""
    sql = th.query_text(6)
    plan = plan_query(parse_select(sql), th.planner_schema(), th.primary_keys())

    def bad_scan(node: ScanNode) -> pa.Table:
        flipped = ScanNode(
            node.table,
            node.alias,
            node.columns,
            [(c, "<" if op == ">=" else op, v) for c, op, v in node.filters],
        )
        return _apply_filters(tpch[node.table].select(node.columns), flipped)

    got = execute(plan, bad_scan)
    want = duck.sql(sql).to_arrow_table()
    with pytest.raises(AssertionError):
        assert_same_result(sql, got, want)


def test_scans_are_pruned_and_filters_pushed() -> None:
    plan = plan_query(parse_select(th.query_text(6)), th.planner_schema(), th.primary_keys())
    (scan,) = plan.scans
    assert scan.table == "lineitem"
    assert scan.columns == ["l_quantity", "l_extendedprice", "l_discount", "l_shipdate"]
    assert ("l_shipdate", ">=", datetime.date(1994, 1, 1)) in scan.filters
    assert ("l_shipdate", "<", datetime.date(1995, 1, 1)) in scan.filters
    assert ("l_discount", "<=", decimal.Decimal("0.07")) in scan.filters
    assert ("l_quantity", "<", 24) in scan.filters


def test_q19_or_is_factored_into_a_join_key_and_pushed_filters() -> None:
    plan = plan_query(parse_select(th.query_text(19)), th.planner_schema(), th.primary_keys())
    text = "\n".join(plan.explain())
    assert "on `lineitem`.`l_partkey` = `part`.`p_partkey`" in text
    part = next(s for s in plan.scans if s.table == "part")
    assert part.condition is not None and "Brand#12" in part.condition.sql()


def test_explain_shape() -> None:
    plan = plan_query(parse_select(th.query_text(3)), th.planner_schema(), th.primary_keys())
    lines = plan.explain(lambda s: "columnar")
    assert lines[0].startswith("Sort [")
    assert lines[1].startswith("  Aggregate group=[")
    assert lines[2].startswith("    HashJoin inner(")
    scans = [ln.strip() for ln in lines if "TableScan" in ln]
    assert len(scans) == 3
    assert all(s.startswith("TableScan ") and "[columnar] cols=" in s for s in scans)
    assert any("pushed=c_mktsegment = 'BUILDING'" in s for s in scans)
    # Without a labeller, scans carry no engine.
    assert all("[" not in ln.split("cols=")[0] for ln in plan.explain() if "TableScan" in ln)


# ------------------------------------------------------------------ expression semantics
@pytest.fixture()
def t() -> dict[str, pa.Table]:
    return {
        "t": pa.table(
            {
                "id": pa.array([1, 2, 3, 4], pa.int64()),
                "a": pa.array([1, None, 3, 0], pa.int64()),
                "b": pa.array([True, None, False, True]),
                "s": pa.array(["apple", "banana", None, "cherry"]),
                "d": pa.array(
                    [
                        datetime.date(2024, 1, 31),
                        datetime.date(2023, 2, 28),
                        None,
                        datetime.date(2020, 2, 29),
                    ],
                    pa.date32(),
                ),
                "m": pa.array(
                    [
                        decimal.Decimal("1.10"),
                        decimal.Decimal("2.25"),
                        None,
                        decimal.Decimal("-3.00"),
                    ],
                    pa.decimal128(15, 2),
                ),
            }
        )
    }


def col(table: pa.Table, name: str = "x") -> list[Any]:
    return table.column(name).to_pylist()


def test_three_valued_logic(t: dict[str, pa.Table]) -> None:
    out = run_sql(
        "SELECT t.a > 1 AND t.b AS x, t.a > 1 OR t.b AS y, NOT t.b AS z FROM t ORDER BY t.id", t
    )
    # a: 1, NULL, 3, 0 ; b: T, NULL, F, T
    assert col(out, "x") == [False, None, False, False]
    assert col(out, "y") == [True, None, True, True]
    assert col(out, "z") == [False, None, True, False]
    # WHERE keeps only TRUE rows.
    assert col(run_sql("SELECT t.id AS x FROM t WHERE t.a > 0 OR t.b ORDER BY t.id", t)) == [
        1,
        3,
        4,
    ]
    assert col(run_sql("SELECT t.id AS x FROM t WHERE t.a IS NULL", t)) == [2]


def test_in_and_not_in_with_nulls(t: dict[str, pa.Table]) -> None:
    out = run_sql("SELECT t.a IN (1, 3) AS x, t.a NOT IN (1, NULL) AS y FROM t ORDER BY t.id", t)
    assert col(out, "x") == [True, None, True, False]
    assert col(out, "y") == [False, None, None, None]


def test_like(t: dict[str, pa.Table]) -> None:
    out = run_sql("SELECT t.s LIKE '%an%' AS x, t.s NOT LIKE 'a_p%' AS y FROM t ORDER BY t.id", t)
    assert col(out, "x") == [False, True, None, False]
    assert col(out, "y") == [False, True, None, True]
    # Case-sensitive (binary collation).
    assert col(run_sql("SELECT t.s LIKE 'APPLE' AS x FROM t WHERE t.id = 1", t)) == [False]


def test_dates_and_intervals(t: dict[str, pa.Table]) -> None:
    out = run_sql(
        "SELECT t.d + INTERVAL 1 MONTH AS x, t.d - INTERVAL '1' YEAR AS y,"
        " t.d + INTERVAL 10 DAY AS z, EXTRACT(YEAR FROM t.d) AS w FROM t ORDER BY t.id",
        t,
    )
    assert col(out, "x") == [
        datetime.date(2024, 2, 29),
        datetime.date(2023, 3, 28),
        None,
        datetime.date(2020, 3, 29),
    ]
    assert col(out, "y") == [
        datetime.date(2023, 1, 31),
        datetime.date(2022, 2, 28),
        None,
        datetime.date(2019, 2, 28),
    ]
    assert col(out, "z")[0] == datetime.date(2024, 2, 10)
    assert col(out, "w") == [2024, 2023, None, 2020]
    folded = run_sql("SELECT DATE '1994-01-01' + INTERVAL '1' YEAR AS x", t)
    assert col(folded) == [datetime.date(1995, 1, 1)]
    n = run_sql("SELECT COUNT(*) AS x FROM t WHERE t.d < DATE '2023-01-01' + INTERVAL 3 MONTH", t)
    assert col(n) == [2]


def test_case_coalesce_nullif(t: dict[str, pa.Table]) -> None:
    out = run_sql(
        "SELECT CASE WHEN t.a > 1 THEN 'big' WHEN t.a = 1 THEN 'one' END AS x,"
        " COALESCE(t.a, -1) AS y, NULLIF(t.a, 0) AS z,"
        " CASE t.a WHEN 0 THEN 'zero' ELSE 'other' END AS w FROM t ORDER BY t.id",
        t,
    )
    assert col(out, "x") == ["one", None, "big", None]
    assert col(out, "y") == [1, -1, 3, 0]
    assert col(out, "z") == [1, None, 3, None]
    assert col(out, "w") == ["other", "other", "other", "zero"]


def test_division_semantics(t: dict[str, pa.Table]) -> None:
    out = run_sql(
        "SELECT t.a / 2 AS x, t.a DIV 2 AS y, 7 / 2 AS z, t.a / 0 AS w FROM t ORDER BY t.id", t
    )
    assert col(out, "x") == [0.5, None, 1.5, 0.0]  # real division, as MySQL and DuckDB
    assert col(out, "y") == [0, None, 1, 0]  # DIV truncates
    assert col(out, "z") == [3.5] * 4
    assert col(out, "w") == [None] * 4  # division by zero is NULL (MySQL)


def test_decimal_arithmetic(t: dict[str, pa.Table]) -> None:
    out = run_sql("SELECT t.m * 2 AS x, t.m + 0.05 AS y FROM t ORDER BY t.id", t)
    assert (
        col(out, "x") == pytest.approx([2.2, 4.5, None, -6.0], nan_ok=True)
        or col(out, "x")[2] is None
    )
    assert col(out, "x")[2] is None
    assert col(out, "y")[0] == pytest.approx(1.15)
    # Constant folding is exact: 0.06 + 0.01 is 0.07, not 0.06999999999999999.
    exact = run_sql("SELECT COUNT(*) AS x FROM t WHERE t.m <= 0.06 + 0.01 + 1.03", t)
    assert col(exact) == [2]
    # SUM of a DECIMAL column stays exact DECIMAL; AVG is DOUBLE.
    agg = run_sql("SELECT SUM(t.m) AS x, AVG(t.m) AS y FROM t", t)
    assert col(agg, "x") == [decimal.Decimal("0.35")]
    assert col(agg, "y") == [pytest.approx(0.35 / 3)]


def test_aggregates_and_nulls(t: dict[str, pa.Table]) -> None:
    out = run_sql(
        "SELECT COUNT(*) AS n, COUNT(t.a) AS na, COUNT(DISTINCT t.b) AS nb, SUM(t.a) AS s,"
        " MIN(t.s) AS lo, MAX(t.d) AS hi FROM t",
        t,
    )
    assert out.to_pylist() == [
        {"n": 4, "na": 3, "nb": 2, "s": 4, "lo": "apple", "hi": datetime.date(2024, 1, 31)}
    ]
    empty = run_sql("SELECT COUNT(*) AS n, SUM(t.a) AS s FROM t WHERE t.id > 100", t)
    assert empty.to_pylist() == [{"n": 0, "s": None}]
    grouped = run_sql(
        "SELECT t.b AS b, COUNT(*) AS n FROM t GROUP BY t.b HAVING COUNT(*) >= 1 ORDER BY t.b", t
    )
    # MySQL orders NULL first ascending.
    assert grouped.to_pylist() == [{"b": None, "n": 1}, {"b": False, "n": 1}, {"b": True, "n": 2}]


def test_order_nulls_limit_offset_distinct(t: dict[str, pa.Table]) -> None:
    assert col(run_sql("SELECT t.a AS x FROM t ORDER BY t.a", t)) == [None, 0, 1, 3]
    assert col(run_sql("SELECT t.a AS x FROM t ORDER BY t.a DESC", t)) == [3, 1, 0, None]
    assert col(run_sql("SELECT t.id AS x FROM t ORDER BY t.id LIMIT 2 OFFSET 1", t)) == [2, 3]
    assert sorted(col(run_sql("SELECT DISTINCT t.b IS NULL AS x FROM t", t))) == [False, True]


def test_joins_and_subqueries(t: dict[str, pa.Table]) -> None:
    tables = {
        **t,
        "u": pa.table(
            {"k": pa.array([1, 1, 3, None], pa.int64()), "v": pa.array(["x", "y", "z", "w"])}
        ),
    }
    inner = run_sql("SELECT t.id AS id, u.v AS v FROM t JOIN u ON t.id = u.k ORDER BY u.v", tables)
    assert inner.to_pylist() == [{"id": 1, "v": "x"}, {"id": 1, "v": "y"}, {"id": 3, "v": "z"}]
    left = run_sql(
        "SELECT t.id AS id, COUNT(u.v) AS n FROM t LEFT JOIN u ON t.id = u.k GROUP BY t.id"
        " ORDER BY t.id",
        tables,
    )
    assert col(left, "n") == [2, 0, 1, 0]
    anti = run_sql(
        "SELECT t.id AS x FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = t.id) ORDER BY t.id",
        tables,
    )
    assert col(anti) == [2, 4]
    semi = run_sql(
        "SELECT t.id AS x FROM t WHERE t.id IN (SELECT u.k FROM u) ORDER BY t.id", tables
    )
    assert col(semi) == [1, 3]
    # NOT IN over a set holding NULL is never TRUE.
    assert (
        run_sql("SELECT t.id AS x FROM t WHERE t.id NOT IN (SELECT u.k FROM u)", tables).num_rows
        == 0
    )
    scalar = run_sql(
        "SELECT t.id AS x FROM t WHERE t.a > (SELECT MIN(u.k) FROM u) ORDER BY t.id", tables
    )
    assert col(scalar) == [3]
    nonequi = run_sql("SELECT COUNT(*) AS x FROM t JOIN u ON t.id > u.k", tables)
    assert col(nonequi) == [0 + 2 + 2 + 3]  # u.k = 1, 1, 3, NULL


def test_placeholders(t: dict[str, pa.Table]) -> None:
    out = run_sql(
        "SELECT t.id AS x FROM t WHERE t.a >= ? AND t.s <> ? ORDER BY t.id", t, params=(1, "apple")
    )
    assert col(out) == []
    out = run_sql(
        "SELECT t.id AS x FROM t WHERE t.a >= ? AND t.s LIKE ? ORDER BY t.id", t, params=(0, "%e%")
    )
    assert col(out) == [1, 4]


# ------------------------------------------------------------------ errors
def test_typed_errors(t: dict[str, pa.Table]) -> None:
    with pytest.raises(ProgrammingError, match="nope"):
        run_sql("SELECT nope.x FROM nope", t)
    with pytest.raises(ProgrammingError):
        run_sql("SELECT t.zzz FROM t", t)
    with pytest.raises(NotSupportedError, match=r"(?i)soundex"):
        run_sql("SELECT SOUNDEX(t.s) AS x FROM t", t)
    with pytest.raises(NotSupportedError, match=r"(?i)median"):
        run_sql("SELECT MEDIAN(t.a) AS x FROM t", t)
    with pytest.raises(ProgrammingError, match="more than one row"):
        run_sql("SELECT (SELECT t.id FROM t) AS x", t)
    with pytest.raises(DataError):
        run_sql("SELECT t.s + 1 AS x FROM t", t)
    with pytest.raises(NotSupportedError):
        plan_query(exp.Insert(this=exp.to_table("t")), {"t": {"a": "INT"}})
    assert issubclass(NotSupportedError, SQLError) and issubclass(DataError, SQLError)


def test_plan_is_pure_and_repeatable() -> None:
    a = plan_query(parse_select(th.query_text(5)), th.planner_schema(), th.primary_keys())
    b = plan_query(parse_select(th.query_text(5)), th.planner_schema(), th.primary_keys())
    assert a.explain() == b.explain()
    assert isinstance(a, QueryPlan) and a.output_names == ["n_name", "revenue"]


def test_tpch_data_types(tpch: dict[str, pa.Table]) -> None:
    """The test data has the catalog's types (kvstore.tablecodec)."""
    li = tpch["lineitem"].schema
    assert li.field("l_orderkey").type == pa.int64()
    assert li.field("l_linenumber").type == pa.int64()
    assert li.field("l_quantity").type == pa.decimal128(15, 2)
    assert li.field("l_shipdate").type == pa.date32()
    assert li.field("l_comment").type == pa.string()
    assert tpch["lineitem"].num_rows == 60175


def test_tpch_texts_are_in_the_repo() -> None:
    assert len(list((Path(th.TPCH_DIR) / "queries").glob("q*.sql"))) == 22
