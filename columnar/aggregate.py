"""Partial aggregation on a filtered table, and merging the partials.

A read spread over Regions (or over columnar nodes) aggregates each piece
where it is read and merges the small partial results at the coordinator
(TiFlash's partial/final aggregation). Supported: ``sum``, ``count``
(of non-NULL values; ``("*", "count")`` counts rows), ``min``, ``max``; all
run in Acero (``pyarrow.Table.group_by``), never row by row in Python.

A partial result has the group-by keys, then one column per aggregate named
``{func}({column})`` (``count(*)`` for rows). Merging sums the sums and the
counts and takes the min of mins and the max of maxes, so
``merge_partials([partial_aggregate(a), partial_aggregate(b)])`` equals
``partial_aggregate(concat(a, b))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from kvstore.errors import InvalidArgumentError

AGGREGATES = ("sum", "count", "min", "max")
_MERGE = {"sum": "sum", "count": "sum", "min": "min", "max": "max"}

Agg = tuple[str, str]  # (column or "*", function)


def _name(agg: Agg) -> str:
    return f"{agg[1]}({agg[0]})"


def _check(aggs: Sequence[Agg]) -> None:
    for col, fn in aggs:
        if fn not in AGGREGATES:
            raise InvalidArgumentError(f"unknown aggregate {fn!r}; one of {AGGREGATES}")
        if col == "*" and fn != "count":
            raise InvalidArgumentError("only count takes '*'")


def partial_aggregate(table: pa.Table, keys: Sequence[str], aggs: Sequence[Agg]) -> pa.Table:
    """Group ``table`` by ``keys`` (none: one global group) and aggregate."""
    _check(aggs)
    spec: list[tuple[str | list[str], str]] = []
    for col, fn in aggs:
        spec.append(([], "count_all") if col == "*" else (col, fn))
    out = table.group_by(list(keys), use_threads=False).aggregate(spec)
    # Acero puts the keys first, then the aggregates in order, as
    # "{col}_{fn}" / "count_all": rename by position.
    return out.rename_columns([*keys, *(_name(a) for a in aggs)])


def merge_partials(parts: Sequence[pa.Table], keys: Sequence[str], aggs: Sequence[Agg]) -> pa.Table:
    """Combine partial results (same ``keys`` and ``aggs``) into the final one."""
    _check(aggs)
    if not parts:
        raise InvalidArgumentError("merge_partials needs at least one partial result")
    t = pa.concat_tables(parts)
    names = [_name(a) for a in aggs]
    out = t.group_by(list(keys), use_threads=False).aggregate(
        [(n, _MERGE[fn]) for n, (_, fn) in zip(names, aggs, strict=True)]
    )
    return out.rename_columns([*keys, *names])
