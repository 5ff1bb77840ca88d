"""Leader leases (raft/lease.py): reads skip the Raft round, and no other
replica is ever leader while a lease holds.

The dangerous case is a partial partition: the leader L is cut off from one
follower F2 only. F2 stops hearing from L and campaigns; F1 still hears from
L (so L's lease keeps being renewed). Without sticky voters F1 would elect
F2 while L still answers reads from its lease: two leaders, stale reads on
L. The negative control turns stickiness off and must see exactly that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raft import RaftGroup
from raft.lease import LeaderLease
from tests.raft_helpers import Node, leader_of, make_nodes, wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Node]]:
    nodes = make_nodes(tmp_path, 3)
    addrs = [n.addr for n in nodes]
    try:
        for n in nodes:
            n.host(1, addrs)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _node_of(cluster: list[Node], group: RaftGroup) -> Node:
    return next(n for n in cluster if n.groups[1] is group)


def test_reads_under_the_lease_propose_nothing(cluster: list[Node]) -> None:
    leader = leader_of(cluster, 1)
    leader.propose(b"w")
    wait_for(leader.in_lease, what="the leader's lease")
    before_reads, before_index = leader.lease.lease_reads, leader.commit_index()
    for _ in range(200):
        leader.read_barrier()
    # Heartbeats renew the lease without log entries: no barrier was proposed.
    assert leader.lease.lease_reads - before_reads >= 150
    assert leader.commit_index() == before_index
    follower = next(n.groups[1] for n in cluster if n.groups[1] is not leader)
    assert not follower.in_lease()


def _cut(a: Node, b: Node) -> None:
    """Drop every frame between ``a`` and ``b`` (both directions); the
    rest of the links stay up."""
    for src, dst in ((a, b), (b, a)):
        hub: Any = src.driver.hub
        real = hub.send

        def send(addr: str, *args: Any, _real: Any = real, _dst: str = dst.addr) -> bool:
            return False if addr == _dst else bool(_real(addr, *args))

        hub.send = send


@pytest.mark.parametrize("sticky", [True, False], ids=["sticky-voters", "negative-control"])
def test_no_other_leader_while_the_lease_holds(
    cluster: list[Node], sticky: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sticky:
        monkeypatch.setattr(LeaderLease, "refuses_vote", lambda self, message: False)
    old = leader_of(cluster, 1)
    old.propose(b"before")
    wait_for(old.in_lease, what="the leader's lease")
    l_node = _node_of(cluster, old)
    f2 = next(n for n in cluster if n is not l_node)
    cut_term = old.term()
    _cut(l_node, f2)
    f2_group = f2.groups[1]

    # The moment any other replica becomes leader (in its driver thread,
    # same process, same clock): was the old leader's lease still running?
    elected: list[tuple[str, int, bool]] = []
    for n in cluster:
        g = n.groups[1]
        if g is old:
            continue
        become = g.obj._SyncObj__onBecomeLeader

        def on_become(g: RaftGroup = g, become: Any = become, addr: str = n.addr) -> None:
            elected.append((addr, g.term(), old.lease.valid(cut_term) and old.is_leader()))
            become()

        g.obj._SyncObj__onBecomeLeader = on_become
    # F2 hears nothing from L: it campaigns again and again, each time with
    # a higher term. Wait for several campaigns (or an election).
    wait_for(
        lambda: elected or f2_group.term() >= cut_term + 4,
        timeout=30,
        what="the cut-off follower to campaign several times",
    )
    overlaps = [f"{a} elected in term {t} during the old lease" for a, t, live in elected if live]
    if sticky:
        assert not overlaps, overlaps
        # F1 kept voting for no one: the old leader still leads, with a lease.
        assert old.is_leader()
        wait_for(old.in_lease, what="the old leader's lease, renewed through F1")
    else:
        assert overlaps, "without sticky voters a second leader must appear during the lease"


def test_a_transfer_gives_up_the_lease_and_the_new_leader_gets_one(cluster: list[Node]) -> None:
    old = leader_of(cluster, 1)
    wait_for(old.in_lease, what="the leader's lease")
    target = next(n.groups[1] for n in cluster if n.groups[1] is not old)
    term = old.term()
    wait_for(
        lambda: (
            old.obj._SyncObj__raftMatchIndex.get(
                next(node for node in old.obj._SyncObj__otherNodes if node.id == target.self_addr)
            )
            == old.obj._SyncObj__getCurrentLogIndex()
        ),
        what="the target to catch up",
    )
    old.transfer_leader(target.self_addr)
    # From the moment TimeoutNow left, the old leader reads through the
    # barrier: that term's lease never comes back.
    assert not old.lease.valid(term)
    new = leader_of(cluster, 1)
    assert new.term() > term
    wait_for(new.in_lease, what="the new leader's lease")
    assert not old.lease.valid(term)


def test_a_restarted_voter_refuses_votes_at_first() -> None:
    lease = LeaderLease(election_timeout_min=0.2)
    assert lease.refuses_vote({"type": "request_vote", "term": 5})
    assert not lease.refuses_vote({"type": "request_vote", "term": 5, "lease_transfer": True})
    deadline = time.monotonic() + 5
    while lease.refuses_vote({"type": "request_vote", "term": 5}):
        assert time.monotonic() < deadline, "stickiness must end"
        time.sleep(0.01)


def test_lease_needs_a_majority_of_echoes_of_this_term() -> None:
    lease = LeaderLease(election_timeout_min=0.2)
    voters = {"b", "c", "d", "e"}  # five voters: this one and two others make a majority
    now = time.monotonic()
    lease.on_echo("b", (7, now), 7, voters)
    assert not lease.valid(7)
    lease.on_echo("c", (6, now), 7, voters)  # an older term's echo counts for nothing
    assert not lease.valid(7)
    lease.on_echo("c", (7, now - 1.0), 7, voters)  # too old to give a lease now
    assert not lease.valid(7)
    lease.on_echo("d", (7, now), 7, voters)
    assert lease.valid(7) and not lease.valid(8)
    assert lease.lease[1] == pytest.approx(now + 0.16)
    lease.revoke(7)
    assert not lease.valid(7)
    lease.on_echo("e", (7, time.monotonic()), 7, voters)
    assert not lease.valid(7), "a revoked term never gets its lease back"
