"""The placement driver (PD): cluster-wide services of the row store.

Where it sits: beside the store-side layers; clients reach it for timestamps
and (once the cluster exists) Region routing.

Now: :class:`TimestampOracle` (``kvstore.pd.tso``). To come with the cluster:
the ID allocator, store and Region directory, scheduler and GC safe point,
replicated through PD's own Raft group.
"""

from kvstore.pd.tso import TimestampOracle

__all__ = ["TimestampOracle"]
