"""Idle groups are skipped in the driver's per-loop tick (raft/group.py,
``RaftGroup.tick_if_due``), yet keep every Raft duty: they still elect a
leader when theirs dies, still answer read barriers and still commit."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from raft import ProposalError, RaftGroup
from tests.raft_helpers import leader_of, make_nodes, wait_for


def _keep_busy(group: RaftGroup, stop: threading.Event) -> threading.Thread:
    """Proposals on ``group`` back to back (16 in flight) until ``stop``: the
    drivers of its replicas loop far more often than an idle group's timers
    fire."""

    def run() -> None:
        sem = threading.Semaphore(16)

        def done(_result: object, _err: ProposalError | None) -> None:
            sem.release()

        i = 0
        while not stop.is_set():
            if not sem.acquire(timeout=0.1):
                continue
            group.propose_async(b"busy-%d" % i, done)
            i += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_an_idle_group_is_skipped_in_busy_loops_yet_elects_and_serves(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    addrs = [n.addr for n in nodes]
    stop = threading.Event()
    busy: threading.Thread | None = None
    try:
        for n in nodes:
            n.host(1, addrs)
            n.host(2, addrs)
        g1 = leader_of(nodes, 1)
        g2 = leader_of(nodes, 2)
        # Group 2 must be led by another store than group 1. A transfer is
        # best effort in Raft (the target campaigns; another replica may
        # still win that election): ask again until it lands.
        for _ in range(10):
            if g2.self_addr != g1.self_addr:
                break
            g2.transfer_leader(next(a for a in addrs if a != g1.self_addr))
            with contextlib.suppress(AssertionError):
                wait_for(
                    lambda: any(
                        n.addr != g1.self_addr and n.groups[2].is_ready_leader() for n in nodes
                    ),
                    timeout=3,
                    what="group 2 led by another store",
                )
            g2 = leader_of(nodes, 2)
        assert g2.self_addr != g1.self_addr
        g2.propose(b"idle-before")
        busy = _keep_busy(g1, stop)

        # On the store leading neither group, the idle group is ticked in a
        # small fraction of the loops its busy neighbour causes.
        third = next(n for n in nodes if n.addr not in (g1.self_addr, g2.self_addr))
        idle = third.groups[2]
        loops0, ticks0 = third.driver._loops, idle.ticks
        wait_for(lambda: third.driver._loops - loops0 >= 400, timeout=30, what="busy loops")
        loops, ticks = third.driver._loops - loops0, idle.ticks - ticks0
        assert ticks < loops / 4, (ticks, loops)
        assert ticks > 0  # its timers and the leader's heartbeats still tick it

        # Its leader's store dies: the idle group, ticked only at its
        # deadlines, still times the leader out and elects another.
        dead = next(n for n in nodes if n.addr == g2.self_addr)
        dead.stop()
        alive = [n for n in nodes if n is not dead]
        t0 = time.monotonic()
        new = leader_of(alive, 2)
        assert new.self_addr != dead.addr
        elected_in = time.monotonic() - t0
        assert elected_in < 10, elected_in
        new.read_barrier(timeout=5)
        new.propose(b"idle-after", timeout=5)

        def everywhere() -> bool:
            return all(n.machines[2].commands()[-1:] == [b"idle-after"] for n in alive)

        wait_for(everywhere, what="the idle group's write on every live replica")
        assert g1.is_leader()  # the busy group kept going meanwhile
        g1.propose(b"busy-after", timeout=5)
    finally:
        stop.set()
        if busy is not None:
            busy.join(5)
        for n in nodes:
            if not n.driver._stop:
                n.stop()
