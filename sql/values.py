"""Constant SQL expressions to Python values, and values to column types.

Used where a statement carries values rather than queries: ``INSERT ...
VALUES``, ``DEFAULT`` clauses, ``?`` parameters, ``AS OF TIMESTAMP``. Pure.

Coercion follows MySQL where it is unsurprising: a string literal fills a
DATE or TIMESTAMP column (``'1995-03-15'``), an integer or a decimal fills a
DECIMAL column exactly, a float fills a DECIMAL column through its shortest
repr, TRUE/FALSE fill an integer column as 1/0. Anything else is a
:class:`~sql.errors.DataError` naming the column.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Sequence
from typing import Any

from sqlglot import exp

from kvstore.tablecodec import ColumnInfo, Kind
from sql.errors import DataError, NotSupportedError, ProgrammingError

__all__ = [
    "arith",
    "bind_params",
    "coerce",
    "is_number",
    "literal",
    "negate",
    "param_value",
    "to_sql_literal",
]

_T = exp.DataType.Type
_TIMESTAMP_TYPES = (_T.TIMESTAMP, _T.DATETIME, _T.TIMESTAMPTZ)


def to_sql_literal(v: Any) -> exp.Expr:
    """A sqlglot expression for the Python value ``v`` (a bound parameter)."""
    if v is None:
        return exp.Null()
    if isinstance(v, bool):
        return exp.Boolean(this=v)
    if isinstance(v, (int, float, decimal.Decimal)):
        if isinstance(v, float) and not math.isfinite(v):
            raise DataError(f"{v} is not a SQL value")
        lit = exp.Literal.number(abs(v)) if v < 0 else exp.Literal.number(v)
        return exp.Neg(this=lit) if v < 0 else lit
    if isinstance(v, str):
        return exp.Literal.string(v)
    if isinstance(v, dt.datetime):
        text = exp.Literal.string(v.isoformat(sep=" "))
        return exp.Cast(this=text, to=exp.DataType.build("TIMESTAMP"))
    if isinstance(v, dt.date):
        return exp.Cast(this=exp.Literal.string(v.isoformat()), to=exp.DataType.build("DATE"))
    raise DataError(f"cannot bind a parameter of type {type(v).__name__}")


def bind_params(statement: exp.Expr, params: Sequence[Any]) -> exp.Expr:
    """A copy of ``statement`` with each ``?`` replaced by the next parameter
    (a depth-first walk meets them in the order they are written)."""
    if not params:
        if any(isinstance(n, exp.Placeholder) and not n.this for n in statement.walk()):
            raise ProgrammingError("statement has parameters, none given")
        return statement
    out = statement.copy()
    holes = [n for n in out.walk(bfs=False) if isinstance(n, exp.Placeholder) and not n.this]
    if len(holes) != len(params):
        raise ProgrammingError(f"statement has {len(holes)} parameters, {len(params)} given")
    for hole, value in zip(holes, params, strict=True):
        hole.replace(to_sql_literal(value))
    return out


def literal(e: exp.Expr) -> Any:
    """Python value of a constant expression (numbers, strings, NULL,
    TRUE/FALSE, negation, +-*/ of numbers, CAST to DATE/TIMESTAMP/numbers)."""
    if isinstance(e, exp.Paren):
        return literal(e.this)
    if isinstance(e, exp.Null):
        return None
    if isinstance(e, exp.Boolean):
        return bool(e.this)
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this
        text = e.this
        if any(c in text for c in ".eE"):
            return decimal.Decimal(text) if "e" not in text.lower() else float(text)
        return int(text)
    if isinstance(e, exp.Neg):
        return negate(literal(e.this))
    if isinstance(e, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
        a, b = literal(e.this), literal(e.expression)
        if not (is_number(a) and is_number(b)):
            raise DataError(f"arithmetic on non-numbers: {e.sql('mysql')}")
        return arith(type(e), a, b)
    if isinstance(e, (exp.Cast, exp.TryCast)):
        v = literal(e.this)
        to = e.to.this
        if v is None:
            return None
        if to in (exp.DataType.Type.DATE,):
            return _to_date(v, "CAST")
        if to in _TIMESTAMP_TYPES:
            return _to_timestamp(v, "CAST")
        if to in exp.DataType.INTEGER_TYPES:
            return int(v)
        if to in (exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT):
            return float(v)
        if to is exp.DataType.Type.DECIMAL:
            return decimal.Decimal(str(v))
        if to in exp.DataType.TEXT_TYPES:
            return str(v)
    raise NotSupportedError(f"not a constant value here: {e.sql('mysql')}")


def is_number(v: Any) -> bool:
    """Can ``v`` take part in ``+ - * /``? (TRUE and FALSE can, as 1 and 0.)"""
    return isinstance(v, (int, float, decimal.Decimal))


def negate(v: Any) -> Any:
    if isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool):
        return -v
    raise DataError(f"cannot negate {v!r}")


def arith(op: type[exp.Expr], a: Any, b: Any) -> Any:
    """``a op b`` for numbers ``a``, ``b`` (see :func:`is_number`) and ``op``
    one of ``exp.Add``, ``exp.Sub``, ``exp.Mul``, ``exp.Div``."""
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
    if op is exp.Add:
        return a + b
    if op is exp.Sub:
        return a - b
    if op is exp.Mul:
        return a * b
    if b == 0:
        return None  # MySQL: division by zero is NULL
    return decimal.Decimal(a) / decimal.Decimal(b) if not isinstance(a, float) else a / b


def param_value(v: Any) -> Any:
    """The value a ``?`` bound to ``v`` stands for: exactly
    ``literal(to_sql_literal(v))``, which is not always ``v`` (a float becomes
    a Decimal through its repr, a Decimal with an exponent a float), without
    building the expression for the common exact types."""
    t = type(v)
    if t is int or t is str or t is bool or v is None:
        return v
    if t is dt.datetime:
        return _to_timestamp(v.isoformat(sep=" "), "CAST")
    if t is dt.date:
        return _to_date(v.isoformat(), "CAST")
    return literal(to_sql_literal(v))


def _to_date(v: Any, col: str) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v.strip()[:10])
        except ValueError:
            pass
    raise DataError(f"{v!r} is not a DATE (column {col})")


def _to_timestamp(v: Any, col: str) -> dt.datetime:
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    if isinstance(v, str):
        try:
            return dt.datetime.fromisoformat(v.strip())
        except ValueError:
            pass
    raise DataError(f"{v!r} is not a TIMESTAMP (column {col})")


def coerce(col: ColumnInfo, v: Any) -> Any:
    """``v`` made a value of ``col``'s type where SQL would convert it
    implicitly; the column's own check (range, length, NULL) comes after."""
    if v is None:
        return None
    k = col.kind
    try:
        if k is Kind.DATE:
            return _to_date(v, col.name)
        if k is Kind.TIMESTAMP:
            return _to_timestamp(v, col.name)
        if k is Kind.DECIMAL and isinstance(v, float):
            return decimal.Decimal(repr(v))
        if k is Kind.INT and isinstance(v, bool):
            return int(v)
        if k is Kind.INT and isinstance(v, decimal.Decimal) and v == v.to_integral_value():
            return int(v)
        if k is Kind.DOUBLE and isinstance(v, decimal.Decimal):
            return float(v)
        if k is Kind.BOOL and isinstance(v, int) and not isinstance(v, bool) and v in (0, 1):
            return bool(v)
    except (ValueError, decimal.InvalidOperation):
        raise DataError(f"{v!r} does not fit column {col.name!r} ({col.type})") from None
    return v
