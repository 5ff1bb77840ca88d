"""Timestamp oracle: strictly increasing ``physical_ms << 18 | logical``.

Guarantee: every timestamp handed out is greater than every timestamp handed
out before, including before a restart, and including when the wall clock
jumps backwards.

How: the oracle persists a *high-water mark* (HWM) of physical time through a
caller-supplied ``save`` function (durably: an fsync'd RocksDB write in an
embedded store, PD's Raft group in a cluster) and never hands out a timestamp
whose physical part reaches the saved HWM. On start it resumes strictly above
the saved HWM. The HWM is extended by :attr:`window_ms` at a time, so the
persistence cost is paid once per window, not per timestamp (TiKV PD's
``save-interval`` / ``tso-update-physical-interval`` scheme).

Batching: ``get_ts(count)`` reserves ``count`` consecutive timestamps with one
call and returns the last; the caller uses ``last - count + 1 .. last``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kvstore.errors import InvalidArgumentError, TsoError
from kvstore.types import TSO_LOGICAL_BITS, compose_ts

MAX_LOGICAL = 1 << TSO_LOGICAL_BITS
DEFAULT_WINDOW_MS = 3000


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class TimestampOracle:
    def __init__(
        self,
        load: Callable[[], int],
        save: Callable[[int], None],
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        window_ms: int = DEFAULT_WINDOW_MS,
    ) -> None:
        self._save = save
        self._clock_ms = clock_ms
        self.window_ms = window_ms
        self._lock = threading.Lock()
        saved = load()
        # Resume strictly above anything that could have been handed out.
        self._physical = max(clock_ms(), saved + 1)
        self._logical = 0
        self._hwm = saved
        self._extend_hwm()

    def _extend_hwm(self) -> None:
        hwm = max(self._physical, self._clock_ms()) + self.window_ms
        self._save(hwm)  # must be durable before any ts below it is returned
        self._hwm = hwm

    def get_ts(self, count: int = 1) -> int:
        """Reserve ``count`` timestamps; return the largest."""
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count < MAX_LOGICAL:
            raise InvalidArgumentError(f"count must be in 1..{MAX_LOGICAL - 1}")
        with self._lock:
            now = self._clock_ms()
            if now > self._physical:
                self._physical, self._logical = now, 0
            if self._logical + count >= MAX_LOGICAL:
                # Logical space of this millisecond is used up: move physical
                # time forward ourselves rather than wait for the clock.
                self._physical += 1
                self._logical = 0
            if self._physical >= self._hwm:
                self._extend_hwm()
                if self._physical >= self._hwm:
                    raise TsoError("timestamp high-water mark could not be extended")
            self._logical += count
            return compose_ts(self._physical, self._logical)

    @property
    def high_water_mark(self) -> int:
        return self._hwm
