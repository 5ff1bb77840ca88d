"""TtlManager: the heart beats that keep a slow commit's primary lock alive."""

from __future__ import annotations

import threading
import time

from kvstore.client.txn import TtlManager
from kvstore.txn.actions import lock_expired
from kvstore.types import Lock, LockType, compose_ts


def test_heart_beat_covers_the_time_since_start_ts() -> None:
    # A lock expires TTL ms after its start_ts, whatever its heart beats
    # said before: each beat must ask for the time gone since start_ts plus
    # a whole TTL. (A fixed 2 x TTL let the first reader roll back a live
    # commit slower than that: a spurious abort of a 2,000-row load.)
    ttl = 30
    start_ts = compose_ts(int(time.time() * 1000) - 60_000, 0)  # began a minute ago
    beats: list[int] = []
    beat = threading.Event()

    def heart_beat(primary: bytes, ts: int, advise_ttl: int) -> int:
        assert (primary, ts) == (b"p", start_ts)
        beats.append(advise_ttl)
        beat.set()
        return advise_ttl

    mgr = TtlManager(heart_beat)
    try:
        with mgr.keep_alive(b"p", start_ts, ttl):
            assert beat.wait(10)
    finally:
        mgr.close()
    lock = Lock(LockType.PUT, b"p", start_ts, ttl=beats[0])
    # Still alive right after the beat (a TSO read now), not expired since 59 s.
    assert not lock_expired(lock, compose_ts(int(time.time() * 1000), 0))
