"""PD's scheduler rules (kvstore.pd.scheduler) as table tests: pure
functions from a Region, the stores and the time to one operator step."""

from __future__ import annotations

import pytest

from kvstore.pd.scheduler import (
    Operator,
    OpKind,
    PendingOperator,
    Progress,
    RegionStatus,
    ScheduleConfig,
    StoreStatus,
    operator_progress,
    schedule,
)
from kvstore.types import COLUMNAR_LABEL, Peer, Region, RegionEpoch, StoreMeta, StoreState

NOW = 1000.0
CFG = ScheduleConfig(max_replicas=3, max_store_down_time=2.0, store_disconnect_time=2.0)


def store(
    sid: int,
    *,
    regions: int = 0,
    leaders: int = 0,
    age: float = 0.0,
    columnar: bool = False,
    state: StoreState = StoreState.UP,
) -> StoreStatus:
    labels = (COLUMNAR_LABEL,) if columnar else ()
    return StoreStatus(StoreMeta(sid, f"s{sid}:1", state, labels), NOW - age, regions, leaders)


def stores(*ss: StoreStatus) -> dict[int, StoreStatus]:
    return {s.meta.id: s for s in ss}


def rs(
    peers: list[tuple[int, int, bool]],
    leader: int = 1,
    pending: tuple[int, ...] = (),
    conf_ver: int = 1,
) -> RegionStatus:
    ps = tuple(Peer(p, s, lr) for p, s, lr in peers)
    r = Region(7, b"", b"", RegionEpoch(conf_ver, 1), ps)
    lead = next(p for p in ps if p.id == leader)
    return RegionStatus(r, lead, frozenset(pending))


V, L = False, True  # voter, learner

THREE = stores(store(1), store(2), store(3), store(4, regions=5), store(5, regions=1))

CASES: list[tuple[str, RegionStatus, dict[int, StoreStatus], tuple[OpKind, int, int] | None]] = [
    # (name, region, stores, expected (kind, peer id or 0 for fresh, store id))
    (
        "one voter: add a learner on the emptiest store",
        rs([(1, 1, V)]),
        THREE,
        (OpKind.ADD_LEARNER, 0, 2),
    ),
    ("a pending learner: wait", rs([(1, 1, V), (2, 2, L)], pending=(2,)), THREE, None),
    ("a caught-up learner: promote", rs([(1, 1, V), (2, 2, L)]), THREE, (OpKind.ADD_NODE, 2, 2)),
    ("three live voters: nothing", rs([(1, 1, V), (2, 2, V), (3, 3, V)]), THREE, None),
    (
        "a voter on a down store, no spare store: keep it",
        rs([(1, 1, V), (2, 2, V), (3, 3, V)]),
        stores(store(1), store(2), store(3, age=10.0)),
        None,
    ),
    (
        "a voter on a down store: first add a replacement",
        rs([(1, 1, V), (2, 2, V), (3, 3, V)]),
        stores(store(1), store(2), store(3, age=10.0), store(4)),
        (OpKind.ADD_LEARNER, 0, 4),
    ),
    (
        "replacement promoted: now remove the down voter",
        rs([(1, 1, V), (2, 2, V), (3, 3, V), (4, 4, V)]),
        stores(store(1), store(2), store(3, age=10.0), store(4)),
        (OpKind.REMOVE_NODE, 3, 3),
    ),
    (
        "four live voters: remove one that is not the leader, on the fullest store",
        rs([(1, 1, V), (2, 2, V), (3, 3, V), (4, 4, V)]),
        THREE,
        (OpKind.REMOVE_NODE, 4, 4),
    ),
    (
        "two voters down of four: never remove a live one",
        rs([(1, 1, V), (2, 2, V), (3, 3, V), (4, 4, V)]),
        stores(store(1), store(2), store(3, age=10.0), store(4, age=10.0)),
        None,
    ),
    (
        "a learner on a down store: remove it",
        rs([(1, 1, V), (2, 2, V), (3, 3, V), (9, 4, L)], pending=(9,)),
        stores(store(1), store(2), store(3), store(4, age=10.0)),
        (OpKind.REMOVE_NODE, 9, 4),
    ),
    (
        "an extra learner on a normal store: remove it",
        rs([(1, 1, V), (2, 2, V), (3, 3, V), (9, 4, L)]),
        THREE,
        (OpKind.REMOVE_NODE, 9, 4),
    ),
    (
        "a disconnected store is no target",
        rs([(1, 1, V)]),
        stores(store(1), store(2, age=1.0), store(3, age=1.9), store(4, age=3.0)),
        (OpKind.ADD_LEARNER, 0, 2),
    ),
    (
        "a tombstone store is down and no target",
        rs([(1, 1, V), (2, 2, V), (3, 3, V)]),
        stores(store(1), store(2), store(3, state=StoreState.TOMBSTONE), store(4, regions=9)),
        (OpKind.ADD_LEARNER, 0, 4),
    ),
    # (b) columnar learners
    (
        "columnar store: a learner there, never a voter",
        rs([(1, 1, V), (2, 2, V), (3, 3, V)]),
        stores(store(1), store(2), store(3), store(8, columnar=True)),
        (OpKind.ADD_LEARNER, 0, 8),
    ),
    (
        "columnar learner present: nothing",
        rs([(1, 1, V), (2, 2, V), (3, 3, V), (9, 8, L)], pending=(9,)),
        stores(store(1), store(2), store(3), store(8, columnar=True)),
        None,
    ),
    (
        "columnar store never receives a voter replacement",
        rs([(1, 1, V), (2, 2, V)]),
        stores(store(1), store(2), store(8, columnar=True)),
        (OpKind.ADD_LEARNER, 0, 8),
    ),
    (
        "replica checker comes before columnar",
        rs([(1, 1, V), (2, 2, V)]),
        stores(store(1), store(2), store(3), store(8, columnar=True)),
        (OpKind.ADD_LEARNER, 0, 3),
    ),
    # (c) leader balance
    (
        "leaders 3 vs 1: transfer to the store with fewest",
        rs([(1, 1, V), (2, 2, V), (3, 3, V)]),
        stores(store(1, leaders=3), store(2, leaders=2), store(3, leaders=1)),
        (OpKind.TRANSFER_LEADER, 3, 3),
    ),
    (
        "leaders 2 vs 1: within tolerance",
        rs([(1, 1, V), (2, 2, V), (3, 3, V)]),
        stores(store(1, leaders=2), store(2, leaders=1), store(3, leaders=1)),
        None,
    ),
    (
        "never to a pending voter",
        rs([(1, 1, V), (2, 2, V), (3, 3, V)], pending=(3,)),
        stores(store(1, leaders=3), store(2, leaders=2), store(3, leaders=0)),
        None,
    ),
]


@pytest.mark.parametrize(("name", "region", "ss", "want"), CASES, ids=[c[0] for c in CASES])
def test_schedule(
    name: str,
    region: RegionStatus,
    ss: dict[int, StoreStatus],
    want: tuple[OpKind, int, int] | None,
) -> None:
    op = schedule(region, ss, NOW, CFG)
    if want is None:
        assert op is None, op
        return
    assert op is not None, name
    assert (op.kind, op.peer.id, op.peer.store_id) == want, op.reason
    if op.kind == OpKind.ADD_LEARNER:
        assert op.peer.is_learner
    if op.kind == OpKind.ADD_NODE:
        assert not op.peer.is_learner  # the role it is promoted to


def test_tolerance_is_configurable() -> None:
    region = rs([(1, 1, V), (2, 2, V), (3, 3, V)])
    ss = stores(store(1, leaders=4), store(2, leaders=2), store(3, leaders=2))
    assert schedule(region, ss, NOW, CFG) is not None
    lax = ScheduleConfig(leader_schedule_tolerance=2)
    assert schedule(region, ss, NOW, lax) is None


def test_no_leader_no_step() -> None:
    r = rs([(1, 1, V)])
    headless = RegionStatus(r.region, None)
    assert schedule(headless, THREE, NOW, CFG) is None


def pending(op: Operator, conf_ver: int = 1) -> PendingOperator:
    return PendingOperator(7, op, RegionEpoch(conf_ver, 1), NOW + 10)


def test_operator_progress() -> None:
    add = Operator(OpKind.ADD_LEARNER, Peer(9, 4, True), "t")
    p = pending(add)
    assert operator_progress(p, rs([(1, 1, V)]), NOW) == Progress.RUNNING
    assert operator_progress(p, rs([(1, 1, V), (9, 4, L)], conf_ver=2), NOW) == Progress.DONE
    assert operator_progress(p, rs([(1, 1, V)]), NOW + 11) == Progress.TIMEOUT
    split = RegionStatus(Region(7, b"", b"m", RegionEpoch(1, 2), (Peer(1, 1),)), Peer(1, 1))
    assert operator_progress(p, split, NOW) == Progress.STALE
    move = pending(Operator(OpKind.TRANSFER_LEADER, Peer(2, 2), "t"))
    three = [(1, 1, V), (2, 2, V), (3, 3, V)]
    assert operator_progress(move, rs(three), NOW) == Progress.RUNNING
    assert operator_progress(move, rs(three, leader=2), NOW) == Progress.DONE
