"""Multi-Raft on pysyncobj: many Raft groups per process, durable, batched.

Where it sits: the bottom of the replicated stack, beside the storage engine;
``kvstore.raftstore`` builds Regions on it. It imports nothing from
``kvstore``: it needs only a :class:`~raft.log_store.LogStorage` to persist
its log (the store passes its RocksDB ``raft`` column family).

Key types:

* :class:`RaftGroup` — one replica (voter or learner) of one group. Commands
  are opaque ``bytes``; ``propose`` merges concurrent proposals into one log
  entry (group commit) and returns each caller its own result;
  ``read_barrier`` proves leadership at a log position for linearizable
  reads (pysyncobj has no ReadIndex and no lease).
* :class:`RaftDriver` — one thread that ticks every group of the process
  (``autoTick=False``), shares one poller between them, and flushes all their
  logs with one fsync per loop.
* :class:`RaftLogStore` / :class:`RocksJournal` — the Raft log kept in the
  caller's storage and fsync'd before an entry counts: a follower acknowledges
  an append only after the flush (its acknowledgement is deferred to the end
  of the driver loop), and the leader's own entries are flushed before the
  next commit-index computation. pysyncobj's own journal is an mmap that is
  never fsynced (upstream issue #84).

Invariants and safe defaults (each defuses a measured pysyncobj trap, see
DESIGN.md §4): no library log compaction (no fork, no pickling of the state
machine in the tick thread); every proposal has a timeout and a failed or
timed-out proposal is reported as *unknown outcome*; Raft ports bind to the
configured address (loopback by default), never 0.0.0.0; with a cluster
secret, messages are authenticated (pysyncobj's ``password``); elections are
tuned for sub-second failover.
"""

from raft.config import RaftConfig
from raft.driver import RaftDriver
from raft.group import ProposalError, RaftGroup, SnapshotMachine, StateMachine
from raft.log_store import LogStorage, RaftLogStore

__all__ = [
    "LogStorage",
    "ProposalError",
    "RaftConfig",
    "RaftDriver",
    "RaftGroup",
    "RaftLogStore",
    "SnapshotMachine",
    "StateMachine",
]
