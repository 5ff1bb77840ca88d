"""The placement driver (PD): cluster-wide services of the row store, as logic.

Where it sits: beside the store-side layers (below ``kvstore.raftstore`` and
``kvstore.server``; it imports only ``kvstore.types``/``errors`` and, for
the state machine protocol, nothing of ``raft`` at all). No gRPC here: the
PD process (:mod:`kvstore.server.pd_server`) wraps these in the ``pdpb``
service and replicates :class:`ClusterState` with one Raft group; clients
reach it through :class:`kvstore.client.pd_client.PdClient`.

Key types:

* :class:`TimestampOracle` (``tso``) — strictly increasing
  ``physical_ms << 18 | logical``, persisting a high-water mark before
  handing out timestamps below it (in PD: through Raft).
* :class:`ClusterState` (``cluster``) — the replicated state machine:
  cluster id, bootstrapped flag, TSO high-water mark, ID allocator end,
  stores, the Region directory, GC safe point, PD members. Commands are
  versioned JSON (never pickle); snapshots are the same JSON.
  :class:`IdAllocator` hands out ids from ranges reserved through it.
* ``scheduler`` — pure functions from (Region, stores, now, config) to one
  operator step: replica checker, columnar learners, leader balance.

Invariants: apply is deterministic (no clock, no randomness: both come in
the commands); a Region is only ever replaced by a newer epoch of itself or
by newer Regions overlapping it; ids are never handed out twice; the TSO
high-water mark and the GC safe point never move backwards, and the mark is
extended only by the oracle that owns the latest value (compare-and-set).
"""

from kvstore.pd.cluster import ClusterState, IdAllocator
from kvstore.pd.tso import TimestampOracle

__all__ = ["ClusterState", "IdAllocator", "TimestampOracle"]
