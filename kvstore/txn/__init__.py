"""Percolator transactions on one store: actions, latches, the scheduler.

Where it sits: above :mod:`kvstore.mvcc`; below the Raft layer that will
replicate the batches it produces and the Kv service that exposes it.

* :mod:`kvstore.txn.actions` — TiKV's actions (``prewrite``, ``commit``,
  ``rollback``, ``check_txn_status``, ``resolve_lock``, ``scan_lock``,
  ``txn_heart_beat``, ``gc``) as pure functions from (reader, args) to a write
  batch.
* :mod:`kvstore.txn.latches` — per-key latches, acquired in slot order.
* :mod:`kvstore.txn.scheduler` — :class:`TxnScheduler`, the store's command
  entry point.

Invariants: a command that raises writes nothing; commands on the same key are
serialised by latches; the only writes to ``lock``/``write``/``default`` come
from these actions.
"""

from kvstore.txn.latches import Latches
from kvstore.txn.scheduler import GcStats, TxnScheduler, WriteSink

__all__ = ["GcStats", "Latches", "TxnScheduler", "WriteSink"]
