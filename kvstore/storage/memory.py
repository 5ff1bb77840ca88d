"""In-memory engine with the :class:`~kvstore.storage.engine.Engine` contract.

For fast unit and property tests. Each column family is a dict plus a sorted
key list. Snapshots are copy-on-write: taking one marks the current maps as
shared, and the next write copies them first, so a snapshot costs nothing
until someone writes.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from kvstore.errors import ClosedError, InvalidArgumentError
from kvstore.storage.engine import ALL_CFS, OP_DELETE, OP_DELETE_RANGE, OP_PUT, WriteBatch


class _Cf:
    __slots__ = ("data", "keys")

    def __init__(self, data: dict[bytes, bytes] | None = None, keys: list[bytes] | None = None):
        self.data: dict[bytes, bytes] = data if data is not None else {}
        self.keys: list[bytes] = keys if keys is not None else []

    def copy(self) -> _Cf:
        return _Cf(dict(self.data), list(self.keys))

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.data:
            bisect.insort(self.keys, key)
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]

    def delete_range(self, start: bytes, end: bytes) -> None:
        lo = bisect.bisect_left(self.keys, start)
        hi = bisect.bisect_left(self.keys, end)
        for k in self.keys[lo:hi]:
            del self.data[k]
        del self.keys[lo:hi]


def _scan(
    cf: _Cf, start: bytes, end: bytes | None, limit: int | None, reverse: bool
) -> Iterator[tuple[bytes, bytes]]:
    keys, data = cf.keys, cf.data
    lo = bisect.bisect_left(keys, start)
    hi = len(keys) if end is None else bisect.bisect_left(keys, end)
    idx = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
    if limit is not None:
        idx = idx[:limit]
    # Materialise: the caller may write to the engine while iterating.
    return iter([(keys[i], data[keys[i]]) for i in idx])


class _MemorySnapshot:
    def __init__(self, cfs: dict[str, _Cf]):
        self._cfs = cfs

    def _cf(self, cf: str) -> _Cf:
        try:
            return self._cfs[cf]
        except KeyError:
            raise InvalidArgumentError(f"unknown column family {cf!r}") from None

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._cf(cf).data.get(key)

    def scan(
        self,
        cf: str,
        start: bytes,
        end: bytes | None,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        return _scan(self._cf(cf), start, end, limit, reverse)


class MemoryEngine:
    def __init__(self) -> None:
        self._cfs: dict[str, _Cf] = {cf: _Cf() for cf in ALL_CFS}
        self._shared = False
        self._lock = threading.Lock()
        self._closed = False

    def _check(self, cf: str) -> _Cf:
        if self._closed:
            raise ClosedError("engine is closed")
        try:
            return self._cfs[cf]
        except KeyError:
            raise InvalidArgumentError(f"unknown column family {cf!r}") from None

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._check(cf).data.get(key)

    def scan(
        self,
        cf: str,
        start: bytes,
        end: bytes | None,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        with self._lock:
            return _scan(self._check(cf), start, end, limit, reverse)

    def write(self, batch: WriteBatch, *, sync: bool = False) -> None:
        with self._lock:
            for _, cf, _, _ in batch.ops:
                self._check(cf)
            if self._shared:
                self._cfs = {name: c.copy() for name, c in self._cfs.items()}
                self._shared = False
            for op, cf, key, value in batch.ops:
                c = self._cfs[cf]
                if op == OP_PUT:
                    assert value is not None
                    c.put(key, value)
                elif op == OP_DELETE:
                    c.delete(key)
                elif op == OP_DELETE_RANGE:
                    assert value is not None
                    c.delete_range(key, value)

    def snapshot(self) -> _MemorySnapshot:
        with self._lock:
            if self._closed:
                raise ClosedError("engine is closed")
            self._shared = True
            return _MemorySnapshot(self._cfs)

    def close(self) -> None:
        self._closed = True
