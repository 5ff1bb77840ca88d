"""Per-key latches: commands touching the same key run one at a time.

Keys hash onto a fixed array of slots (TiKV's design); a command takes the
slots of all its keys in ascending slot order, so two commands can never wait
for each other in a cycle. Two keys sharing a slot only costs concurrency, not
correctness.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from types import TracebackType


class _Held:
    """The latches of one command, as a context manager. A plain class, not a
    generator-based one: it sits on every write's path (twice per 2PC)."""

    __slots__ = ("_locks",)

    def __init__(self, locks: list[threading.Lock]) -> None:
        self._locks = locks

    def __enter__(self) -> None:
        taken = 0
        try:
            for lock in self._locks:
                lock.acquire()
                taken += 1
        except BaseException:
            for lock in reversed(self._locks[:taken]):
                lock.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def try_take(self) -> bool:
        """Take every latch now or none (no waiting)."""
        for i, lock in enumerate(self._locks):
            if not lock.acquire(blocking=False):
                for held in reversed(self._locks[:i]):
                    held.release()
                return False
        return True

    def release(self) -> None:
        # Plain locks: any thread may release them, so a command that
        # finishes in a callback on another thread releases its latches there.
        for lock in reversed(self._locks):
            lock.release()


class Latches:
    def __init__(self, slots: int = 2048) -> None:
        self._slots = [threading.Lock() for _ in range(slots)]

    def slots_of(self, keys: Iterable[bytes]) -> list[int]:
        n = len(self._slots)
        # crc32, not hash(): stable across processes, which keeps slot choice
        # reproducible in tests.
        return sorted({zlib.crc32(k) % n for k in keys})

    def acquire_all(self) -> _Held:
        """Every slot: for range commands whose keys are not known up front
        (rare; they stop all other writers for their duration)."""
        return _Held(self._slots)

    def acquire(self, keys: Iterable[bytes]) -> _Held:
        if isinstance(keys, list) and len(keys) == 1:  # the common single-key command
            return _Held([self._slots[zlib.crc32(keys[0]) % len(self._slots)]])
        return _Held([self._slots[s] for s in self.slots_of(keys)])
