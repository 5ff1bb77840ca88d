"""One table's committed versions: raw rows, Arrow deltas, a stable base.

Every part is an Arrow table with the hidden columns ``_handle`` (binary: the
memcomparable handle, so byte order = primary-key order), ``_commit_ts``
(uint64) and ``_delete_mark`` (bool), then one column per user column, named
``c{column id}`` (never by name: names may be reused, ids never are), all
nullable (a delete mark has no values).

* **raw**: committed versions not decoded yet (Python lists): rows whose
  schema has not arrived, or that arrived since the last flush;
* **deltas**: a few Arrow tables, one per flush;
* **stable**: one Arrow table sorted by ``(_handle, _commit_ts desc)``,
  versions the GC safe point hides already dropped.

A read at a ts at or above every commit of the stable base (the usual
analytic read: a fresh ts, no deltas since the last compaction) sees the
same rows whatever the ts: :class:`LatestView` computes their MVCC filter
once per base and materialises their columns on first use, so such reads
skip the filter, and a base whose every version is visible is read without
a copy.

The functions here are pure Arrow transformations; locking is the engine's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvstore.tablecodec import ColumnInfo, TableInfo, decode_rows_partial

HANDLE = "_handle"
COMMIT_TS = "_commit_ts"
DELETE_MARK = "_delete_mark"
HIDDEN = (HANDLE, COMMIT_TS, DELETE_MARK)
_HIDDEN_FIELDS = [
    pa.field(HANDLE, pa.binary(), nullable=False),
    pa.field(COMMIT_TS, pa.uint64(), nullable=False),
    pa.field(DELETE_MARK, pa.bool_(), nullable=False),
]
_SORT = [(HANDLE, "ascending"), (COMMIT_TS, "descending")]


def col_name(col: ColumnInfo) -> str:
    return f"c{col.id}"


def part_schema(columns: Sequence[ColumnInfo]) -> pa.Schema:
    return pa.schema(_HIDDEN_FIELDS + [pa.field(col_name(c), c.arrow_type) for c in columns])


def _constant(col: ColumnInfo, n: int) -> pa.Array:
    if col.default is None:
        return pa.nulls(n, col.arrow_type)
    return pa.repeat(pa.scalar(col.default, col.arrow_type), n)


class TableData:
    """Versions of one table (see the module docstring)."""

    __slots__ = (
        "_view",
        "deltas",
        "epoch",
        "raw_handles",
        "raw_ts",
        "raw_values",
        "stable",
        "table_id",
    )

    def __init__(self, table_id: int) -> None:
        self.table_id = table_id
        self.raw_handles: list[bytes] = []
        self.raw_ts: list[int] = []
        self.raw_values: list[bytes | None] = []  # None: a delete
        self.deltas: list[pa.Table] = []
        self.stable: pa.Table | None = None
        # Bumped by destructive changes (delete_range): a compaction computed
        # from older parts must not be installed.
        self.epoch = 0
        self._view: LatestView | None = None

    def view_of(self, stable: pa.Table) -> LatestView:
        """The :class:`LatestView` of ``stable`` (a base this table had),
        kept for the next read while it is the current base. A new one runs
        the MVCC filter: call this without the engine's lock held."""
        view = self._view
        if view is None or view.stable is not stable:
            view = LatestView(stable)
            if self.stable is stable:
                self._view = view
        return view

    def add(self, handle: bytes, commit_ts: int, value: bytes | None) -> None:
        self.raw_handles.append(handle)
        self.raw_ts.append(commit_ts)
        self.raw_values.append(value)

    @property
    def raw_count(self) -> int:
        return len(self.raw_ts)

    def parts(self) -> list[pa.Table]:
        return ([self.stable] if self.stable is not None else []) + list(self.deltas)

    def flush(self, info: TableInfo | None) -> None:
        """Decode the raw versions into one delta with schema ``info``. Rows
        that mention columns ``info`` does not know stay raw (never decoded
        with a guessed schema); with ``info=None`` everything stays raw."""
        if info is None or not self.raw_ts:
            return
        n = len(self.raw_ts)
        puts = [i for i, v in enumerate(self.raw_values) if v is not None]
        dels = [i for i, v in enumerate(self.raw_values) if v is None]
        values = [v for v in self.raw_values if v is not None]
        batch, known = decode_rows_partial(info, values, info.columns)
        taken = np.asarray(puts, dtype=np.int64)[known]
        take = np.concatenate([taken, np.asarray(dels, dtype=np.int64)])
        if len(take) == 0:
            return
        handles = pa.array(self.raw_handles, pa.binary()).take(pa.array(take))
        ts = pa.array(np.asarray(self.raw_ts, dtype=np.uint64)[take])
        marks = pa.array(np.concatenate([np.zeros(len(taken), bool), np.ones(len(dels), bool)]))
        arrays = [handles, ts, marks]
        for i, c in enumerate(info.columns):
            vals = batch.column(i)
            arrays.append(pa.concat_arrays([vals, pa.nulls(len(dels), c.arrow_type)]))
        self.deltas.append(pa.Table.from_arrays(arrays, schema=part_schema(info.columns)))
        if len(take) == n:
            self.raw_handles, self.raw_ts, self.raw_values = [], [], []
        else:
            keep = sorted(set(range(n)) - set(take.tolist()))
            self.raw_handles = [self.raw_handles[i] for i in keep]
            self.raw_ts = [self.raw_ts[i] for i in keep]
            self.raw_values = [self.raw_values[i] for i in keep]

    def raw_visible_at(self, ts: int) -> bool:
        """Some undecoded version is visible at ``ts``."""
        return any(t <= ts for t in self.raw_ts)

    def remove_handles(self, lo: bytes | None, hi: bytes | None) -> None:
        """Drop every version whose handle is in ``[lo, hi)`` (None:
        unbounded): the row store deleted those keys' records."""

        def inside(h: bytes) -> bool:
            return (lo is None or h >= lo) and (hi is None or h < hi)

        keep = [i for i, h in enumerate(self.raw_handles) if not inside(h)]
        self.raw_handles = [self.raw_handles[i] for i in keep]
        self.raw_ts = [self.raw_ts[i] for i in keep]
        self.raw_values = [self.raw_values[i] for i in keep]

        def cut(t: pa.Table) -> pa.Table:
            h = t[HANDLE]
            conds = []
            if lo is not None:
                conds.append(pc.greater_equal(h, pa.scalar(lo, pa.binary())))
            if hi is not None:
                conds.append(pc.less(h, pa.scalar(hi, pa.binary())))
            if not conds:
                return t.slice(0, 0)
            inside_mask = conds[0] if len(conds) == 1 else pc.and_(conds[0], conds[1])
            return t.filter(pc.invert(inside_mask))

        self.stable = None if self.stable is None else cut(self.stable)
        self.deltas = [cut(d) for d in self.deltas]
        self.epoch += 1


def conform(part: pa.Table, columns: Sequence[ColumnInfo]) -> pa.Table:
    """``part`` with exactly the hidden columns and ``columns`` (in that
    order); a column the part lacks (added later) takes its default."""
    names = set(part.column_names)
    arrays = [part[h] for h in HIDDEN]
    for c in columns:
        n = col_name(c)
        arrays.append(part[n] if n in names else _constant(c, part.num_rows))
    return pa.Table.from_arrays(arrays, schema=part_schema(columns))


def merge(parts: Sequence[pa.Table], columns: Sequence[ColumnInfo]) -> pa.Table:
    if not parts:
        return part_schema(columns).empty_table()
    return pa.concat_tables([conform(p, columns) for p in parts])


def sort_versions(t: pa.Table) -> pa.Table:
    return t.take(pc.sort_indices(t, sort_keys=_SORT))


def _prev_differs(h: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``out[i]``: row i starts a new handle (rows sorted by handle)."""
    arr = h.combine_chunks() if isinstance(h, pa.ChunkedArray) else h
    n = len(arr)
    out = np.ones(n, dtype=bool)
    if n > 1:
        out[1:] = pc.not_equal(arr[1:], arr[:-1]).to_numpy(zero_copy_only=False)
    return out


def visible_indices(t: pa.Table, ts: int, *, is_sorted: bool) -> tuple[pa.Table, np.ndarray]:
    """MVCC filter: row indices (into the returned, possibly re-sorted table)
    of the newest version ``<= ts`` of each handle, delete marks removed,
    in handle order. Only the hidden columns are touched."""
    hidden = t.select(list(HIDDEN))
    if not is_sorted:
        order = pc.sort_indices(hidden, sort_keys=_SORT)
        t, hidden = t.take(order), hidden.take(order)
    n = t.num_rows
    if n == 0:
        return t, np.zeros(0, dtype=np.int64)
    cts = hidden[COMMIT_TS].to_numpy()
    seen = cts <= np.uint64(ts)
    idx = np.nonzero(seen)[0]
    # Among the versions <= ts (still sorted), the first of each handle wins.
    h = hidden[HANDLE].combine_chunks().take(pa.array(idx))
    first = _prev_differs(h)
    dead = hidden[DELETE_MARK].to_numpy()[idx]
    return t, idx[first & ~dead]


def prune(t: pa.Table, safe_point: int) -> pa.Table:
    """Drop what GC at ``safe_point`` drops in the row store (``t`` sorted):
    keep versions above it and, per handle, the newest one at or below it
    unless that is a delete."""
    n = t.num_rows
    if n == 0 or safe_point == 0:
        return t
    le = t[COMMIT_TS].to_numpy() <= np.uint64(safe_point)
    new_handle = _prev_differs(t[HANDLE])
    prev_le = np.concatenate([[False], le[:-1]])
    first_le = le & (new_handle | ~prev_le)
    dead = t[DELETE_MARK].to_numpy()
    keep = ~le | (first_le & ~dead)
    return t if keep.all() else t.filter(pa.array(keep))


class LatestView:
    """The rows of a stable base visible at every ts >= :attr:`max_ts` (the
    newest commit in it), column by column, each column taken (and
    dictionary-encoded, for grouping) once, on first use. Immutable as far
    as readers can tell: two threads may compute the same column, and either
    result is right."""

    def __init__(self, stable: pa.Table) -> None:
        self.stable = stable
        n = stable.num_rows
        self.max_ts = int(pc.max(stable[COMMIT_TS]).as_py()) if n else 0
        _, idx = visible_indices(stable, self.max_ts, is_sorted=True)
        self.num_rows = len(idx)
        # Every version visible (one per handle, no deletes): no copy at all.
        self._take = None if len(idx) == n else pa.array(idx)
        self._columns: dict[tuple[int, str], pa.ChunkedArray] = {}
        self._dictionaries: dict[tuple[int, str], pa.ChunkedArray] = {}

    def column(self, col: ColumnInfo) -> pa.ChunkedArray:
        key = (col.id, str(col.arrow_type))
        got = self._columns.get(key)
        if got is None:
            name = col_name(col)
            if name in self.stable.column_names:
                arr = self.stable[name]
            else:  # added after this base was written: its default
                arr = pa.chunked_array([_constant(col, self.stable.num_rows)])
            if self._take is not None:
                arr = arr.take(self._take)
            if arr.type != col.arrow_type:
                arr = arr.cast(col.arrow_type)
            got = self._columns[key] = arr
        return got

    def dictionary(self, col: ColumnInfo) -> pa.ChunkedArray:
        """:meth:`column`, dictionary-encoded (grouping by the small integer
        codes is several times faster than hashing the strings)."""
        key = (col.id, str(col.arrow_type))
        got = self._dictionaries.get(key)
        if got is None:
            got = self._dictionaries[key] = pc.dictionary_encode(self.column(col))
        return got

    def table(self, columns: Sequence[ColumnInfo], dictionary: Sequence[str] = ()) -> pa.Table:
        """The visible rows of ``columns``, named by column name; those named
        in ``dictionary`` dictionary-encoded."""
        if not columns:  # no columns, still num_rows rows (count(*) needs them)
            return pa.table({"_": pa.nulls(self.num_rows)}).select([])
        arrays = [self.dictionary(c) if c.name in dictionary else self.column(c) for c in columns]
        fields = [
            pa.field(c.name, a.type, nullable=c.arrow_field.nullable)
            for c, a in zip(columns, arrays, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
