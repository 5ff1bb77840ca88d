"""Measure what writing a Region snapshot costs the Region's writes (not a
test; timing is never asserted).

    .venv/bin/python -m tests.snapshot_stall [keys]

Three in-process stores; loads ``keys`` raw keys (default 300,000) into one
Region, runs 4 threads of single raw puts, has the leader write a snapshot
(in its background thread, see ``Peer.snapshot_writer``) and prints the put
rate before, during and after it, and how long the snapshot took.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from kvstore import codec
from raft import RaftConfig
from tests.test_raftstore import leader, make_stores, routed

PHASE_S = 3.0
WRITERS = 4


def main(keys: int) -> None:
    with tempfile.TemporaryDirectory(prefix="snapshot-stall-") as tmp:
        # No compaction by entry count: the one measured is requested below.
        stores = make_stores(Path(tmp), raft=RaftConfig(snapshot_entries=10**9))
        try:
            run(stores, keys)
        finally:
            for s in stores:
                s.close()


def run(stores: list, keys: int) -> None:  # type: ignore[type-arg]
    value = b"v" * 60
    for lo in range(0, keys, 5000):
        pairs = [(b"k%09d" % i, value) for i in range(lo, min(keys, lo + 5000))]
        routed(stores, codec.raw_key(pairs[0][0]), lambda h, p=pairs: h.rawstore.raw_batch_put(p))
    print(f"loaded {keys:,} keys", flush=True)
    stop = threading.Event()
    acks: list[float] = []

    def writer(t: int) -> None:
        i = 0
        while not stop.is_set():
            k = b"w%d-%d" % (t, i)
            i += 1
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"1"))
            acks.append(time.monotonic())

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(WRITERS)]
    for th in threads:
        th.start()
    try:
        time.sleep(PHASE_S)  # the rate before: a measuring window, not a wait
        _, h = leader(stores, 1)
        group = h.peer.group
        assert group is not None
        before = group.snapshots_written
        start = time.monotonic()
        group._driver.call(group.request_compaction)
        while group.snapshots_written == before:
            time.sleep(0.01)
        done = time.monotonic()
        time.sleep(PHASE_S)  # the rate after
    finally:
        stop.set()
        for th in threads:
            th.join()

    def rate(a: float, b: float) -> float:
        return sum(1 for t in acks if a <= t < b) / (b - a)

    print(
        f"snapshot took {done - start:.2f} s; puts/s before {rate(start - PHASE_S, start):,.0f}, "
        f"during {rate(start, done):,.0f}, after {rate(done, done + PHASE_S):,.0f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000)
