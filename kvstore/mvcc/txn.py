"""Collecting the mutations of one MVCC action into a write batch."""

from __future__ import annotations

from kvstore.codec import append_ts
from kvstore.storage import CF_DEFAULT, CF_LOCK, CF_WRITE, WriteBatch
from kvstore.types import Lock, Write


class MvccTxn:
    """Write-batch builder for the actions of transaction ``start_ts``.

    Nothing touches the engine until the caller writes :attr:`batch`; an action
    that fails half-way simply drops its ``MvccTxn``, so a failed command
    writes nothing.
    """

    __slots__ = ("batch", "start_ts")

    def __init__(self, start_ts: int) -> None:
        self.start_ts = start_ts
        self.batch = WriteBatch()

    def put_lock(self, key: bytes, lock: Lock) -> None:
        self.batch.put(CF_LOCK, key, lock.to_bytes())

    def unlock_key(self, key: bytes) -> None:
        self.batch.delete(CF_LOCK, key)

    def put_value(self, key: bytes, start_ts: int, value: bytes) -> None:
        self.batch.put(CF_DEFAULT, append_ts(key, start_ts), value)

    def delete_value(self, key: bytes, start_ts: int) -> None:
        self.batch.delete(CF_DEFAULT, append_ts(key, start_ts))

    def put_write(self, key: bytes, commit_ts: int, write: Write) -> None:
        self.batch.put(CF_WRITE, append_ts(key, commit_ts), write.to_bytes())

    def delete_write(self, key: bytes, commit_ts: int) -> None:
        self.batch.delete(CF_WRITE, append_ts(key, commit_ts))
