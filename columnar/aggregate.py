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
import pyarrow.compute as pc
from pyarrow import acero

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


def partial_aggregate(
    table: pa.Table,
    keys: Sequence[str],
    aggs: Sequence[Agg],
    predicate: pc.Expression | None = None,
) -> pa.Table:
    """Group ``table`` by ``keys`` (none: one global group) and aggregate,
    over the rows ``predicate`` keeps (all without one). One Acero plan:
    the filtered rows are never materialised. Dictionary-encoded keys come
    out decoded (a caller encodes string keys to group faster)."""
    _check(aggs)
    names = [_name(a) for a in aggs]
    prefix = "hash_" if keys else ""
    spec = [
        ([], prefix + "count_all", None, name) if col == "*" else (col, prefix + fn, None, name)
        for (col, fn), name in zip(aggs, names, strict=True)
    ]
    plan = [acero.Declaration("table_source", acero.TableSourceNodeOptions(table))]
    if predicate is not None:
        plan.append(acero.Declaration("filter", acero.FilterNodeOptions(predicate)))
    plan.append(acero.Declaration("aggregate", acero.AggregateNodeOptions(spec, keys=list(keys))))
    out = acero.Declaration.from_sequence(plan).to_table(use_threads=False)
    # Keys first, then the aggregates in order (named above); a grouping
    # plan lists the keys after the aggregates in some versions: by name.
    out = out.select([*keys, *names])
    for i, name in enumerate(keys):
        col = out[name]
        if pa.types.is_dictionary(col.type):
            out = out.set_column(i, name, col.cast(col.type.value_type))
    return out


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
