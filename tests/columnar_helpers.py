"""A real embedded store whose every write batch is also applied, in the same
order, to a :class:`columnar.ColumnarStore` (what a learner would receive).

``TeeEngine`` wraps the engine's ``write``: the engine write and the columnar
apply happen under one re-entrant lock, so both see one order even when the
client commits secondaries from another thread, and a test holding the lock
compares both sides with no write in between.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from columnar import ColumnarStore
from kvstore.client import Client
from kvstore.errors import KVError
from kvstore.server.embedded import EmbeddedStore
from kvstore.storage import Engine, MemoryEngine, Snapshot, WriteBatch

Op = tuple[int, str, bytes, bytes | None]


class TeeEngine:
    def __init__(self, inner: Engine, columnar: ColumnarStore | None) -> None:
        self.inner = inner
        self.columnar = columnar
        self.mu = threading.RLock()
        self.index = 0
        self.log: list[tuple[int, list[Op]]] = []

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self.inner.get(cf, key)

    def scan(
        self,
        cf: str,
        start: bytes,
        end: bytes | None,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        return self.inner.scan(cf, start, end, limit=limit, reverse=reverse)

    def write(self, batch: WriteBatch, *, sync: bool = False) -> None:
        with self.mu:
            self.inner.write(batch, sync=sync)
            self.index += 1
            ops = list(batch.ops)
            self.log.append((self.index, ops))
            if self.columnar is not None:
                self.columnar.apply(self.index, ops)

    def snapshot(self) -> Snapshot:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


def open_teed(
    columnar: ColumnarStore | None = None, *, lock_ttl_ms: int = 3000
) -> tuple[Client, TeeEngine]:
    """An in-memory embedded store teed into ``columnar``. Secondaries are
    committed inline (not in the client's background pool) so that a test's
    interleaving is deterministic."""
    tee = TeeEngine(MemoryEngine(), columnar)
    store = EmbeddedStore(tee, durable=False)
    # A short lock wait: a broken engine that keeps reporting a resolved lock
    # fails the test in seconds, not after the default 20 s per read.
    client = Client(
        store, store, on_close=store.close, lock_ttl_ms=lock_ttl_ms, lock_wait_timeout=2.0
    )

    def commit_secondaries(keys: list[bytes], start_ts: int, commit_ts: int) -> None:
        with contextlib.suppress(KVError):
            store.kv_commit(keys, start_ts, commit_ts)

    client.commit_secondaries = commit_secondaries  # type: ignore[method-assign]
    return client, tee
