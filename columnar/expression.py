"""Arithmetic over columns, for what an aggregate sums: TPC-H's
``l_extendedprice * (1 - l_discount)``.

An aggregate's argument is ``*``, a column name, or an expression of column
names and numeric literals with ``+ - * /``, unary minus, parentheses and
``double(x)`` (a cast to DOUBLE; Python's grammar for these, parsed with
:mod:`ast`; nothing else is accepted). The same text names the aggregate's result
(``sum(l_extendedprice * (1 - l_discount))``), so the columnar node, the
row-store fallback and the client agree on it.

One evaluator serves both executions: given ``pc.field`` leaves it builds a
``pyarrow.compute`` expression (for an Acero plan), given arrays it computes
the values with the same kernels. Arithmetic is Arrow's checked arithmetic
(an overflow is an error, not a wrap); ``/`` divides in DOUBLE.

``double`` is what lets the SQL layer push its own aggregates down: SQL
computes arithmetic that is not integer-only in DOUBLE (``sql.expr``), so it
sends ``double(l_extendedprice) * (1.0 - double(l_discount))`` and the node
computes exactly the values SQL would have computed itself.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kvstore.errors import InvalidArgumentError

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: pc.add_checked,
    ast.Sub: pc.subtract_checked,
    ast.Mult: pc.multiply_checked,
    ast.Div: lambda a, b: pc.divide(_double(a), _double(b)),
}


# Functions an expression may call: name -> what it does to its one argument.
_FUNCTIONS: dict[str, Callable[[Any], Any]] = {}


def _double(x: Any) -> Any:
    # An expression casts itself; compute's cast takes arrays and scalars only.
    return x.cast(pa.float64()) if isinstance(x, pc.Expression) else pc.cast(x, pa.float64())


_FUNCTIONS["double"] = _double


def is_expression(arg: str) -> bool:
    """Is this aggregate argument an expression (not ``*`` or a column)?"""
    return arg != "*" and not arg.isidentifier()


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> ast.expr:
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise InvalidArgumentError(f"bad expression {text!r}: {e.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and len(node.args) == 1
            and not node.keywords
        ):
            continue
        # Operators are checked with their BinOp/UnaryOp above.
        if isinstance(node, (ast.Name, ast.Load, ast.operator, ast.unaryop)):
            continue
        raise InvalidArgumentError(
            f"bad expression {text!r}: only column names, numbers, + - * /, "
            "parentheses and double(x) are allowed"
        )
    return tree


def columns_of(arg: str) -> list[str]:
    """The columns an aggregate argument reads (none for ``*``), in order."""
    if arg == "*":
        return []
    if not is_expression(arg):
        return [arg]
    tree = _parse(arg)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in calls]
    return list(dict.fromkeys(names))


def _eval(node: ast.expr, leaf: Callable[[str], Any], const: Callable[[Any], Any]) -> Any:
    if isinstance(node, ast.Name):
        return leaf(node.id)
    if isinstance(node, ast.Constant):
        return const(node.value)
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)  # checked by _parse
        return _FUNCTIONS[node.func.id](_eval(node.args[0], leaf, const))
    if isinstance(node, ast.UnaryOp):
        x = _eval(node.operand, leaf, const)
        return pc.negate_checked(x) if isinstance(node.op, ast.USub) else x
    assert isinstance(node, ast.BinOp)
    left, right = _eval(node.left, leaf, const), _eval(node.right, leaf, const)
    return _BINARY[type(node.op)](left, right)


def to_expression(arg: str) -> pc.Expression:
    """``arg`` as a ``pyarrow.compute`` expression."""
    # Literals as expressions too: compute functions do not mix the two.
    return _eval(_parse(arg), pc.field, pc.scalar)


def evaluate(table: pa.Table, arg: str) -> pa.ChunkedArray:
    """The values of ``arg`` for every row of ``table``."""
    missing = [c for c in columns_of(arg) if c not in table.column_names]
    if missing:
        raise InvalidArgumentError(f"expression {arg!r}: no column {missing[0]!r}")
    try:
        out = _eval(_parse(arg), lambda name: table[name], pa.scalar)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise InvalidArgumentError(f"expression {arg!r}: {e}") from None
    if isinstance(out, pa.Scalar):  # no column at all: one value per row
        return pa.chunked_array([pa.repeat(out, table.num_rows)], out.type)
    return out if isinstance(out, pa.ChunkedArray) else pa.chunked_array([out])


def with_expressions(table: pa.Table, args: Sequence[str]) -> pa.Table:
    """``table`` plus a column named by each expression of ``args``
    (column names and ``*`` need none)."""
    for arg in dict.fromkeys(a for a in args if is_expression(a)):
        if arg not in table.column_names:
            table = table.append_column(arg, evaluate(table, arg))
    return table


__all__ = ["columns_of", "evaluate", "is_expression", "to_expression", "with_expressions"]
