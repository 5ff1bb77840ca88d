"""The placement driver as real processes (``python -m kvstore.server.pd_server``),
talked to through :class:`~kvstore.client.pd_client.PdClient` and raw gRPC.

1 PD: every RPC end to end, the scheduler's first steps, malformed requests
(answered in the header, the process keeps serving), and a restart that keeps
the state and never hands out a timestamp again.

3 PDs (slow): SIGKILL of the leader, twice, while threads take timestamps and
ids through one client: timestamps strictly increase per thread and in
real-time order across threads, no id repeats, the client carries on, and
the failover time is printed (never asserted). Then every member is killed
and restarted: stores, Regions and the safe point are still there.

Every wait is a condition under a deadline; every process is stopped on the
way out (LocalPdCluster's ``with`` block).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore.client.pd_client import PdClient
from kvstore.errors import (
    AlreadyBootstrappedError,
    ClusterMismatchError,
    InvalidArgumentError,
    NotBootstrappedError,
    PdError,
    PdUnavailableError,
)
from kvstore.proto import metapb_pb2, pdpb_pb2
from kvstore.proto.convert import peer_to_pb, region_to_pb
from kvstore.proto.rpc import PD_SERVICE, TSO_PATH
from kvstore.server.local_pd import LocalPdCluster
from kvstore.types import COLUMNAR_LABEL, Peer, Region, RegionEpoch

# A huge GC life time keeps the scheduled safe point at 0, so the tests see
# only the moves they make themselves.
NO_GC = ["--gc-life-time", "1e12"]


@pytest.fixture
def pd1(tmp_path: Path) -> Iterator[LocalPdCluster]:
    with LocalPdCluster(tmp_path / "pd", 1, extra_args=[*NO_GC, "--max-store-down-time", "2"]) as c:
        yield c


def store_pb(sid: int, port: int, *, columnar: bool = False) -> metapb_pb2.Store:
    s = metapb_pb2.Store(id=sid, address=f"127.0.0.1:{port}", raft_address=f"127.0.0.1:{port + 1}")
    if columnar:
        s.labels.add(key=COLUMNAR_LABEL[0], value=COLUMNAR_LABEL[1])
    return s


def heartbeat(region: Region, leader: Peer, pending: tuple[int, ...] = ()) -> Any:
    req = pdpb_pb2.RegionHeartbeatRequest(region=region_to_pb(region), leader=peer_to_pb(leader))
    for p in region.peers:
        if p.id in pending:
            req.pending_peers.append(peer_to_pb(p))
    return req


def raw_call(addr: str, method: str, data: bytes) -> bytes:
    ch = grpc.insecure_channel(addr)
    try:
        return bytes(ch.unary_unary(f"/{PD_SERVICE}/{method}")(data, timeout=10))
    finally:
        ch.close()


# ----------------------------------------------------------------- 1 PD
def test_every_rpc_end_to_end(pd1: LocalPdCluster) -> None:
    with PdClient(pd1.client_addrs(), timeout=10) as pd:
        assert pd.cluster_id != 0
        members, leader = pd.members()
        assert leader is not None and leader.name == "pd1"
        assert [m.client_addr for m in members] == pd1.client_addrs()

        a = pd.get_ts()
        b = pd.get_ts(10)
        c = pd.tso()
        assert a < b - 9 and b < c

        assert not pd.is_bootstrapped()
        with pytest.raises(NotBootstrappedError):
            pd.get_region(b"k")
        with pytest.raises(NotBootstrappedError):
            pd.put_store(store_pb(1, 20160))

        sid, rid, pid = pd.alloc_id(), pd.alloc_id(), pd.alloc_id()
        assert sid < rid < pid
        first = pd.alloc_id(5)
        assert first > pid
        s1 = store_pb(sid, 20160)
        region = Region(rid, b"", b"", RegionEpoch(1, 1), (Peer(pid, sid),))
        pd.bootstrap(s1, region)
        pd.bootstrap(s1, region)  # a retry of our own bootstrap succeeds
        with pytest.raises(AlreadyBootstrappedError):
            other = Region(first, b"", b"", RegionEpoch(1, 1), (Peer(first + 1, first + 2),))
            pd.bootstrap(store_pb(first + 2, 30000), other)
        assert pd.is_bootstrapped()

        # Stores.
        assert pd.get_store(sid) == s1
        assert pd.get_store(999_999) is None
        with pytest.raises(InvalidArgumentError):
            pd.put_store(store_pb(sid + 100, 20160))  # another store's address
        s2, s3 = store_pb(pd.alloc_id(), 20170), store_pb(pd.alloc_id(), 20180)
        col = store_pb(pd.alloc_id(), 20190, columnar=True)
        for s in (s2, s3, col):
            pd.put_store(s)
        assert [s.id for s in pd.get_all_stores()] == sorted([sid, s2.id, s3.id, col.id])

        # The first Region: one voter, so PD asks for a learner on another
        # normal store (the emptiest), with a fresh peer id.
        leader_peer = region.peers[0]
        resp = pd.region_heartbeat(heartbeat(region, leader_peer))
        assert resp.change_peer.change_type == pdpb_pb2.AddLearnerNode
        new_peer = resp.change_peer.peer
        assert new_peer.store_id in (s2.id, s3.id) and new_peer.id > first + 4
        assert new_peer.role == metapb_pb2.Learner
        assert resp.region_epoch.conf_ver == 1 and resp.region_id == rid
        # Sent again while the step is in progress (the epoch did not move).
        again = pd.region_heartbeat(heartbeat(region, leader_peer))
        assert again.change_peer == resp.change_peer

        # The leader applied it: a learner that is still catching up.
        learner = Peer(new_peer.id, new_peer.store_id, True)
        region2 = Region(rid, b"", b"", RegionEpoch(2, 1), (leader_peer, learner))
        assert not pd.region_heartbeat(heartbeat(region2, leader_peer, (learner.id,))).HasField(
            "change_peer"
        )
        # The store hosting it is told to create the peer.
        hb = pd.store_heartbeat(pdpb_pb2.StoreStats(store_id=learner.store_id))
        assert [r.id for r in hb.create_peers] == [rid]
        assert {s.id for s in hb.stores} == {sid, s2.id, s3.id, col.id}
        # Caught up: promote.
        resp = pd.region_heartbeat(heartbeat(region2, leader_peer))
        assert resp.change_peer.change_type == pdpb_pb2.AddNode
        assert resp.change_peer.peer.id == learner.id
        assert resp.change_peer.peer.role == metapb_pb2.Voter

        # Routing.
        assert pd.get_region(b"anything") == (region2, sid)
        assert pd.get_region_by_id(rid) == (region2, sid)
        assert pd.get_region_by_id(424242) is None

        # Split: ids from PD, then the report replaces the parent.
        [(new_rid, new_pids)] = pd.ask_batch_split(region2, 1)
        assert len(new_pids) == 2 and new_rid not in new_pids
        left = Region(rid, b"", b"m", RegionEpoch(2, 2), region2.peers)
        right = Region(
            new_rid,
            b"m",
            b"",
            RegionEpoch(2, 2),
            tuple(
                Peer(i, p.store_id, p.is_learner)
                for i, p in zip(new_pids, region2.peers, strict=True)
            ),
        )
        pd.report_batch_split([left, right])
        assert [r for r, _ in pd.scan_regions(b"", b"", 0)] == [left, right]
        assert [r for r, _ in pd.scan_regions(b"n", b"", 0)] == [right]
        assert [r for r, _ in pd.scan_regions(b"", b"", 1)] == [left]
        # A late heartbeat of the parent from before the split changes nothing.
        stale = pd.region_heartbeat(heartbeat(region2, leader_peer))
        assert not stale.HasField("change_peer")
        assert pd.get_region(b"z") == (right, None)

        # A store that still hosts a replica removed while it was away is
        # told to destroy it.
        gone = pdpb_pb2.StoreStats(store_id=col.id)
        gone.replicas.add(region_id=rid, peer_id=77, region_epoch={"conf_ver": 1, "version": 1})
        assert list(pd.store_heartbeat(gone).destroy_peers) == [rid]

        # GC safe point: forward only.
        assert pd.get_gc_safe_point() == 0
        assert pd.update_gc_safe_point(100) == 100
        assert pd.update_gc_safe_point(50) == 100
        assert pd.get_gc_safe_point() == 100
        with pytest.raises(InvalidArgumentError):
            pd.update_gc_safe_point(-1)
        with pytest.raises(InvalidArgumentError):
            pd.alloc_id(0)


def test_scheduler_replaces_a_down_store(pd1: LocalPdCluster) -> None:
    """max-store-down-time 2 s: a voter whose store stops sending heartbeats
    is replaced (learner added, promoted), then removed."""
    with PdClient(pd1.client_addrs()) as pd:
        ids = [pd.alloc_id() for _ in range(8)]
        stores = [store_pb(ids[i], 21000 + 10 * i) for i in range(4)]
        peers = tuple(Peer(ids[4 + i], stores[i].id) for i in range(3))
        region = Region(ids[7], b"", b"", RegionEpoch(3, 1), peers)
        pd.bootstrap(stores[0], region)
        for s in stores:
            pd.put_store(s)

        def beat(live: list[int]) -> None:
            for i in live:
                pd.store_heartbeat(pdpb_pb2.StoreStats(store_id=stores[i].id))

        beat([0, 1, 2, 3])
        assert not pd.region_heartbeat(heartbeat(region, peers[0])).HasField("change_peer")

        # Store 2 goes silent; the others keep beating until PD acts.
        def step() -> pdpb_pb2.RegionHeartbeatResponse | None:
            beat([0, 1, 3])
            resp = pd.region_heartbeat(heartbeat(region, peers[0]))
            return resp if resp.HasField("change_peer") else None

        resp = pd1.wait_for(step, 30, "a replacement for the down store")
        assert resp.change_peer.change_type == pdpb_pb2.AddLearnerNode
        assert resp.change_peer.peer.store_id == stores[3].id
        new = Peer(resp.change_peer.peer.id, stores[3].id, True)
        r2 = Region(region.id, b"", b"", RegionEpoch(4, 1), (*peers, new))
        resp = pd.region_heartbeat(heartbeat(r2, peers[0]))
        assert resp.change_peer.change_type == pdpb_pb2.AddNode
        r3 = Region(region.id, b"", b"", RegionEpoch(5, 1), (*peers, Peer(new.id, new.store_id)))
        resp = pd.region_heartbeat(heartbeat(r3, peers[0]))
        assert resp.change_peer.change_type == pdpb_pb2.RemoveNode
        assert resp.change_peer.peer.id == peers[2].id
    assert "schedule region" in pd1.log_tail("pd1", 20_000)


def test_malformed_requests_are_answered_in_the_header(pd1: LocalPdCluster) -> None:
    addr = pd1.client_addr("pd1")
    garbage = b"\xff\xfe not a protobuf"
    for m in pdpb_pb2.DESCRIPTOR.services_by_name["PD"].methods:
        if m.name == "Tso":
            continue
        resp_type = getattr(pdpb_pb2, m.output_type.name)
        resp = resp_type.FromString(raw_call(addr, m.name, garbage))
        assert resp.header.error.type == pdpb_pb2.INVALID_ARGUMENT, m.name
    # The stream answers every message, garbage included, and stays open.
    ch = grpc.insecure_channel(addr)
    try:
        ok = pdpb_pb2.TsoRequest(count=1).SerializeToString()
        zero = pdpb_pb2.TsoRequest(count=0).SerializeToString()
        answers = [
            pdpb_pb2.TsoResponse.FromString(x)
            for x in ch.stream_stream(TSO_PATH)(iter([garbage, ok, zero, ok]), timeout=10)
        ]
    finally:
        ch.close()
    kinds = [a.header.error.type for a in answers]
    assert kinds == [pdpb_pb2.INVALID_ARGUMENT, pdpb_pb2.OK, pdpb_pb2.INVALID_ARGUMENT, pdpb_pb2.OK]
    assert answers[3].timestamp.logical + (answers[3].timestamp.physical << 18) > (
        answers[1].timestamp.logical + (answers[1].timestamp.physical << 18)
    )
    # Values that parse but make no sense.
    bad_region = pdpb_pb2.BootstrapRequest(
        store=store_pb(1, 20160), region=metapb_pb2.Region(id=2, start_key=b"z", end_key=b"a")
    )
    resp = pdpb_pb2.BootstrapResponse.FromString(
        raw_call(addr, "Bootstrap", bad_region.SerializeToString())
    )
    assert resp.header.error.type == pdpb_pb2.INVALID_ARGUMENT
    big = pdpb_pb2.AllocIDRequest(count=10**9).SerializeToString()
    resp2 = pdpb_pb2.AllocIDResponse.FromString(raw_call(addr, "AllocID", big))
    assert resp2.header.error.type == pdpb_pb2.INVALID_ARGUMENT
    # Another cluster's id.
    wrong = pdpb_pb2.GetMembersRequest()
    wrong.header.cluster_id = 12345
    resp3 = pdpb_pb2.GetMembersResponse.FromString(
        raw_call(addr, "GetMembers", wrong.SerializeToString())
    )
    assert resp3.header.error.type == pdpb_pb2.CLUSTER_MISMATCH
    with PdClient([addr]) as pd:
        pd._cluster_id = 12345  # as if it had talked to another PD cluster
        with pytest.raises(ClusterMismatchError):
            pd.is_bootstrapped()
    assert pd1.alive("pd1"), pd1.log_tail("pd1")
    with PdClient([addr]) as pd:
        assert pd.get_ts() > 0


def test_restart_keeps_state_and_time_moves_on(tmp_path: Path) -> None:
    # A snapshot every 20 entries: the restart reads one, then the log after it.
    with LocalPdCluster(tmp_path / "pd", 1, extra_args=[*NO_GC, "--snapshot-entries", "20"]) as c:
        with PdClient(c.client_addrs()) as pd:
            for _ in range(100):
                pd.get_ts()
            ids = [pd.alloc_id() for _ in range(3)]
            region = Region(ids[1], b"", b"", RegionEpoch(1, 1), (Peer(ids[2], ids[0]),))
            pd.bootstrap(store_pb(ids[0], 22000), region)
            pd.update_gc_safe_point(777)
            cid, ts = pd.cluster_id, pd.get_ts()
        addr = c.client_addr("pd1")
        c.restart("pd1")
        assert c.client_addr("pd1") == addr  # same port again
        c.wait_leader()
        with PdClient(c.client_addrs()) as pd:
            assert pd.get_ts() > ts
            assert pd.cluster_id == cid
            assert pd.alloc_id() > ids[2]
            assert pd.get_region(b"x") == (region, None)
            assert pd.get_gc_safe_point() == 777


def test_unreachable_pd_raises_pd_unavailable(tmp_path: Path) -> None:
    from kvstore.server.local_pd import free_port

    with PdClient([f"127.0.0.1:{free_port()}"], timeout=1.0) as pd:
        t0 = time.monotonic()
        with pytest.raises(PdUnavailableError):
            pd.alloc_id()
        with pytest.raises(PdUnavailableError):
            pd.get_ts()
        assert time.monotonic() - t0 < 30  # bounded by the deadline, not hanging
    assert issubclass(PdUnavailableError, PdError)


# ----------------------------------------------------------------- 3 PDs
def check_real_time_order(ops: list[tuple[float, float, int]]) -> None:
    """``ops``: (start, end, ts). An op that started after another ended must
    have the larger timestamp; all timestamps distinct."""
    assert len({ts for _, _, ts in ops}) == len(ops), "a timestamp was handed out twice"
    by_end = sorted(ops, key=lambda o: o[1])
    ends = [o[1] for o in by_end]
    prefix_max: list[int] = []
    m = -1
    for o in by_end:
        m = max(m, o[2])
        prefix_max.append(m)
    for start, _end, ts in ops:
        i = bisect.bisect_left(ends, start)  # ops that ended before this one started
        if i:
            assert prefix_max[i - 1] < ts, "a later timestamp request got a smaller timestamp"


@pytest.mark.slow
def test_three_pds_leader_killed_under_load(tmp_path: Path) -> None:
    # Small snapshots: a restarted member may catch up from one.
    args = [*NO_GC, "--snapshot-entries", "200"]
    with LocalPdCluster(tmp_path / "pd", 3, extra_args=args, secret="pd-secret") as c:
        pd = PdClient(c.client_addrs(), timeout=30)
        try:
            ids = [pd.alloc_id() for _ in range(3)]
            region = Region(ids[1], b"", b"", RegionEpoch(1, 1), (Peer(ids[2], ids[0]),))
            pd.bootstrap(store_pb(ids[0], 23000), region)
            pd.update_gc_safe_point(4242)

            stop = threading.Event()
            per_thread: list[list[tuple[float, float, int]]] = [[] for _ in range(4)]
            got_ids: list[int] = []
            errors: list[BaseException] = []

            def take_ts(out: list[tuple[float, float, int]]) -> None:
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        ts = pd.get_ts()
                    except BaseException as e:
                        errors.append(e)
                        return
                    out.append((t0, time.monotonic(), ts))

            def take_ids() -> None:
                while not stop.is_set():
                    try:
                        got_ids.append(pd.alloc_id())
                    except BaseException as e:
                        errors.append(e)
                        return

            threads = [threading.Thread(target=take_ts, args=(o,)) for o in per_thread]
            threads.append(threading.Thread(target=take_ids))
            for t in threads:
                t.start()
            failovers = []
            try:
                for _round in range(2):
                    c.wait_for(lambda: sum(map(len, per_thread)) > 50, 30, "timestamps")
                    old = c.wait_leader()
                    killed = time.monotonic()
                    c.kill(old)

                    def served_after_kill(killed: float = killed) -> float | None:
                        after = [e for o in per_thread for s, e, _ in o if s > killed]
                        return min(after) if after else None

                    first = c.wait_for(served_after_kill, 60, "a timestamp after the kill")
                    new = c.wait_leader(exclude=(old,))
                    failovers.append((old, new, first - killed))
                    c.restart(old)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
            assert not errors, errors
            for o in per_thread:
                tss = [ts for _, _, ts in o]
                assert tss == sorted(set(tss)), "a thread's timestamps did not strictly increase"
            check_real_time_order([op for o in per_thread for op in o])
            assert len(got_ids) == len(set(got_ids)), "an id was handed out twice"
            for old, new, secs in failovers:
                print(f"PD failover {old} -> {new}: first timestamp {secs:.3f} s after SIGKILL")
            print(f"timestamps taken: {sum(map(len, per_thread))}, ids: {len(got_ids)}")

            # Whole PD cluster down and up again: the state is all there.
            last_ts, last_id = pd.get_ts(), max(got_ids)
            for name in c.names:
                c.kill(name)
            for name in c.names:
                c.restart(name)
            c.wait_leader()
            assert pd.get_ts() > last_ts
            assert pd.alloc_id() > last_id
            assert pd.get_region(b"k") == (region, None)
            assert pd.get_gc_safe_point() == 4242
            assert pd.get_store(ids[0]) == store_pb(ids[0], 23000)
            members, leader = pd.members()
            assert leader is not None and len(members) == 3
            # A follower answers NOT_LEADER and names the leader's address.
            lead = c.wait_leader()

            def redirected() -> bool:
                for name in c.names:
                    if name == lead:
                        continue
                    data = raw_call(c.client_addr(name), "GetMembers", b"")
                    h = pdpb_pb2.GetMembersResponse.FromString(data).header
                    if h.error.type != pdpb_pb2.NOT_LEADER:
                        return False
                    if h.leader.client_addr != c.client_addr(lead):
                        return False
                return True

            c.wait_for(redirected, 30, "followers naming the leader")
            # Followers announced their client addresses to the leader.
            c.wait_for(
                lambda: all(m.client_addr for m in pd.members()[0]), 30, "every member's address"
            )
        finally:
            pd.close()
