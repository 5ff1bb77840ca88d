"""Regions replicated by Raft: the replicated row store.

Where it sits: above :mod:`kvstore.txn` / :mod:`kvstore.rawkv` (whose
write batches it replicates) and the :mod:`raft` layer (which orders them);
below the server that routes requests to it.

Key types: :class:`Store` (one engine, one Raft driver, a
:class:`~kvstore.raftstore.peer.Peer` per Region replica),
:class:`StoreConfig`, :class:`RegionHandle` (a request routed to a Region).

Invariants:

* Every change to Region data is a write batch in a Raft log entry, applied
  in log order on every replica together with the Region's applied index (one
  engine batch), so replicas hold identical data and a restart resumes right
  after the last applied entry.
* Commands are computed on the leader under latches and proposed with the
  epoch they saw; apply rejects a stale epoch or a key outside the Region,
  identically everywhere.
* Reads on the leader pass a read barrier first: a deposed leader that has not
  noticed yet serves no stale read.
* A split is a Raft command applied in log order on every replica: both halves
  keep the same stores, both bump ``epoch.version``.
"""

from kvstore.raftstore.peer import ApplyObserver
from kvstore.raftstore.store import RegionHandle, Store, StoreConfig

__all__ = ["ApplyObserver", "RegionHandle", "Store", "StoreConfig"]
