"""Reading MVCC data at a timestamp."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

from kvstore.codec import append_ts, decode_txn_key, split_ts
from kvstore.errors import KeyIsLockedError
from kvstore.storage import CF_DEFAULT, CF_LOCK, CF_WRITE, Reader
from kvstore.types import TS_MAX, Lock, LockInfo, LockType, Write, WriteType

# A key's versions all lie in [enc(key) + ~TS_MAX, enc(key) + ~0]; since encoded
# keys are prefix-free, this upper bound is below every other key's versions.
_VERSIONS_END = b"\xff" * 8 + b"\x00"


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """What the ``write`` CF says about one transaction on one key."""

    commit_ts: int
    write: Write

    @property
    def is_rollback(self) -> bool:
        return self.write.write_type == WriteType.ROLLBACK


def lock_info(key: bytes, lock: Lock) -> LockInfo:
    return LockInfo(
        key=decode_txn_key(key),
        primary=lock.primary,
        lock_ts=lock.start_ts,
        ttl=lock.ttl,
        lock_type=lock.lock_type,
        min_commit_ts=lock.min_commit_ts,
        txn_size=lock.txn_size,
    )


def check_lock_conflict(key: bytes, lock: Lock, ts: int, bypass_locks: Collection[int]) -> None:
    """Raise KeyIsLocked if ``lock`` must block a read at ``ts`` (TiKV
    ``Lock::check_ts_conflict``)."""
    if lock.start_ts > ts or lock.lock_type == LockType.LOCK:
        return
    # The owner can only commit at >= min_commit_ts, so if that is above ts
    # the eventual commit is invisible to this read either way.
    if lock.min_commit_ts > ts:
        return
    if lock.start_ts in bypass_locks:
        return
    raise KeyIsLockedError(lock_info(key, lock))


class MvccReader:
    """MVCC reads over any :class:`~kvstore.storage.Reader` (engine or snapshot)."""

    def __init__(self, reader: Reader):
        self.reader = reader

    # ------------------------------------------------------------ locks
    def load_lock(self, key: bytes) -> Lock | None:
        raw = self.reader.get(CF_LOCK, key)
        return None if raw is None else Lock.from_bytes(raw)

    def scan_locks(
        self, start: bytes, end: bytes | None, *, limit: int | None = None
    ) -> Iterator[tuple[bytes, Lock]]:
        for k, v in self.reader.scan(CF_LOCK, start, end, limit=limit):
            yield k, Lock.from_bytes(v)

    # ------------------------------------------------------------ writes
    def versions(self, key: bytes, max_ts: int = TS_MAX) -> Iterator[tuple[int, Write]]:
        """All commit records of ``key`` with ``commit_ts <= max_ts``, newest
        first."""
        for vk, v in self.reader.scan(CF_WRITE, append_ts(key, max_ts), key + _VERSIONS_END):
            yield split_ts(vk)[1], Write.from_bytes(v)

    def seek_write(self, key: bytes, ts: int) -> tuple[int, Write] | None:
        """Newest commit record (of any type) with ``commit_ts <= ts``."""
        for item in self.versions(key, ts):
            return item
        return None

    def newest_write(self, key: bytes) -> tuple[int, Write] | None:
        return self.seek_write(key, TS_MAX)

    def get_write(self, key: bytes, ts: int) -> tuple[int, Write] | None:
        """Newest PUT or DELETE with ``commit_ts <= ts`` (skipping LOCK and
        ROLLBACK records, which carry no data)."""
        for commit_ts, w in self.versions(key, ts):
            if w.write_type in (WriteType.PUT, WriteType.DELETE):
                return commit_ts, w
        return None

    def get_txn_commit_record(self, key: bytes, start_ts: int) -> CommitRecord | None:
        """The record transaction ``start_ts`` left on ``key``: its commit
        (at some ``commit_ts > start_ts``) or its rollback (at ``start_ts``)."""
        for commit_ts, w in self.versions(key):
            if commit_ts < start_ts:
                return None
            if w.start_ts == start_ts:
                return CommitRecord(commit_ts, w)
        return None

    def load_data(self, key: bytes, write: Write) -> bytes:
        if write.short_value is not None:
            return write.short_value
        value = self.reader.get(CF_DEFAULT, append_ts(key, write.start_ts))
        if value is None:
            # A visible write whose value is missing is corruption, not a
            # user error: fail loudly instead of reading it as absent.
            raise RuntimeError(f"default CF value missing for {key!r}@{write.start_ts}")
        return value

    # ------------------------------------------------------------ reads at ts
    def get(self, key: bytes, ts: int, bypass_locks: Collection[int] = ()) -> bytes | None:
        lock = self.load_lock(key)
        if lock is not None:
            check_lock_conflict(key, lock, ts, bypass_locks)
        found = self.get_write(key, ts)
        if found is None or found[1].write_type == WriteType.DELETE:
            return None
        return self.load_data(key, found[1])

    def check_range_locks(
        self, start: bytes, end: bytes | None, ts: int, bypass_locks: Collection[int] = ()
    ) -> None:
        for k, lock in self.scan_locks(start, end):
            check_lock_conflict(k, lock, ts, bypass_locks)

    def scan(
        self,
        start: bytes,
        end: bytes | None,
        ts: int,
        *,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]:
        """Visible ``(encoded_key, value)`` pairs in ``[start, end)`` at ``ts``.

        Locks are checked over the whole range first (see the package
        docstring for why the order matters). A lock beyond the ``limit``-th
        row also fails the scan; TiKV behaves the same.
        """
        self.check_range_locks(start, end, ts, bypass_locks)
        out: list[tuple[bytes, bytes]] = []
        if limit == 0:
            return out
        current: bytes | None = None
        decided = False
        for vk, v in self.reader.scan(CF_WRITE, start, end):
            key, commit_ts = split_ts(vk)
            if key != current:
                current, decided = key, False
            if decided or commit_ts > ts:
                continue
            w = Write.from_bytes(v)
            if w.write_type == WriteType.PUT:
                out.append((key, self.load_data(key, w)))
                decided = True
                if limit is not None and len(out) >= limit:
                    break
            elif w.write_type == WriteType.DELETE:
                decided = True
        return out
