"""A failed fsync of the Raft log is final (the lesson of PostgreSQL's
"fsyncgate": after a failed fsync the kernel may have dropped the dirty
pages, so retrying proves nothing).

Before this was pinned, :class:`raft.RaftLogStore` dropped the queued
entries of a flush whose sync failed, and the next flush with nothing new
queued returned as if all was durable; the driver then ran the follower
acknowledgements deferred behind the failed flush, acknowledging entries
that were never made durable (seen live under ``htapkv check --nemesis
disk``: a store whose ``fdatasync`` failed kept its Raft groups running and
logged "raft driver loop failed" ~600 times a second). Now every later flush
fails too, nothing deferred behind a failed flush runs, and the driver stops
and reports the failure once (a store process then exits, see
``kvstore.raftstore.StoreConfig.on_fatal``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from raft import RaftDriver, RaftLogStore
from raft.log_store import LogFlushError


class FlakyStorage:
    """LogStorage in memory whose synced writes fail while ``failing``."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.failing = False

    def scan_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in self.data.items() if k.startswith(prefix)))

    def apply(
        self,
        puts: list[tuple[bytes, bytes]],
        deletes: list[tuple[bytes, bytes]],
        *,
        sync: bool,
    ) -> None:
        if sync and self.failing:
            raise OSError(5, "Input/output error (fdatasync)")
        for k, v in puts:
            self.data[k] = v


def test_a_failed_flush_fails_every_later_flush() -> None:
    storage = FlakyStorage()
    log = RaftLogStore(storage)
    log.queue([(b"e1", b"x")], [])
    storage.failing = True
    with pytest.raises(LogFlushError):
        log.flush()
    storage.failing = False  # the disk "recovers": the entry is still not durable
    with pytest.raises(LogFlushError):
        log.flush()
    with pytest.raises(LogFlushError):
        log.write_now([(b"s", b"term")])
    assert log.failed is not None


def test_driver_never_runs_what_waited_for_a_failed_flush(tmp_path: object) -> None:
    storage = FlakyStorage()
    log = RaftLogStore(storage)
    fatal: list[BaseException] = []
    stopped = threading.Event()

    def on_fatal(e: BaseException) -> None:
        fatal.append(e)
        stopped.set()

    driver = RaftDriver(log, "127.0.0.1:0", on_fatal=on_fatal)
    ran: list[str] = []
    try:

        def queue_and_defer() -> None:
            # What a follower does on receiving entries: queue them, defer
            # the acknowledgement until they are flushed.
            storage.failing = True
            log.queue([(b"e1", b"x")], [])
            driver.defer(lambda: ran.append("ack"))

        driver.call(queue_and_defer)
        assert stopped.wait(10), "the driver did not report the failed flush"
        storage.failing = False
        for _ in range(3):  # the driver must not go on as if nothing happened
            driver.wake()
            driver.wait_loop(0.2)
        assert ran == []
        assert len(fatal) == 1 and isinstance(fatal[0], LogFlushError)
    finally:
        driver.stop()
