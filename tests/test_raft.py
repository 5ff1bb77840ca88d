"""The multi-Raft layer on real pysyncobj, real TCP (loopback) and real
RocksDB logs; several 'stores' (drivers) in one process."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raft import ProposalError, RaftConfig, RaftGroup
from tests.raft_helpers import ListMachine, Node, leader_of, make_nodes, propose, wait_for


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


def test_replicas_apply_the_same_commands_in_the_same_order(cluster: list[Node]) -> None:
    results = [propose(cluster, 1, b"c%d" % i) for i in range(50)]
    assert results == sorted(results)  # each proposal answered with its own result
    expected = [b"c%d" % i for i in range(50)]
    for n in cluster:
        wait_for(lambda n=n: n.machines[1].commands() == expected, what="replica convergence")
    indexes = [[i for i, _ in n.machines[1].applied] for n in cluster]
    assert indexes[0] == indexes[1] == indexes[2]
    assert indexes[0] == sorted(indexes[0])


def test_concurrent_proposals_share_log_entries(cluster: list[Node]) -> None:
    leader = leader_of(cluster, 1)
    n_threads, per = 32, 40

    def work(t: int) -> None:
        for i in range(per):
            leader.propose(b"%d-%d" % (t, i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = next(n for n in cluster if n.groups[1] is leader).machines[1]
    entries = {i for i, _ in m.applied}
    assert len(m.applied) >= n_threads * per
    # Group commit: far fewer log entries than commands.
    assert len(entries) < n_threads * per / 2


def test_one_thread_keeps_many_async_proposals_in_flight(cluster: list[Node]) -> None:
    leader = leader_of(cluster, 1)
    n = 300
    results: dict[int, Any] = {}
    errors: list[ProposalError] = []
    threads: set[str] = set()
    all_done = threading.Event()

    def callback(i: int) -> Callable[[Any, ProposalError | None], None]:
        def done(result: Any, err: ProposalError | None) -> None:
            threads.add(threading.current_thread().name)
            if err is not None:
                errors.append(err)
            results[i] = result
            if len(results) == n:
                all_done.set()

        return done

    for i in range(n):
        leader.propose_async(b"a%d" % i, callback(i))
    assert all_done.wait(30)
    assert not errors
    # Each proposal got its own result (its position in the apply order).
    assert sorted(results.values()) == sorted(set(results.values()))
    assert threads == {f"{leader._driver._thread.name}"}  # called back in the driver
    m = next(nd for nd in cluster if nd.groups[1] is leader).machines[1]
    applied = [c for _, c in m.applied]
    assert sorted(applied) == sorted(b"a%d" % i for i in range(n))
    assert len({i for i, _ in m.applied}) < n / 2  # group commit


def test_async_proposal_on_a_follower_is_refused_at_once(cluster: list[Node]) -> None:
    leader = leader_of(cluster, 1)
    follower = next(n.groups[1] for n in cluster if n.groups[1] is not leader)
    got: list[ProposalError | None] = []
    follower.propose_async(b"nope", lambda _r, err: got.append(err))
    assert len(got) == 1  # in this thread, before propose_async returned
    err = got[0]
    assert err is not None and err.unknown is False and err.leader == leader.self_addr


def test_async_proposal_that_cannot_commit_times_out_as_unknown(tmp_path: Path) -> None:
    # A leader that keeps leading (no step-down) while its followers are gone:
    # nothing ever calls the proposal back but the driver's deadline.
    nodes = make_nodes(tmp_path, 3)
    addrs = [n.addr for n in nodes]
    cfg = RaftConfig(leader_step_down_timeout=60.0)
    try:
        for n in nodes:
            n.host(1, addrs, cfg=cfg)
        leader = leader_of(nodes, 1)
        for n in nodes:
            if n.groups[1] is not leader:
                n.stop()
        got: list[ProposalError | None] = []
        done = threading.Event()

        def callback(_r: Any, err: ProposalError | None) -> None:
            got.append(err)
            done.set()

        leader.propose_async(b"lost", callback, timeout=0.3)
        assert done.wait(10)
        err = got[0]
        assert err is not None and err.unknown is True
    finally:
        for n in nodes:
            if not n.driver._stop:
                n.stop()


def test_async_proposal_settles_once_its_fate_is_known(tmp_path: Path) -> None:
    # ``callback`` answers by the deadline; ``settled`` says when the entry's
    # fate is known here, which is when a caller may let go of its latches.
    nodes = make_nodes(tmp_path, 3)
    addrs = [n.addr for n in nodes]
    events: list[object] = []
    answered = threading.Event()
    settled = threading.Event()

    def callback(result: Any, err: ProposalError | None) -> None:
        events.append(("answer", result, err))
        answered.set()

    def on_settled() -> None:
        events.append("settled")
        settled.set()

    try:
        for n in nodes:
            n.host(1, addrs, cfg=RaftConfig(leader_step_down_timeout=2.0))
        leader = leader_of(nodes, 1)
        # Applied before its deadline: settled first (the latches are free
        # once the client hears), each exactly once.
        leader.propose_async(b"ok", callback, settled=on_settled)
        assert answered.wait(10) and settled.is_set()
        assert events == ["settled", ("answer", 1, None)]
        # Refused at once (decided in an earlier term): both, in this thread.
        events.clear()
        leader.propose_async(b"stale", callback, term=leader.term() - 1, settled=on_settled)
        assert events[0] == "settled" and len(events) == 2
        assert isinstance(events[1], tuple) and events[1][2].unknown is False
        # Cannot commit (the followers are gone): answered "unknown" at the
        # deadline, settled only once this replica no longer leads (here:
        # it steps down, hearing from no majority), never twice.
        events.clear()
        answered.clear()
        settled.clear()
        for n in nodes:
            if n.groups[1] is not leader:
                n.stop()
        leader.propose_async(b"lost", callback, timeout=0.0, settled=on_settled)
        assert answered.wait(10)
        assert not settled.is_set() and leader.is_leader()
        assert settled.wait(10)
        assert not leader.is_leader()
        answer = events[0]
        assert isinstance(answer, tuple) and answer[2] is not None and answer[2].unknown
        assert events[1:] == ["settled"]
    finally:
        for n in nodes:
            if not n.driver._stop:
                n.stop()
    assert events[1:] == ["settled"]  # stopping the leader settled nothing again


def test_follower_refuses_proposals_without_proposing(cluster: list[Node]) -> None:
    leader = leader_of(cluster, 1)
    follower = next(n.groups[1] for n in cluster if n.groups[1] is not leader)
    # A follower learns who leads from the leader's first append; until then
    # it refuses without a hint, which is right but not what this test checks.
    wait_for(lambda: follower.leader() == leader.self_addr, what="the follower to know its leader")
    before = len(follower._journal)
    with pytest.raises(ProposalError) as e:
        follower.propose(b"nope")
    assert e.value.unknown is False
    assert e.value.leader == leader.self_addr
    assert len(follower._journal) == before


def test_read_barrier_on_leader_and_refusal_on_follower(cluster: list[Node]) -> None:
    leader = leader_of(cluster, 1)
    leader.propose(b"w")
    leader.read_barrier()
    follower = next(n.groups[1] for n in cluster if n.groups[1] is not leader)
    with pytest.raises(ProposalError):
        follower.read_barrier()


def test_learner_receives_every_entry_with_its_index(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 4)
    addrs = [n.addr for n in nodes]
    voters = addrs[:3]
    try:
        for n in nodes[:3]:
            n.host(7, voters)
        learner = nodes[3].host(7, voters, learner=True)
        for i in range(30):
            propose(nodes[:3], 7, b"e%d" % i)
        lm = nodes[3].machines[7]
        wait_for(lambda: len(lm.applied) == 30, what="learner catch-up")
        vm = nodes[0].machines[7]
        wait_for(lambda: len(vm.applied) == 30, what="voter catch-up")
        assert lm.applied == vm.applied  # same commands at the same log indexes
        assert learner.is_learner and not learner.is_leader()
        with pytest.raises(ProposalError):
            learner.propose(b"x")
    finally:
        for n in nodes:
            n.stop()


def test_learner_created_before_its_voters_is_fed(tmp_path: Path) -> None:
    # As after a split applied on the learner's store first: its hello reaches
    # stores that do not host the group yet and is dropped there. The learner
    # must introduce itself again until a voter feeds it.
    nodes = make_nodes(tmp_path, 4)
    addrs = [n.addr for n in nodes]
    voters = addrs[:3]
    try:
        for n in nodes[:3]:  # links up, through another group
            n.host(1, voters)
        propose(nodes[:3], 1, b"links")
        nodes[3].host(8, voters, learner=True)  # hello sent now, and lost
        nodes[3].driver.wait_loop(1.0)  # one driver loop: the hello has gone out
        for n in nodes[:3]:
            n.host(8, voters)
        propose(nodes[:3], 8, b"fed")
        wait_for(lambda: nodes[3].machines[8].commands() == [b"fed"], what="the learner fed")
    finally:
        for n in nodes:
            n.stop()


def test_whole_group_restart_replays_the_durable_log(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    addrs = [n.addr for n in nodes]
    paths = [n.path for n in nodes]
    try:
        for n in nodes:
            n.host(1, addrs)
        for i in range(20):
            propose(nodes, 1, b"d%d" % i)
    finally:
        for n in nodes:
            n.stop()
    nodes = [Node(p, a) for p, a in zip(paths, addrs, strict=True)]
    try:
        for n in nodes:
            n.host(1, addrs)
        propose(nodes, 1, b"after")
        expected = [b"d%d" % i for i in range(20)] + [b"after"]
        for n in nodes:
            # A fresh state machine sees the whole committed log again.
            wait_for(lambda n=n: n.machines[1].commands() == expected, what="replay")
    finally:
        for n in nodes:
            n.stop()


def test_membership_change_and_leader_transfer(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 4)
    addrs = [n.addr for n in nodes]
    try:
        for n in nodes[:3]:
            n.host(3, addrs[:3])
        leader = leader_of(nodes[:3], 3)
        leader.propose(b"before")
        nodes[3].host(3, addrs)  # the newcomer knows the new membership
        leader.add_member(addrs[3])
        leader.propose(b"after-add")
        wait_for(
            lambda: nodes[3].machines[3].commands() == [b"before", b"after-add"], what="new voter"
        )
        target = addrs[3]
        wait_for(
            lambda: (
                leader.obj._SyncObj__raftMatchIndex.get(
                    next(x for x in leader.obj._SyncObj__otherNodes if x.id == target)
                )
                == leader.obj._SyncObj__getCurrentLogIndex()
            ),
            what="target caught up",
        )
        leader.transfer_leader(target)
        new_leader = leader_of(nodes, 3)
        assert new_leader.self_addr == target
        old = leader.self_addr
        new_leader.remove_member(old)
        new_leader.propose(b"after-remove")
        status = new_leader.status()
        assert status["partner_nodes_count"] == 2
    finally:
        for n in nodes:
            n.stop()


def test_stale_term_commands_are_skipped_everywhere(cluster: list[Node]) -> None:
    leader: RaftGroup = leader_of(cluster, 1)
    index = leader.applied_index() + 1
    # An entry whose log term differs from the term its command was computed
    # in (a deposed leader's command forwarded to a new leader) is skipped.
    leader._journal.add(b"", index, leader.term() + 1)
    try:
        assert leader._on_apply(index, leader.term(), [b"stale"]) is None
    finally:
        leader._journal.deleteEntriesFrom(len(leader._journal) - 1)
    assert b"stale" not in [c for n in cluster for c in n.machines[1].commands()]


def test_secret_rejects_unauthenticated_messages(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3, secret="s3cret")
    addrs = [n.addr for n in nodes]
    try:
        for n in nodes:
            n.host(1, addrs)
        leader = leader_of(nodes, 1)
        leader.propose(b"legit")
        victim = next(n for n in nodes if n.groups[1] is not leader)
        term_before = victim.groups[1].term()
        # A forged append_entries at a huge term, framed exactly as our hub
        # frames messages, but not encrypted with the cluster key.
        forged = (
            1,
            1,
            {
                "type": "append_entries",
                "term": 10**6,
                "commit_index": 0,
                "entries": [],
                "prevLogIdx": 0,
                "prevLogTerm": 0,
            },
        )
        host, port = victim.addr.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            for msg in [(0, "127.0.0.1:1"), forged]:
                data = zlib.compress(pickle.dumps(msg), 3)
                s.sendall(struct.pack("i", len(data)) + data)
            s.settimeout(5)
            # The hub closes the connection instead of acting on the frame.
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
        leader.propose(b"still-fine")
        assert victim.groups[1].term() == term_before
        wait_for(lambda: b"still-fine" in victim.machines[1].commands(), what="replication")
    finally:
        for n in nodes:
            n.stop()


def test_without_a_secret_the_same_injection_takes_effect(cluster: list[Node]) -> None:
    """The control for the test above: with no cluster secret, Raft trusts
    whoever reaches its port. That is why the port binds to loopback unless
    configured otherwise, and why a multi-machine cluster needs a secret."""
    leader = leader_of(cluster, 1)
    leader.propose(b"x")
    victim = next(n for n in cluster if n.groups[1] is not leader)
    forged = (
        1,
        1,
        {
            "type": "append_entries",
            "term": 10**6,
            "commit_index": 0,
            "entries": [],
            "prevLogIdx": 0,
            "prevLogTerm": 0,
        },
    )
    host, port = victim.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port))):
        pass
    with socket.create_connection((host, int(port))) as s:
        for msg in [(0, "127.0.0.1:1"), forged]:
            data = zlib.compress(pickle.dumps(msg), 3)
            s.sendall(struct.pack("i", len(data)) + data)
        wait_for(lambda: victim.groups[1].term() >= 10**6, what="forged term adopted")


def test_journal_keeps_its_tail_when_a_snapshot_load_clears_it(tmp_path: Path) -> None:
    """The crash window that lost acknowledged writes with pysyncobj's own
    compaction: the snapshot file is replaced, the process dies before the log
    is truncated, and at start-up pysyncobj clears the log and re-adds the
    snapshot's last two entries. Our journal keeps the entries after them."""
    from raft.log_store import RaftLogStore
    from tests.raft_helpers import RocksLog

    log = RocksLog(str(tmp_path / "log"))
    try:
        j = RaftLogStore(log).journal(5)
        for i in range(1, 51):
            j.add(b"c%d" % i, i, 1)
        j.clear()  # what __loadDumpFile does...
        j.add(b"c40", 40, 1)  # ...then re-adds the snapshot's prev and last entries
        j.add(b"c41", 41, 1)
        assert [e[1] for e in j] == list(range(40, 51))
        j._store.flush()
        reopened = RaftLogStore(log).journal(5)
        assert [e[1] for e in reopened] == list(range(40, 51))
        # A snapshot that does not match our log (a leader's, after we fell
        # behind) really replaces it.
        reopened.clear()
        reopened.add(b"x", 80, 2)
        reopened.add(b"y", 81, 2)
        reopened._store.flush()
        assert [e[1] for e in RaftLogStore(log).journal(5)] == [80, 81]
    finally:
        log.close()


def test_a_follower_can_campaign_and_take_over(cluster: list[Node]) -> None:
    leader = leader_of(cluster, 1)
    follower = next(n.groups[1] for n in cluster if n.groups[1] is not leader)
    propose(cluster, 1, b"before")
    # An election is decided by votes, so ask until this follower wins one.
    for _ in range(10):
        follower.campaign()
        try:
            wait_for(follower.is_ready_leader, timeout=3, what="follower elected")
            break
        except AssertionError:
            continue
    assert follower.is_ready_leader()
    assert follower.propose(b"after") is not None


def test_a_link_that_stops_draining_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that accepts but never reads (a silent partition looks the
    same) must not make our unsent buffer grow without bound."""
    from pysyncobj.poller import createPoller

    from raft import transport

    monkeypatch.setattr(transport, "MAX_UNSENT_BYTES", 1 << 20)
    # Every hub.tick() below does its housekeeping (not one per 10 ms).
    monkeypatch.setattr(transport, "HUB_TICK_INTERVAL", 0.0)
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer = f"127.0.0.1:{sink.getsockname()[1]}"
    poller = createPoller("auto")
    hub = transport.StoreTransportHub(poller, "127.0.0.1:0")
    hub.bind()

    class _Wants:
        def remote_addrs(self) -> set[str]:
            return {peer}

        def on_link_up(self, addr: str) -> None:
            pass

        def on_link_down(self, addr: str) -> None:
            pass

        def keep_introducing(self, now: float) -> None:
            pass

    hub.groups[1] = _Wants()  # type: ignore[assignment]
    accepted: list[socket.socket] = []
    try:

        def linked() -> bool:
            hub.tick()
            poller.poll(0.01)
            if not accepted:
                sink.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    accepted.append(sink.accept()[0])
            return hub.link_ready(peer)

        wait_for(linked, what="link up")
        conn = hub.links[peer].conn
        payload = os.urandom(65536)
        for _ in range(64):  # ~4 MiB the peer never reads
            hub.send(peer, 1, 1, payload)
            poller.poll(0)
        assert conn is not None and conn.getSendBufferSize() > (1 << 20)
        hub.tick()
        assert hub.links[peer].conn is not conn  # dropped, to be redialled
    finally:
        hub.close()
        for s in accepted:
            s.close()
        sink.close()


def test_large_entries_reach_every_replica(
    cluster: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    # pysyncobj sends an entry of 64 KiB or more in chunks, and marks the
    # last one by the serialized command's length instead of the pickled
    # entry's (a few bytes more): for sizes just under a chunk multiple the
    # follower unpickled a truncated entry and never got past it (found by
    # the columnar node's first bulk insert). Sweep the sizes around two
    # chunks: every replica must apply every entry.
    sizes = [2 * 65_536 + d for d in range(-160, 8, 2)]
    expected = []
    for size in sizes:
        big = b"%06d" % size + b"x" * (size - 6)
        propose(cluster, 1, big)
        expected.append(big)
    for n in cluster:
        wait_for(
            lambda n=n: n.machines[1].commands()[-len(expected) :] == expected,
            what="every large entry on every replica",
        )
    # They must arrive whole the first time, not after a failed unpickling
    # and a resend.
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures[0].getMessage()


def test_a_stray_chunk_of_a_large_entry_is_dropped(
    cluster: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    """A deposed leader's last chunks can arrive after the new leader's whole
    entry (two links): a 'process' or 'finish' without its 'start' must not
    crash the driver loop."""
    leader = leader_of(cluster, 1)
    follower_node = next(n for n in cluster if n.groups[1] is not leader)
    follower = follower_node.groups[1]
    sender = next(iter(follower.obj._SyncObj__otherNodes))
    for kind in ("process", "finish"):
        stray = {
            "type": "append_entries",
            "transmission": kind,
            "data": b"\x80\x05tail",
            "term": follower.term(),
            "commit_index": 0,
            "prevLogIdx": 1,
            "prevLogTerm": 1,
        }
        follower_node.driver.call(
            lambda m=stray: follower.obj._SyncObj__onMessageReceived(sender, m)
        )
    propose(cluster, 1, b"after the stray chunks")
    wait_for(
        lambda: all(n.machines[1].commands()[-1:] == [b"after the stray chunks"] for n in cluster),
        what="the entry on every replica",
    )
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures[0].getMessage()


class _HeldMachine(ListMachine):
    """Applies like ListMachine, but holds the driver inside the apply of
    ``held`` until ``release`` is set."""

    def __init__(self, held: bytes) -> None:
        super().__init__()
        self.held = held
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, index: int, commands: list[bytes]) -> list[Any]:
        if self.held in commands:
            self.entered.set()
            assert self.release.wait(30)
        return super().apply(index, commands)


def test_settle_waits_past_the_deadline_for_the_real_outcome(tmp_path: Path) -> None:
    # The caller's deadline passes while the entry is on its way; the entry
    # still applies. Without ``settle`` the caller hears "timed out"; with it
    # the caller hears what happened, after it happened (a caller holding
    # latches must hold them that long: test_raftstore shows why).
    (node,) = make_nodes(tmp_path, 1)
    m = _HeldMachine(b"held")
    node.machines[1] = m
    try:
        g = node.host(1, [node.addr])
        wait_for(g.is_ready_leader, what="a leader")
        first = g.propose(b"first")
        got: list[object] = []

        def run(cmd: bytes, settle: bool) -> threading.Thread:
            def body() -> None:
                try:
                    got.append(g.propose(cmd, timeout=0.0, settle=settle))
                except ProposalError as e:
                    got.append(e)

            t = threading.Thread(target=body, daemon=True)
            t.start()
            return t

        t = run(b"held", settle=True)
        assert m.entered.wait(10)  # the driver is inside the entry's apply
        plain = run(b"after", settle=False)
        plain.join(10)
        assert len(got) == 1 and isinstance(got[0], ProposalError) and got[0].unknown
        m.release.set()
        t.join(10)
        assert got[1] == first + 1  # the held entry's own result
        wait_for(lambda: m.commands() == [b"first", b"held", b"after"], what="all applied")
    finally:
        m.release.set()
        node.stop()


def test_proposal_decided_in_another_term_is_refused(tmp_path: Path) -> None:
    # A command computed while leading in term t must not be appended in a
    # later term (leadership lost and won back in between): the other
    # leader's writes are not in the state it was computed from.
    (node,) = make_nodes(tmp_path, 1)
    try:
        g = node.host(1, [node.addr])
        wait_for(g.is_ready_leader, what="a leader")
        with pytest.raises(ProposalError) as e:
            g.propose(b"stale", term=g.term() - 1, settle=True)
        assert e.value.unknown is False
        assert g.propose(b"fresh", term=g.term(), settle=True) == 1
        assert node.machines[1].commands() == [b"fresh"]
    finally:
        node.stop()
