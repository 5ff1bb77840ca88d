"""Vectorised evaluation of SQL expressions (sqlglot trees) over Arrow tables.

Where it sits: below ``sql.executor``, which calls :func:`evaluate` for every
projection, filter, join residual, group key and aggregate operand; above
``pyarrow.compute``. The planner (``sql.planner``) also uses
:func:`literal_value` to turn comparisons with literals into filters that can
be pushed to storage.

An expression is evaluated once per *table*, never once per row: every node
maps to one or a few Arrow kernels over whole columns. A value is either an
Arrow array (one entry per row of the input table) or an Arrow scalar
(constant-folded: literals and expressions of literals only).

**Column names.** The executor names the columns of intermediate tables
``"qualifier.name"`` (a table alias and a column, e.g. ``"l1.l_orderkey"``) or
a bare ``"name"`` (the outputs of an aggregate or a projection). A reference
``t.c`` resolves to ``"t.c"``, else to a bare ``"c"``; an unqualified ``c`` to
``"c"``, else to the one column whose name ends in ``".c"``.

**SQL semantics kept here** (the invariants the tests check):

* three-valued logic: AND/OR/NOT are Kleene; a comparison with NULL is NULL;
  a filter keeps only rows whose condition is TRUE;
* ``/`` is real division (MySQL and DuckDB: ``7 / 2 = 3.5``), division by
  zero gives NULL (MySQL); ``DIV`` truncates;
* arithmetic over DECIMAL columns is computed in DOUBLE (the result is the
  exact value within ~1e-15 relative). DECIMAL values are kept exact where
  no arithmetic happens (columns, comparisons, SUM/MIN/MAX of a column) and
  in constant folding, so ``0.06 + 0.01`` is exactly ``0.07``;
* ``IN (list)``: NULL if the value is NULL, or if it is not found and the
  list holds a NULL; ``NOT IN`` likewise;
* LIKE is case-sensitive (binary collation, as the row store's keys).

Anything else raises :class:`~sql.errors.NotSupportedError` naming the
construct; type errors raise :class:`~sql.errors.DataError`.
"""

from __future__ import annotations

import datetime
import decimal
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from sql.errors import DataError, NotSupportedError, ProgrammingError

__all__ = [
    "Interval",
    "Scope",
    "arrow_type_of",
    "column_index",
    "evaluate",
    "evaluate_array",
    "evaluate_mask",
    "literal_value",
    "resolve",
    "sql_text",
]

# An evaluated value: pa.Array | pa.ChunkedArray | pa.Scalar (pyarrow is untyped).
Value = Any

_INT_RE = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Interval:
    """A constant ``INTERVAL n UNIT`` (only ever added to or subtracted from a date)."""

    n: int
    unit: str


@dataclass
class Scope:
    """What an expression is evaluated against: one table, the results of the
    query's uncorrelated subqueries (by placeholder name), and lambda
    parameters bound to arrays (inside ``ARRAY_ANY``)."""

    table: pa.Table
    subqueries: Mapping[str, pa.Table] = field(default_factory=dict)
    bindings: dict[str, Value] = field(default_factory=dict)
    params: Sequence[Any] = ()
    _index: dict[str, str] | None = None

    def column(self, table: str, name: str) -> Value:
        if not table and name in self.bindings:
            return self.bindings[name]
        if self._index is None:
            self._index = column_index(self.table.column_names)
        return self.table.column(resolve(self._index, table, name))


def column_index(names: Sequence[str]) -> dict[str, str]:
    """Lookup keys of :func:`resolve` for a table's column names: each name
    itself, plus ``"*.c"`` for the unqualified suffix ``c`` (``""`` marks an
    ambiguous suffix)."""
    index: dict[str, str] = {}
    for n in names:
        index[n] = n
    for n in names:
        _, dot, bare = n.rpartition(".")
        if dot:
            key = "*." + bare
            index[key] = "" if key in index else n
    return index


def resolve(index: Mapping[str, str], table: str, name: str) -> str:
    """The column a reference ``table.name`` (table may be empty) denotes."""
    if table:
        hit = index.get(f"{table}.{name}") or index.get(name)
        if hit:
            return hit
    else:
        hit = index.get(name)
        if hit:
            return hit
        hit = index.get("*." + name)
        if hit == "":
            raise ProgrammingError(f"column reference {name!r} is ambiguous")
        if hit:
            return hit
    shown = f"{table}.{name}" if table else name
    raise ProgrammingError(f"unknown column {shown!r}")


def sql_text(e: exp.Expr) -> str:
    """``e`` as MySQL text for messages and EXPLAIN (constructs MySQL lacks,
    like ARRAY_ANY, are printed as sqlglot names them, without a warning)."""
    return e.sql(dialect="mysql", unsupported_level=ErrorLevel.IGNORE)


# ------------------------------------------------------------------ types
def arrow_type_of(dt: exp.DataType) -> pa.DataType:
    """The Arrow type of a SQL type, as the row store maps it (``kvstore.tablecodec``)."""
    t = dt.this
    T = exp.DataType.Type  # noqa: N806 - reads like the SQL it maps
    if t in (T.TINYINT, T.SMALLINT, T.INT, T.BIGINT, T.MEDIUMINT, T.UBIGINT, T.UINT):
        return pa.int64()
    if t in (T.DOUBLE, T.FLOAT):
        return pa.float64()
    if t in (T.DECIMAL, T.BIGDECIMAL):
        params = [int(p.name) for p in dt.expressions]
        precision = params[0] if params else 10
        scale = params[1] if len(params) > 1 else 0
        return pa.decimal128(precision, scale)
    if t in (T.VARCHAR, T.CHAR, T.TEXT, T.NVARCHAR, T.NCHAR):
        return pa.string()
    if t is T.DATE:
        return pa.date32()
    if t in (T.DATETIME, T.TIMESTAMP):
        return pa.timestamp("us")
    if t is T.BOOLEAN:
        return pa.bool_()
    raise NotSupportedError(f"type {sql_text(dt)} is not supported")


def _is_scalar(v: Value) -> bool:
    return isinstance(v, pa.Scalar)


def _is_null_type(v: Value) -> bool:
    return bool(pa.types.is_null(v.type))


def _is_decimal(t: pa.DataType) -> bool:
    return bool(pa.types.is_decimal(t))


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _to_float(v: Value) -> Value:
    if pa.types.is_floating(v.type):
        return v
    return pc.cast(v, pa.float64())


def _python_number(v: Value) -> int | decimal.Decimal | None:
    """A scalar int/decimal as an exact Python number (None for others)."""
    if not _is_scalar(v) or not v.is_valid:
        return None
    if pa.types.is_integer(v.type) or _is_decimal(v.type):
        out: int | decimal.Decimal = v.as_py()
        return out
    return None


def _decimal_scalar(d: decimal.Decimal) -> Value:
    _, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    scale = max(0, -exponent)
    precision = max(len(digits), scale, 1)
    if precision > 38:
        return pa.scalar(float(d), pa.float64())
    return pa.scalar(d, pa.decimal128(precision, scale))


def _common_type(types: Sequence[pa.DataType]) -> pa.DataType:
    """The type a CASE/COALESCE/IF result takes over branches of ``types``."""
    real = [t for t in types if not pa.types.is_null(t)]
    if not real:
        return pa.null()
    first = real[0]
    if all(t == first for t in real):
        return first
    if all(_is_number(t) for t in real):
        if any(pa.types.is_floating(t) for t in real):
            return pa.float64()
        decs = [t for t in real if _is_decimal(t)]
        if decs:
            scale = max(t.scale for t in decs)
            # Integers need 19 digits left of the point; cap at 38 (DuckDB caps too).
            left = max(
                [t.precision - t.scale for t in decs] + ([19] if len(decs) < len(real) else [])
            )
            if left + scale > 38:
                return pa.float64()
            return pa.decimal128(left + scale, scale)
        return pa.int64()
    if all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in real):
        return pa.string()
    if all(pa.types.is_temporal(t) for t in real):
        return pa.timestamp("us")
    raise DataError(f"cannot combine values of types {', '.join(map(str, real))}")


def _cast_to(v: Value, t: pa.DataType) -> Value:
    if v.type == t:
        return v
    if _is_scalar(v) and not v.is_valid:
        return pa.scalar(None, t)
    return pc.cast(v, t)


def _unify(values: Sequence[Value]) -> list[Value]:
    t = _common_type([v.type for v in values])
    return [_cast_to(v, t) for v in values]


def _broadcast(v: Value, n: int) -> Value:
    if _is_scalar(v):
        return pa.repeat(v, n)
    return v


# ------------------------------------------------------------------ literals
def literal_value(e: exp.Expr) -> Any:
    """The Python value of a constant expression (int, Decimal, float, str,
    bool, date, None), or raise ``ValueError`` if ``e`` is not a constant the
    planner can push down (no arithmetic is folded here)."""
    if isinstance(e, exp.Paren):
        return literal_value(e.this)
    if isinstance(e, exp.Null):
        return None
    if isinstance(e, exp.Boolean):
        return bool(e.this)
    if isinstance(e, exp.Literal):
        text = str(e.this)
        if e.is_string:
            return text
        return _number(text)
    if isinstance(e, exp.Neg):
        v = literal_value(e.this)
        if isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool):
            return -v
        raise ValueError("not a number")
    if isinstance(e, exp.Cast) and isinstance(e.this, exp.Literal):
        to = e.to.this
        if to is exp.DataType.Type.DATE and e.this.is_string:
            try:
                return datetime.date.fromisoformat(str(e.this.this))
            except ValueError as err:
                raise DataError(f"invalid date literal {e.this.sql()}") from err
    raise ValueError("not a literal")


def _number(text: str) -> int | float | decimal.Decimal:
    if _INT_RE.match(text):
        return int(text)
    if "e" in text.lower():
        return float(text)
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation as err:
        raise ProgrammingError(f"invalid number {text!r}") from err


def _literal_scalar(e: exp.Literal) -> Value:
    text = str(e.this)
    if e.is_string:
        return pa.scalar(text, pa.string())
    v = _number(text)
    if isinstance(v, int):
        if -(1 << 63) <= v < 1 << 63:
            return pa.scalar(v, pa.int64())
        return _decimal_scalar(decimal.Decimal(v))
    if isinstance(v, float):
        return pa.scalar(v, pa.float64())
    return _decimal_scalar(v)


# ------------------------------------------------------------------ evaluation
def evaluate(e: exp.Expr, scope: Scope) -> Value:
    """``e`` over ``scope.table``: an array of ``num_rows`` values or a scalar."""
    try:
        return _eval(e, scope)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise DataError(f"cannot evaluate {sql_text(e)}: {err}") from err


def evaluate_array(e: exp.Expr, scope: Scope) -> Value:
    """Like :func:`evaluate` but always an array of ``num_rows`` values."""
    v = evaluate(e, scope)
    if _is_scalar(v):
        if _is_null_type(v):
            return pa.nulls(scope.table.num_rows)
        return pa.repeat(v, scope.table.num_rows)
    return v


def evaluate_mask(e: exp.Expr, scope: Scope) -> Value:
    """A condition as a boolean filter (NULL counts as FALSE): a bool array,
    or a Python bool when the condition is constant."""
    v = evaluate(e, scope)
    if _is_scalar(v):
        return bool(v.is_valid and _as_bool(v).as_py())
    return _as_bool(v)


def _as_bool(v: Value) -> Value:
    if pa.types.is_boolean(v.type):
        return v
    if _is_null_type(v):
        return _cast_to(v, pa.bool_())
    if _is_number(v.type):
        return pc.not_equal(v, pa.scalar(0, v.type) if not _is_decimal(v.type) else 0)
    raise DataError(f"a condition must be boolean, not {v.type}")


_COMPARE: dict[type[exp.Expr], Callable[[Value, Value], Value]] = {
    exp.EQ: pc.equal,
    exp.NEQ: pc.not_equal,
    exp.LT: pc.less,
    exp.LTE: pc.less_equal,
    exp.GT: pc.greater,
    exp.GTE: pc.greater_equal,
}


def _eval(e: exp.Expr, s: Scope) -> Value:
    if isinstance(e, exp.Column):
        return s.column(e.table, e.name)
    if isinstance(e, exp.Literal):
        return _literal_scalar(e)
    if isinstance(e, exp.Identifier) and e.name in s.bindings:
        return s.bindings[e.name]  # a lambda parameter
    if isinstance(e, (exp.Paren, exp.Alias)):
        return _eval(e.this, s)
    if isinstance(e, exp.Null):
        return pa.scalar(None)
    if isinstance(e, exp.Boolean):
        return pa.scalar(bool(e.this))
    handler = _HANDLERS.get(type(e))
    if handler is None:
        raise NotSupportedError(f"expression {e.key.upper()} ({sql_text(e)}) is not supported")
    out = handler(e, s)
    if e.args.get("negate"):  # sqlglot writes `x NOT LIKE p` as Like(negate=True)
        out = pc.invert(_as_bool(out))
    return out


# -- arithmetic
def _arith(e: exp.Expr, s: Scope) -> Value:
    a = _eval(e.this, s)
    b = _eval(e.expression, s)
    if isinstance(b, Interval) or isinstance(a, Interval):
        if isinstance(e, exp.Add):
            return _date_add(b, a) if isinstance(a, Interval) else _date_add(a, b)
        if isinstance(e, exp.Sub) and isinstance(b, Interval):
            return _date_add(a, Interval(-b.n, b.unit))
        raise NotSupportedError(f"interval arithmetic {sql_text(e)} is not supported")
    return arith(type(e), a, b)


def arith(op: type[exp.Expr], a: Value, b: Value) -> Value:
    """``a op b`` for op in Add/Sub/Mul/Div/IntDiv/Mod with SQL typing."""
    if _is_null_type(a) or _is_null_type(b):
        out_t = pa.float64() if op is exp.Div else _common_type([a.type, b.type])
        if pa.types.is_null(out_t):
            out_t = pa.float64()
        n = len(a) if not _is_scalar(a) else (len(b) if not _is_scalar(b) else None)
        return pa.scalar(None, out_t) if n is None else pa.nulls(n, out_t)
    if not (_is_number(a.type) and _is_number(b.type)):
        raise DataError(f"arithmetic needs numbers, not {a.type} and {b.type}")
    # Constant folding stays exact (Python ints/Decimals).
    pa_, pb = _python_number(a), _python_number(b)
    if pa_ is not None and pb is not None:
        return _fold(op, pa_, pb)
    if op is exp.Div:
        a, b = _to_float(a), _to_float(b)
        return _null_if_zero_divisor(pc.divide(a, b), b)
    ints = pa.types.is_integer(a.type) and pa.types.is_integer(b.type)
    if op in (exp.IntDiv, exp.Mod):
        if not ints:
            a, b = _to_float(a), _to_float(b)
            q = pc.trunc(pc.divide(a, b))
            out = q if op is exp.IntDiv else pc.subtract(a, pc.multiply(q, b))
            if op is exp.IntDiv:
                out = pc.cast(out, pa.int64())
            return _null_if_zero_divisor(out, b)
        safe_b = pc.if_else(pc.equal(b, 0), 1, b) if not _is_scalar(b) else (b if b.as_py() else 1)
        q = pc.divide(a, safe_b)  # integer division truncates towards zero, as MySQL DIV
        out = q if op is exp.IntDiv else pc.subtract(a, pc.multiply(q, safe_b))
        return _null_if_zero_divisor(out, b)
    if not ints:
        a, b = _to_float(a), _to_float(b)
        fn: Any = {exp.Add: pc.add, exp.Sub: pc.subtract, exp.Mul: pc.multiply}[op]  # type: ignore[index]
        return fn(a, b)
    checked: dict[Any, Any] = {
        exp.Add: pc.add_checked,
        exp.Sub: pc.subtract_checked,
        exp.Mul: pc.multiply_checked,
    }
    fn = checked[op]
    try:
        return fn(a, b)
    except pa.ArrowInvalid as err:
        raise DataError(f"integer overflow: {err}") from err


def _null_if_zero_divisor(out: Value, b: Value) -> Value:
    if _is_scalar(b):
        if b.is_valid and b.as_py() == 0:
            return pa.scalar(None, out.type) if _is_scalar(out) else pa.nulls(len(out), out.type)
        return out
    zero = pc.equal(b, pa.scalar(0, b.type) if not _is_decimal(b.type) else 0)
    if not pc.any(zero).as_py():
        return out
    return pc.if_else(zero, pa.scalar(None, out.type), out)


def _fold(op: type[exp.Expr], a: int | decimal.Decimal, b: int | decimal.Decimal) -> Value:
    if op is exp.Div or op is exp.IntDiv or op is exp.Mod:
        if b == 0:
            return pa.scalar(None, pa.float64() if op is exp.Div else pa.int64())
        if op is exp.Div:
            return pa.scalar(float(decimal.Decimal(a) / decimal.Decimal(b)), pa.float64())
        q: Any = abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1)  # type: ignore[operator]
        if op is exp.IntDiv:
            return pa.scalar(int(q), pa.int64())
        r = a - q * b
        return pa.scalar(r, pa.int64()) if isinstance(r, int) else _decimal_scalar(r)
    r2: int | decimal.Decimal
    if op is exp.Add:
        r2 = a + b
    elif op is exp.Sub:
        r2 = a - b
    else:
        r2 = a * b
    if isinstance(r2, int):
        if -(1 << 63) <= r2 < 1 << 63:
            return pa.scalar(r2, pa.int64())
        raise DataError(f"integer overflow: {r2}")
    return _decimal_scalar(r2)


def _neg(e: exp.Expr, s: Scope) -> Value:
    v = _eval(e.this, s)
    n = _python_number(v)
    if n is not None:
        return _fold(exp.Sub, 0, n)
    if _is_null_type(v):
        return v
    if _is_decimal(v.type):
        return pc.negate(v)
    return pc.negate_checked(v)


# -- comparison and logic
def _compare_node(e: exp.Expr, s: Scope) -> Value:
    return compare(type(e), _eval(e.this, s), _eval(e.expression, s))


def compare(op: type[exp.Expr], a: Value, b: Value) -> Value:
    """``a op b`` for the six comparisons, NULL when either side is NULL."""
    if _is_null_type(a) or _is_null_type(b):
        n = len(a) if not _is_scalar(a) else (len(b) if not _is_scalar(b) else None)
        return pa.scalar(None, pa.bool_()) if n is None else pa.nulls(n, pa.bool_())
    a, b = _comparable(a, b)
    return _COMPARE[op](a, b)


def _comparable(a: Value, b: Value) -> tuple[Value, Value]:
    ta, tb = a.type, b.type
    if ta == tb:
        return a, b
    if _is_number(ta) and _is_number(tb):
        if pa.types.is_floating(ta) or pa.types.is_floating(tb):
            return _to_float(a), _to_float(b)
        if _is_decimal(ta) and _is_decimal(tb) and not (_is_scalar(a) or _is_scalar(b)):
            return _to_float(a), _to_float(b)
        return a, b  # decimal vs int / decimal literal: Arrow compares exactly
    if pa.types.is_temporal(ta) and pa.types.is_string(tb):
        return a, _cast_to(b, ta)
    if pa.types.is_string(ta) and pa.types.is_temporal(tb):
        return _cast_to(a, tb), b
    if pa.types.is_date(ta) and pa.types.is_timestamp(tb):
        return _cast_to(a, tb), b
    if pa.types.is_timestamp(ta) and pa.types.is_date(tb):
        return a, _cast_to(b, ta)
    if _is_string_like(ta) and _is_string_like(tb):
        return _cast_to(a, pa.string()), _cast_to(b, pa.string())
    raise DataError(f"cannot compare {ta} with {tb}")


def _is_string_like(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _and(e: exp.Expr, s: Scope) -> Value:
    return pc.and_kleene(_as_bool(_eval(e.this, s)), _as_bool(_eval(e.expression, s)))


def _or(e: exp.Expr, s: Scope) -> Value:
    return pc.or_kleene(_as_bool(_eval(e.this, s)), _as_bool(_eval(e.expression, s)))


def _not(e: exp.Expr, s: Scope) -> Value:
    return pc.invert(_as_bool(_eval(e.this, s)))


def _is(e: exp.Expr, s: Scope) -> Value:
    v = _eval(e.this, s)
    target = e.expression
    if isinstance(target, exp.Null):
        if _is_scalar(v):
            return pa.scalar(not v.is_valid)
        return pc.is_null(v)
    if isinstance(target, exp.Boolean):
        b = _as_bool(v)
        eq = pc.equal(b, bool(target.this))
        return pc.fill_null(eq, False) if not _is_scalar(eq) else pa.scalar(bool(eq.as_py()))
    raise NotSupportedError(f"IS {sql_text(target)} is not supported")


def _between(e: exp.Expr, s: Scope) -> Value:
    v = _eval(e.this, s)
    lo = compare(exp.GTE, v, _eval(e.args["low"], s))
    hi = compare(exp.LTE, v, _eval(e.args["high"], s))
    return pc.and_kleene(lo, hi)


def _in(e: exp.Expr, s: Scope) -> Value:
    v = _eval(e.this, s)
    query = e.args.get("query")
    if query is not None:
        name = query.name if isinstance(query, exp.Var) else ""
        if name not in s.subqueries:
            raise NotSupportedError(f"subquery in IN ({sql_text(e)}) is not supported here")
        sub = s.subqueries[name]
        if sub.num_columns != 1:
            raise ProgrammingError("a subquery in IN must return exactly one column")
        candidates = sub.column(0)
    else:
        items = [_eval(x, s) for x in e.expressions]
        if not all(_is_scalar(x) for x in items):
            # x IN (a, b) with non-constant items: x = a OR x = b.
            out = compare(exp.EQ, v, items[0])
            for x in items[1:]:
                out = pc.or_kleene(out, compare(exp.EQ, v, x))
            return out
        candidates = pa.array(
            [x.as_py() for x in _unify(items)], type=_common_type([x.type for x in items])
        )
    return in_set(v, candidates)


def in_set(v: Value, candidates: Value) -> Value:
    """``v IN (candidates)`` with SQL NULL semantics."""
    if isinstance(candidates, pa.ChunkedArray):
        candidates = candidates.combine_chunks()
    has_null = candidates.null_count > 0
    if candidates.null_count:
        candidates = candidates.drop_null()
    if _is_null_type(v):
        return pa.scalar(None, pa.bool_()) if _is_scalar(v) else pa.nulls(len(v), pa.bool_())
    if len(candidates) == 0:
        found = pa.scalar(False) if _is_scalar(v) else pa.repeat(pa.scalar(False), len(v))
    else:
        if candidates.type != v.type:
            t = _common_type([candidates.type, v.type])
            if _is_decimal(t):
                t = pa.float64()  # is_in needs one exact type on both sides
            v, candidates = _cast_to(v, t), _cast_to(candidates, t)
        found = pc.is_in(v, value_set=candidates, skip_nulls=True)
    # NULL IN (...) is NULL; x IN (..., NULL) is NULL when x is not found.
    if _is_scalar(v):
        if not v.is_valid or (has_null and not found.as_py()):
            return pa.scalar(None, pa.bool_())
        return found
    unknown = pc.is_null(v)
    if has_null:
        unknown = pc.or_(unknown, pc.invert(found))
    if pc.any(unknown).as_py():
        return pc.if_else(unknown, pa.scalar(None, pa.bool_()), found)
    return found


def _like(e: exp.Expr, s: Scope, ignore_case: bool = False) -> Value:
    v = _eval(e.this, s)
    pattern = e.expression
    escape = None
    if isinstance(pattern, exp.Escape):
        escape = literal_value(pattern.expression)
        pattern = pattern.this
    pat_value = _eval(pattern, s)
    if not _is_scalar(pat_value):
        raise NotSupportedError(f"LIKE with a non-constant pattern ({sql_text(e)})")
    pat = pat_value.as_py()
    if pat is None:
        return pa.scalar(None, pa.bool_())
    if escape is not None and escape != "\\":
        raise NotSupportedError("LIKE ... ESCAPE other than backslash is not supported")
    if _is_null_type(v):
        return pa.scalar(None, pa.bool_())
    if _is_scalar(v):
        return pc.match_like(pa.array([v.as_py()], pa.string()), str(pat), ignore_case=ignore_case)[
            0
        ]
    return pc.match_like(v, str(pat), ignore_case=ignore_case)


def _ilike(e: exp.Expr, s: Scope) -> Value:
    return _like(e, s, ignore_case=True)


# -- conditionals
def _case(e: exp.Expr, s: Scope) -> Value:
    operand = e.this
    base = _eval(operand, s) if operand is not None else None
    conds = []
    values = []
    for branch in e.args.get("ifs") or []:
        c = _eval(branch.this, s)
        if base is not None:
            c = compare(exp.EQ, base, c)
        conds.append(_as_bool(c))
        values.append(_eval(branch.args["true"], s))
    default = e.args.get("default")
    values.append(_eval(default, s) if default is not None else pa.scalar(None))
    return _case_when(conds, values, s.table.num_rows)


def _case_when(conds: list[Value], values: list[Value], n: int) -> Value:
    values = _unify(values)
    if pa.types.is_null(values[0].type):
        return pa.scalar(None)
    if all(_is_scalar(c) for c in conds):
        for c, v in zip(conds, values, strict=False):
            if c.is_valid and c.as_py():
                return v
        return values[-1]
    # case_when treats a NULL condition as FALSE, as SQL does.
    cond_arrays = [_broadcast(c, n) for c in conds]
    cond_arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cond_arrays]
    names = [f"c{i}" for i in range(len(cond_arrays))]
    struct = pa.StructArray.from_arrays(cond_arrays, names=names)
    vals = [v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v for v in values]
    return pc.case_when(struct, *vals)


def _if(e: exp.Expr, s: Scope) -> Value:
    cond = _as_bool(_eval(e.this, s))
    t = _eval(e.args["true"], s)
    f_expr = e.args.get("false")
    f = _eval(f_expr, s) if f_expr is not None else pa.scalar(None)
    return _case_when([cond], [t, f], s.table.num_rows)


def _coalesce(e: exp.Expr, s: Scope) -> Value:
    values = _unify([_eval(x, s) for x in [e.this, *e.expressions]])
    if pa.types.is_null(values[0].type):
        return pa.scalar(None)
    if all(_is_scalar(v) for v in values):
        return next((v for v in values if v.is_valid), values[-1])
    return pc.coalesce(*values)


def _nullif(e: exp.Expr, s: Scope) -> Value:
    a = _eval(e.this, s)
    b = _eval(e.expression, s)
    eq = compare(exp.EQ, a, b)
    if _is_scalar(eq) and _is_scalar(a):
        return pa.scalar(None, a.type) if eq.is_valid and eq.as_py() else a
    return pc.if_else(pc.fill_null(eq, False), pa.scalar(None, a.type), a)


# -- casts, dates, strings
def _cast(e: exp.Expr, s: Scope) -> Value:
    assert isinstance(e, exp.Cast)
    to = arrow_type_of(e.to)
    if isinstance(e.this, exp.Literal):
        try:
            val = literal_value(e)
        except ValueError:
            val = None
        if isinstance(val, datetime.date):
            return pa.scalar(val, pa.date32())
    v = _eval(e.this, s)
    if _is_null_type(v):
        return pa.scalar(None, to)
    if pa.types.is_integer(to) and (pa.types.is_floating(v.type) or _is_decimal(v.type)):
        v = pc.round(v, 0)  # MySQL rounds when casting to an integer
    if pa.types.is_date(to) and _is_string_like(v.type):
        return pc.cast(pc.strptime(v, format="%Y-%m-%d", unit="s"), to)
    return pc.cast(v, to)


def _interval(e: exp.Expr, s: Scope) -> Interval:
    try:
        n = literal_value(e.this)
        n = int(str(n).strip())
    except (ValueError, TypeError) as err:
        raise NotSupportedError(f"non-constant interval {sql_text(e)}") from err
    unit_node = e.args.get("unit")
    unit = unit_node.name.upper() if unit_node is not None else "DAY"
    unit = unit.rstrip("S") if unit.endswith("S") and unit != "S" else unit
    if unit not in ("DAY", "WEEK", "MONTH", "QUARTER", "YEAR"):
        raise NotSupportedError(f"interval unit {unit} is not supported")
    return Interval(n, unit)


def _date_add_node(e: exp.Expr, s: Scope) -> Value:
    v = _eval(e.this, s)
    amount = literal_value(e.expression)
    unit = e.args.get("unit")
    iv = Interval(int(amount), (unit.name.upper() if unit is not None else "DAY"))
    if isinstance(e, exp.DateSub):
        iv = Interval(-iv.n, iv.unit)
    return _date_add(v, iv)


def _date_add(v: Value, iv: Interval) -> Value:
    unit, n = iv.unit, iv.n
    if unit == "WEEK":
        unit, n = "DAY", n * 7
    if unit == "QUARTER":
        unit, n = "MONTH", n * 3
    if unit == "YEAR":
        unit, n = "MONTH", n * 12
    if _is_scalar(v):
        if not v.is_valid:
            return v
        d = v.as_py()
        if not isinstance(d, datetime.date):
            d = datetime.date.fromisoformat(str(d))
        if unit == "DAY":
            return pa.scalar(d + datetime.timedelta(days=n), pa.date32())
        return pa.scalar(_add_months(d, n), pa.date32())
    if _is_string_like(v.type):
        v = pc.cast(pc.strptime(v, format="%Y-%m-%d", unit="s"), pa.date32())
    if not pa.types.is_date32(v.type):
        raise NotSupportedError(f"date arithmetic on {v.type} is not supported")
    if isinstance(v, pa.ChunkedArray):
        v = v.combine_chunks()
    days = v.cast(pa.int32())
    if unit == "DAY":
        return pc.add_checked(days, pa.scalar(n, pa.int32())).cast(pa.date32())
    filled = pc.fill_null(days, 0).to_numpy(zero_copy_only=False).astype("datetime64[D]")
    months = filled.astype("datetime64[M]")
    day_of_month = (filled - months.astype("datetime64[D]")).astype(np.int64)
    target = months + np.timedelta64(n, "M")
    month_len = (
        (target + np.timedelta64(1, "M")).astype("datetime64[D]") - target.astype("datetime64[D]")
    ).astype(np.int64)
    out = target.astype("datetime64[D]") + np.minimum(day_of_month, month_len - 1).astype(
        "timedelta64[D]"
    )
    arr = pa.array(out.astype(np.int64).astype(np.int32), pa.int32()).cast(pa.date32())
    if v.null_count:
        arr = pc.if_else(pc.is_null(v), pa.scalar(None, pa.date32()), arr)
    return arr


def _add_months(d: datetime.date, n: int) -> datetime.date:
    m = d.year * 12 + d.month - 1 + n
    y, mo = divmod(m, 12)
    mo += 1
    nxt = datetime.date(y + (mo == 12), mo % 12 + 1, 1)
    last = (nxt - datetime.timedelta(days=1)).day
    return datetime.date(y, mo, min(d.day, last))


_EXTRACT = {
    "YEAR": pc.year,
    "MONTH": pc.month,
    "DAY": pc.day,
    "QUARTER": pc.quarter,
    "HOUR": pc.hour,
    "MINUTE": pc.minute,
    "SECOND": pc.second,
}


def _extract(e: exp.Expr, s: Scope) -> Value:
    part = e.this.name.upper()
    fn = _EXTRACT.get(part)
    if fn is None:
        raise NotSupportedError(f"EXTRACT({part} ...) is not supported")
    return _temporal_part(fn, _eval(e.expression, s))


def _temporal_part(fn: Callable[[Value], Value], v: Value) -> Value:
    if _is_null_type(v):
        return pa.scalar(None, pa.int64())
    if _is_string_like(v.type):
        v = pc.strptime(v, format="%Y-%m-%d", unit="s")
    return pc.cast(fn(v), pa.int64())


def _year(e: exp.Expr, s: Scope) -> Value:
    return _temporal_part(pc.year, _eval(e.this, s))


def _month(e: exp.Expr, s: Scope) -> Value:
    return _temporal_part(pc.month, _eval(e.this, s))


def _day(e: exp.Expr, s: Scope) -> Value:
    return _temporal_part(pc.day, _eval(e.this, s))


def _substring(e: exp.Expr, s: Scope) -> Value:
    v = _eval(e.this, s)
    try:
        start = int(literal_value(e.args["start"]))
        length_e = e.args.get("length")
        length = int(literal_value(length_e)) if length_e is not None else None
    except (ValueError, TypeError) as err:
        raise NotSupportedError(f"SUBSTRING with non-constant bounds ({sql_text(e)})") from err
    if _is_null_type(v):
        return v
    if start > 0:
        begin = start - 1
    elif start < 0:
        begin = start
    else:  # MySQL: position 0 gives the empty string
        return pc.utf8_slice_codeunits(v, 0, 0)
    if length is None:
        return pc.utf8_slice_codeunits(v, begin)
    if length <= 0:
        return pc.utf8_slice_codeunits(v, 0, 0)
    stop = begin + length
    if begin < 0 and stop >= 0:
        return pc.utf8_slice_codeunits(v, begin)
    return pc.utf8_slice_codeunits(v, begin, stop)


def _upper(e: exp.Expr, s: Scope) -> Value:
    return pc.utf8_upper(_eval(e.this, s))


def _lower(e: exp.Expr, s: Scope) -> Value:
    return pc.utf8_lower(_eval(e.this, s))


def _length(e: exp.Expr, s: Scope) -> Value:
    return pc.cast(pc.utf8_length(_eval(e.this, s)), pa.int64())


def _concat(e: exp.Expr, s: Scope) -> Value:
    parts = [_cast_to(_eval(x, s), pa.string()) for x in e.expressions]
    return pc.binary_join_element_wise(*parts, "")


def _abs(e: exp.Expr, s: Scope) -> Value:
    return pc.abs(_eval(e.this, s))


def _round(e: exp.Expr, s: Scope) -> Value:
    v = _eval(e.this, s)
    d = e.args.get("decimals")
    nd = int(literal_value(d)) if d is not None else 0
    return pc.round(v, nd, round_mode="half_away_from_zero")


# -- ARRAY_ANY(list, x -> predicate): what the optimizer makes of EXISTS with <>
def _array_any(e: exp.Expr, s: Scope) -> Value:
    lam = e.expression
    if not isinstance(lam, exp.Lambda) or len(lam.expressions) != 1:
        raise NotSupportedError(f"ARRAY_ANY needs a one-parameter lambda ({sql_text(e)})")
    param = lam.expressions[0].name
    lists = _eval(e.this, s)
    if _is_scalar(lists):
        raise NotSupportedError("ARRAY_ANY over a constant list is not supported")
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    n = len(lists)
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    # The body sees the other columns it mentions repeated once per element.
    needed: dict[str, Value] = {}
    for col in lam.this.find_all(exp.Column):
        if not col.table and col.name == param:
            continue
        key = f"{col.table}.{col.name}" if col.table else col.name
        needed[key] = s.column(col.table, col.name).take(parents)
    table = pa.table(needed) if needed else pa.table({"_": pa.nulls(len(flat))})
    sub = Scope(table, s.subqueries, {**s.bindings, param: flat}, s.params)
    hit = evaluate_mask(lam.this, sub)
    if isinstance(hit, bool):
        any_hit = np.zeros(n, dtype=bool)
        if hit:
            any_hit[np.unique(parents.to_numpy())] = True
    else:
        hit_np = pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
        any_hit = np.bincount(parents.to_numpy()[hit_np], minlength=n) > 0
    out = pa.array(any_hit, pa.bool_())
    if lists.null_count:
        out = pc.if_else(pc.is_null(lists), pa.scalar(None, pa.bool_()), out)
    return out


def _scalar_subquery(e: exp.Expr, s: Scope) -> Value:
    if not isinstance(e, exp.Var) or e.name not in s.subqueries:
        raise NotSupportedError(f"{sql_text(e)} is not supported here")
    sub = s.subqueries[e.name]
    if sub.num_columns != 1:
        raise ProgrammingError("a scalar subquery must return exactly one column")
    if sub.num_rows > 1:
        raise ProgrammingError("a scalar subquery returned more than one row")
    col = sub.column(0)
    if sub.num_rows == 0:
        return pa.scalar(None, col.type)
    return col[0]


def _exists(e: exp.Expr, s: Scope) -> Value:
    target = e.this
    if not isinstance(target, exp.Var) or target.name not in s.subqueries:
        raise NotSupportedError(f"correlated EXISTS ({sql_text(e)}) is not supported")
    return pa.scalar(s.subqueries[target.name].num_rows > 0)


def _placeholder(e: exp.Expr, s: Scope) -> Value:
    # plan_query numbers the placeholders in statement order (this="0", "1", ...).
    try:
        i = int(e.name)
    except ValueError as err:
        raise NotSupportedError(f"named placeholder {sql_text(e)} is not supported") from err
    if i >= len(s.params):
        raise ProgrammingError(
            f"the statement has more placeholders than the {len(s.params)} parameters given"
        )
    v = s.params[i]
    if isinstance(v, decimal.Decimal):
        return _decimal_scalar(v)
    if isinstance(v, bool):
        return pa.scalar(v, pa.bool_())
    if isinstance(v, int):
        return pa.scalar(v, pa.int64())
    if isinstance(v, datetime.datetime):
        return pa.scalar(v, pa.timestamp("us"))
    if isinstance(v, datetime.date):
        return pa.scalar(v, pa.date32())
    try:
        return pa.scalar(v)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"parameter {i + 1} ({type(v).__name__}) cannot be used in SQL") from err


_HANDLERS: dict[type[exp.Expr], Callable[[Any, Scope], Value]] = {
    exp.Add: _arith,
    exp.Sub: _arith,
    exp.Mul: _arith,
    exp.Div: _arith,
    exp.IntDiv: _arith,
    exp.Mod: _arith,
    exp.Neg: _neg,
    exp.EQ: _compare_node,
    exp.NEQ: _compare_node,
    exp.LT: _compare_node,
    exp.LTE: _compare_node,
    exp.GT: _compare_node,
    exp.GTE: _compare_node,
    exp.And: _and,
    exp.Or: _or,
    exp.Not: _not,
    exp.Is: _is,
    exp.Between: _between,
    exp.In: _in,
    exp.Like: _like,
    exp.ILike: _ilike,
    exp.Case: _case,
    exp.If: _if,
    exp.Coalesce: _coalesce,
    exp.Nullif: _nullif,
    exp.Cast: _cast,
    exp.TryCast: _cast,
    exp.Interval: _interval,
    exp.DateAdd: _date_add_node,
    exp.DateSub: _date_add_node,
    exp.Extract: _extract,
    exp.Year: _year,
    exp.Month: _month,
    exp.Day: _day,
    exp.Substring: _substring,
    exp.Upper: _upper,
    exp.Lower: _lower,
    exp.Length: _length,
    exp.Concat: _concat,
    exp.Abs: _abs,
    exp.Round: _round,
    exp.ArrayAny: _array_any,
    exp.Var: _scalar_subquery,
    exp.Exists: _exists,
    exp.Placeholder: _placeholder,
}
