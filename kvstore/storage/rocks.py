"""RocksDB engine through rocksdict.

Three rocksdict traps shape this module (DESIGN.md §4; each is pinned by a test
in ``tests/test_storage.py`` that fails if the library changes under us):

1. ``Options(raw_mode=False)`` keeps a side config file that is not fsynced, and
   after a power loss the database may not reopen. Everything here is
   ``raw_mode=True``.
2. Iterating a rocksdict ``Snapshot`` ignores the snapshot (only ``snap[key]``
   is consistent). An *open iterator*, however, pins an implicit snapshot. So a
   :class:`RocksSnapshot` is made, under the engine's write lock, of one
   rocksdict snapshot per column family (for point reads) plus one iterator per
   column family (for scans): all taken between two writes, hence at one
   sequence number.
3. ``ReadOptions.set_iterate_lower_bound()`` sets the *upper* bound. Scans use
   ``seek``/``seek_for_prev`` plus ``set_iterate_upper_bound`` and check the
   lower bound themselves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from rocksdict import (
    Options,
    Rdict,
    ReadOptions,
    WriteOptions,
)
from rocksdict import (
    WriteBatch as RocksWriteBatch,
)

from kvstore.errors import ClosedError, InvalidArgumentError, KVError, StorageError
from kvstore.storage.engine import ALL_CFS, CF_DEFAULT, OP_DELETE, OP_PUT, WriteBatch


def _options() -> Any:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


def _iter_scan(
    it: Any, start: bytes, end: bytes | None, limit: int | None, reverse: bool
) -> Iterator[tuple[bytes, bytes]]:
    """Drive a positioned-anywhere rocksdict iterator over ``[start, end)``."""
    n = 0
    if limit == 0:
        return
    if not reverse:
        it.seek(start)
        while it.valid():
            k = it.key()
            if end is not None and k >= end:
                return
            yield k, it.value()
            n += 1
            if limit is not None and n >= limit:
                return
            it.next()
    else:
        if end is None:
            it.seek_to_last()
        else:
            it.seek_for_prev(end)
            if it.valid() and it.key() >= end:
                it.prev()
        while it.valid():
            k = it.key()
            if k < start:
                return
            yield k, it.value()
            n += 1
            if limit is not None and n >= limit:
                return
            it.prev()


class RocksSnapshot:
    """A consistent view across all column families (see module docstring)."""

    def __init__(self, engine: RocksEngine):
        # Called with engine._write_lock held.
        self._snaps = {cf: engine._cf(cf).snapshot() for cf in ALL_CFS}
        self._iters: dict[str, Any] = {cf: engine._cf(cf).iter() for cf in ALL_CFS}
        self._busy: set[str] = set()

    def get(self, cf: str, key: bytes) -> bytes | None:
        try:
            snap = self._snaps[cf]
        except KeyError:
            raise InvalidArgumentError(f"unknown column family {cf!r}") from None
        try:
            value: bytes = snap[key]
        except Exception as e:
            # rocksdict 0.3.29: a missing key raises a bare
            # Exception("key not found"), not KeyError (pinned in test_storage).
            if str(e) == "key not found":
                return None
            raise StorageError(f"RocksDB snapshot read failed: {e}") from e
        return value

    def scan(
        self,
        cf: str,
        start: bytes,
        end: bytes | None,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        if cf not in self._iters:
            raise InvalidArgumentError(f"unknown column family {cf!r}")
        if cf in self._busy:
            # The one pinned iterator per CF cannot serve two scans at once.
            raise KVError(f"a scan of {cf!r} on this snapshot is already open")
        return self._scan(cf, start, end, limit, reverse)

    def _scan(
        self, cf: str, start: bytes, end: bytes | None, limit: int | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        if cf in self._busy:  # another scan of cf started after this one was created
            raise KVError(f"a scan of {cf!r} on this snapshot is already open")
        self._busy.add(cf)
        try:
            yield from _iter_scan(self._iters[cf], start, end, limit, reverse)
        finally:
            self._busy.discard(cf)


class RocksEngine:
    """RocksDB with the column families of :mod:`kvstore.storage`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        try:
            self._db = Rdict(
                self.path,
                options=_options(),
                column_families={cf: _options() for cf in ALL_CFS if cf != CF_DEFAULT},
            )
        except Exception as e:  # rocksdict raises bare Exception on I/O errors
            raise StorageError(f"cannot open RocksDB at {self.path}: {e}") from e
        self._cfs = {cf: self._db.get_column_family(cf) for cf in ALL_CFS if cf != CF_DEFAULT}
        self._cfs[CF_DEFAULT] = self._db
        self._handles = {cf: self._db.get_column_family_handle(cf) for cf in ALL_CFS}
        self._sync_opts = WriteOptions()
        self._sync_opts.sync = True
        self._nosync_opts = WriteOptions()
        # Writers and snapshot-takers serialise on this lock so a snapshot's
        # per-CF views are all taken between the same two writes.
        self._write_lock = threading.Lock()
        self._closed = False

    def _cf(self, cf: str) -> Any:
        if self._closed:
            raise ClosedError("engine is closed")
        try:
            return self._cfs[cf]
        except KeyError:
            raise InvalidArgumentError(f"unknown column family {cf!r}") from None

    def get(self, cf: str, key: bytes) -> bytes | None:
        value: bytes | None = self._cf(cf).get(key)
        return value

    def scan(
        self,
        cf: str,
        start: bytes,
        end: bytes | None,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        db = self._cf(cf)
        if not reverse and end is not None:
            ro = ReadOptions()
            ro.set_iterate_upper_bound(end)
            it = db.iter(ro)
        else:
            it = db.iter()
        # The iterator is created here, not on first next(): the scan sees the
        # engine as of this call.
        return _iter_scan(it, start, end, limit, reverse)

    def write(self, batch: WriteBatch, *, sync: bool = False) -> None:
        if batch.is_empty():
            return
        if self._closed:  # close() clears _handles: without this, "unknown column family"
            raise ClosedError("engine is closed")
        wb = RocksWriteBatch(raw_mode=True)
        for op, cf, key, value in batch.ops:
            try:
                handle = self._handles[cf]
            except KeyError:
                raise InvalidArgumentError(f"unknown column family {cf!r}") from None
            if op == OP_PUT:
                wb.put(key, value, handle)
            elif op == OP_DELETE:
                wb.delete(key, handle)
            else:
                assert value is not None  # OP_DELETE_RANGE carries the range end
                wb.delete_range(key, value, handle)
        with self._write_lock:
            if self._closed:
                raise ClosedError("engine is closed")
            try:
                self._db.write(wb, self._sync_opts if sync else self._nosync_opts)
            except Exception as e:
                raise StorageError(f"RocksDB write failed: {e}") from e

    def snapshot(self) -> RocksSnapshot:
        with self._write_lock:
            if self._closed:
                raise ClosedError("engine is closed")
            return RocksSnapshot(self)

    def sync_wal(self) -> None:
        """Force the WAL to stable storage (covers every write so far)."""
        self._db.flush_wal(True)

    def approximate_size(self) -> int:
        return int(self._db.property_int_value("rocksdb.estimate-live-data-size") or 0)

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._cfs.clear()
            self._handles.clear()
            self._db.close()
