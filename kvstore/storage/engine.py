"""Engine contract shared by the RocksDB and in-memory engines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from kvstore.errors import InvalidArgumentError

CF_DEFAULT = "default"
CF_LOCK = "lock"
CF_WRITE = "write"
CF_RAFT = "raft"
DATA_CFS = (CF_DEFAULT, CF_LOCK, CF_WRITE)
ALL_CFS = (*DATA_CFS, CF_RAFT)

OP_PUT = 0
OP_DELETE = 1
OP_DELETE_RANGE = 2


class WriteBatch:
    """An ordered list of mutations applied atomically by :meth:`Engine.write`.

    It is plain data (tuples of ints and bytes) so that it can travel in a Raft
    log entry unchanged.
    """

    __slots__ = ("ops",)

    def __init__(self) -> None:
        # (op, cf, key, value-or-range-end)
        self.ops: list[tuple[int, str, bytes, bytes | None]] = []

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.ops.append((OP_PUT, cf, key, value))

    def delete(self, cf: str, key: bytes) -> None:
        self.ops.append((OP_DELETE, cf, key, None))

    def delete_range(self, cf: str, start: bytes, end: bytes) -> None:
        """Delete ``start <= key < end`` in ``cf``."""
        if end < start:
            raise InvalidArgumentError("delete_range needs start <= end")
        self.ops.append((OP_DELETE_RANGE, cf, start, end))

    def extend(self, other: WriteBatch) -> None:
        self.ops.extend(other.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def is_empty(self) -> bool:
        return not self.ops

    def data_size(self) -> int:
        return sum(len(k) + (len(v) if v else 0) for _, _, k, v in self.ops)

    def __repr__(self) -> str:
        return f"WriteBatch({len(self.ops)} ops, {self.data_size()} bytes)"


class Reader(Protocol):
    """Point reads and ordered range scans over column families."""

    def get(self, cf: str, key: bytes) -> bytes | None: ...

    def scan(
        self,
        cf: str,
        start: bytes,
        end: bytes | None,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` with ``start <= key < end`` (``end=None``:
        unbounded), ascending, or descending when ``reverse``."""
        ...


class Snapshot(Reader, Protocol):
    """A consistent, read-only view across every column family."""


class Engine(Reader, Protocol):
    def write(self, batch: WriteBatch, *, sync: bool = False) -> None:
        """Apply ``batch`` atomically. ``sync=True`` returns only after the
        batch (and every batch written before it) is on stable storage."""
        ...

    def snapshot(self) -> Snapshot: ...

    def close(self) -> None: ...
