"""The storage engine: ordered bytes in column families, atomic write batches.

Where it sits: the bottom of the row store. ``kvstore.mvcc`` reads through the
:class:`Reader` protocol and ``kvstore.txn`` / ``kvstore.rawkv`` produce
:class:`WriteBatch` es that are written here (directly in an embedded store;
through a Region's Raft log once replication exists).

Key types:

* :class:`Engine` — ``get``/``scan``/``write``/``snapshot``/``close``.
* :class:`RocksEngine` — RocksDB through rocksdict (``kvstore.storage.rocks``).
* :class:`MemoryEngine` — the same contract in memory, for fast tests.

Column families: ``default`` (large values at ``key+~start_ts``), ``lock``
(``key -> Lock``), ``write`` (``key+~commit_ts -> Write``) and ``raft``
(Region/Raft metadata and other store-local state).

Invariants:

* A :class:`WriteBatch` is applied atomically across column families, or not
  at all (RocksDB WAL on; tested by killing a writer).
* ``scan(cf, start, end)`` yields ``start <= key < end`` in order (reverse:
  descending), ``end=None`` meaning unbounded.
* A :class:`Snapshot` sees one point in time across *all* column families, for
  point reads and scans alike. (rocksdict's own snapshot iteration does not
  honour the snapshot; see ``rocks.py`` for the workaround and the test that
  pins the bug.)
"""

from __future__ import annotations

from kvstore.storage.engine import (
    ALL_CFS,
    CF_DEFAULT,
    CF_LOCK,
    CF_RAFT,
    CF_WRITE,
    DATA_CFS,
    Engine,
    Reader,
    Snapshot,
    WriteBatch,
)
from kvstore.storage.memory import MemoryEngine
from kvstore.storage.rocks import RocksEngine

__all__ = [
    "ALL_CFS",
    "CF_DEFAULT",
    "CF_LOCK",
    "CF_RAFT",
    "CF_WRITE",
    "DATA_CFS",
    "Engine",
    "MemoryEngine",
    "Reader",
    "RocksEngine",
    "Snapshot",
    "WriteBatch",
]
