"""PD's scheduler: pure functions from cluster facts to one operator step.

On each Region heartbeat the PD leader asks :func:`schedule` what the Region
should do next and answers with at most one step (TiKV's operator steps):
add a learner, promote a learner (``AddNode``), remove a peer, or transfer
leadership. Everything it needs comes in as arguments (the Region as its
leader reports it, every store with its last heartbeat and counts, ``now``
and the configuration), so the rules are table-tested without processes.

Rules, in priority order (the first that applies wins):

a. **Replica checker** (``max_replicas`` voters on live stores):

   1. a learner on a *down* store is removed (it can never catch up, and a
      pending learner would block promotion forever);
   2. fewer live voters than ``max_replicas``: promote a learner on a normal
      store that is not pending (caught up); if one is still pending, wait;
      otherwise add a learner on the live normal store with the fewest
      Regions that has no peer of the Region;
   3. enough live voters and a voter on a down store: remove it. A down voter
      is removed only *after* its replacement was promoted (rule 2 first),
      so the Region never has fewer live voters than before, and the voters
      left are all live: a majority of them is always reachable;
   4. more live voters than ``max_replicas`` (after a promotion): remove one
      that is not the leader, on the store with the most Regions;
   5. a learner on a normal store beyond what rule 2 needs: remove it.

b. **Columnar learners**: a learner on every Up, live columnar store
   (label ``engine=columnar``) that has no peer of the Region. Never a voter
   there: the columnar replica must not count for commit.

c. **Leader balance**: if the leader's store leads more Regions than the
   store of another (live, caught-up, normal) voter by more than
   ``leader_schedule_tolerance``, transfer leadership to the voter whose store
   leads the fewest.

   Rules b and c wait while a learner on a normal store catches up.

d. **One step at a time**: the caller keeps a :class:`PendingOperator` per
   Region and asks :func:`operator_progress` whether it finished (the epoch or
   the leader moved as intended), went stale, or timed out; while it is in
   progress no new step is scheduled for that Region (the same step is sent
   again, so a lost response does not stall until the timeout).

"Down" means no store heartbeat for ``max_store_down_time`` (or tombstone);
a store is a *target* only if it is Up and heard from within
``store_disconnect_time``. Times are plain floats of one monotonic clock,
chosen by the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kvstore.types import Peer, Region, RegionEpoch, StoreMeta, StoreState


@dataclass(frozen=True)
class ScheduleConfig:
    max_replicas: int = 3
    max_store_down_time: float = 30 * 60.0  # PD's default: 30 minutes
    store_disconnect_time: float = 20.0  # not heard from this long: no new peers there
    leader_schedule_tolerance: int = 1
    operator_timeout: float = 60.0


@dataclass(frozen=True)
class StoreStatus:
    """What the scheduler knows of a store: its metadata, when it last sent a
    heartbeat, and how many Regions it hosts/leads (pending operators'
    effects included, so concurrent heartbeats do not pile onto one store)."""

    meta: StoreMeta
    last_heartbeat: float
    region_count: int = 0
    leader_count: int = 0


@dataclass(frozen=True)
class RegionStatus:
    """A Region as its leader last reported it."""

    region: Region
    leader: Peer | None
    pending_peers: frozenset[int] = frozenset()  # peer ids not caught up
    down_peers: frozenset[int] = frozenset()


class OpKind(enum.Enum):
    ADD_LEARNER = "AddLearnerNode"
    ADD_NODE = "AddNode"  # promote the learner to voter
    REMOVE_NODE = "RemoveNode"
    TRANSFER_LEADER = "TransferLeader"


@dataclass(frozen=True)
class Operator:
    """One step. For ``ADD_LEARNER`` the peer id is 0: the caller allocates a
    fresh one (:func:`with_peer_id`)."""

    kind: OpKind
    peer: Peer
    reason: str

    def with_peer_id(self, peer_id: int) -> Operator:
        p = self.peer
        return Operator(self.kind, Peer(peer_id, p.store_id, p.is_learner), self.reason)

    def __str__(self) -> str:
        return f"{self.kind.value} peer {self.peer.id} on store {self.peer.store_id}"


@dataclass(frozen=True)
class PendingOperator:
    region_id: int
    op: Operator
    epoch: RegionEpoch  # the Region's epoch when the step was issued
    deadline: float


class Progress(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    STALE = "stale"  # the Region changed some other way: the step no longer applies
    TIMEOUT = "timeout"


# --------------------------------------------------------------------------
# Store predicates
# --------------------------------------------------------------------------
def is_down(s: StoreStatus | None, now: float, cfg: ScheduleConfig) -> bool:
    if s is None:
        return False  # a store PD never heard of: no evidence that it is down
    if s.meta.state == StoreState.TOMBSTONE:
        return True
    return now - s.last_heartbeat > cfg.max_store_down_time


def is_target(s: StoreStatus, now: float, cfg: ScheduleConfig) -> bool:
    return s.meta.state == StoreState.UP and now - s.last_heartbeat <= min(
        cfg.store_disconnect_time, cfg.max_store_down_time
    )


# --------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------
def schedule(
    rs: RegionStatus,
    stores: Mapping[int, StoreStatus],
    now: float,
    cfg: ScheduleConfig,
) -> Operator | None:
    """The next step for the Region, or None (see the module docstring)."""
    op = replica_checker(rs, stores, now, cfg)
    if op is not None or _catching_up(rs, stores, now, cfg):
        return op  # nothing else while a new replica catches up
    return columnar_checker(rs, stores, now, cfg) or leader_balancer(rs, stores, now, cfg)


def _catching_up(
    rs: RegionStatus, stores: Mapping[int, StoreStatus], now: float, cfg: ScheduleConfig
) -> bool:
    """A learner on a normal store is being brought up to replace a voter."""
    return any(
        p.is_learner and p.id in rs.pending_peers and not _columnar(p, stores)
        for p in rs.region.peers
    )


def _columnar(p: Peer, stores: Mapping[int, StoreStatus]) -> bool:
    s = stores.get(p.store_id)
    return s is not None and s.meta.is_columnar


def replica_checker(
    rs: RegionStatus, stores: Mapping[int, StoreStatus], now: float, cfg: ScheduleConfig
) -> Operator | None:
    r = rs.region
    if rs.leader is None:
        return None
    down = {p.id for p in r.peers if is_down(stores.get(p.store_id), now, cfg)}
    voters = [p for p in r.peers if not p.is_learner]
    live_voters = [p for p in voters if p.id not in down]
    learners = [p for p in r.peers if p.is_learner]
    normal_learners = [p for p in learners if not _columnar(p, stores)]

    # 1. A learner on a down store.
    for p in learners:
        if p.id in down:
            return Operator(OpKind.REMOVE_NODE, p, "learner on a down store")

    # 2. Too few live voters: promote a caught-up learner, or add one.
    if len(live_voters) < cfg.max_replicas:
        for p in normal_learners:
            if p.id not in rs.pending_peers:
                return Operator(
                    OpKind.ADD_NODE,
                    Peer(p.id, p.store_id, False),
                    f"{len(live_voters)} live voters of {cfg.max_replicas}: promote a learner",
                )
        if normal_learners:
            return None  # a learner is catching up: wait for it
        target = _best_new_store(r, stores, now, cfg)
        if target is not None:
            return Operator(
                OpKind.ADD_LEARNER,
                Peer(0, target, True),
                f"{len(live_voters)} live voters of {cfg.max_replicas}: add a replica",
            )

    # 3. Enough live voters: drop a voter on a down store.
    if len(live_voters) >= cfg.max_replicas:
        for p in voters:
            if p.id in down and p.id != rs.leader.id:
                return Operator(OpKind.REMOVE_NODE, p, "voter on a down store, replaced")

    # 4. Too many live voters (after a promotion): remove one that is not
    #    the leader. Only live ones count: with a voter down, rule 3 goes first.
    if len(live_voters) > cfg.max_replicas:
        extra = [p for p in live_voters if p.id != rs.leader.id]
        victim = max(
            extra,
            key=lambda p: (
                stores[p.store_id].region_count if p.store_id in stores else 0,
                p.store_id,
            ),
        )
        return Operator(
            OpKind.REMOVE_NODE, victim, f"{len(voters)} voters of {cfg.max_replicas}: remove one"
        )

    # 5. An extra learner on a normal store.
    if len(live_voters) >= cfg.max_replicas:
        for p in normal_learners:
            return Operator(OpKind.REMOVE_NODE, p, "extra learner on a normal store")
    return None


def _best_new_store(
    r: Region, stores: Mapping[int, StoreStatus], now: float, cfg: ScheduleConfig
) -> int | None:
    used = {p.store_id for p in r.peers}
    candidates = [
        s
        for sid, s in stores.items()
        if sid not in used and not s.meta.is_columnar and is_target(s, now, cfg)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda s: (s.region_count, s.meta.id)).meta.id


def columnar_checker(
    rs: RegionStatus, stores: Mapping[int, StoreStatus], now: float, cfg: ScheduleConfig
) -> Operator | None:
    if rs.leader is None:
        return None
    used = {p.store_id for p in rs.region.peers}
    for sid in sorted(stores):
        s = stores[sid]
        if s.meta.is_columnar and sid not in used and is_target(s, now, cfg):
            return Operator(OpKind.ADD_LEARNER, Peer(0, sid, True), "columnar replica")
    return None


def leader_balancer(
    rs: RegionStatus, stores: Mapping[int, StoreStatus], now: float, cfg: ScheduleConfig
) -> Operator | None:
    leader = rs.leader
    if leader is None or leader.store_id not in stores:
        return None
    candidates = [
        p
        for p in rs.region.peers
        if not p.is_learner
        and p.id != leader.id
        and p.id not in rs.pending_peers
        and p.id not in rs.down_peers
        and p.store_id in stores
        and not stores[p.store_id].meta.is_columnar
        and is_target(stores[p.store_id], now, cfg)
    ]
    if not candidates:
        return None
    target = min(candidates, key=lambda p: (stores[p.store_id].leader_count, p.store_id))
    here = stores[leader.store_id].leader_count
    there = stores[target.store_id].leader_count
    if here - there > cfg.leader_schedule_tolerance:
        return Operator(
            OpKind.TRANSFER_LEADER,
            target,
            f"leader balance: store {leader.store_id} leads {here}, "
            f"store {target.store_id} leads {there}",
        )
    return None


def operator_progress(p: PendingOperator, rs: RegionStatus, now: float) -> Progress:
    """Where a pending step stands, judged from the Region's latest report."""
    r = rs.region
    op = p.op
    if op.kind == OpKind.TRANSFER_LEADER:
        if rs.leader is not None and rs.leader.store_id == op.peer.store_id:
            return Progress.DONE
        if r.epoch != p.epoch:
            return Progress.STALE
    else:
        if r.epoch.conf_ver > p.epoch.conf_ver:
            return Progress.DONE  # the conf change (ours, as the only one in flight) applied
        if r.epoch.version != p.epoch.version:
            return Progress.STALE  # split meanwhile: the step names the old epoch
    if now > p.deadline:
        return Progress.TIMEOUT
    return Progress.RUNNING


__all__ = [
    "OpKind",
    "Operator",
    "PendingOperator",
    "Progress",
    "RegionStatus",
    "ScheduleConfig",
    "StoreStatus",
    "columnar_checker",
    "is_down",
    "is_target",
    "leader_balancer",
    "operator_progress",
    "replica_checker",
    "schedule",
]
