"""Per-key latches: commands touching the same key run one at a time.

Keys hash onto a fixed array of slots (TiKV's design); a command takes the
slots of all its keys in ascending slot order, so two commands can never wait
for each other in a cycle. Two keys sharing a slot only costs concurrency, not
correctness.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager


class Latches:
    def __init__(self, slots: int = 2048) -> None:
        self._slots = [threading.Lock() for _ in range(slots)]

    def slots_of(self, keys: Iterable[bytes]) -> list[int]:
        n = len(self._slots)
        # crc32, not hash(): stable across processes, which keeps slot choice
        # reproducible in tests.
        return sorted({zlib.crc32(k) % n for k in keys})

    def acquire_all(self) -> AbstractContextManager[None]:
        """Every slot: for range commands whose keys are not known up front
        (rare; they stop all other writers for their duration)."""
        return self._acquire_slots(range(len(self._slots)))

    def acquire(self, keys: Iterable[bytes]) -> AbstractContextManager[None]:
        return self._acquire_slots(self.slots_of(keys))

    @contextmanager
    def _acquire_slots(self, slots: Iterable[int]) -> Iterator[None]:
        taken: list[threading.Lock] = []
        try:
            for s in slots:
                lock = self._slots[s]
                lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()
