"""Raft timing and security settings, and their translation to pysyncobj."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pysyncobj import SyncObjConf


@dataclass(frozen=True)
class RaftConfig:
    # Sub-second failover: a follower waits 0.2-0.4 s without a heartbeat
    # before it campaigns (measured: new leader 0.2-0.7 s after kill -9).
    election_timeout_min: float = 0.2
    election_timeout_max: float = 0.4
    heartbeat_interval: float = 0.05
    # Below ~3 s pysyncobj drops idle follower links on the first vote, which
    # made failover slower in measurements.
    connection_timeout: float = 3.5
    # A leader that hears from no majority for this long steps down. pysyncobj
    # defaults to 30 s; reads are protected by the read barrier regardless,
    # this only makes a partitioned leader stop accepting proposals sooner.
    leader_step_down_timeout: float = 1.0
    proposal_timeout: float = 5.0
    # Compact a group's log into a snapshot once it holds this many entries
    # (0: never). Needs a state machine that can write and read snapshots.
    snapshot_entries: int = 0
    max_batch_commands: int = 1024

    def sync_obj_conf(self, **extra: Any) -> SyncObjConf:
        conf: dict[str, Any] = dict(
            autoTick=False,
            appendEntriesUseBatch=False,  # send at once: ~0.5 ms commits, not 100 ms
            appendEntriesPeriod=self.heartbeat_interval,
            raftMinTimeout=self.election_timeout_min,
            raftMaxTimeout=self.election_timeout_max,
            connectionTimeout=self.connection_timeout,
            leaderFallbackTimeout=self.leader_step_down_timeout,
            dynamicMembershipChange=True,
            # The library's own compaction pickles the state machine in the
            # tick thread or forks next to gRPC (DESIGN.md §4): never. Ours
            # (group.py) passes a serializer; only entry counts trigger it.
            logCompactionMinEntries=2**62,
            logCompactionMinTime=10**9,
            useFork=False,
            commandsWaitLeader=False,
        )
        conf.update(extra)
        return SyncObjConf(**conf)
