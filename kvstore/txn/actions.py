"""Percolator actions with TiKV semantics.

Each action reads through an :class:`~kvstore.mvcc.MvccReader` and records its
changes in an :class:`~kvstore.mvcc.MvccTxn`; it never writes the engine
itself. The caller (:mod:`kvstore.txn.scheduler`) holds the latches of the
keys involved, runs the action, and writes the batch only if the action
succeeded: a failed action writes nothing.

All ``key`` arguments are encoded keys (:func:`kvstore.codec.txn_key`).

Pure module: no clock. Time enters only as the ``current_ts`` argument (a
TSO timestamp) of the actions that judge TTL expiry.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvstore.codec import decode_txn_key
from kvstore.errors import (
    AlreadyExistsError,
    CommittedError,
    CommitTsExpiredError,
    InvalidArgumentError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    WriteConflictError,
)
from kvstore.mvcc import MvccReader, MvccTxn
from kvstore.mvcc.reader import lock_info
from kvstore.types import (
    SHORT_VALUE_MAX_LEN,
    TS_MAX,
    Lock,
    LockInfo,
    LockType,
    Mutation,
    Op,
    TxnAction,
    TxnStatus,
    Write,
    WriteType,
    physical_ms,
)

_LOCK_TYPE = {
    Op.PUT: LockType.PUT,
    Op.INSERT: LockType.PUT,
    Op.DELETE: LockType.DELETE,
    Op.LOCK: LockType.LOCK,
}


def lock_expired(lock: Lock, current_ts: int) -> bool:
    """TTL is counted in milliseconds of physical time from the lock's start_ts."""
    return physical_ms(lock.start_ts) + lock.ttl < physical_ms(current_ts)


# --------------------------------------------------------------- prewrite
def prewrite(
    reader: MvccReader,
    txn: MvccTxn,
    mutation: Mutation,
    primary: bytes,
    lock_ttl: int,
    txn_size: int = 0,
    min_commit_ts: int = 0,
) -> LockInfo | None:
    """Prewrite one key. Returns the blocking lock if another transaction holds
    one (the caller collects these and writes nothing), raises
    WriteConflict/AlreadyExists, or records the lock (and large value) in
    ``txn``. ``mutation.key`` is encoded; ``primary`` is a user key."""
    key, start_ts = mutation.key, txn.start_ts
    lock = reader.load_lock(key)
    if lock is not None:
        if lock.start_ts != start_ts:
            return lock_info(key, lock)
        return None  # our own lock: a retried prewrite, already done

    newest = reader.newest_write(key)
    if newest is not None:
        commit_ts, w = newest
        conflict = commit_ts > start_ts or (
            commit_ts == start_ts and w.write_type == WriteType.ROLLBACK
        )
        if conflict:
            record = reader.get_txn_commit_record(key, start_ts)
            if record is not None and not record.is_rollback:
                return None  # we committed already: a late duplicate prewrite
            raise WriteConflictError(
                key=decode_txn_key(key),
                start_ts=start_ts,
                conflict_start_ts=w.start_ts,
                conflict_commit_ts=commit_ts,
                reason="self_rolled_back" if record is not None else "optimistic",
            )

    if mutation.op in (Op.INSERT, Op.CHECK_NOT_EXISTS):
        # No write newer than start_ts exists (checked above), so the newest
        # data version is the one visible at start_ts.
        visible = reader.get_write(key, TS_MAX)
        if visible is not None and visible[1].write_type == WriteType.PUT:
            raise AlreadyExistsError(decode_txn_key(key))
        if mutation.op == Op.CHECK_NOT_EXISTS:
            return None

    lock_type = _LOCK_TYPE[mutation.op]
    short: bytes | None = None
    if lock_type == LockType.PUT:
        if len(mutation.value) <= SHORT_VALUE_MAX_LEN:
            short = mutation.value
        else:
            txn.put_value(key, start_ts, mutation.value)
    txn.put_lock(
        key,
        Lock(
            lock_type=lock_type,
            primary=primary,
            start_ts=start_ts,
            ttl=lock_ttl,
            min_commit_ts=max(min_commit_ts, start_ts + 1),
            txn_size=txn_size,
            short_value=short,
        ),
    )
    return None


# --------------------------------------------------------------- commit
def commit(reader: MvccReader, txn: MvccTxn, key: bytes, commit_ts: int) -> None:
    """Turn our lock on ``key`` into a commit record at ``commit_ts``.

    Idempotent: committing an already committed key succeeds. Raises
    :class:`TxnLockNotFoundError` if the transaction was rolled back (or never
    prewrote this key) and :class:`CommitTsExpiredError` if a reader pushed
    ``min_commit_ts`` above ``commit_ts``.
    """
    start_ts = txn.start_ts
    if commit_ts <= start_ts:
        raise InvalidArgumentError(f"commit_ts {commit_ts} must exceed start_ts {start_ts}")
    lock = reader.load_lock(key)
    if lock is not None and lock.start_ts == start_ts:
        if commit_ts < lock.min_commit_ts:
            raise CommitTsExpiredError(decode_txn_key(key), start_ts, commit_ts, lock.min_commit_ts)
        txn.put_write(
            key,
            commit_ts,
            Write(WriteType.from_lock_type(lock.lock_type), start_ts, lock.short_value),
        )
        txn.unlock_key(key)
        return
    record = reader.get_txn_commit_record(key, start_ts)
    if record is not None and not record.is_rollback:
        return
    raise TxnLockNotFoundError(decode_txn_key(key), start_ts)


# --------------------------------------------------------------- rollback
def _rollback_lock(txn: MvccTxn, key: bytes, lock: Lock) -> None:
    if lock.lock_type == LockType.PUT and lock.short_value is None:
        txn.delete_value(key, lock.start_ts)
    txn.unlock_key(key)
    txn.put_write(key, lock.start_ts, Write(WriteType.ROLLBACK, lock.start_ts))


def rollback(reader: MvccReader, txn: MvccTxn, key: bytes) -> None:
    """Roll transaction ``txn.start_ts`` back on ``key``.

    Always leaves a ROLLBACK record at ``key + ~start_ts``, even when no lock
    was found, so that a prewrite of this transaction arriving late fails.
    Raises :class:`CommittedError` if the key is already committed.
    """
    start_ts = txn.start_ts
    lock = reader.load_lock(key)
    if lock is not None and lock.start_ts == start_ts:
        _rollback_lock(txn, key, lock)
        return
    record = reader.get_txn_commit_record(key, start_ts)
    if record is not None:
        if record.is_rollback:
            return
        raise CommittedError(decode_txn_key(key), start_ts, record.commit_ts)
    txn.put_write(key, start_ts, Write(WriteType.ROLLBACK, start_ts))


# --------------------------------------------------------------- status
def check_txn_status(
    reader: MvccReader,
    txn: MvccTxn,
    primary: bytes,
    caller_start_ts: int,
    current_ts: int,
    rollback_if_not_exist: bool,
) -> TxnStatus:
    """Decide the fate of transaction ``txn.start_ts`` at its primary key.

    * lock present and TTL expired at ``current_ts``: roll it back
      (``TTL_EXPIRE_ROLLBACK``);
    * lock present and alive: if ``caller_start_ts`` (a reader) is at or above
      the lock's ``min_commit_ts``, push ``min_commit_ts`` past it so the reader
      may ignore the lock (``MIN_COMMIT_TS_PUSHED``); report the TTL;
    * no lock: the commit record decides; with no record at all, write a
      rollback record if ``rollback_if_not_exist`` (the prewrite may still be
      in flight and must then fail), else raise :class:`TxnNotFoundError`.
    """
    lock_ts = txn.start_ts
    lock = reader.load_lock(primary)
    if lock is not None and lock.start_ts == lock_ts:
        if lock_expired(lock, current_ts):
            _rollback_lock(txn, primary, lock)
            return TxnStatus(action=TxnAction.TTL_EXPIRE_ROLLBACK)
        action = TxnAction.NO_ACTION
        if 0 < caller_start_ts < TS_MAX and lock.min_commit_ts <= caller_start_ts:
            lock = lock.with_min_commit_ts(caller_start_ts + 1)
            txn.put_lock(primary, lock)
            action = TxnAction.MIN_COMMIT_TS_PUSHED
        return TxnStatus(lock_ttl=lock.ttl, action=action, lock=lock_info(primary, lock))

    record = reader.get_txn_commit_record(primary, lock_ts)
    if record is not None:
        if record.is_rollback:
            return TxnStatus()
        return TxnStatus(commit_ts=record.commit_ts)
    if not rollback_if_not_exist:
        raise TxnNotFoundError(decode_txn_key(primary), lock_ts)
    txn.put_write(primary, lock_ts, Write(WriteType.ROLLBACK, lock_ts))
    return TxnStatus(action=TxnAction.LOCK_NOT_EXIST_ROLLBACK)


def txn_heart_beat(reader: MvccReader, primary: bytes, start_ts: int, advise_ttl: int) -> Lock:
    """Extend the TTL of a live transaction's primary lock (never shortens).
    Returns the updated lock for the caller to write."""
    lock = reader.load_lock(primary)
    if lock is None or lock.start_ts != start_ts:
        raise TxnLockNotFoundError(decode_txn_key(primary), start_ts)
    return lock.with_ttl(max(lock.ttl, advise_ttl))


def resolve_lock(reader: MvccReader, txn: MvccTxn, key: bytes, commit_ts: int) -> None:
    """Finish a secondary of a transaction whose primary decided: commit at
    ``commit_ts`` or, when ``commit_ts == 0``, roll back."""
    if commit_ts == 0:
        rollback(reader, txn, key)
    else:
        commit(reader, txn, key, commit_ts)


def scan_lock(
    reader: MvccReader,
    max_ts: int,
    start: bytes,
    end: bytes | None,
    limit: int | None = None,
) -> list[LockInfo]:
    """Locks in ``[start, end)`` with ``lock_ts <= max_ts``."""
    out: list[LockInfo] = []
    if limit == 0:  # as kv_scan: 0 means no rows (None means unlimited)
        return out
    for k, lock in reader.scan_locks(start, end):
        if lock.start_ts <= max_ts:
            out.append(lock_info(k, lock))
            if limit is not None and len(out) >= limit:
                break
    return out


# --------------------------------------------------------------- GC
def gc(reader: MvccReader, txn: MvccTxn, key: bytes, safe_point: int) -> int:
    """Remove the versions of ``key`` that no reader at ``ts >= safe_point``
    can see. Keeps every version above the safe point and the newest PUT at or
    below it; a DELETE at or below it goes too (with everything older), since
    "no version" reads the same as "deleted". ROLLBACK and LOCK records at or
    below the safe point are dropped. Returns the number of records removed.
    """
    removed = 0
    covered = False  # a newer version at or below the safe point hides the rest
    for commit_ts, w in reader.versions(key, safe_point):
        if not covered and w.write_type == WriteType.PUT:
            covered = True
            continue
        if w.write_type == WriteType.DELETE:
            covered = True
        if w.write_type == WriteType.PUT and w.short_value is None:
            txn.delete_value(key, w.start_ts)
        txn.delete_write(key, commit_ts)
        removed += 1
    return removed


def keys_of(mutations: Iterable[Mutation]) -> list[bytes]:
    return [m.key for m in mutations]
