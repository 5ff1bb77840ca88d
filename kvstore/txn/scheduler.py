"""Runs transaction commands: latches, read, action, one write batch.

This is the store-side half of the Kv service (TiKV ``storage::txn::scheduler``):
each command takes the latches of its keys, reads the current state through an
:class:`~kvstore.mvcc.MvccReader`, runs the actions of
:mod:`kvstore.txn.actions` and writes the resulting batch with one call. A
command that raises writes nothing. Reads (``kv_get``/``kv_scan``) take no
latches (see :mod:`kvstore.mvcc` for why they are consistent anyway).

The scheduler speaks *user* keys (it encodes them into the transactional key
space itself) and validates every argument: it is the trust boundary, whoever
the caller is.

Writes go through a :class:`WriteSink`: the engine itself in an embedded store,
a Region's Raft proposal once replication exists. Batches that decide a
transaction's fate (commits, rollbacks, TTL-expiry decisions) are written with
``sync=True`` when the sink is durable; prewrites ride on the write-ahead
log order, since the later synced commit makes everything before it durable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore import codec, tablecodec
from kvstore.errors import GcTooEarlyError, InvalidArgumentError, KeyIsLockedError
from kvstore.mvcc import MvccReader, MvccTxn
from kvstore.mvcc.reader import lock_info
from kvstore.storage import CF_DEFAULT, CF_RAFT, CF_WRITE, Reader, WriteBatch
from kvstore.storage.engine import OP_PUT
from kvstore.txn import actions
from kvstore.txn.latches import Latches
from kvstore.types import (
    SHORT_VALUE_MAX_LEN,
    TS_MAX,
    LockInfo,
    Mutation,
    Op,
    TxnStatus,
    Write,
    WriteType,
    validate_key,
    validate_limit,
    validate_range,
    validate_value,
)

GC_SAFE_POINT_KEY = b"gc_safe_point"
GC_BATCH_KEYS = 256


class WriteSink(Protocol):
    """Where command results go: ``reader`` for the state they are computed
    on, ``write`` to make a batch take effect."""

    def get(self, cf: str, key: bytes) -> bytes | None: ...

    def write(self, batch: WriteBatch, *, sync: bool = False) -> None: ...


@dataclass
class GcStats:
    keys_scanned: int = 0
    versions_removed: int = 0
    skipped: bool = False  # nothing could be collected: only the safe point moved


@dataclass(frozen=True)
class _GcDone:
    """What the last full GC scan left: every record at or below
    ``safe_point`` is the one PUT of its key it keeps, the oldest record
    above it is at ``next_ts`` (:data:`TS_MAX` + 1: none), and this
    scheduler's write count was ``writes`` when the scan began, in
    leadership ``epoch``."""

    epoch: object
    safe_point: int
    next_ts: int
    writes: int


def _check_ts(name: str, ts: object) -> int:
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 < ts <= TS_MAX:
        raise InvalidArgumentError(f"{name} must be a positive 64-bit timestamp")
    return ts


def _check_u64(name: str, v: object) -> int:
    # Lock fields are stored as u64: reject what would fail to encode.
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= TS_MAX:
        raise InvalidArgumentError(f"{name} must be an unsigned 64-bit int")
    return v


class TxnScheduler:
    def __init__(
        self,
        reader: Reader,
        sink: WriteSink,
        *,
        durable: bool = True,
        latches: Latches | None = None,
        bounds: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> None:
        """``bounds``: the encoded key range this scheduler serves (a
        Region's ``[start, end)``, ``end=b""`` unbounded); range commands are
        clipped to it. None: the whole key space (an embedded store)."""
        self._reader = MvccReader(reader)
        self._raw_reader = reader
        self._sink = sink
        self._durable = durable
        self.latches = latches or Latches()
        self._bounds = bounds
        self._gc_lock = threading.Lock()
        self._writes = 0  # MVCC writes made here (GC's own excepted), twice each
        self._writes_mu = threading.Lock()
        self._gc_done: _GcDone | None = None
        raw = sink.get(CF_RAFT, GC_SAFE_POINT_KEY)
        self._safe_point = int(raw) if raw else 0

    def _range(self, start: bytes, end: bytes | None) -> tuple[bytes, bytes]:
        lo, hi = codec.txn_range(start, end)
        if self._bounds is not None:
            b_lo, b_hi = self._bounds()
            lo = max(lo, b_lo)
            if b_hi:
                hi = min(hi, b_hi)
        return lo, hi

    @property
    def gc_safe_point(self) -> int:
        # Read from the engine, not only remembered: with replication, the
        # safe point arrives through the log on every replica, and a new
        # leader must enforce what the old one published.
        raw = self._sink.get(CF_RAFT, GC_SAFE_POINT_KEY)
        self._safe_point = max(self._safe_point, int(raw) if raw else 0)
        return self._safe_point

    def _check_read_ts(self, ts: int) -> None:
        _check_ts("read timestamp", ts)
        if ts < self.gc_safe_point:
            raise GcTooEarlyError(f"timestamp {ts} is below the GC safe point {self._safe_point}")

    def _write(self, txn: MvccTxn, *, decisive: bool, gc: bool = False) -> None:
        if txn.batch.is_empty():
            return
        if gc:
            self._sink.write(txn.batch, sync=decisive and self._durable)
            return
        self._count_write()
        try:
            self._sink.write(txn.batch, sync=decisive and self._durable)
        finally:
            self._count_write()

    def _count_write(self) -> None:
        # Counted as it starts and as it ends (applied, failed or unknown),
        # so a GC scan that overlaps a write in any way sees the count move.
        with self._writes_mu:
            self._writes += 1

    # ---------------------------------------------------------------- reads
    def kv_get(self, key: bytes, version: int, bypass_locks: Collection[int] = ()) -> bytes | None:
        validate_key(key)
        self._check_read_ts(version)
        return self._reader.get(codec.txn_key(key), version, bypass_locks)

    def kv_batch_get(
        self, keys: Sequence[bytes], version: int, bypass_locks: Collection[int] = ()
    ) -> dict[bytes, bytes]:
        if not isinstance(keys, (list, tuple)):
            raise InvalidArgumentError("batch_get takes a list of keys")
        for k in keys:
            validate_key(k)
        self._check_read_ts(version)
        out = {}
        for k in keys:
            v = self._reader.get(codec.txn_key(k), version, bypass_locks)
            if v is not None:
                out[k] = v
        return out

    def kv_scan(
        self,
        start: bytes,
        end: bytes | None,
        version: int,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]:
        start, end = validate_range(start, end)
        limit = validate_limit(limit)
        self._check_read_ts(version)
        lo, hi = self._range(start, end)
        rows = self._reader.scan(lo, hi, version, limit=limit, bypass_locks=bypass_locks)
        return [(codec.decode_txn_key(k), v) for k, v in rows]

    # ---------------------------------------------------------------- 2PC
    def kv_prewrite(
        self,
        mutations: Sequence[Mutation],
        primary: bytes,
        start_ts: int,
        lock_ttl: int,
        txn_size: int = 0,
        min_commit_ts: int = 0,
    ) -> list[LockInfo]:
        """Prewrite ``mutations``. Returns the locks of other transactions that
        block it (then nothing was written); raises WriteConflict /
        AlreadyExists (then nothing was written either)."""
        validate_key(primary)
        self._check_read_ts(start_ts)
        if not mutations:
            raise InvalidArgumentError("prewrite needs at least one mutation")
        encoded = []
        for m in mutations:
            if not isinstance(m, Mutation) or not isinstance(m.op, Op):
                raise InvalidArgumentError("mutations must be Mutation records")
            validate_key(m.key)
            if m.op in (Op.PUT, Op.INSERT):
                validate_value(m.value)
            encoded.append(Mutation(m.op, codec.txn_key(m.key), m.value))
        if _check_u64("lock_ttl", lock_ttl) == 0:
            raise InvalidArgumentError("lock_ttl must be a positive number of milliseconds")
        _check_u64("txn_size", txn_size)
        _check_u64("min_commit_ts", min_commit_ts)
        txn = MvccTxn(start_ts)
        with self.latches.acquire(m.key for m in encoded):
            blocked = []
            for m in encoded:
                info = actions.prewrite(
                    self._reader, txn, m, primary, lock_ttl, txn_size, min_commit_ts
                )
                if info is not None:
                    blocked.append(info)
            if blocked:
                return blocked
            self._write(txn, decisive=False)
        return []

    def kv_commit(self, keys: Sequence[bytes], start_ts: int, commit_ts: int) -> None:
        enc = self._encode_keys(keys)
        _check_ts("start_ts", start_ts)
        _check_ts("commit_ts", commit_ts)
        txn = MvccTxn(start_ts)
        with self.latches.acquire(enc):
            for k in enc:
                actions.commit(self._reader, txn, k, commit_ts)
            self._write(txn, decisive=True)

    def kv_batch_rollback(self, keys: Sequence[bytes], start_ts: int) -> None:
        enc = self._encode_keys(keys)
        _check_ts("start_ts", start_ts)
        txn = MvccTxn(start_ts)
        with self.latches.acquire(enc):
            for k in enc:
                actions.rollback(self._reader, txn, k)
            self._write(txn, decisive=True)

    def kv_check_txn_status(
        self,
        primary: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool = True,
    ) -> TxnStatus:
        validate_key(primary)
        _check_ts("lock_ts", lock_ts)
        _check_ts("current_ts", current_ts)
        _check_u64("caller_start_ts", caller_start_ts)
        key = codec.txn_key(primary)
        txn = MvccTxn(lock_ts)
        with self.latches.acquire([key]):
            status = actions.check_txn_status(
                self._reader, txn, key, caller_start_ts, current_ts, rollback_if_not_exist
            )
            self._write(txn, decisive=True)
        return status

    def kv_resolve_lock(
        self, start_ts: int, commit_ts: int, keys: Sequence[bytes] | None = None
    ) -> int:
        """Commit (``commit_ts > 0``) or roll back (``0``) the locks of
        transaction ``start_ts``: on ``keys``, or on every key it still locks.
        Returns the number of keys resolved."""
        _check_ts("start_ts", start_ts)
        if commit_ts:
            _check_ts("commit_ts", commit_ts)
        if keys is None:
            lo, hi = self._range(b"", None)
            enc = [k for k, lock in self._reader.scan_locks(lo, hi) if lock.start_ts == start_ts]
        else:
            enc = self._encode_keys(keys)
        txn = MvccTxn(start_ts)
        with self.latches.acquire(enc):
            for k in enc:
                actions.resolve_lock(self._reader, txn, k, commit_ts)
            self._write(txn, decisive=True)
        return len(enc)

    def kv_scan_lock(
        self, max_ts: int, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[LockInfo]:
        _check_ts("max_ts", max_ts)
        start, end = validate_range(start, end)
        lo, hi = self._range(start, end)
        return actions.scan_lock(self._reader, max_ts, lo, hi, validate_limit(limit))

    def kv_txn_heart_beat(self, primary: bytes, start_ts: int, advise_ttl: int) -> int:
        validate_key(primary)
        _check_ts("start_ts", start_ts)
        _check_u64("advise_ttl", advise_ttl)
        key = codec.txn_key(primary)
        txn = MvccTxn(start_ts)
        with self.latches.acquire([key]):
            lock = actions.txn_heart_beat(self._reader, key, start_ts, advise_ttl)
            txn.put_lock(key, lock)
            self._write(txn, decisive=False)
        return lock.ttl

    # ---------------------------------------------------------------- bulk import
    def kv_import(self, pairs: Sequence[tuple[bytes, bytes]], commit_ts: int, table_id: int) -> int:
        """Write ``pairs`` as committed at ``commit_ts``: per key the write
        record (and, for a long value, the ``default`` record) that a prewrite
        plus commit would have left, with ``start_ts = commit_ts``, and no
        lock; one batch. Returns the number of pairs written.

        The caller (``sql.load``'s physical import) keeps every other writer
        out of the table (its schema is marked importing) and has checked it
        empty; so, like TiKV's ingest, this takes no latches and reads no
        existing version. What is checked here is what any write is checked
        for: key and value sizes, keys inside table ``table_id`` (row or
        index keys), each key once, the safe point; and no lock in the keys'
        range (a writer the caller failed to keep out is refused rather than
        overwritten under its lock). Writing the same pairs again writes the
        same records, so a retry after a lost answer is harmless."""
        if not isinstance(pairs, (list, tuple)) or not pairs:
            raise InvalidArgumentError("import needs a non-empty list of (key, value) pairs")
        if not isinstance(table_id, int) or isinstance(table_id, bool) or table_id <= 0:
            raise InvalidArgumentError("import needs a positive table id")
        self._check_read_ts(commit_ts)
        prefix = tablecodec.table_prefix(table_id)
        rows, index = prefix + tablecodec.ROW_SEP, prefix + tablecodec.INDEX_SEP
        encoded: list[tuple[bytes, bytes]] = []
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgumentError("import takes (key, value) pairs")
            k, v = pair
            validate_key(k)
            validate_value(v)
            if not (k.startswith(rows) or k.startswith(index)) or len(k) == len(rows):
                raise InvalidArgumentError(
                    f"key {k[:40]!r} is not a row or index key of table {table_id}"
                )
            encoded.append((codec.txn_key(k), v))
        encoded.sort()
        for i in range(1, len(encoded)):
            if encoded[i][0] == encoded[i - 1][0]:
                raise InvalidArgumentError(
                    f"key {codec.decode_txn_key(encoded[i][0])[:40]!r} is imported twice"
                )
        for k, lock in self._reader.scan_locks(encoded[0][0], encoded[-1][0] + b"\x00", limit=1):
            raise KeyIsLockedError(lock_info(k, lock))
        # One record head for every key: the same type and timestamps.
        suffix = codec.append_ts(b"", commit_ts)
        head = Write(WriteType.PUT, commit_ts).to_bytes()
        short_head = head + b"\x01"
        batch = WriteBatch()
        ops = batch.ops
        for k, v in encoded:
            vk = k + suffix
            if len(v) <= SHORT_VALUE_MAX_LEN:
                ops.append((OP_PUT, CF_WRITE, vk, short_head + v))
            else:
                # Before the write record in the batch: the columnar learner
                # looks the value up when it meets the record.
                ops.append((OP_PUT, CF_DEFAULT, vk, v))
                ops.append((OP_PUT, CF_WRITE, vk, head))
        self._count_write()
        try:
            self._sink.write(batch, sync=self._durable)
        finally:
            self._count_write()
        return len(encoded)

    # ---------------------------------------------------------------- GC
    def kv_gc(self, safe_point: int, *, epoch: object = None) -> GcStats:
        """Advance the safe point and drop the versions below it.

        Callers must first resolve every lock with ``lock_ts <= safe_point``
        (``kvstore.client`` does so); a remaining one makes GC refuse, since
        the versions its owner's readers need may be those about to go.

        ``epoch``: given by a caller through which every write of the key
        range passes while the epoch lasts (a Region leader's term), it lets
        a round skip the scan when nothing can be collected: a full scan at
        safe point ``s0`` leaves one PUT per key at or below ``s0``, so a
        safe point ``s1`` can only collect something if a record lies in
        ``(s0, s1]``; if the oldest record above ``s0`` that the scan met is
        above ``s1`` and no write was made since, in the same epoch, none
        does. The store's GC worker runs every 10 s, and a full scan of a
        1M-key Region costs ~1 s of CPU even when it removes nothing (a
        bulk load's records stay above the safe point for the whole GC
        lifetime: one scan once the safe point passes them, none before).
        """
        _check_ts("safe_point", safe_point)
        lo, hi = self._range(b"", None)
        with self._gc_lock:
            if safe_point < self._safe_point:
                raise InvalidArgumentError(
                    f"safe point {safe_point} is below the current {self._safe_point}"
                )
            for k, lock in self._reader.scan_locks(lo, hi):
                if lock.start_ts <= safe_point:
                    raise InvalidArgumentError(
                        f"lock {lock_info(k, lock)} is at or below the safe point; resolve it first"
                    )
            # Publish first: from now on no read or prewrite below it is let in.
            b = WriteBatch()
            b.put(CF_RAFT, GC_SAFE_POINT_KEY, str(safe_point).encode())
            self._sink.write(b, sync=self._durable)
            self._safe_point = safe_point
            stats = GcStats()
            done = self._gc_done
            if (
                epoch is not None
                and done is not None
                and done.epoch == epoch
                and done.writes == self._writes
                and safe_point < done.next_ts
            ):
                stats.skipped = True
                return stats
            with self._writes_mu:
                writes = self._writes  # a write racing the scan moves it on
            above = [TS_MAX + 1]
            for chunk in self._key_chunks(lo, hi, safe_point, above):
                txn = MvccTxn(0)
                with self.latches.acquire(chunk):
                    for k in chunk:
                        stats.versions_removed += actions.gc(self._reader, txn, k, safe_point)
                    self._write(txn, decisive=False, gc=True)
                stats.keys_scanned += len(chunk)
            self._gc_done = _GcDone(epoch, safe_point, above[0], writes)
        return stats

    def _key_chunks(
        self, lo: bytes, hi: bytes, safe_point: int, above: list[int]
    ) -> Iterable[list[bytes]]:
        """The user keys with write records in ``[lo, hi)``, in chunks;
        ``above[0]`` ends as the oldest record timestamp above ``safe_point``
        met (unchanged if none)."""
        chunk: list[bytes] = []
        last = None
        for vk, _ in self._raw_reader.scan(CF_WRITE, lo, hi):
            k, ts = codec.split_ts(vk)
            if safe_point < ts < above[0]:
                above[0] = ts
            if k == last:
                continue
            last = k
            chunk.append(k)
            if len(chunk) >= GC_BATCH_KEYS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    @staticmethod
    def _encode_keys(keys: Sequence[bytes]) -> list[bytes]:
        if not isinstance(keys, (list, tuple)) or not keys:
            raise InvalidArgumentError("expected a non-empty list of keys")
        return [codec.txn_key(validate_key(k)) for k in keys]


__all__ = ["GcStats", "TxnScheduler", "WriteSink"]
