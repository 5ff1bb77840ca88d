"""The vectorised executor: runs a :class:`~sql.planner.QueryPlan` over Arrow.

Where it sits: below the session, which plans a SELECT and supplies the
``scan`` callback (that callback reads a base table from the columnar replica
or the row store: this module never does I/O itself); above ``sql.expr`` and
pyarrow's kernels (Acero hash joins and group-bys, ``pyarrow.compute``).

Every node turns whole Arrow tables into a whole Arrow table; no code here
loops over rows in Python. Intermediate tables name their columns
``"alias.column"`` while they come from FROM relations and bare ``"name"``
once projected or aggregated (see ``sql.expr`` for how references resolve).

Joins (the expensive part; Acero's hash join is ~4x slower than DuckDB's):

* inner joins of one SELECT are ordered greedily at run time (GOO: merge the
  pair of partial results whose estimated output is smallest). An estimate
  uses the real input sizes, the uniqueness of the key side (primary key,
  GROUP BY keys) and the planner's selectivity guess; so dimension filters
  meet the fact table early and no cross product is built while a keyed join
  is possible;
* the smaller input is Acero's build (right) side;
* a join without equality keys is a cross product, built in slices with the
  residual condition applied per slice so memory stays bounded;
* outer and anti joins run after the inner ones, in written order; an ON
  condition that is not an equality is handled by matching row ids;
* runtime filters (TiFlash's, a semi-join reduction): a base-table input
  the planner marked is read after the inputs its filters come from, with
  their distinct join keys (up to :data:`RUNTIME_FILTER_MAX_KEYS`) as an
  ``IN`` filter storage applies, so TPC-H Q5 reads the lineitems of 23k
  qualifying orders instead of all 600k. Only inner equi-joins get them:
  a row whose key is not among the other side's keys joins nothing there.

Invariant: results do not depend on the join order chosen, on whether the
scan callback applied the pushed filters, or on Acero's thread scheduling
(up to row order where the query does not fix it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from sql.errors import DataError, NotSupportedError, ProgrammingError
from sql.expr import Scope, column_index, evaluate_array, evaluate_mask, resolve, sql_text
from sql.planner import (
    AggregateNode,
    JoinInput,
    JoinNode,
    Node,
    PushedAggregate,
    QueryPlan,
    RefNode,
    ScanNode,
    SetOpNode,
    SortNode,
    TableScanNode,
    ValuesNode,
    top_aggregates,
)

__all__ = ["execute"]

ScanFn = Callable[[ScanNode], pa.Table]
AggregateFn = Callable[[PushedAggregate], "pa.Table | None"]

# Rows of one slice of a cross product (bounded memory for non-equi joins).
_CROSS_SLICE_ROWS = 1 << 22
# A runtime filter with more keys than this is not sent (it would cost more
# to ship and test than the rows it saves).
RUNTIME_FILTER_MAX_KEYS = 20_000


def execute(
    plan: QueryPlan,
    scan: ScanFn,
    params: Sequence[Any] = (),
    aggregate: AggregateFn | None = None,
) -> pa.Table:
    """Run ``plan``; ``scan(node)`` returns a base table's rows (at least the
    columns ``node.columns``, by name; it may or may not have applied
    ``node.filters``). ``aggregate(pushed)``, if given, returns storage's
    answer to a :class:`~sql.planner.PushedAggregate` (its filters applied),
    or None to have it computed here from ``scan``. ``params`` are the values
    of ``?`` placeholders, in the order they appear in the statement. Returns
    the result with the SELECT list's names, in order."""
    run = _Run(plan, scan, params, aggregate)
    out = run.node(plan.root)
    names = [n.rpartition(".")[2] for n in out.column_names]
    if names != out.column_names:
        out = out.rename_columns(names)
    return out


@dataclass
class _Rel:
    """A partial join result: which relations it holds, unique column sets
    (qualified names) and the guessed fraction of its key domain it keeps."""

    table: pa.Table
    names: frozenset[str]
    unique: list[frozenset[str]]
    sel: float


class _Run:
    def __init__(
        self,
        plan: QueryPlan,
        scan: ScanFn,
        params: Sequence[Any],
        aggregate: AggregateFn | None = None,
    ) -> None:
        self.scan_fn = scan
        self.aggregate_fn = aggregate
        self.params = list(params)
        self._memo: dict[int, pa.Table] = {}
        self.subqueries: dict[str, pa.Table] = {}
        for name, sub in plan.subqueries.items():
            self.subqueries[name] = self.node(sub)

    def scope(self, table: pa.Table) -> Scope:
        return Scope(table, self.subqueries, params=self.params)

    # ------------------------------------------------------------ nodes
    def node(self, node: Node) -> pa.Table:
        key = id(node)
        if key in self._memo:
            return self._memo[key]
        out = self._node(node)
        if isinstance(node, (AggregateNode, SortNode, SetOpNode, JoinNode)):
            self._memo[key] = out  # CTE roots are shared by several RefNodes
        return out

    def _node(self, node: Node) -> pa.Table:
        if isinstance(node, TableScanNode):
            return self.finish(node, self.table_scan(node.scan))
        if isinstance(node, ValuesNode):
            return self.finish(node, pa.table({"__row": pa.array([0], pa.int8())}))
        if isinstance(node, RefNode):
            assert node.child is not None
            return self.finish(node, self.node(node.child))
        if isinstance(node, JoinNode):
            return self.finish(node, self.join(node))
        if isinstance(node, AggregateNode):
            return self.finish(node, self.aggregate(node))
        if isinstance(node, SortNode):
            return self.sort(node)
        if isinstance(node, SetOpNode):
            return self.finish(node, self.set_op(node))
        raise NotSupportedError(f"plan node {type(node).__name__} is not supported")

    def finish(self, node: Node, table: pa.Table) -> pa.Table:
        """WHERE/HAVING, projections, OFFSET/LIMIT of a node."""
        if node.condition is not None:
            table = self.filter(table, [node.condition])
        if node.projections:
            table = self.project(table, node.projections)
        return _slice(table, node.offset, node.limit)

    def filter(self, table: pa.Table, conds: Sequence[exp.Expr]) -> pa.Table:
        if not conds or table.num_rows == 0:
            return table
        scope = self.scope(table)
        mask: Any = None
        for c in conds:
            m = evaluate_mask(c, scope)
            if m is False:
                return table.slice(0, 0)
            if m is True:
                continue
            mask = m if mask is None else pc.and_(mask, m)
        if mask is None:
            return table
        return table.filter(mask)

    def project(self, table: pa.Table, projections: Sequence[exp.Expr]) -> pa.Table:
        scope = self.scope(table)
        arrays = [evaluate_array(p, scope) for p in projections]
        names = [p.alias_or_name for p in projections]
        return pa.Table.from_arrays(arrays, names=names)

    def table_scan(self, node: ScanNode) -> pa.Table:
        raw = self.scan_fn(node)
        missing = [c for c in node.columns if c not in raw.column_names]
        if missing:
            raise ProgrammingError(f"table {node.table!r} has no column(s) {missing}")
        cols = []
        for c in node.columns:
            col = raw.column(c)
            if pa.types.is_string_view(col.type) or pa.types.is_large_string(col.type):
                col = col.cast(pa.string())
            cols.append(col)
        table = pa.Table.from_arrays(cols, names=[f"{node.alias}.{c}" for c in node.columns])
        if node.condition is not None:
            table = self.filter(table, [node.condition])
        return table

    # ------------------------------------------------------------ joins
    def join(self, node: JoinNode) -> pa.Table:
        tables = self._join_inputs(node)
        rels: list[tuple[JoinInput, _Rel]] = []
        for inp in node.inputs:
            table = tables[inp.name]
            unique = [frozenset(f"{inp.name}.{c}" for c in s) for s in inp.unique]
            rels.append((inp, _Rel(table, frozenset([inp.name]), unique, inp.selectivity)))
        pending = list(node.conditions)
        if len(rels) == 1:
            cur = rels[0][1]
        elif node.reorder:
            inner = [r for i, r in rels if i.kind == "inner"]
            cur = self.inner_joins(inner, pending)
            for inp, rel in rels:
                if inp.kind != "inner":
                    cur = self.outer_join(cur, rel, inp.kind, inp.on)
        else:
            cur = rels[0][1]
            for inp, rel in rels[1:]:
                if inp.kind == "inner":
                    cur = self.merge(cur, rel, pending)
                else:
                    cur = self.outer_join(cur, rel, inp.kind, inp.on)
        table = self.filter(cur.table, [*pending, *node.post])
        return table

    def _join_inputs(self, node: JoinNode) -> dict[str, pa.Table]:
        """Every input of ``node``, qualified and filtered. An input with
        runtime filters is read after the inputs they come from, keeping
        only the rows whose column is among their keys (an inner equi-join
        drops the others anyway); inputs whose filters wait on each other
        are read unfiltered."""

        def compute(inp: JoinInput, runtime: dict[str, pa.Array] | None = None) -> pa.Table:
            if runtime and isinstance(inp.node, TableScanNode):
                scan = replace(inp.node.scan, runtime=runtime)
                raw = self.finish(inp.node, self.table_scan(scan))
            else:
                raw = self.node(inp.node)
            table = _qualify(raw, inp.name)
            if inp.filter is not None:
                table = self.filter(table, [inp.filter])
            return table

        done: dict[str, pa.Table] = {}
        waiting = [i for i in node.inputs if i.runtime_filters]
        for inp in node.inputs:
            if not inp.runtime_filters:
                done[inp.name] = compute(inp)
        while waiting:
            ready = [i for i in waiting if all(src in done for _, src, _ in i.runtime_filters)]
            if not ready:  # filters waiting on each other: read the rest as is
                for inp in waiting:
                    done[inp.name] = compute(inp)
                break
            for inp in ready:
                runtime: dict[str, pa.Array] = {}
                for col, src, src_col in inp.runtime_filters:
                    keys = _runtime_keys(done[src].column(f"{src}.{src_col}"))
                    if keys is None:
                        continue
                    if col in runtime:  # two filters on one column: both hold
                        keys = pc.filter(keys, pc.is_in(keys, value_set=runtime[col]))
                    runtime[col] = keys
                done[inp.name] = compute(inp, runtime)
                waiting.remove(inp)
        return done

    def inner_joins(self, comps: list[_Rel], pending: list[exp.Expr]) -> _Rel:
        comps = list(comps)
        while len(comps) > 1:
            best: tuple[float, int, int, int] | None = None
            for i in range(len(comps)):
                for j in range(i + 1, len(comps)):
                    a, b = comps[i], comps[j]
                    keys = _equi_keys(pending, a, b)
                    if keys:
                        est = _estimate(a, b, [k[0] for k in keys], [k[1] for k in keys])
                    else:
                        est = 4.0 * a.table.num_rows * b.table.num_rows + 1
                    cand = (est, max(a.table.num_rows, b.table.num_rows), i, j)
                    if best is None or cand < best:
                        best = cand
            assert best is not None
            _, _, i, j = best
            merged = self.merge(comps[i], comps[j], pending)
            comps = [c for k, c in enumerate(comps) if k not in (i, j)] + [merged]
        cur = comps[0]
        return cur

    def merge(self, a: _Rel, b: _Rel, pending: list[exp.Expr]) -> _Rel:
        """Inner join of two partial results, consuming the conditions of
        ``pending`` that become evaluable."""
        keys = _equi_keys(pending, a, b)
        for _, _, cond in keys:
            pending.remove(cond)
        names = a.names | b.names
        ready = [c for c in pending if _rels_of(c) <= names]
        for c in ready:
            pending.remove(c)
        if keys:
            lk = [k[0] for k in keys]
            rk = [k[1] for k in keys]
            table = _hash_join(a.table, b.table, lk, rk, "inner")
            table = self.filter(table, ready)
        else:
            table = self.cross(a.table, b.table, ready)
        lk = [k[0] for k in keys]
        rk = [k[1] for k in keys]
        a_unique_on = _unique_on(a, lk)
        b_unique_on = _unique_on(b, rk)
        unique: list[frozenset[str]] = []
        sel = 1.0
        n = table.num_rows
        if b_unique_on:
            unique += a.unique
            sel = a.sel * (n / a.table.num_rows if a.table.num_rows else 1.0)
        if a_unique_on:
            unique += b.unique
            sel = min(sel, b.sel * (n / b.table.num_rows if b.table.num_rows else 1.0))
        return _Rel(table, names, unique, max(sel, 1e-6))

    def cross(self, left: pa.Table, right: pa.Table, conds: Sequence[exp.Expr]) -> pa.Table:
        n, m = left.num_rows, right.num_rows
        names = left.column_names + right.column_names
        if n == 0 or m == 0:
            empty = [pa.array([], f.type) for f in [*left.schema, *right.schema]]
            return pa.Table.from_arrays(empty, names=names)
        step = max(1, _CROSS_SLICE_ROWS // m)
        parts = []
        for start in range(0, n, step):
            count = min(step, n - start)
            li = np.repeat(np.arange(start, start + count, dtype=np.int64), m)
            ri = np.tile(np.arange(m, dtype=np.int64), count)
            cols = [*left.take(li).columns, *right.take(ri).columns]
            part = pa.Table.from_arrays(cols, names=names)
            parts.append(self.filter(part, conds))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def outer_join(self, cur: _Rel, rel: _Rel, kind: str, on: Sequence[exp.Expr]) -> _Rel:
        keys = _equi_keys(list(on), cur, rel)
        used = {id(k[2]) for k in keys}
        residual = [c for c in on if id(c) not in used]
        lk = [k[0] for k in keys]
        rk = [k[1] for k in keys]
        names = cur.names | rel.names
        if not residual and keys:
            table = _hash_join(cur.table, rel.table, lk, rk, kind)
            return _Rel(
                table,
                cur.names if kind == "anti" else names,
                cur.unique if _unique_on(rel, rk) else [],
                cur.sel,
            )
        if kind in ("right", "full"):
            raise NotSupportedError(f"{kind.upper()} JOIN with a non-equality ON condition")
        # Match by row id: inner-join, filter, then add back the unmatched left rows.
        rowid = "__rowid"
        left = cur.table.append_column(
            rowid, pa.array(np.arange(cur.table.num_rows, dtype=np.int64))
        )
        if keys:
            matched = self.filter(_hash_join(left, rel.table, lk, rk, "inner"), residual)
        else:
            matched = self.cross(left, rel.table, residual)
        hit = pc.is_in(left.column(rowid), value_set=matched.column(rowid).combine_chunks())
        unmatched = left.filter(pc.invert(hit)).drop_columns([rowid])
        if kind == "anti":
            return _Rel(unmatched, cur.names, cur.unique, cur.sel)
        nulls = [pa.nulls(unmatched.num_rows, f.type) for f in rel.table.schema]
        padded = pa.Table.from_arrays(
            [*unmatched.columns, *nulls], names=unmatched.column_names + rel.table.column_names
        )
        matched = matched.drop_columns([rowid]).select(padded.column_names)
        return _Rel(pa.concat_tables([matched, padded]), names, [], cur.sel)

    # ------------------------------------------------------------ aggregate
    def aggregate(self, node: AggregateNode) -> pa.Table:
        # Every aggregate function once, named __aggN; the expressions
        # around them are computed over the aggregated table.
        fns = top_aggregates(node.aggregations)
        names = {fn: f"__agg{i}" for i, fn in enumerate(fns)}
        rewritten = []
        for original in node.aggregations:
            a = original.copy()
            for fn in list(a.find_all(exp.AggFunc)):
                if fn.find_ancestor(exp.AggFunc) is not None:
                    continue
                col = exp.column(names[fn])
                if fn is a:
                    a = col
                else:
                    fn.replace(col)
            rewritten.append(a)
        agg_table = None
        if node.pushdown is not None and self.aggregate_fn is not None:
            partial = self.aggregate_fn(node.pushdown)
            if partial is not None:
                agg_table = _pushed_result(node, node.pushdown, partial)
        if agg_table is None:
            agg_table = self._aggregate_here(node, fns)
        agg_scope = self.scope(agg_table)
        keys = list(node.group)
        result: dict[str, Any] = {k: agg_table.column(k) for k in keys}
        for a in rewritten:
            result[a.alias_or_name] = evaluate_array(a, agg_scope)
        if not result:
            return pa.table({"__row": pa.nulls(agg_table.num_rows, pa.int8())})
        return pa.Table.from_arrays(list(result.values()), names=list(result))

    def _aggregate_here(self, node: AggregateNode, fns: Sequence[exp.AggFunc]) -> pa.Table:
        """The group keys (named as in ``node.group``) and ``__aggN`` per
        function of ``fns``, computed here from the child's rows."""
        assert node.child is not None
        source = self.node(node.child)
        work_cols: dict[str, Any] = {}
        scope = self.scope(source)
        extra: dict[str, Any] = {}
        stars: set[str] = set()  # COUNT(*) arrives as COUNT(_a_N) with operand "* AS _a_N"
        for op in node.operands:
            inner = op.unalias() if isinstance(op, exp.Alias) else op
            if isinstance(inner, exp.Star):
                stars.add(op.alias_or_name)
                continue
            extra[op.alias_or_name] = evaluate_array(inner, scope)
        if extra:
            source = pa.Table.from_arrays(
                [*source.columns, *extra.values()], names=source.column_names + list(extra)
            )
            scope = self.scope(source)
        keys = list(node.group)
        for name, g in node.group.items():
            work_cols[name] = evaluate_array(g, scope)
        specs = [
            self._agg_spec(fn, scope, work_cols, f"__agg{i}", stars) for i, fn in enumerate(fns)
        ]
        if not work_cols:
            work = pa.table({"__row": pa.nulls(source.num_rows, pa.int8())})
        else:
            work = pa.Table.from_arrays(list(work_cols.values()), names=list(work_cols))
        aggs = [(s[0], s[1], s[2]) if s[2] is not None else (s[0], s[1]) for s in specs]
        try:
            grouped = work.group_by(keys, use_threads=False).aggregate(aggs)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
            raise DataError(f"cannot aggregate: {err}") from err
        # pyarrow names outputs "<column>_<function>"; map them to ours.
        out_cols: dict[str, Any] = {k: grouped.column(k) for k in keys}
        for i, (target, fn_name, _) in enumerate(specs):
            col_name = "count_all" if fn_name == "count_all" else f"{target}_{fn_name}"
            out_cols[f"__agg{i}"] = grouped.column(col_name)
        return pa.Table.from_arrays(list(out_cols.values()), names=list(out_cols))

    def _agg_spec(
        self,
        fn: exp.AggFunc,
        scope: Scope,
        work_cols: dict[str, Any],
        out_name: str,
        stars: set[str],
    ) -> tuple[str | list[str], str, Any]:
        arg = fn.this
        distinct = isinstance(arg, exp.Distinct)
        if distinct:
            if len(arg.expressions) != 1:
                raise NotSupportedError(f"{sql_text(fn)}: DISTINCT over several columns")
            arg = arg.expressions[0]
        if isinstance(fn, exp.Count):
            star_ref = isinstance(arg, exp.Column) and not arg.table and arg.name in stars
            if arg is None or isinstance(arg, exp.Star) or star_ref:
                return ([], "count_all", None)
            name = f"{out_name}_in"
            work_cols[name] = evaluate_array(arg, scope)
            if distinct:
                return (name, "count_distinct", pc.CountOptions(mode="only_valid"))
            return (name, "count", pc.CountOptions(mode="only_valid"))
        if distinct and not isinstance(fn, (exp.Min, exp.Max)):
            raise NotSupportedError(f"{fn.key.upper()}(DISTINCT ...) is not supported")
        table_fn = {
            exp.Sum: "sum",
            exp.Avg: "mean",
            exp.Min: "min",
            exp.Max: "max",
            exp.ArrayAgg: "list",
        }
        pa_fn = table_fn.get(type(fn))
        if pa_fn is None:
            raise NotSupportedError(f"aggregate function {fn.key.upper()} is not supported")
        values = evaluate_array(arg, scope)
        if pa_fn == "mean" and not pa.types.is_floating(values.type):
            values = pc.cast(values, pa.float64())  # AVG is DOUBLE, as in DuckDB
        if pa_fn == "sum" and not (
            pa.types.is_integer(values.type)
            or pa.types.is_floating(values.type)
            or pa.types.is_decimal(values.type)
            or pa.types.is_null(values.type)
        ):
            raise DataError(f"SUM needs numbers, not {values.type}")
        name = f"{out_name}_in"
        work_cols[name] = values
        opts = (
            pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)
            if pa_fn in ("sum", "mean")
            else None
        )
        return (name, pa_fn, opts)

    # ------------------------------------------------------------ sort
    def sort(self, node: SortNode) -> pa.Table:
        assert node.child is not None
        source = self.node(node.child)
        out = self.project(source, node.projections) if node.projections else source
        # Keys see the output names first, then the input's columns.
        visible = dict(zip(out.column_names, out.columns, strict=True))
        for n, c in zip(source.column_names, source.columns, strict=True):
            visible.setdefault(n, c)
        scope = self.scope(pa.Table.from_arrays(list(visible.values()), names=list(visible)))
        key_cols: list[Any] = []
        sort_keys: list[tuple[str, str]] = []
        for i, k in enumerate(node.keys):
            desc = bool(k.args.get("desc"))
            nulls_first = k.args.get("nulls_first")
            if nulls_first is None:
                nulls_first = not desc  # MySQL: NULL is the smallest value
            col = evaluate_array(k.this, scope)
            if col.null_count:
                # A per-key NULL placement: sort on "is null" first.
                key_cols.append(pc.is_null(col))
                sort_keys.append(
                    (f"k{len(key_cols) - 1}", "descending" if nulls_first else "ascending")
                )
            key_cols.append(col)
            sort_keys.append((f"k{len(key_cols) - 1}", "descending" if desc else "ascending"))
            del i
        if key_cols:
            keys_table = pa.Table.from_arrays(
                key_cols, names=[f"k{i}" for i in range(len(key_cols))]
            )
            order = pc.sort_indices(keys_table, sort_keys=sort_keys)
            if node.limit is not None:
                order = order.slice(node.offset, node.limit)
            elif node.offset:
                order = order.slice(node.offset)
            return out.take(order)
        return _slice(out, node.offset, node.limit)

    # ------------------------------------------------------------ set operations
    def set_op(self, node: SetOpNode) -> pa.Table:
        assert node.left is not None and node.right is not None
        left = self.node(node.left)
        right = self.node(node.right)
        if left.num_columns != right.num_columns:
            raise ProgrammingError(
                f"{node.op.upper()}: the two sides have {left.num_columns}"
                f" and {right.num_columns} columns"
            )
        names = [n.rpartition(".")[2] for n in left.column_names]
        lcols, rcols = [], []
        for lc, rc in zip(left.columns, right.columns, strict=True):
            t = lc.type if lc.type == rc.type else _common(lc.type, rc.type)
            lcols.append(lc.cast(t) if lc.type != t else lc)
            rcols.append(rc.cast(t) if rc.type != t else rc)
        left = pa.Table.from_arrays(lcols, names=names)
        right = pa.Table.from_arrays(rcols, names=names)
        if node.op == "union":
            out = pa.concat_tables([left, right])
            return _distinct(out) if node.distinct else out
        join_type = "left semi" if node.op == "intersect" else "left anti"
        return _distinct(left).join(right, keys=names, join_type=join_type, use_threads=True)


# ------------------------------------------------------------------ helpers
def _runtime_keys(column: pa.ChunkedArray) -> pa.Array | None:
    """The distinct non-NULL integer keys of ``column``, or None when they
    make no useful filter (not integers, or too many to send)."""
    if not pa.types.is_integer(column.type):
        return None
    keys = pc.unique(column.combine_chunks()).drop_null()
    if len(keys) > RUNTIME_FILTER_MAX_KEYS:
        return None
    return keys.cast(pa.int64())


def _pushed_result(node: AggregateNode, pushed: PushedAggregate, answer: pa.Table) -> pa.Table:
    """Storage's answer to ``pushed`` as :meth:`_Run._aggregate_here` would
    have computed it: keys named as in ``node.group``, then ``__aggN``."""
    n_keys = len(pushed.group_by)
    if answer.num_columns != n_keys + len(pushed.aggregates):
        raise DataError(
            f"storage answered an aggregation with {answer.num_columns} columns, "
            f"not {n_keys + len(pushed.aggregates)}"
        )
    cols: dict[str, Any] = {name: answer.column(i) for i, name in enumerate(node.group)}
    for i, (kind, idx) in enumerate(pushed.finals):
        if kind == "avg":
            total, count = (answer.column(n_keys + j) for j in idx)
            # A group whose values are all NULL has a NULL sum: NULL, as AVG.
            value = pc.divide(pc.cast(total, pa.float64()), pc.cast(count, pa.float64()))
        else:
            value = answer.column(n_keys + idx[0])
        cols[f"__agg{i}"] = value
    if not cols:
        return pa.table({"__row": pa.nulls(answer.num_rows, pa.int8())})
    return pa.Table.from_arrays(list(cols.values()), names=list(cols))


def _slice(table: pa.Table, offset: int, limit: int | None) -> pa.Table:
    if offset:
        table = table.slice(offset)
    if limit is not None:
        table = table.slice(0, limit)
    return table


def _qualify(table: pa.Table, name: str) -> pa.Table:
    names = [c if "." in c else f"{name}.{c}" for c in table.column_names]
    return table.rename_columns(names) if names != table.column_names else table


def _distinct(table: pa.Table) -> pa.Table:
    return table.group_by(table.column_names, use_threads=False).aggregate([])


def _common(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    num = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
    if any(f(a) for f in num) and any(f(b) for f in num):
        if pa.types.is_integer(a) and pa.types.is_integer(b):
            return pa.int64()
        return pa.float64()
    if pa.types.is_string(a) or pa.types.is_string(b):
        return pa.string()
    raise DataError(f"cannot combine column types {a} and {b}")


def _rels_of(e: exp.Expr) -> frozenset[str]:
    return frozenset(c.table for c in e.find_all(exp.Column) if c.table)


def _column_in(rel: _Rel, col: exp.Column) -> str | None:
    if col.table not in rel.names:
        return None
    try:
        return resolve(column_index(rel.table.column_names), col.table, col.name)
    except ProgrammingError:
        return None


def _equi_keys(conds: Sequence[exp.Expr], a: _Rel, b: _Rel) -> list[tuple[str, str, exp.Expr]]:
    """``(column of a, column of b, condition)`` for each ``a.x = b.y`` in ``conds``."""
    out: list[tuple[str, str, exp.Expr]] = []
    for c in conds:
        if not isinstance(c, exp.EQ):
            continue
        x, y = c.this, c.expression
        if not (isinstance(x, exp.Column) and isinstance(y, exp.Column)):
            continue
        xa, yb = _column_in(a, x), _column_in(b, y)
        if xa is not None and yb is not None:
            out.append((xa, yb, c))
            continue
        ya, xb = _column_in(a, y), _column_in(b, x)
        if ya is not None and xb is not None:
            out.append((ya, xb, c))
    return out


def _unique_on(rel: _Rel, cols: Sequence[str]) -> bool:
    have = set(cols)
    return any(s <= have for s in rel.unique) or rel.table.num_rows <= 1


def _estimate(a: _Rel, b: _Rel, ak: Sequence[str], bk: Sequence[str]) -> float:
    na, nb = a.table.num_rows, b.table.num_rows
    ua, ub = _unique_on(a, ak), _unique_on(b, bk)
    if ua and ub:
        return float(min(na * b.sel, nb * a.sel))
    if ub:
        return float(na * b.sel)
    if ua:
        return float(nb * a.sel)
    return float(na) * float(nb)


_JOIN_TYPES = {
    "inner": "inner",
    "left": "left outer",
    "right": "right outer",
    "full": "full outer",
    "anti": "left anti",
    "semi": "left semi",
}
_SWAPPED = {
    "inner": "inner",
    "left outer": "right outer",
    "right outer": "left outer",
    "full outer": "full outer",
    "left anti": "right anti",
    "left semi": "right semi",
}


def _hash_join(
    left: pa.Table, right: pa.Table, lkeys: list[str], rkeys: list[str], kind: str
) -> pa.Table:
    """An Acero hash join on equal keys (NULL keys never match); the smaller
    table is the build (right) side. Output columns: left's, then right's."""
    join_type = _JOIN_TYPES[kind]
    for lk, rk in zip(lkeys, rkeys, strict=True):
        lt, rt = left.schema.field(lk).type, right.schema.field(rk).type
        if lt != rt:
            t = _common(lt, rt)
            if lt != t:
                left = left.set_column(left.schema.get_field_index(lk), lk, left.column(lk).cast(t))
            if rt != t:
                right = right.set_column(
                    right.schema.get_field_index(rk), rk, right.column(rk).cast(t)
                )
    # Acero cannot carry nested columns (ARRAY_AGG lists): join a row index, take after.
    nested_l = [
        n for n, f in zip(left.column_names, left.schema, strict=True) if pa.types.is_nested(f.type)
    ]
    nested_r = [
        n
        for n, f in zip(right.column_names, right.schema, strict=True)
        if pa.types.is_nested(f.type)
    ]
    full_left, full_right = left, right
    if nested_l:
        left = left.drop_columns(nested_l).append_column(
            "__lidx", pa.array(np.arange(left.num_rows))
        )
    if nested_r:
        right = right.drop_columns(nested_r).append_column(
            "__ridx", pa.array(np.arange(right.num_rows))
        )
    swap = right.num_rows > left.num_rows and join_type in _SWAPPED
    try:
        if swap:
            out = right.join(
                left,
                keys=rkeys,
                right_keys=lkeys,
                join_type=_SWAPPED[join_type],
                coalesce_keys=False,
                use_threads=True,
            )
        else:
            out = left.join(
                right,
                keys=lkeys,
                right_keys=rkeys,
                join_type=join_type,
                coalesce_keys=False,
                use_threads=True,
            )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise DataError(f"cannot join on {lkeys} = {rkeys}: {err}") from err
    keep_right = join_type not in ("left anti", "left semi")
    order = list(left.column_names) + (list(right.column_names) if keep_right else [])
    out = out.select(order)
    if nested_l:
        idx = out.column("__lidx")
        for n in nested_l:
            out = out.append_column(n, full_left.column(n).take(idx))
        out = out.drop_columns(["__lidx"])
    if nested_r and keep_right:
        idx = out.column("__ridx")
        for n in nested_r:
            out = out.append_column(n, full_right.column(n).take(idx))
        out = out.drop_columns(["__ridx"])
    return out
