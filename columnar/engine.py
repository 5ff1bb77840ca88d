"""The columnar store: apply the row store's write batches, read at a ts.

See the package docstring for the model; this module is the mechanism.

Locking (one :class:`threading.Lock`, ``_mu``, plus ``_compact_mu``):

* :meth:`ColumnarStore.apply` holds ``_mu`` for one write batch: dict updates
  and list appends only (microseconds per op), so a batch is atomic for
  readers (a commit's write record and its lock removal appear together).
  When a table's undecoded versions pass :data:`RAW_FLUSH_ROWS`, apply decodes
  them in bulk (one numpy pass) to bound memory.
* :meth:`ColumnarStore.read` holds ``_mu`` to check the safe point and the
  locks, decode pending raw versions and take the list of parts (immutable
  Arrow tables); the MVCC filter, projection and predicate run after
  releasing it, so a long scan never stalls apply.
* :meth:`ColumnarStore.compact` holds ``_mu`` twice, briefly: to take the
  parts, and to install the merged base in place of exactly the deltas it
  merged (deltas added meanwhile stay). The merge and sort run unlocked.
  ``_compact_mu`` keeps compactions one at a time; a destructive change in
  between (``delete_range``) makes the compaction discard its result.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from columnar.aggregate import (
    Agg,
    Comparison,
    aggregate_columns,
    comparison_columns,
    comparison_expression,
    filtered_aggregate,
    partial_aggregate,
)
from columnar.segment import (
    HIDDEN,
    LatestView,
    TableData,
    merge,
    prune,
    sort_versions,
    visible_indices,
)
from kvstore.codec import TXN_KEYSPACE, decode_bytes, encode_bytes, split_ts
from kvstore.errors import (
    GcTooEarlyError,
    InvalidArgumentError,
    KeyIsLockedError,
    SchemaError,
    StorageError,
    TableNotFoundError,
)
from kvstore.storage.engine import (
    CF_DEFAULT,
    CF_LOCK,
    CF_RAFT,
    CF_WRITE,
    OP_DELETE_RANGE,
    OP_PUT,
)
from kvstore.tablecodec import (
    ColumnInfo,
    TableInfo,
    decode_row_key,
    decode_table_meta_key,
    row_prefix,
    table_meta_key,
)
from kvstore.types import Lock, LockInfo, LockType, Write, WriteType

# The row store's GC safe point, published in the ``raft`` CF through the same
# log (kvstore.txn.scheduler.GC_SAFE_POINT_KEY; a test keeps them equal).
GC_SAFE_POINT_KEY = b"gc_safe_point"
RAW_FLUSH_ROWS = 65536
# Compact a table once it has this many deltas (reads filter one base plus
# a few deltas; 1,000 small chunks filter ~29x slower than one).
MAX_DELTAS = 8

Op = tuple[int, str, bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What a read reads, taken under the lock (see ``_snapshot``)."""

    info: TableInfo
    parts: list[pa.Table]
    is_sorted: bool
    view: LatestView | None


@dataclass(frozen=True, slots=True)
class _Key:
    """What an encoded key is to the columnar store."""

    table_id: int
    handle: bytes | None  # a row key
    is_schema: bool  # the table's schema meta key


def _classify(encoded: bytes) -> _Key | None:
    """Row key or schema key of a table; None for anything else (raw keys,
    other meta keys, index keys, partial keys)."""
    try:
        user, pos = decode_bytes(encoded)
    except InvalidArgumentError:
        return None
    if pos != len(encoded) or user[:1] != TXN_KEYSPACE:
        return None
    user = user[1:]
    row = decode_row_key(user)
    if row is not None:
        return _Key(row[0], row[1], False)
    tid = decode_table_meta_key(user)
    if tid is not None:
        return _Key(tid, None, True)
    return None


def _user_bound(encoded: bytes) -> bytes | None:
    """A delete_range bound as a transactional user key (with its key-space
    byte): ``b""`` -> None (-inf); past the key space -> ``b"\\xff"``."""
    if not encoded:
        return None
    try:
        user, pos = decode_bytes(encoded)
    except InvalidArgumentError:
        user, pos = b"", -1
    if pos == len(encoded):
        return user
    # Not a whole key (Region ends use b"\xff"): compare by its first byte.
    return b"\xff" if encoded[:1] > TXN_KEYSPACE else b""


def _handle_bounds(
    prefix: bytes, lo: bytes | None, hi: bytes | None
) -> tuple[bytes | None, bytes | None] | None:
    """Handles ``h`` with ``lo <= prefix + h < hi`` as ``[h_lo, h_hi)``
    (None: unbounded), or None if no handle qualifies."""
    n = len(prefix)
    h_lo = h_hi = None
    if lo is not None:
        if lo[:n] > prefix:
            return None
        if lo[:n] == prefix:
            h_lo = lo[n:]
    if hi is not None:
        if hi[:n] < prefix:
            return None
        if hi[:n] == prefix:
            h_hi = hi[n:]
    return h_lo, h_hi


def _lock_info(user_key: bytes, lock: Lock) -> LockInfo:
    # Exactly kvstore.mvcc.reader.lock_info: a client resolves it the same way.
    return LockInfo(
        key=user_key,
        primary=lock.primary,
        lock_ts=lock.start_ts,
        ttl=lock.ttl,
        lock_type=lock.lock_type,
        min_commit_ts=lock.min_commit_ts,
        txn_size=lock.txn_size,
    )


def _blocks(lock: Lock, ts: int, bypass: Collection[int]) -> bool:
    # TiKV Lock::check_ts_conflict, as kvstore.mvcc.reader.check_lock_conflict.
    if lock.start_ts > ts or lock.lock_type == LockType.LOCK:
        return False
    if lock.min_commit_ts > ts:
        return False
    return lock.start_ts not in bypass


class ColumnarStore:
    """The learner's storage and read engine (pure: no network, no Raft).

    One store for all Regions: data is kept per *table* (an analytic scan
    reads a whole table, and one Arrow base per table is what makes it fast;
    per-Region Arrow objects would be hundreds of chunks and would need data
    movement on every split). Regions matter only for ``applied_index``, which
    is tracked per Region id. Not persistent: after a restart it is rebuilt by
    re-applying the log (or a Region snapshot) from the start.
    """

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._applied_cv = threading.Condition(self._mu)
        self._compact_mu = threading.Lock()
        self._applied: dict[int, int] = {}
        self._locks: dict[int, dict[bytes, Lock]] = {}  # table id -> encoded key -> lock
        # Locks on schema keys (a DDL not committed yet, or whose secondary
        # commit is still on its way): table id -> lock.
        self._schema_locks: dict[int, Lock] = {}
        self._values: dict[tuple[bytes, int], bytes] = {}  # (encoded key, start_ts) -> value
        self._tables: dict[int, TableData] = {}
        self._schemas: dict[int, tuple[int, TableInfo]] = {}  # id -> (commit_ts, info)
        self._names: dict[str, int] = {}
        self._safe_point = 0
        self.applied_ops = 0

    # ------------------------------------------------------------ apply
    def apply(self, index: int, ops: Iterable[Op], region_id: int = 0) -> bool:
        """Apply one committed log entry's write batch (``WriteBatch.ops``) of
        Region ``region_id`` at log ``index``. Entries at or below the
        Region's applied index are ignored (replay after a restart is safe);
        returns whether the entry was applied."""
        with self._mu:
            if index <= self._applied.get(region_id, 0):
                return False
            for op in ops:
                self._apply_op(op)
            self._applied[region_id] = index
            for td in self._tables.values():
                if td.raw_count >= RAW_FLUSH_ROWS:
                    td.flush(self._decode_schema(td.table_id, None))
            self._applied_cv.notify_all()
            return True

    def _apply_op(self, op: Op) -> None:
        kind, cf, key, value = op
        self.applied_ops += 1
        if cf == CF_RAFT:
            if kind == OP_PUT and key == GC_SAFE_POINT_KEY and value is not None:
                self._safe_point = max(self._safe_point, int(value))
            return
        if kind == OP_DELETE_RANGE:
            if value is not None:
                self._delete_range(cf, key, value)
            return
        if cf == CF_LOCK:
            k = _classify(key)
            if k is None:
                return
            if k.handle is None:  # a schema key
                if kind == OP_PUT and value is not None:
                    self._schema_locks[k.table_id] = Lock.from_bytes(value)
                else:
                    self._schema_locks.pop(k.table_id, None)
                return
            locks = self._locks.setdefault(k.table_id, {})
            if kind == OP_PUT and value is not None:
                locks[key] = Lock.from_bytes(value)
            else:
                locks.pop(key, None)
            return
        if cf not in (CF_DEFAULT, CF_WRITE) or len(key) < 8:
            return
        enc, ts = split_ts(key)
        k = _classify(enc)
        if k is None:
            return
        if cf == CF_DEFAULT:
            if kind == OP_PUT and value is not None:
                self._values[(enc, ts)] = value
            else:
                self._values.pop((enc, ts), None)
            return
        if kind != OP_PUT or value is None:
            # GC removing write records: they are exactly the versions no read
            # at or above the safe point sees; compaction drops them itself.
            return
        w = Write.from_bytes(value)
        if w.write_type not in (WriteType.PUT, WriteType.DELETE):
            return  # ROLLBACK and LOCK records carry no data
        data: bytes | None = None
        if w.write_type == WriteType.PUT:
            data = w.short_value
            if data is None:
                data = self._values.pop((enc, w.start_ts), None)
                if data is None:
                    raise StorageError(f"value of {enc!r}@{w.start_ts} missing at commit {ts}")
        if k.is_schema:
            self._apply_schema(k.table_id, ts, data)
        else:
            assert k.handle is not None
            td = self._tables.get(k.table_id)
            if td is None:
                td = self._tables[k.table_id] = TableData(k.table_id)
            td.add(k.handle, ts, data)

    def _apply_schema(self, table_id: int, commit_ts: int, data: bytes | None) -> None:
        old = self._schemas.get(table_id)
        if old is not None and old[0] > commit_ts:
            return
        if data is None:  # a dropped schema key (no DROP TABLE yet)
            self._schemas.pop(table_id, None)
            if old is not None:
                self._names.pop(old[1].name, None)
            return
        info = TableInfo.from_json(data)
        if info.id != table_id:
            raise SchemaError(f"schema under table id {table_id} names id {info.id}")
        if old is not None:
            self._names.pop(old[1].name, None)
        self._schemas[table_id] = (commit_ts, info)
        self._names[info.name] = table_id

    def _delete_range(self, cf: str, start: bytes, end: bytes) -> None:
        if cf == CF_LOCK:
            for locks in self._locks.values():
                for k in [k for k in locks if start <= k < end]:
                    del locks[k]
            for tid in list(self._schema_locks):
                enc = encode_bytes(TXN_KEYSPACE + table_meta_key(tid))
                if start <= enc < end:
                    del self._schema_locks[tid]
        elif cf == CF_DEFAULT:
            for vk in [vk for vk in self._values if start <= vk[0] < end]:
                del self._values[vk]
        elif cf == CF_WRITE:
            lo, hi = _user_bound(start), _user_bound(end)
            for td in self._tables.values():
                prefix = TXN_KEYSPACE + row_prefix(td.table_id)
                bounds = _handle_bounds(prefix, lo, hi)
                if bounds is not None:
                    td.remove_handles(*bounds)

    # ------------------------------------------------------------ progress
    def applied_index(self, region_id: int = 0) -> int:
        with self._mu:
            return self._applied.get(region_id, 0)

    def wait_applied(self, region_id: int, index: int, timeout: float | None = None) -> bool:
        """Block until Region ``region_id`` has applied ``index`` (a read
        index); False on timeout."""
        with self._applied_cv:
            return self._applied_cv.wait_for(
                lambda: self._applied.get(region_id, 0) >= index, timeout
            )

    @property
    def gc_safe_point(self) -> int:
        with self._mu:
            return self._safe_point

    # ------------------------------------------------------------ schemas
    def table_info(
        self, table: int | str, ts: int | None = None, bypass_locks: Collection[int] = ()
    ) -> TableInfo:
        """The newest schema of ``table`` (id or name) the log has applied.
        Given a read's ``ts``: a table this replica does not know yet while a
        schema key is locked at or below ``ts`` raises :class:`KeyIsLockedError`
        for that lock, not :class:`TableNotFoundError`: the DDL may be
        committed with its schema key's commit still on the way (secondaries
        commit in the background), and the reader resolves it as for a row."""
        with self._mu:
            try:
                return self._schema_of(table)
            except TableNotFoundError:
                if ts is not None:
                    for tid, lock in sorted(self._schema_locks.items()):
                        if _blocks(lock, ts, bypass_locks):
                            raise KeyIsLockedError(_lock_info(table_meta_key(tid), lock)) from None
                raise

    def tables(self) -> list[TableInfo]:
        with self._mu:
            return [info for _, info in self._schemas.values()]

    def _schema_of(self, table: int | str) -> TableInfo:
        tid = self._names.get(table) if isinstance(table, str) else table
        entry = self._schemas.get(tid) if tid is not None else None
        if entry is None:
            raise TableNotFoundError(str(table))
        return entry[1]

    def _decode_schema(self, table_id: int, given: TableInfo | None) -> TableInfo | None:
        """The schema to decode with: the newer of the log's and the caller's
        (both are committed schemas; columns are only ever added)."""
        entry = self._schemas.get(table_id)
        mine = entry[1] if entry is not None else None
        if given is None or given.id != table_id:
            return mine
        if mine is None or given.version > mine.version:
            return given
        return mine

    # ------------------------------------------------------------ reads
    def read(
        self,
        table: int | str | TableInfo,
        ts: int,
        columns: Sequence[str] | None = None,
        predicate: pc.Expression | None = None,
        bypass_locks: Collection[int] = (),
        predicate_columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Rows of ``table`` visible at ``ts``, in primary-key order: exactly
        what a row-store scan of the table's rows at ``ts`` returns.

        ``table``: an id, a name, or a :class:`TableInfo` (whose columns then
        shape the result, as :func:`kvstore.client.tables.scan_rows` would).
        ``columns`` projects; ``predicate`` (a ``pyarrow.compute`` expression
        over column names) filters after the MVCC filter; ``predicate_columns``
        (the columns it names) lets the read take only those and the
        projected ones. Raises
        :class:`KeyIsLockedError` for the first lock (in key order) on a row
        of the table that blocks a read at ``ts`` (resolve it and retry,
        passing ``bypass_locks`` as for the row store),
        :class:`GcTooEarlyError` below the GC safe point,
        :class:`TableNotFoundError` if no schema is known."""
        snap = self._snapshot(table, ts, bypass_locks)
        info = snap.info
        if not snap.parts:
            return info.arrow_schema(columns).empty_table()
        if snap.view is not None:
            need = _needed(info, columns, predicate, predicate_columns)
            return _finish(snap.view.table(need), info, columns, predicate)
        return _select(snap.parts, snap.is_sorted, info, ts, columns, predicate, predicate_columns)

    def aggregate(
        self,
        table: int | str | TableInfo,
        ts: int,
        group_by: Sequence[str],
        aggregates: Sequence[Agg],
        predicate: pc.Expression | Sequence[Comparison] | None = None,
        bypass_locks: Collection[int] = (),
        predicate_columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """:func:`columnar.aggregate.partial_aggregate` of what :meth:`read`
        returns for the same arguments. ``predicate``: an expression, or a
        list of :data:`~columnar.aggregate.Comparison` (ANDed), which a
        global aggregate evaluates with compute kernels in parallel
        (:func:`~columnar.aggregate.filtered_aggregate`). On a stable base it
        runs without materialising the filtered rows of the grouping columns,
        and groups string keys by their dictionary codes."""
        where: list[Comparison] | None = None
        if isinstance(predicate, (list, tuple)):
            where = list(predicate)
            predicate = comparison_expression(where)
            if predicate_columns is None:
                predicate_columns = [c for w in where for c in comparison_columns(w)]
        snap = self._snapshot(table, ts, bypass_locks)
        info = snap.info
        wanted = list(dict.fromkeys([*group_by, *aggregate_columns(aggregates)]))
        if snap.view is not None:
            need = _needed(info, wanted, predicate, predicate_columns)
            strings = [c.name for c in need if c.name in group_by and c.kind.value == "string"]
            rows = snap.view.table(need, strings)
            if where is not None:
                return filtered_aggregate(rows, group_by, aggregates, where)
            return partial_aggregate(rows, group_by, aggregates, predicate)
        if not snap.parts:
            rows = info.arrow_schema(wanted or None).empty_table()
        else:
            rows = _select(
                snap.parts, snap.is_sorted, info, ts, wanted or None, predicate, predicate_columns
            )
        return partial_aggregate(rows, group_by, aggregates)

    def _snapshot(
        self, table: int | str | TableInfo, ts: int, bypass_locks: Collection[int]
    ) -> _Snapshot:
        """Under the lock: the checks every read makes (positive ts, safe
        point, schema, locks, undecoded rows), then the parts to read, and
        the stable base's :class:`LatestView` if it alone answers at ``ts``
        (the view is computed, when new, after releasing the lock)."""
        if not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0:
            raise InvalidArgumentError("read timestamp must be a positive int")
        with self._mu:
            if ts < self._safe_point:
                raise GcTooEarlyError(
                    f"timestamp {ts} is below the GC safe point {self._safe_point}"
                )
            if isinstance(table, TableInfo):
                out_info, tid = table, table.id
            else:
                out_info = self._schema_of(table)
                tid = out_info.id
            self._check_locks(tid, ts, bypass_locks)
            td = self._tables.get(tid)
            if td is None:
                return _Snapshot(out_info, [], False, None)
            td.flush(self._decode_schema(tid, out_info))
            if td.raw_visible_at(ts):
                raise SchemaError(
                    f"rows of table #{tid} were written by a schema this replica has not "
                    "applied yet; wait for the log and retry"
                )
            parts = td.parts()
            stable = td.stable if not td.deltas else None
        if stable is None:
            return _Snapshot(out_info, parts, False, None)
        # The base alone: sorted, and maybe answered by its view.
        view = td.view_of(stable)
        return _Snapshot(out_info, parts, True, view if ts >= view.max_ts else None)

    def _check_locks(self, table_id: int, ts: int, bypass: Collection[int]) -> None:
        locks = self._locks.get(table_id)
        if not locks:
            return
        blocking = [k for k, lock in locks.items() if _blocks(lock, ts, bypass)]
        if blocking:
            first = min(blocking)
            user, _ = decode_bytes(first)
            raise KeyIsLockedError(_lock_info(user[1:], locks[first]))

    # ------------------------------------------------------------ compaction
    def needs_compaction(self, table_id: int, *, any_delta: bool = False) -> bool:
        """Has ``table_id`` piled up enough to compact (``MAX_DELTAS``
        deltas, or undecoded rows)? With ``any_delta``: has it anything to
        compact at all (one delta makes every read re-sort the whole table,
        and skips the stable base's :class:`LatestView`)."""
        with self._mu:
            td = self._tables.get(table_id)
            if td is None:
                return False
            return len(td.deltas) >= (1 if any_delta else MAX_DELTAS) or td.raw_count > 0

    def compact(self, table: int | None = None) -> int:
        """Merge deltas into the stable base (of one table id, or all);
        returns the number of tables compacted. Safe to call from any thread
        while apply and reads go on (see the module docstring)."""
        with self._mu:
            ids = list(self._tables) if table is None else [table]
        done = 0
        for tid in ids:
            with self._compact_mu:
                done += self._compact_one(tid)
        return done

    def _compact_one(self, tid: int) -> int:
        with self._mu:
            td = self._tables.get(tid)
            info = self._decode_schema(tid, None)
            if td is None or info is None:
                return 0
            td.flush(info)
            if not td.deltas:
                return 0
            parts, n_deltas, epoch = td.parts(), len(td.deltas), td.epoch
            safe_point = self._safe_point
        merged = prune(sort_versions(merge(parts, info.columns)), safe_point).combine_chunks()
        with self._mu:
            if td.epoch != epoch or self._tables.get(tid) is not td:
                return 0
            td.stable = merged
            td.deltas = td.deltas[n_deltas:]
        return 1

    def table_storage(self) -> list[tuple[str, int, int, int]]:
        """Per table with a schema: (name, stable rows, delta parts, raw
        rows); a table is fully compacted when the last two are 0."""
        with self._mu:
            out = []
            for tid, td in sorted(self._tables.items()):
                info = self._decode_schema(tid, None)
                if info is None:
                    continue
                stable = td.stable.num_rows if td.stable is not None else 0
                out.append((info.name, stable, len(td.deltas), td.raw_count))
            return out

    def stats(self) -> dict[str, int]:
        with self._mu:
            return {
                "tables": len(self._tables),
                "raw_rows": sum(t.raw_count for t in self._tables.values()),
                "delta_parts": sum(len(t.deltas) for t in self._tables.values()),
                "stable_rows": sum(
                    t.stable.num_rows for t in self._tables.values() if t.stable is not None
                ),
                "locks": sum(len(v) for v in self._locks.values()),
                "pending_values": len(self._values),
            }


def _needed(
    info: TableInfo,
    columns: Sequence[str] | None,
    predicate: pc.Expression | None,
    predicate_columns: Sequence[str] | None,
) -> list[ColumnInfo]:
    """The columns a read must take: the answer's, plus the predicate's. The
    predicate may name any column: without its list, take them all."""
    out_cols = list(info.columns) if columns is None else [info.column(n) for n in columns]
    if predicate is None:
        return out_cols
    if predicate_columns is None:
        return list(info.columns)
    wanted = {c.name for c in out_cols} | set(predicate_columns)
    return [c for c in info.columns if c.name in wanted]


def _finish(
    t: pa.Table, info: TableInfo, columns: Sequence[str] | None, predicate: pc.Expression | None
) -> pa.Table:
    """Filter the visible rows ``t`` and project the answer's columns."""
    if predicate is not None:
        t = t.filter(predicate)
    t = t.select(list(info.column_names) if columns is None else list(columns))
    return t.combine_chunks() if t.num_rows else t


def _select(
    parts: list[pa.Table],
    is_sorted: bool,
    info: TableInfo,
    ts: int,
    columns: Sequence[str] | None,
    predicate: pc.Expression | None,
    predicate_columns: Sequence[str] | None = None,
) -> pa.Table:
    need = _needed(info, columns, predicate, predicate_columns)
    t = merge(parts, need)
    t, idx = visible_indices(t, ts, is_sorted=is_sorted)
    t = t.drop_columns(list(HIDDEN)).take(pa.array(idx))
    t = t.rename_columns([c.name for c in need])
    t = t.cast(pa.schema([c.arrow_field for c in need]))
    return _finish(t, info, columns, predicate)


__all__ = ["GC_SAFE_POINT_KEY", "ColumnarStore"]
