"""Prepared forms of the common OLTP statements: their shape, read once.

An OLTP client runs a few statement texts over and over with fresh ``?``
parameters. The general path binds every execution into a deep copy of the
parsed statement and walks it again (~0.5 ms of CPU per statement, more than
a point lookup costs). This module reads the shape of a parsed statement once
(per text, per session) and keeps its parameters as :class:`Slot` s, so an
execution only converts its parameters and drops them into the access path.

The shapes, each exactly what :mod:`sql.session`'s general path answers
without the planner:

* :class:`PointSelect`: ``SELECT col, ...|* FROM t WHERE <key> [FOR UPDATE]``,
  and ``SELECT col, ...|MAX(col)|MIN(col) ... WHERE <index or primary-key
  prefix> [ORDER BY col, ...]``
  (the general path plans these: 20 ms per new parameter value);
* :class:`InsertValues`: ``INSERT [IGNORE] INTO t [(cols)] VALUES (...), ...``;
* :class:`KeyUpdate`: ``UPDATE t SET c = <arithmetic> ... WHERE <key>``;
* :class:`KeyDelete`: ``DELETE FROM t WHERE <key>``;

where ``<key>`` (:class:`KeyWhere`) is ANDed ``col = value`` and at most one
``col IN (values)``. Whether the key columns really are a key depends on the
schema at run time; the session checks that with the same code as the
general path and otherwise runs the general path.

**Invariant.** A prepared execution gives the same result, and the same
error, as the general path: a parameter ``v`` stands for exactly the value
the general path reads back from the bound statement
(:func:`~sql.values.param_value`); anything this module cannot evaluate
exactly raises :class:`Fallback` (before the statement writes, or inside the
statement's savepoint) and the general path runs instead, raising its own
error if there is one. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlglot import exp

from sql.errors import Error
from sql.values import arith, is_number, literal, negate, param_value

__all__ = [
    "Fallback",
    "InsertValues",
    "KeyDelete",
    "KeyUpdate",
    "KeyWhere",
    "PointSelect",
    "Prepared",
    "SetValue",
    "Slot",
    "bind",
    "compile_value",
    "key_where",
    "point_select",
    "placeholders",
    "prepare",
]


class Fallback(Exception):  # noqa: N818 - a signal, not an error
    """This execution needs the general path (which gives the answer or the
    error). Never leaves :mod:`sql.session`."""


class Slot(NamedTuple):
    """The ``position``-th ``?`` of the statement (depth-first order, as
    :func:`~sql.values.bind_params` binds them)."""

    position: int


def placeholders(statement: exp.Expr) -> dict[int, int]:
    """``id(node) -> index`` of the statement's anonymous ``?`` s."""
    holes = [n for n in statement.walk(bfs=False) if isinstance(n, exp.Placeholder) and not n.this]
    return {id(h): i for i, h in enumerate(holes)}


def _value(e: exp.Expr, slots: Mapping[int, int]) -> Any:
    """A Slot for a ``?``, else the constant's value (raises :class:`Error`
    if it is not one)."""
    i = slots.get(id(e))
    return Slot(i) if i is not None else literal(e)


def _resolve(v: Any, params: Sequence[Any]) -> Any:
    return params[v.position] if type(v) is Slot else v


@dataclass(frozen=True)
class KeyWhere:
    """``col = value AND ... [AND col IN (value, ...)]``; a value is a
    constant or a :class:`Slot`; each column is named once."""

    eqs: tuple[tuple[str, Any], ...]
    in_list: tuple[str, tuple[Any, ...]] | None

    def bind(self, params: Sequence[Any]) -> tuple[dict[str, Any], tuple[str, list[Any]] | None]:
        eqs = {name: _resolve(v, params) for name, v in self.eqs}
        if self.in_list is None:
            return eqs, None
        name, vals = self.in_list
        return eqs, (name, [_resolve(v, params) for v in vals])


def key_where(where: exp.Expr | None, slots: Mapping[int, int]) -> KeyWhere | None:
    """The key shape of a WHERE condition, or None if it is not one."""
    if where is None:
        return None
    conj = list(where.flatten()) if isinstance(where, exp.And) else [where]
    eqs: list[tuple[str, Any]] = []
    in_list: tuple[str, tuple[Any, ...]] | None = None
    for c in conj:
        if isinstance(c, exp.EQ):
            col, lit = (
                (c.this, c.expression) if isinstance(c.this, exp.Column) else (c.expression, c.this)
            )
            if not isinstance(col, exp.Column) or isinstance(lit, exp.Column):
                return None
            if any(name == col.name for name, _ in eqs):
                return None  # a = 1 AND a = 2 is no key lookup: the planner sees it is empty
            try:
                eqs.append((col.name, _value(lit, slots)))
            except Error:
                return None
        elif isinstance(c, exp.In) and isinstance(c.this, exp.Column) and in_list is None:
            if c.args.get("query") or not c.expressions:
                return None
            try:
                in_list = (c.this.name, tuple(_value(v, slots) for v in c.expressions))
            except Error:
                return None
        else:
            return None
    return KeyWhere(tuple(eqs), in_list)


@dataclass(frozen=True)
class PointSelect:
    table: str
    columns: tuple[str | None, ...]  # None stands for ``*``
    where: KeyWhere
    lock: bool
    # ORDER BY (column, descending), or instead of columns one MAX/MIN:
    # (function, column, result name). Only a prepared execution answers these.
    order: tuple[tuple[str, bool], ...] = ()
    aggregate: tuple[str, str, str] | None = None


_SELECT_NOT = ("joins", "group", "having", "limit", "offset", "distinct", "with_")


def point_select(stmt: exp.Expr, slots: Mapping[int, int]) -> PointSelect | None:
    """The shape of a single-table SELECT of bare columns by key, or None."""
    if not isinstance(stmt, exp.Select):
        return None
    for arg in _SELECT_NOT:
        if stmt.args.get(arg):
            return None
    order: list[tuple[str, bool]] = []
    ordered = stmt.args.get("order")
    for o in ordered.expressions if ordered else ():
        if not isinstance(o, exp.Ordered) or not isinstance(o.this, exp.Column):
            return None
        if not isinstance(o.this.this, exp.Identifier):
            return None
        order.append((o.this.name, bool(o.args.get("desc"))))
    src = stmt.args.get("from_") or stmt.args.get("from")
    if src is None or not isinstance(src.this, exp.Table):
        return None
    cols: list[str | None] = []
    aggregate = _min_max(stmt.expressions)
    for e in stmt.expressions if aggregate is None else ():
        if isinstance(e, exp.Star):
            cols.append(None)
        elif isinstance(e, exp.Column) and not isinstance(e.this, exp.Star):
            cols.append(e.name)
        else:
            return None
    where = stmt.args.get("where")
    kw = key_where(where.this if where else None, slots)
    if kw is None:
        return None
    locks = bool(stmt.args.get("locks"))
    if ((order or aggregate) and locks) or (order and aggregate):
        return None
    return PointSelect(src.this.name, tuple(cols), kw, locks, tuple(order), aggregate)


def _min_max(projections: Sequence[exp.Expr]) -> tuple[str, str, str] | None:
    """``(function, column, result name)`` of a lone ``MAX(col)`` or
    ``MIN(col)`` projection, named as the general path names it."""
    if len(projections) != 1:
        return None
    e = projections[0]
    f = e.this if isinstance(e, exp.Alias) else e
    if not isinstance(f, (exp.Max, exp.Min)) or f.expressions:
        return None
    col = f.this
    if not isinstance(col, exp.Column) or not isinstance(col.this, exp.Identifier):
        return None
    name = e.alias_or_name if isinstance(e, exp.Alias) else e.sql("mysql")
    return ("max" if isinstance(f, exp.Max) else "min", col.name, name)


@dataclass(frozen=True)
class InsertValues:
    table: str
    listed: tuple[str, ...]  # the column list as written, or empty
    rows: tuple[tuple[Any, ...], ...]  # constants and Slots
    ignore: bool


# A SET value for one row: ``fn(params, row)``; raises Fallback.
SetValue = Callable[[Sequence[Any], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class KeyUpdate:
    table: str
    sets: tuple[tuple[str, SetValue], ...]
    where: KeyWhere
    set_slots: int  # how many ? the SET values use


@dataclass(frozen=True)
class KeyDelete:
    table: str
    where: KeyWhere


Prepared = PointSelect | InsertValues | KeyUpdate | KeyDelete


def _only(stmt: exp.Expr, allowed: set[str]) -> bool:
    """Does the statement set no argument beyond ``allowed``? (An argument
    the shape does not know means the general path must look at it.)"""
    return all(k in allowed or not v for k, v in stmt.args.items())


def prepare(stmt: exp.Expr) -> tuple[Prepared, int] | None:
    """The prepared form of a parsed (unbound) statement and how many
    parameters it takes, or None."""
    slots = placeholders(stmt)
    shape: Prepared | None
    if isinstance(stmt, exp.Select):
        shape = point_select(stmt, slots)
    elif isinstance(stmt, exp.Insert):
        shape = _insert(stmt, slots)
    elif isinstance(stmt, exp.Update):
        shape = _update(stmt, slots)
    elif isinstance(stmt, exp.Delete):
        shape = _delete(stmt, slots)
    else:
        return None
    # Every ? must be one the shape binds; one elsewhere needs the general path.
    if shape is None or _slots_used(shape) != len(slots):
        return None
    return shape, len(slots)


def _slots_used(shape: Prepared) -> int:
    if isinstance(shape, InsertValues):
        return sum(type(v) is Slot for row in shape.rows for v in row)
    n = sum(type(v) is Slot for _, v in shape.where.eqs)
    if shape.where.in_list is not None:
        n += sum(type(v) is Slot for v in shape.where.in_list[1])
    if isinstance(shape, KeyUpdate):
        n += shape.set_slots
    return n


def _insert(stmt: exp.Insert, slots: Mapping[int, int]) -> InsertValues | None:
    if not _only(stmt, {"this", "expression", "ignore"}):
        return None
    target, source = stmt.this, stmt.expression
    if isinstance(target, exp.Schema):
        if not isinstance(target.this, exp.Table):
            return None
        name, listed = target.this.name, tuple(c.name for c in target.expressions)
    elif isinstance(target, exp.Table):
        name, listed = target.name, ()
    else:
        return None
    if not isinstance(source, exp.Values):
        return None
    rows = []
    for tup in source.expressions:
        vals = tup.expressions if isinstance(tup, exp.Tuple) else [tup]
        try:
            rows.append(tuple(_value(v, slots) for v in vals))
        except Error:
            return None
    return InsertValues(name, listed, tuple(rows), bool(stmt.args.get("ignore")))


def _update(stmt: exp.Update, slots: Mapping[int, int]) -> KeyUpdate | None:
    if not _only(stmt, {"this", "expressions", "where"}) or not isinstance(stmt.this, exp.Table):
        return None
    where = stmt.args.get("where")
    kw = key_where(where.this if where else None, slots)
    if kw is None:
        return None
    sets = []
    used = 0
    for eq in stmt.expressions:
        if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
            return None
        compiled = compile_value(eq.expression, slots)
        if compiled is None:
            return None
        sets.append((eq.this.name, compiled[0]))
        used += compiled[1]
    return KeyUpdate(stmt.this.name, tuple(sets), kw, used)


def _delete(stmt: exp.Delete, slots: Mapping[int, int]) -> KeyDelete | None:
    if not _only(stmt, {"this", "where"}) or not isinstance(stmt.this, exp.Table):
        return None
    where = stmt.args.get("where")
    kw = key_where(where.this if where else None, slots)
    return None if kw is None else KeyDelete(stmt.this.name, kw)


_ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div)


def compile_value(e: exp.Expr, slots: Mapping[int, int]) -> tuple[SetValue, int] | None:
    """A function computing what the general path's ``_row_value(e, row)``
    computes (column references replaced by the row's values, then
    :func:`~sql.values.literal`) for arithmetic over columns, ``?`` and
    constants; None for anything else. It raises :class:`Fallback` where
    ``literal`` would raise. Also returns how many ``?`` it uses."""
    used = 0

    def build(node: exp.Expr) -> SetValue | None:
        nonlocal used
        if isinstance(node, exp.Paren):
            return build(node.this)
        i = slots.get(id(node))
        if i is not None:
            used += 1
            return lambda params, row: params[i]
        if isinstance(node, exp.Column):
            if not isinstance(node.this, exp.Identifier):
                return None
            name = node.name

            def column(params: Sequence[Any], row: Mapping[str, Any]) -> Any:
                if name not in row:
                    raise Fallback  # the general path names the unknown column
                try:
                    # What the general path reads back after writing the
                    # row's value into the statement.
                    return param_value(row[name])
                except Error:
                    raise Fallback from None

            return column
        if isinstance(node, exp.Neg):
            inner = build(node.this)
            if inner is None:
                return None

            def neg(params: Sequence[Any], row: Mapping[str, Any]) -> Any:
                try:
                    return negate(inner(params, row))
                except Error:
                    raise Fallback from None

            return neg
        if isinstance(node, _ARITH):
            a, b, op = build(node.this), build(node.expression), type(node)
            if a is None or b is None:
                return None

            def binary(params: Sequence[Any], row: Mapping[str, Any]) -> Any:
                x, y = a(params, row), b(params, row)
                if not (is_number(x) and is_number(y)):
                    raise Fallback
                return arith(op, x, y)

            return binary
        if any(isinstance(n, (exp.Column, exp.Placeholder)) for n in node.walk()):
            return None
        try:
            const = literal(node)
        except Error:
            return None
        return lambda params, row: const

    fn = build(e)
    return None if fn is None else (fn, used)


def bind(params: Sequence[Any], n: int) -> list[Any]:
    """The values of an execution's parameters (raises Fallback when the
    general path would reject them: wrong count, a value it cannot bind)."""
    if len(params) != n:
        raise Fallback
    try:
        return [param_value(v) for v in params]
    except Error:
        raise Fallback from None
