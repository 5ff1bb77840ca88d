"""The query planner: a SELECT (sqlglot tree) -> a tree of plan nodes.

Where it sits: between the session (which parses SQL and knows the catalog)
and ``sql.executor`` (which runs the nodes over Arrow tables). Pure: no I/O,
no clock, no randomness; the same statement and schema always give the same
plan. Planning costs 15-100 ms for TPC-H queries, so the caller caches plans
by statement text.

How: ``sqlglot.optimizer.optimize`` qualifies every column, pushes
predicates down, decorrelates subqueries into joins with grouped CTEs and
simplifies; ``sqlglot.planner.Plan`` cuts the result into steps (Scan, Join,
Aggregate, Sort, SetOperation). This module turns those steps into its own
nodes and improves them where sqlglot's steps are naive:

* **pushdown** -- a conjunct of WHERE/ON that mentions one relation only is
  applied to that relation before it is joined; for a base table it becomes
  part of its :class:`ScanNode` (``condition``), and the comparisons of a
  column with a literal also become ``filters`` storage may apply;
* **column pruning** -- a :class:`ScanNode` lists only the columns the query
  reads from its table;
* **outer joins** -- a LEFT JOIN whose WHERE rejects the NULL row of the
  right side is an inner join; ``LEFT JOIN r ... WHERE r.key IS NULL`` (what
  the optimizer makes of NOT EXISTS / NOT IN) is an anti join;
* **OR factoring** -- ``(a AND x) OR (a AND y)`` is ``a AND (x OR y)``, so the
  join key hidden in TPC-H Q19's OR becomes a hash-join key, and each
  relation gets the OR of its own parts as an extra pushed filter;
* **uncorrelated subqueries** in expressions (``x IN (SELECT ...)``, scalar
  subqueries, EXISTS) become separate plans whose results the expression
  reads by name; correlated ones the optimizer could not decorrelate raise
  :class:`~sql.errors.NotSupportedError`.

**Aggregation pushdown.** An aggregate straight over one table scan whose
whole condition was pushed as ``filters`` (TPC-H Q1, Q6, and the grouped
subqueries of Q15, Q17, Q18, Q20) also gets a :class:`PushedAggregate`: the
same aggregation in the form the columnar replica computes (TiDB pushes such
a partial HashAgg to TiFlash). Only what the replica computes exactly as
``sql.expr`` would is pushed: SUM/COUNT/MIN/MAX/AVG (not DISTINCT) of
columns and of ``+ - *`` over columns and numbers, with arithmetic that is
not integer-only made DOUBLE explicitly, as ``sql.expr`` computes it. Whether
it is used is decided per query, by the engine the scan is routed to.

The order of inner joins is not fixed here: the executor picks it at run
time from the real sizes of the inputs (see ``sql.executor``), using the
uniqueness facts (primary keys, GROUP BY keys) and selectivity guesses the
planner records on each :class:`JoinInput`.

Invariant: pushed ``filters`` are an optimisation only. Every pushed filter
is also part of the scan's ``condition``, which the executor always applies,
so a storage engine may ignore ``filters`` without changing any result. The
one exception is a :class:`PushedAggregate`: its scan's condition is exactly
its filters, and an engine that takes the aggregate must apply them.
"""

from __future__ import annotations

import datetime
import decimal
import keyword
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot import planner as sqlglot_planner
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer import optimize
from sqlglot.optimizer.scope import build_scope

from kvstore.types import ColumnRef
from sql.errors import NotSupportedError, ProgrammingError
from sql.expr import arrow_type_of, literal_value, sql_text

__all__ = [
    "AggregateNode",
    "JoinInput",
    "JoinNode",
    "Node",
    "PushedAggregate",
    "QueryPlan",
    "RefNode",
    "ScanNode",
    "SetOpNode",
    "SortNode",
    "TableScanNode",
    "ValuesNode",
    "plan_query",
    "top_aggregates",
]

PushedFilter = tuple[str, str, Any]
_OPS: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


# ------------------------------------------------------------------ plan nodes
@dataclass(eq=False)
class ScanNode:
    """One read of a base table: what the storage layer is asked for.

    ``columns`` are the columns the query needs, in table order;
    ``filters`` are ``(column, op, value)`` conjuncts storage may apply
    (op in ``= != < <= > >=``, value an int, float, str, bool, date or
    Decimal, or a :class:`~kvstore.types.ColumnRef` to another column);
    ``condition`` is the full single-table condition (it includes the
    filters), always applied by the executor."""

    table: str
    alias: str
    columns: list[str]
    filters: list[PushedFilter] = field(default_factory=list)
    condition: exp.Expr | None = None
    # Set by the executor on a copy, never in a plan: column -> the join
    # keys it may keep (a runtime filter, see JoinInput.runtime_filters).
    runtime: dict[str, pa.Array] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"cols={','.join(self.columns)}"]
        if self.filters:
            parts.append("pushed=" + " AND ".join(f"{c} {o} {v!r}" for c, o, v in self.filters))
        if self.condition is not None:
            parts.append(f"filter={sql_text(self.condition)}")
        return " ".join(parts)


@dataclass(eq=False)
class Node:
    """A step of the plan. After its own work (scan, join, aggregate, ...) a
    node applies ``condition`` (WHERE or HAVING), then ``projections`` (the
    output columns, named by alias; none: the input columns pass through),
    then ``offset``/``limit``."""

    name: str
    projections: list[exp.Expr] = field(default_factory=list)
    condition: exp.Expr | None = None
    limit: int | None = None
    offset: int = 0

    def children(self) -> list[Node]:
        return []

    def _label(self) -> str:
        return type(self).__name__

    def _tail(self) -> str:
        parts = []
        if self.condition is not None:
            parts.append(f"filter={sql_text(self.condition)}")
        if self.projections:
            parts.append("project=" + ", ".join(sql_text(p) for p in self.projections))
        if self.limit is not None:
            parts.append(f"limit={self.limit}")
        if self.offset:
            parts.append(f"offset={self.offset}")
        return (" " + " ".join(parts)) if parts else ""


@dataclass(eq=False)
class TableScanNode(Node):
    """Reads a base table through the scan callback (``scan.alias`` names it)."""

    scan: ScanNode = field(default_factory=lambda: ScanNode("", "", []))


@dataclass(eq=False)
class ValuesNode(Node):
    """One row without columns (``SELECT 1`` has no FROM)."""


@dataclass(eq=False)
class RefNode(Node):
    """A CTE or derived table used under the name ``name``. Several RefNodes
    may share one child: the executor computes it once per query."""

    child: Node | None = None

    def children(self) -> list[Node]:
        return [self.child] if self.child is not None else []


@dataclass(eq=False)
class JoinInput:
    """One relation of a join: ``node`` produces it, ``name`` qualifies its
    columns. ``kind`` is how it joins the ones before it (the first input is
    ``"inner"``): ``inner``, ``left``, ``right``, ``full`` or ``anti``.
    ``on`` are its ON conjuncts (non-inner kinds only; inner ON conditions
    are pooled in :attr:`JoinNode.conditions`). ``filter`` is the pushed
    single-relation condition for inputs that are not base tables (for a base
    table it is in the ScanNode). ``unique`` lists column sets on which the
    relation has no duplicates; ``selectivity`` guesses which fraction of it
    its filters keep (1.0: unfiltered). ``runtime_filters`` (a base-table
    input only): ``(column, input, input_column)``, an inner join of this
    relation's ``column`` with another input's unique ``input_column``,
    whose rows were filtered: the scan may wait for that input and keep
    only rows whose ``column`` is among its keys (TiFlash's runtime
    filter, a semi-join reduction)."""

    name: str
    node: Node
    kind: str = "inner"
    on: list[exp.Expr] = field(default_factory=list)
    filter: exp.Expr | None = None
    unique: list[frozenset[str]] = field(default_factory=list)
    selectivity: float = 1.0
    runtime_filters: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(eq=False)
class JoinNode(Node):
    """Joins ``inputs``. ``conditions`` are the conjuncts over several inner
    inputs (equalities of columns become hash-join keys, the rest are applied
    as soon as their relations are joined); ``post`` are conjuncts applied
    after every join (they mention an outer-joined relation). ``reorder``:
    the executor may choose the order of the inner joins."""

    inputs: list[JoinInput] = field(default_factory=list)
    conditions: list[exp.Expr] = field(default_factory=list)
    post: list[exp.Expr] = field(default_factory=list)
    reorder: bool = True

    def children(self) -> list[Node]:
        return [i.node for i in self.inputs]


@dataclass(eq=False)
class PushedAggregate:
    """An aggregation a storage engine may compute where the rows are.

    ``scan``'s rows that pass its ``filters`` (its whole condition), grouped
    by ``group_by`` (columns of the scan, in the order of the node's
    ``group``), with ``aggregates`` in the client's ``columnar_scan`` form:
    ``(function, argument)``, function ``sum count min max``, argument
    ``*``, a column, or arithmetic of columns and numbers (``double(x)``
    casts to DOUBLE). The answer has the keys, then one column per
    aggregate, in order. ``finals`` read it back: one per function of
    :func:`top_aggregates` of the node, ``(kind, indexes into
    aggregates)``; kind ``value`` (the column as is) or ``avg`` (a DOUBLE
    sum divided by a count)."""

    scan: ScanNode
    group_by: list[str]
    aggregates: list[tuple[str, str]]
    finals: list[tuple[str, list[int]]]

    def describe(self) -> str:
        aggs = ", ".join(f"{fn}({arg})" for fn, arg in self.aggregates)
        by = f" by {','.join(self.group_by)}" if self.group_by else ""
        return f"{aggs}{by}"


@dataclass(eq=False)
class AggregateNode(Node):
    """GROUP BY: ``operands`` (``expr AS _a_N``) are computed first, then
    ``group`` (output name -> key expression) and ``aggregations`` (aliased
    expressions over aggregate functions); ``condition`` is HAVING.
    ``pushdown``: the same aggregation as storage may compute it, when it
    can (see :class:`PushedAggregate`)."""

    child: Node | None = None
    group: dict[str, exp.Expr] = field(default_factory=dict)
    aggregations: list[exp.Expr] = field(default_factory=list)
    operands: list[exp.Expr] = field(default_factory=list)
    pushdown: PushedAggregate | None = None

    def children(self) -> list[Node]:
        return [self.child] if self.child is not None else []


@dataclass(eq=False)
class SortNode(Node):
    """ORDER BY ``keys`` (``exp.Ordered``); keys may name output columns."""

    child: Node | None = None
    keys: list[exp.Ordered] = field(default_factory=list)

    def children(self) -> list[Node]:
        return [self.child] if self.child is not None else []


@dataclass(eq=False)
class SetOpNode(Node):
    """UNION / INTERSECT / EXCEPT (``op``) of two inputs, matched by position."""

    left: Node | None = None
    right: Node | None = None
    op: str = "union"
    distinct: bool = True

    def children(self) -> list[Node]:
        return [n for n in (self.left, self.right) if n is not None]


@dataclass(eq=False)
class QueryPlan:
    """A planned SELECT. ``root`` produces the result; ``subqueries`` are the
    plans of uncorrelated subqueries in expressions, by the placeholder name
    (``exp.Var``) that replaced them; ``scans`` lists every base-table read
    (of the root and of the subqueries); ``output_names`` the result's
    column names, in order."""

    root: Node
    subqueries: dict[str, Node]
    scans: list[ScanNode]
    output_names: list[str]
    sql: str

    def explain(
        self,
        engine_of: Callable[[ScanNode], str] | None = None,
        pushed_to: Callable[[PushedAggregate], str | None] | None = None,
    ) -> list[str]:
        """The plan as indented lines (two spaces per level); ``engine_of``
        labels each table scan (e.g. ``[columnar]``); ``pushed_to`` names
        the engine that would compute an aggregate's :class:`PushedAggregate`
        (None: computed here)."""
        lines: list[str] = []
        seen: dict[int, str] = {}
        _explain(self.root, 0, lines, engine_of, seen, pushed_to)
        for name, node in self.subqueries.items():
            lines.append(f"Subquery {name}")
            _explain(node, 1, lines, engine_of, seen, pushed_to)
        return lines

    def _nodes(self) -> Iterator[Node]:
        """Every node of the root's tree and of the subqueries', once."""
        seen: set[int] = set()
        for root in [self.root, *self.subqueries.values()]:
            for node in iter_nodes(root):
                if id(node) not in seen:
                    seen.add(id(node))
                    yield node

    @property
    def runtime_filtered(self) -> list[ScanNode]:
        """The scans that wait for runtime filters (not to be read ahead)."""
        return [
            inp.node.scan
            for node in self._nodes()
            if isinstance(node, JoinNode)
            for inp in node.inputs
            if inp.runtime_filters and isinstance(inp.node, TableScanNode)
        ]

    @property
    def pushdowns(self) -> list[PushedAggregate]:
        """Every aggregate's pushdown, of the root and of the subqueries."""
        return [
            node.pushdown
            for node in self._nodes()
            if isinstance(node, AggregateNode) and node.pushdown is not None
        ]


def _explain(
    node: Node,
    depth: int,
    lines: list[str],
    engine_of: Callable[[ScanNode], str] | None,
    seen: dict[int, str],
    pushed_to: Callable[[PushedAggregate], str | None] | None = None,
) -> None:
    pad = "  " * depth
    if isinstance(node, RefNode) and node.child is not None:
        key = id(node.child)
        if key in seen:
            lines.append(f"{pad}Ref {node.name} -> {seen[key]} (computed once){node._tail()}")
            return
        seen[key] = node.name
        lines.append(f"{pad}Ref {node.name}{node._tail()}")
        _explain(node.child, depth + 1, lines, engine_of, seen, pushed_to)
        return
    if isinstance(node, TableScanNode):
        engine = f" [{engine_of(node.scan)}]" if engine_of is not None else ""
        alias = f" AS {node.scan.alias}" if node.scan.alias != node.scan.table else ""
        lines.append(
            f"{pad}TableScan {node.scan.table}{alias}{engine} {node.scan.describe()}{node._tail()}"
        )
        return
    if isinstance(node, ValuesNode):
        lines.append(f"{pad}Values (one row){node._tail()}")
        return
    if isinstance(node, JoinNode):
        if len(node.inputs) == 1:
            lines.append(f"{pad}Filter{node._tail()}" if node._tail() else f"{pad}Pass")
            _explain(node.inputs[0].node, depth + 1, lines, engine_of, seen, pushed_to)
            return
        inner = [i.name for i in node.inputs if i.kind == "inner"]
        order = "order chosen at run time" if node.reorder else "in written order"
        lines.append(f"{pad}HashJoin inner({', '.join(inner)}) [{order}]{node._tail()}")
        for c in node.conditions:
            lines.append(f"{pad}  on {sql_text(c)}")
        for inp in node.inputs:
            if inp.kind != "inner":
                on = " AND ".join(sql_text(c) for c in inp.on) or "TRUE"
                lines.append(f"{pad}  {inp.kind} join {inp.name} on {on}")
        for c in node.post:
            lines.append(f"{pad}  then filter {sql_text(c)}")
        for inp in node.inputs:
            if inp.filter is not None:
                lines.append(f"{pad}  {inp.name}: filter {sql_text(inp.filter)}")
            for col, src, src_col in inp.runtime_filters:
                lines.append(f"{pad}  {inp.name}: runtime filter {col} IN {src}.{src_col}")
            _explain(inp.node, depth + 1, lines, engine_of, seen, pushed_to)
        return
    if isinstance(node, AggregateNode):
        group = ", ".join(sql_text(g) for g in node.group.values())
        aggs = ", ".join(sql_text(a) for a in node.aggregations)
        lines.append(f"{pad}Aggregate group=[{group}] aggs=[{aggs}]{node._tail()}")
        to = pushed_to(node.pushdown) if pushed_to and node.pushdown else None
        if to is not None and node.pushdown is not None:
            what = node.pushdown.describe()
            lines.append(f"{pad}  partial aggregation pushed to {to}: {what}")
    elif isinstance(node, SortNode):
        keys = ", ".join(sql_text(k) for k in node.keys)
        lines.append(f"{pad}Sort [{keys}]{node._tail()}")
    elif isinstance(node, SetOpNode):
        kind = node.op.upper() + ("" if node.distinct else " ALL")
        lines.append(f"{pad}{kind}{node._tail()}")
    for child in node.children():
        _explain(child, depth + 1, lines, engine_of, seen, pushed_to)


# ------------------------------------------------------------------ planning
def plan_query(
    select: exp.Expr,
    schema: Mapping[str, Mapping[str, str]],
    primary_keys: Mapping[str, Sequence[str]] | None = None,
) -> QueryPlan:
    """Plan a SELECT (or set operation) parsed with ``read="mysql"``.

    ``schema`` maps table -> column -> SQL type (``"BIGINT"``,
    ``"DECIMAL(15,2)"``, ...), columns in table order. ``primary_keys``
    (table -> key columns) is optional: it only helps choose the join order.
    Raises ProgrammingError (unknown table/column, bad SQL) or
    NotSupportedError (a construct the executor does not implement)."""
    if not isinstance(select, (exp.Select, exp.SetOperation, exp.Subquery)):
        raise NotSupportedError(f"only SELECT can be planned, not {select.key.upper()}")
    # sqlglot wants plain dicts; it lower-cases identifiers as MySQL does.
    plain: dict[str, object] = {t: dict(cols) for t, cols in schema.items()}
    select = select.copy()
    # Number the ``?`` placeholders in statement order before the optimizer
    # moves conditions around (a depth-first walk follows the written order).
    for i, ph in enumerate(n for n in select.walk(bfs=False) if isinstance(n, exp.Placeholder)):
        ph.set("this", str(i))
    try:
        optimized = optimize(select, schema=plain, dialect="mysql")
    except OptimizeError as err:
        raise ProgrammingError(str(err)) from err
    except SqlglotError as err:
        raise ProgrammingError(str(err)) from err
    planner = _Planner(
        {t.lower(): list(c) for t, c in schema.items()},
        {t.lower(): list(k) for t, k in (primary_keys or {}).items()},
        {t.lower(): {c.lower(): ty for c, ty in cols.items()} for t, cols in schema.items()},
    )
    try:
        plan = sqlglot_planner.Plan(optimized)
    except SqlglotError as err:
        raise NotSupportedError(f"cannot plan this query: {err}") from err
    except (KeyError, AttributeError, TypeError) as err:
        raise NotSupportedError(f"cannot plan this query ({type(err).__name__}: {err})") from err
    root = planner.convert(plan.root, [])
    names = [p.alias_or_name for p in root.projections] if root.projections else []
    if not names:
        names = [s.alias_or_name for s in getattr(optimized, "selects", [])]
    return QueryPlan(root, planner.subqueries, planner.scans, names, sql_text(optimized))


class _Planner:
    def __init__(
        self,
        columns: dict[str, list[str]],
        pks: dict[str, list[str]],
        types: dict[str, dict[str, str]],
    ) -> None:
        self.columns = columns
        self.pks = pks
        self.types = types
        self.scans: list[ScanNode] = []
        self.subqueries: dict[str, Node] = {}
        self._memo: dict[int, Node] = {}
        self._ctes: exp.With | None = None

    # -- steps -> nodes
    def convert(self, step: sqlglot_planner.Step, chain: list[exp.Expr]) -> Node:
        """``chain``: expressions of the steps above ``step`` in the same
        SELECT (they decide which table columns must be read)."""
        key = id(step)
        if key in self._memo:
            return self._memo[key]
        node = self._convert(step, chain)
        self._memo[key] = node
        return node

    def _common(self, step: sqlglot_planner.Step, node: Node) -> None:
        node.projections = [self._lift(p) for p in step.projections]
        if step.condition is not None:
            node.condition = self._lift(step.condition)
        node.limit = None if step.limit == float("inf") else int(step.limit)
        node.offset = int(step.offset or 0)

    def _convert(self, step: sqlglot_planner.Step, chain: list[exp.Expr]) -> Node:
        name = step.name or ""
        if isinstance(step, sqlglot_planner.Scan):
            return self._scan(step, chain)
        if isinstance(step, sqlglot_planner.Join):
            return self._join(step, chain)
        if isinstance(step, sqlglot_planner.Aggregate):
            agg = AggregateNode(name)
            self._common(step, agg)
            agg.group = {k: self._lift(v) for k, v in step.group.items()}
            agg.aggregations = [self._lift(a) for a in step.aggregations]
            agg.operands = [self._lift(o) for o in step.operands]
            below = [
                *chain,
                *agg.group.values(),
                *agg.aggregations,
                *agg.operands,
                *agg.projections,
            ]
            if agg.condition is not None:
                below.append(agg.condition)
            (dep,) = step.dependencies
            agg.child = self.convert(dep, below)
            agg.pushdown = self._pushdown(agg)
            return agg
        if isinstance(step, sqlglot_planner.Sort):
            sort = SortNode(name)
            self._common(step, sort)
            sort.keys = [self._lift(k) for k in step.key or []]  # type: ignore[misc]
            (dep,) = step.dependencies
            sort.child = self.convert(dep, [*chain, *sort.keys, *sort.projections])
            return sort
        if isinstance(step, sqlglot_planner.SetOperation):
            op = step.op.__name__.lower()
            setop = SetOpNode(name, op=op, distinct=step.distinct)
            self._common(step, setop)
            deps = {d.name: d for d in step.dependencies}
            setop.left = self.convert(deps[step.left], [])
            setop.right = self.convert(deps[step.right], [])
            if not setop.distinct and op != "union":
                raise NotSupportedError(f"{op.upper()} ALL is not supported")
            return setop
        raise NotSupportedError(f"plan step {type(step).__name__} is not supported")

    def _scan(self, step: sqlglot_planner.Scan, chain: list[exp.Expr]) -> Node:
        name = step.name or ""
        source = step.source
        if source is None:
            node: Node = ValuesNode(name)
            self._common(step, node)
            return node
        if step.dependencies:  # a CTE
            (dep,) = step.dependencies
            ref = RefNode(name, child=self.convert(dep, []))
            self._common(step, ref)
            return ref
        if not isinstance(source, exp.Table):
            raise NotSupportedError(f"FROM {sql_text(source)} is not supported")
        table = source.name.lower()
        if table not in self.columns:
            raise ProgrammingError(f"unknown table {source.name!r}")
        scan = ScanNode(table, name, [])
        node = TableScanNode(name, scan=scan)
        self._common(step, node)
        # A bare scan with WHERE and no join: the condition belongs to storage.
        if node.condition is not None:
            self._push_into_scan(scan, _conjuncts(node.condition))
            node.condition = None
        self._finish_scan(scan, [*chain, *node.projections])
        return node

    # -- aggregation pushdown
    def _pushdown(self, agg: AggregateNode) -> PushedAggregate | None:
        """``agg`` as storage may compute it (see :class:`PushedAggregate`),
        or None if it is not one table scan's exact aggregation."""
        child = agg.child
        if isinstance(child, JoinNode):  # sqlglot's one-input "join": a pass-through
            if len(child.inputs) != 1 or child.conditions or child.post or _shapes(child):
                return None
            (inp,) = child.inputs
            if inp.kind != "inner" or inp.on or inp.filter is not None:
                return None
            child = inp.node
        if not isinstance(child, TableScanNode) or _shapes(child):
            return None
        scan = child.scan
        conjuncts = _conjuncts(scan.condition) if scan.condition is not None else []
        if any(_pushable(c, scan.alias) is None for c in conjuncts):
            return None  # storage could not apply the whole condition
        group_by = []
        for key in agg.group.values():
            if not isinstance(key, exp.Column) or key.table != scan.alias:
                return None
            group_by.append(key.name)
        if len(set(group_by)) != len(group_by):
            return None
        operands = {
            o.alias_or_name: (o.unalias() if isinstance(o, exp.Alias) else o) for o in agg.operands
        }
        kinds = {c: _kind(t) for c, t in self.types.get(scan.table, {}).items()}
        aggregates: list[tuple[str, str]] = []
        finals: list[tuple[str, list[int]]] = []

        def index(item: tuple[str, str]) -> int:
            if item not in aggregates:
                aggregates.append(item)
            return aggregates.index(item)

        for fn in top_aggregates(agg.aggregations):
            arg = fn.this
            if isinstance(arg, exp.Column) and not arg.table and arg.name in operands:
                arg = operands[arg.name]
            if isinstance(fn, exp.Count):
                if arg is None or isinstance(arg, exp.Star):
                    finals.append(("value", [index(("count", "*"))]))
                    continue
                if isinstance(arg, exp.Column) and arg.table == scan.alias:
                    finals.append(("value", [index(("count", arg.name))]))
                    continue
                return None
            if not isinstance(fn, (exp.Sum, exp.Avg, exp.Min, exp.Max)):
                return None  # COUNT(DISTINCT ...) arrives as Count; others: not pushable
            translated = _storage_arithmetic(arg, scan.alias, kinds)
            if translated is None:
                return None
            text, kind = translated.text, translated.kind
            if isinstance(fn, (exp.Min, exp.Max)):
                name = "min" if isinstance(fn, exp.Min) else "max"
                finals.append(("value", [index((name, text))]))
            elif kind not in _NUMERIC:
                return None  # SQL raises its own error for SUM/AVG of a string
            elif isinstance(fn, exp.Sum):
                finals.append(("value", [index(("sum", text))]))
            else:  # AVG is DOUBLE, as sql.expr computes it
                as_double = text if kind == "float" else f"double({text})"
                finals.append(("avg", [index(("sum", as_double)), index(("count", text))]))
        if not aggregates:  # GROUP BY alone (a DISTINCT): storage wants an aggregate
            index(("count", "*"))
        return PushedAggregate(scan, group_by, aggregates, finals)

    def _finish_scan(self, scan: ScanNode, exprs: Sequence[exp.Expr]) -> None:
        wanted: set[str] = set()
        for e in [*exprs, *([scan.condition] if scan.condition is not None else [])]:
            for col in e.find_all(exp.Column):
                if col.table == scan.alias:
                    wanted.add(col.name)
        cols = self.columns[scan.table]
        scan.columns = [c for c in cols if c in wanted] or cols[:1]
        self.scans.append(scan)

    def _push_into_scan(self, scan: ScanNode, conjuncts: Sequence[exp.Expr]) -> None:
        if not conjuncts:
            return
        current = _conjuncts(scan.condition) if scan.condition is not None else []
        merged = _dedupe([*current, *conjuncts])
        scan.condition = _and_all(merged)
        scan.filters = [f for c in merged if (f := _pushable(c, scan.alias)) is not None]

    def _join(self, step: sqlglot_planner.Join, chain: list[exp.Expr]) -> Node:
        name = step.name or ""
        node = JoinNode(name)
        self._common(step, node)
        deps = {d.name: d for d in step.dependencies}
        source_name = step.source_name or name
        exprs: list[exp.Expr] = [*chain, *node.projections]
        # (name, side, ON conjuncts) in written order; the source first.
        specs: list[tuple[str, str, list[exp.Expr]]] = [(source_name, "inner", [])]
        for jname, j in step.joins.items():
            side = str(j.get("side") or "").lower() or "inner"
            conj: list[exp.Expr] = []
            for a, b in zip(j.get("source_key") or [], j.get("join_key") or [], strict=True):
                conj.append(exp.EQ(this=self._lift(a), expression=self._lift(b)))
            cond = j.get("condition")
            if isinstance(cond, exp.Expr):
                conj.extend(_conjuncts(self._lift(cond)))
            specs.append((jname, side, _dedupe(conj)))
        where = _conjuncts(node.condition) if node.condition is not None else []
        node.condition = None
        names = [s[0] for s in specs]
        outer = {n for n, side, _ in specs if side != "inner"}
        kinds = {n: side for n, side, _ in specs}
        if any(side in ("right", "full") for _, side, _ in specs[1:]):
            # The source side becomes nullable: nothing may move across it.
            node.reorder = False
        # LEFT joins that WHERE turns into inner or anti joins.
        for n in list(outer):
            if kinds[n] != "left":
                continue
            spec_on = next(s[2] for s in specs if s[0] == n)
            keys = {c.name for e in spec_on for c in _eq_columns(e, n)}
            for w in list(where):
                if _is_key_null_test(w, n, keys) and not _mentions_elsewhere(
                    n, w, where, exprs, spec_on
                ):
                    kinds[n] = "anti"
                    where.remove(w)
                    break
                if _null_rejecting(w, n):
                    kinds[n] = "inner"
                    outer.discard(n)
                    break
        inner_conds: list[exp.Expr] = []
        on_of: dict[str, list[exp.Expr]] = {}
        for n, _, conj in specs:
            if kinds[n] == "inner":
                inner_conds.extend(conj)
            else:
                on_of[n] = conj
        inner_conds.extend(where)
        inner_conds = _dedupe([c for e in inner_conds for c in _conjuncts(_factor_or(e))])
        # Which relation each single-relation conjunct is pushed into.
        pushed: dict[str, list[exp.Expr]] = {n: [] for n in names}
        conditions: list[exp.Expr] = []
        post: list[exp.Expr] = []
        for c in inner_conds:
            rels = _relations(c) & set(names)
            if len(rels) == 1 and not (rels & outer):
                pushed[next(iter(rels))].append(c)
                continue
            if not rels:
                conditions.append(c)  # a constant condition: apply it once
                continue
            if rels & outer:
                post.append(c)
                continue
            conditions.append(c)
            pushed_or = _implied_filters(c, rels)
            for rel, implied in pushed_or.items():
                pushed[rel].append(implied)
        for n, conj in on_of.items():
            keep = []
            for c in conj:
                rels = _relations(c) & set(names)
                if rels == {n}:
                    pushed[n].append(c)  # filtering the optional side first is the same
                else:
                    keep.append(c)
            on_of[n] = keep
        # An inner join written after an outer one that it refers to: keep the order.
        for c in conditions:
            if _relations(c) & outer:
                node.reorder = False
        for n, _, _ in specs:
            dep = deps.get(n)
            if dep is None:
                raise NotSupportedError(f"join input {n!r} not found in the plan")
            child_chain = [*exprs, *inner_conds, *post, *[c for v in on_of.values() for c in v]]
            inp = JoinInput(
                n, self._input(dep, n, pushed[n], child_chain), kinds[n], on_of.get(n, [])
            )
            if not isinstance(inp.node, TableScanNode) and pushed[n]:
                inp.filter = _and_all(_dedupe(pushed[n]))
            inp.unique = _unique_sets(inp.node, self.pks)
            inp.selectivity = _selectivity(pushed[n])
            node.inputs.append(inp)
        node.conditions = conditions
        node.post = post
        if node.reorder:
            self._runtime_filters(node)
        return node

    def _runtime_filters(self, node: JoinNode) -> None:
        """Give a base-table input a runtime filter for each inner equi-join
        of one of its integer columns with a unique column of another input
        that is reduced (filtered, or itself runtime-filtered): TPC-H's
        lineitem then reads the lineitems of the qualifying orders, not all
        of them."""
        inner = {i.name: i for i in node.inputs if i.kind == "inner"}
        # To a fixed point: a filter makes its input reduced, which may
        # filter another (customer -> orders -> lineitem in Q3).
        while self._add_runtime_filters(node, inner):
            pass

    def _add_runtime_filters(self, node: JoinNode, inner: dict[str, JoinInput]) -> bool:
        added = False
        for c in node.conditions:
            if not isinstance(c, exp.EQ):
                continue
            a, b = c.this, c.expression
            if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
                continue
            for probe_col, build_col in ((a, b), (b, a)):
                probe, build = inner.get(probe_col.table), inner.get(build_col.table)
                if probe is None or build is None or probe is build:
                    continue
                scan_node = probe.node
                if not isinstance(scan_node, TableScanNode) or _shapes(scan_node):
                    continue
                # The build side is keyed on its column (a dimension, or a
                # grouped subquery) and keeps only some keys; not the
                # reverse of a filter it takes itself (both would wait).
                if frozenset([build_col.name]) not in build.unique or not _reduced(build):
                    continue
                if any(src == probe.name for _, src, _ in build.runtime_filters):
                    continue
                # A probe keyed on its column (a one-to-one join: orders with
                # a grouped subquery) waits only for a HAVING's few keys:
                # other reductions rarely pay for the overlap it loses.
                if frozenset([probe_col.name]) in probe.unique and not _has_having(build.node):
                    continue
                types = self.types.get(scan_node.scan.table, {})
                if _kind(types.get(probe_col.name, "")) != "int":
                    continue
                rf = (probe_col.name, build.name, build_col.name)
                if rf not in probe.runtime_filters:
                    probe.runtime_filters.append(rf)
                    added = True
        return added

    def _input(
        self,
        dep: sqlglot_planner.Step,
        name: str,
        pushed: list[exp.Expr],
        chain: list[exp.Expr],
    ) -> Node:
        if (
            isinstance(dep, sqlglot_planner.Scan)
            and not dep.dependencies
            and isinstance(dep.source, exp.Table)
            and id(dep) not in self._memo
        ):
            table = dep.source.name.lower()
            if table not in self.columns:
                raise ProgrammingError(f"unknown table {dep.source.name!r}")
            scan = ScanNode(table, name, [])
            node = TableScanNode(name, scan=scan)
            self._common(dep, node)
            extra = _conjuncts(node.condition) if node.condition is not None else []
            node.condition = None
            self._push_into_scan(scan, [*extra, *pushed])
            self._finish_scan(scan, [*chain, *node.projections])
            self._memo[id(dep)] = node
            return node
        return self.convert(dep, [])

    # -- subqueries inside expressions
    def _lift(self, e: exp.Expr) -> exp.Expr:
        """``e`` with each uncorrelated subquery replaced by a placeholder
        ``exp.Var`` whose plan is in ``self.subqueries``."""
        if not isinstance(e, exp.Expr) or not e.find(exp.Subquery, exp.Exists, exp.Select):
            return e
        e = e.copy()
        for node in list(e.find_all(exp.Subquery, exp.Exists)):
            if node.root() is not e:
                continue  # inside a subquery already replaced: planned with it
            select = node.this
            if not isinstance(select, (exp.Select, exp.SetOperation)):
                raise NotSupportedError(f"subquery {sql_text(node)} is not supported")
            placeholder = self._plan_subquery(select)
            if isinstance(node, exp.Exists):
                node.set("this", placeholder)
            elif node is e:
                e = placeholder
            else:
                node.replace(placeholder)
        return e

    def _plan_subquery(self, select: exp.Expr) -> exp.Var:
        scope = build_scope(select.copy())
        if scope is not None and scope.external_columns:
            cols = ", ".join(sorted({sql_text(c) for c in scope.external_columns}))
            raise NotSupportedError(f"correlated subquery (refers to {cols}) is not supported")
        sub_name = f"__subquery{len(self.subqueries)}"
        try:
            sub_plan = sqlglot_planner.Plan(select.copy())
        except SqlglotError as err:
            raise NotSupportedError(f"cannot plan subquery: {err}") from err
        self.subqueries[sub_name] = self.convert(sub_plan.root, [])
        return exp.Var(this=sub_name)


# ------------------------------------------------------------------ helpers
def top_aggregates(aggregations: Sequence[exp.Expr]) -> list[exp.AggFunc]:
    """The aggregate functions the expressions of ``aggregations`` apply
    (not those nested inside another), each once, in order of appearance."""
    out: list[exp.AggFunc] = []
    for a in aggregations:
        for fn in a.find_all(exp.AggFunc):
            if fn.find_ancestor(exp.AggFunc) is None and fn not in out:
                out.append(fn)
    return out


def _reduced(inp: JoinInput) -> bool:
    """Does ``inp`` keep only some of its relation's rows (so its keys make
    a useful runtime filter)? A NULL test on a key (what decorrelation adds
    to every subquery) does not count: it keeps every key."""
    return bool(inp.runtime_filters) or _real_filter(inp.filter) or _reduced_node(inp.node)


def _has_having(node: Node) -> bool:
    while isinstance(node, RefNode) and node.child is not None and node.condition is None:
        node = node.child
    return node.condition is not None


def _reduced_node(node: Node) -> bool:
    if node.condition is not None:
        return True
    if isinstance(node, TableScanNode):
        return node.scan.condition is not None
    if isinstance(node, JoinNode):
        return any(
            i.kind == "inner" and (_real_filter(i.filter) or _reduced_node(i.node))
            for i in node.inputs
        )
    if isinstance(node, (AggregateNode, RefNode, SortNode)):
        return any(_reduced_node(c) for c in node.children())
    return False


def _real_filter(e: exp.Expr | None) -> bool:
    def null_test(c: exp.Expr) -> bool:
        return isinstance(c, exp.Not) and isinstance(c.this, exp.Is)

    return e is not None and not all(null_test(c) for c in _conjuncts(e))


def _shapes(node: Node) -> bool:
    """Does ``node`` filter, project or cut its rows itself?"""
    return bool(
        node.condition is not None or node.projections or node.limit is not None or node.offset
    )


_NUMERIC = ("int", "float", "decimal")


def _kind(sql_type: str) -> str:
    """``int``, ``float``, ``decimal`` or ``other``: how ``sql.expr`` computes with it."""
    try:
        t = arrow_type_of(exp.DataType.build(sql_type, dialect="mysql"))
    except (SqlglotError, NotSupportedError, ValueError):
        return "other"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "decimal"
    return "other"


@dataclass(frozen=True)
class _Arith:
    text: str  # in the columnar expression grammar
    kind: str  # int, float, decimal, other
    literal: int | float | decimal.Decimal | None = None  # set for a number literal


def _storage_arithmetic(e: exp.Expr, alias: str, kinds: Mapping[str, str]) -> _Arith | None:
    """``e`` (columns of ``alias``, numbers, ``+ - *``, unary minus) as the
    columnar expression text computing the same values as ``sql.expr``:
    integer-only arithmetic stays integer (checked); anything else is DOUBLE,
    so its operands are cast with ``double()``. None: not expressible (or
    constant folding, division, DECIMAL negation: left to ``sql.expr``)."""
    if isinstance(e, exp.Paren):
        return _storage_arithmetic(e.this, alias, kinds)
    if isinstance(e, exp.Column):
        name = e.name
        if e.table != alias or name not in kinds:
            return None
        if not name.isidentifier() or keyword.iskeyword(name) or name == "double":
            return None  # the expression grammar could not name it
        return _Arith(name, kinds[name])
    if isinstance(e, (exp.Literal, exp.Neg)) and not (
        isinstance(e, exp.Neg) and not isinstance(e.this, exp.Literal)
    ):
        try:
            v = literal_value(e)
        except ValueError:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float, decimal.Decimal)):
            return None
        if isinstance(v, int):
            return _Arith(f"({v})", "int", v)
        return _Arith(f"({float(v)!r})", "float" if isinstance(v, float) else "decimal", v)
    if isinstance(e, exp.Neg):
        inner = _storage_arithmetic(e.this, alias, kinds)
        if inner is None or inner.kind not in ("int", "float"):
            return None
        return _Arith(f"(-{inner.text})", inner.kind)
    ops: dict[type[exp.Expr], str] = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*"}
    op = ops.get(type(e))
    if op is None:
        return None
    left = _storage_arithmetic(e.this, alias, kinds)
    right = _storage_arithmetic(e.expression, alias, kinds)
    if left is None or right is None or left.kind not in _NUMERIC or right.kind not in _NUMERIC:
        return None
    if left.literal is not None and right.literal is not None:
        return None  # sql.expr folds constants exactly
    if left.kind == right.kind == "int":
        return _Arith(f"({left.text} {op} {right.text})", "int")
    return _Arith(f"({_as_double(left)} {op} {_as_double(right)})", "float")


def _as_double(a: _Arith) -> str:
    if a.literal is not None:
        return f"({float(a.literal)!r})"
    return a.text if a.kind == "float" else f"double({a.text})"


def _conjuncts(e: exp.Expr | None) -> list[exp.Expr]:
    if e is None:
        return []
    out: list[exp.Expr] = []
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, exp.Paren):
            stack.append(x.this)
        elif isinstance(x, exp.And):
            stack.append(x.expression)
            stack.append(x.this)
        elif isinstance(x, exp.Boolean) and x.this is True:
            continue
        else:
            out.append(x)
    return out


def _disjuncts(e: exp.Expr) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, exp.Paren):
            stack.append(x.this)
        elif isinstance(x, exp.Or):
            stack.append(x.expression)
            stack.append(x.this)
        else:
            out.append(x)
    return out


def _and_all(items: Sequence[exp.Expr]) -> exp.Expr | None:
    if not items:
        return None
    out = items[0]
    for x in items[1:]:
        out = exp.And(this=out, expression=x)
    return out


def _or_all(items: Sequence[exp.Expr]) -> exp.Expr:
    out = items[0]
    for x in items[1:]:
        out = exp.Or(this=out, expression=x)
    return exp.Paren(this=out) if len(items) > 1 else out


def _dedupe(items: Sequence[exp.Expr]) -> list[exp.Expr]:
    seen: set[exp.Expr] = set()  # sqlglot expressions hash by structure
    out = []
    for x in items:
        key = x
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def _relations(e: exp.Expr) -> set[str]:
    return {c.table for c in e.find_all(exp.Column) if c.table}


def _factor_or(e: exp.Expr) -> exp.Expr:
    """``(a AND x) OR (a AND y)`` -> ``a AND (x OR y)``."""
    branches = _disjuncts(e)
    if len(branches) < 2:
        return e
    parts = [_conjuncts(b) for b in branches]
    common_keys = set.intersection(*({c for c in p} for p in parts))
    if not common_keys:
        return e
    common = [c for c in parts[0] if c in common_keys]
    rests = [[c for c in p if c not in common_keys] for p in parts]
    if any(not r for r in rests):
        return _and_all(common) or e  # one branch is just the common part: the OR is implied
    rest_or = _or_all([_and_all(r) or exp.true() for r in rests])
    return _and_all([*common, rest_or]) or e


def _implied_filters(e: exp.Expr, rels: set[str]) -> dict[str, exp.Expr]:
    """For an OR over several relations: per relation, the OR of each branch's
    conjuncts on that relation alone (implied by ``e``, so safe to push)."""
    branches = _disjuncts(e)
    if len(branches) < 2:
        return {}
    out = {}
    for rel in sorted(rels):
        per_branch = []
        for b in branches:
            own = [c for c in _conjuncts(b) if _relations(c) == {rel}]
            if not own:
                break
            per_branch.append(_and_all(own))
        else:
            out[rel] = _or_all([p for p in per_branch if p is not None])
    return out


def _eq_columns(e: exp.Expr, rel: str) -> list[exp.Column]:
    if isinstance(e, exp.EQ):
        return [s for s in (e.this, e.expression) if isinstance(s, exp.Column) and s.table == rel]
    return []


def _strip_not_not(e: exp.Expr) -> exp.Expr:
    while isinstance(e, exp.Not) and isinstance(e.this, exp.Not):
        e = e.this.this
    while isinstance(e, exp.Paren):
        e = e.this
    return e


def _is_key_null_test(e: exp.Expr, rel: str, keys: set[str]) -> bool:
    e = _strip_not_not(e)
    return (
        isinstance(e, exp.Is)
        and isinstance(e.expression, exp.Null)
        and isinstance(e.this, exp.Column)
        and e.this.table == rel
        and e.this.name in keys
    )


def _mentions_elsewhere(
    rel: str,
    test: exp.Expr,
    where: list[exp.Expr],
    exprs: list[exp.Expr],
    on: list[exp.Expr],
) -> bool:
    """Does anything but ``test`` and the join's ON read columns of ``rel``?"""
    for e in [*where, *exprs]:
        if e is test:
            continue
        if any(c.table == rel for c in e.find_all(exp.Column)):
            return True
    return False


def _null_rejecting(e: exp.Expr, rel: str) -> bool:
    """Is ``e`` false or NULL whenever every column of ``rel`` is NULL?"""
    e = _strip_not_not(e)
    if (
        isinstance(e, exp.Not)
        and isinstance(e.this, exp.Is)
        and isinstance(e.this.expression, exp.Null)
    ):
        return _strict_on(e.this.this, rel)
    if isinstance(e, (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)):
        return _strict_on(e.this, rel) or _strict_on(e.expression, rel)
    if isinstance(e, (exp.Like, exp.In, exp.Between)):
        return _strict_on(e.this, rel)
    if isinstance(e, exp.And):
        return _null_rejecting(e.this, rel) or _null_rejecting(e.expression, rel)
    if isinstance(e, exp.Or):
        return _null_rejecting(e.this, rel) and _null_rejecting(e.expression, rel)
    return False


def _strict_on(e: exp.Expr, rel: str) -> bool:
    """Is ``e`` NULL whenever ``rel``'s columns are (column or arithmetic)?"""
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.Column):
        return e.table == rel
    if isinstance(e, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
        return _strict_on(e.this, rel) or _strict_on(e.expression, rel)
    return False


def _pushable(c: exp.Expr, alias: str) -> PushedFilter | None:
    op = _OPS.get(type(c))
    if op is None:
        return None
    left, right = c.this, c.expression
    if isinstance(right, exp.Column) and not isinstance(left, exp.Column):
        left, right = right, left
        op = _FLIP[op]
    if not isinstance(left, exp.Column) or left.table != alias:
        return None
    if isinstance(right, exp.Column):  # two columns of the row: l_commitdate < l_receiptdate
        if right.table != alias or right.name == left.name:
            return None
        return (left.name, op, ColumnRef(right.name))
    try:
        value = literal_value(right)
    except ValueError:
        return None
    if value is None or not isinstance(
        value, (int, float, str, bool, datetime.date, decimal.Decimal)
    ):
        return None
    return (left.name, op, value)


def _selectivity(conds: Sequence[exp.Expr]) -> float:
    """A guess of the fraction of rows ``conds`` keep (used for join order only)."""
    sel = 1.0
    for cond in conds:
        c = _strip_not_not(cond)
        if isinstance(c, exp.EQ):
            sel *= 0.1
        elif isinstance(c, exp.In):
            sel *= 0.2
        elif isinstance(c, exp.Like):
            sel *= 0.25
        else:
            sel *= 0.5
    return max(sel, 1e-4)


def _unique_sets(node: Node, pks: Mapping[str, Sequence[str]]) -> list[frozenset[str]]:
    """Sets of output columns on which ``node`` has no duplicate rows."""
    base: list[frozenset[str]] = []
    if isinstance(node, TableScanNode):
        pk = pks.get(node.scan.table)
        if pk:
            base = [frozenset(pk)]
    elif isinstance(node, AggregateNode):
        base = [frozenset(node.group)]
    elif isinstance(node, (RefNode, SortNode)):
        child = node.children()[0] if node.children() else None
        base = _unique_sets(child, pks) if child is not None else []
    elif isinstance(node, SetOpNode) and node.distinct:
        return []
    if not node.projections:
        return base
    renamed: dict[str, str] = {}
    for p in node.projections:
        inner = p.unalias() if isinstance(p, exp.Alias) else p
        if isinstance(inner, exp.Column):
            renamed.setdefault(inner.name, p.alias_or_name)
    out = []
    for s in base:
        if all(c in renamed for c in s):
            out.append(frozenset(renamed[c] for c in s))
    return out


def iter_nodes(root: Node) -> Iterator[Node]:
    """Every node under ``root`` once (shared CTE nodes once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        stack.extend(n.children())


def parse_select(sql: str) -> exp.Expr:
    """Parse one statement as MySQL (a helper for tests and tools)."""
    try:
        return sqlglot.parse_one(sql, read="mysql")
    except SqlglotError as err:
        raise ProgrammingError(str(err)) from err
