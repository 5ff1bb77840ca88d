"""An embedded single-node store: ``kvstore.open(path)``.

Wires one :class:`~kvstore.storage.RocksEngine` to the transaction scheduler,
the raw store and a timestamp oracle, and hands the client library an
in-process backend: the same client code that will talk gRPC to a cluster runs
here against direct calls.

Durability (``durable=True``, the default): writes that decide a transaction
(commits, rollbacks), raw writes and the TSO high-water mark are fsync'd, so an
acknowledged commit survives power loss; prewrites and secondary bookkeeping
are covered by the next synced write (RocksDB's WAL is one ordered log).
With ``durable=False`` an acknowledged commit survives a crash of the process
(the WAL is in the OS page cache) but not of the machine.
"""

from __future__ import annotations

import os
import threading

from kvstore.client import Client
from kvstore.errors import ClosedError
from kvstore.pd.tso import TimestampOracle
from kvstore.rawkv import RawStore
from kvstore.storage import CF_RAFT, Engine, MemoryEngine, RocksEngine, WriteBatch
from kvstore.txn import TxnScheduler

TSO_HWM_KEY = b"tso_high_water_mark"


class EmbeddedStore:
    """Engine + scheduler + raw store + TSO; also the client's backend."""

    def __init__(self, engine: Engine, *, durable: bool = True) -> None:
        self.engine = engine
        self.durable = durable
        self.scheduler = TxnScheduler(engine, engine, durable=durable)
        self.rawstore = RawStore(engine, engine, durable=durable)
        self.tso = TimestampOracle(self._load_hwm, self._save_hwm)
        self._closed = False
        self._close_lock = threading.Lock()
        s, r = self.scheduler, self.rawstore
        # The Kv service, as bound methods: no per-call indirection.
        self.kv_get = s.kv_get
        self.kv_batch_get = s.kv_batch_get
        self.kv_scan = s.kv_scan
        self.kv_prewrite = s.kv_prewrite
        self.kv_commit = s.kv_commit
        self.kv_batch_rollback = s.kv_batch_rollback
        self.kv_check_txn_status = s.kv_check_txn_status
        self.kv_resolve_lock = s.kv_resolve_lock
        self.kv_scan_lock = s.kv_scan_lock
        self.kv_txn_heart_beat = s.kv_txn_heart_beat
        self.kv_gc = s.kv_gc
        self.kv_import = s.kv_import
        self.raw_get = r.raw_get
        self.raw_batch_get = r.raw_batch_get
        self.raw_put = r.raw_put
        self.raw_batch_put = r.raw_batch_put
        self.raw_delete = r.raw_delete
        self.raw_scan = r.raw_scan
        self.raw_delete_range = r.raw_delete_range
        self.raw_compare_and_swap = r.raw_compare_and_swap

    def _load_hwm(self) -> int:
        raw = self.engine.get(CF_RAFT, TSO_HWM_KEY)
        return int(raw) if raw else 0

    def _save_hwm(self, hwm: int) -> None:
        b = WriteBatch()
        b.put(CF_RAFT, TSO_HWM_KEY, str(hwm).encode())
        # Always synced, even when not durable: a TSO that goes backwards after
        # a crash breaks snapshot isolation, not just durability.
        self.engine.write(b, sync=True)

    def get_ts(self, count: int = 1) -> int:
        if self._closed:
            raise ClosedError("store is closed")
        return self.tso.get_ts(count)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.engine.close()


def open_store(
    path: str | os.PathLike[str] | None,
    *,
    durable: bool = True,
    lock_ttl_ms: int = 3000,
    lock_wait_timeout: float = 20.0,
) -> Client:
    """Open (creating if missing) an embedded store at ``path`` and return a
    client bound to it. ``path=None`` keeps everything in memory (tests)."""
    engine: Engine = MemoryEngine() if path is None else RocksEngine(path)
    store = EmbeddedStore(engine, durable=durable)
    return Client(
        store,
        store,
        on_close=store.close,
        lock_ttl_ms=lock_ttl_ms,
        lock_wait_timeout=lock_wait_timeout,
    )
