"""Replicated Regions in one process: three Stores (each its own RocksDB,
Raft driver and port), real Raft over loopback TCP."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from kvstore import codec
from kvstore.errors import (
    EpochNotMatchError,
    KeyNotInRegionError,
    NotLeaderError,
    ProposalDroppedError,
    RegionNotFoundError,
)
from kvstore.raftstore import RegionHandle, Store, StoreConfig
from kvstore.raftstore.peer import WriteOp
from kvstore.storage import CF_DEFAULT, DATA_CFS
from kvstore.types import Mutation, Op, Region, RegionEpoch, WriteType, compose_ts
from tests.raft_helpers import wait_for

T = TypeVar("T")


def make_stores(tmp: Path, n: int = 3, **kw: object) -> list[Store]:
    stores = [
        Store(StoreConfig(store_id=i + 1, data_dir=str(tmp / f"s{i + 1}"), **kw))  # type: ignore[arg-type]
        for i in range(n)
    ]
    cluster = {s.store_id: s.raft_addr for s in stores}
    for s in stores:
        s.start(cluster)
    return stores


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[Store]]:
    ss = make_stores(tmp_path)
    try:
        yield ss
    finally:
        for s in ss:
            s.close()


def leader(stores: list[Store], region_id: int) -> tuple[Store, RegionHandle]:
    def find() -> tuple[Store, RegionHandle] | None:
        for s in stores:
            try:
                return s, s.region(region_id, None)
            except (NotLeaderError, RegionNotFoundError):
                continue
        return None

    found: tuple[Store, RegionHandle] = wait_for(find, what=f"leader of region {region_id}")
    return found


def on_leader(stores: list[Store], region_id: int, fn: Callable[[Store], T]) -> T:
    """``fn(leader store)``, again on the new leader if leadership moved
    before the proposal was made (NotLeader: nothing was proposed, so a
    retry cannot apply it twice). On 2 shared cores a spurious election now
    and then is expected, not a failure."""
    for _ in range(50):
        lstore, _h = leader(stores, region_id)
        try:
            return fn(lstore)
        except NotLeaderError:
            continue
    raise AssertionError(f"no stable leader of region {region_id}")


def routed(stores: list[Store], encoded_key: bytes, fn: Callable[[RegionHandle], T]) -> T:
    """Route by key like a client would: find the Region, its leader; retry
    on routing errors (never on an unknown outcome)."""
    for _ in range(200):
        # The freshest view (highest epoch) wins, as a Region cache refreshed
        # from the leaders would: a lagging replica may still hold the parent.
        candidates = [r for s in stores for r in [s.region_for_key(encoded_key)] if r is not None]
        region = max(candidates, key=lambda r: r.epoch.version)
        try:
            _, h = leader(stores, region.id)
            h._check([encoded_key])
            return fn(h)
        except (NotLeaderError, EpochNotMatchError, KeyNotInRegionError, RegionNotFoundError):
            continue
    raise AssertionError("could not route")


def region_checksum(store: Store, region: Region) -> str:
    h = hashlib.sha256()
    for cf in DATA_CFS:
        for k, v in store.engine.scan(cf, region.start_key, region.end_key or None):
            h.update(cf.encode() + k + b"=" + v + b";")
    return h.hexdigest()


def test_writes_replicate_to_identical_replicas(stores: list[Store]) -> None:
    for i in range(40):
        k = b"acct%03d" % i
        routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"v" + k))
    start = compose_ts(1, 1)
    muts = [Mutation(Op.PUT, b"t%02d" % i, b"x" * (300 if i % 2 else 10)) for i in range(10)]
    _, h = leader(stores, 1)
    assert h.scheduler.kv_prewrite(muts, b"t00", start, 3000) == []
    h.scheduler.kv_commit([m.key for m in muts], start, start + 1)
    region = stores[0].all_regions()[0]
    wait_for(
        lambda: len({s.peers[1].applied_index for s in stores}) == 1,
        what="replicas applied the same log",
    )
    sums = {region_checksum(s, region) for s in stores}
    assert len(sums) == 1
    assert h.scheduler.kv_get(b"t01", start + 2) == b"x" * 300


def test_follower_answers_not_leader_with_the_leader(stores: list[Store]) -> None:
    lstore, _ = leader(stores, 1)
    follower = next(s for s in stores if s is not lstore)
    with pytest.raises(NotLeaderError) as e:
        follower.region(1, None)
    assert e.value.leader_store_id in (0, lstore.store_id)
    with pytest.raises(RegionNotFoundError):
        follower.region(999, None)


def test_split_bumps_epoch_and_old_epoch_is_refused(stores: list[Store]) -> None:
    lstore, h = leader(stores, 1)
    old_epoch = h.region.epoch
    left, right = lstore.split_region(1, codec.raw_key(b"m"))
    assert left.epoch.version == right.epoch.version == old_epoch.version + 1
    assert left.end_key == right.start_key == codec.raw_key(b"m")
    for s in stores:
        wait_for(lambda s=s: right.id in s.peers, what="every store hosts the new region")
    with pytest.raises(EpochNotMatchError) as e:
        leader_store = leader(stores, 1)[0]
        leader_store.region(1, old_epoch)
    assert {r.id for r in e.value.current_regions} >= {1}
    # A write for the right half sent to the left Region is refused at apply.
    _, lh = leader(stores, 1)
    with pytest.raises(KeyNotInRegionError):
        lh.check_raw_keys([b"zzz"])


def test_split_under_concurrent_writes_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    stores = make_stores(tmp_path, split_threshold_keys=60, split_check_interval=0.1)
    try:
        written: list[bytes] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def writer(t: int) -> None:
            try:
                for i in range(80):
                    k = b"w%d-%03d" % (t, i)
                    routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, k))
                    with lock:
                        written.append(k)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(written) == 4 * 80
        regions = stores[0].all_regions()
        assert len(regions) > 1, "the threshold should have caused splits"
        # Regions partition the key space: sorted, adjacent, no gap, no overlap.
        assert regions[0].start_key == b"" and regions[-1].end_key == b""
        for a, b in itertools.pairwise(regions):
            assert a.end_key == b.start_key
        for s in stores[1:]:
            wait_for(
                lambda s=s: [r.id for r in s.all_regions()] == [r.id for r in regions],
                what="all stores agree on regions",
            )
        # Every key readable exactly once, from the one Region that holds it.
        for k in written:
            owners = [r for r in regions if r.contains(codec.raw_key(k))]
            assert len(owners) == 1
            assert routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_get(k)) == k
        # Walk the Regions by key (splits may still happen meanwhile): each
        # key is counted in exactly the Region that serves it.
        total, key = 0, codec.raw_key(b"")
        while True:
            n, end = routed(
                stores, key, lambda h: (len(h.rawstore.raw_scan(b"", None)), h.region.end_key)
            )
            total += n
            if not end or end >= codec.raw_range(b"", None)[1]:
                break
            key = end
        assert total == len(written)
    finally:
        for s in stores:
            s.close()


def test_restart_resumes_after_the_last_applied_entry(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    addrs = {s.store_id: s.raft_addr for s in stores}
    try:
        for i in range(30):
            k = b"r%02d" % i
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"1"))

        def caught_up() -> int | None:
            xs = {s.peers[1].applied_index for s in stores}
            return xs.pop() if len(xs) == 1 else None

        applied = wait_for(caught_up, what="replicas caught up")
    finally:
        for s in stores:
            s.close()
    stores = [
        Store(StoreConfig(store_id=sid, data_dir=str(tmp_path / f"s{sid}"), raft_addr=addr))
        for sid, addr in addrs.items()
    ]
    try:
        for s in stores:
            s.start(addrs)
            assert s.peers[1].applied_index == applied  # resumed, not re-applied from 0
        assert routed(stores, codec.raw_key(b"r07"), lambda h: h.rawstore.raw_get(b"r07")) == b"1"
        routed(stores, codec.raw_key(b"new"), lambda h: h.rawstore.raw_put(b"new", b"2"))
    finally:
        for s in stores:
            s.close()


def test_stale_epoch_command_is_rejected_at_apply(stores: list[Store]) -> None:
    _, h = leader(stores, 1)
    from kvstore.storage import CF_DEFAULT, WriteBatch

    b = WriteBatch()
    b.put(CF_DEFAULT, codec.raw_key(b"x"), b"\x00v")
    with pytest.raises(EpochNotMatchError):
        h.peer.propose_write(b, RegionEpoch(1, 99))
    assert h.rawstore.raw_get(b"x") is None


def test_proposal_error_types_are_region_errors() -> None:
    assert issubclass(ProposalDroppedError, Exception)


def test_lagging_replica_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    """Stop a store, write enough that the others compact their logs past
    it, restart it: the leader can only send a snapshot, and the replica must
    end up identical."""
    from raft import RaftConfig

    cfg = RaftConfig(snapshot_entries=40)
    stores = make_stores(tmp_path, raft=cfg)
    addrs = {s.store_id: s.raft_addr for s in stores}
    try:
        for i in range(20):
            k = b"a%03d" % i
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"1"))
        lagging = next(s for s in stores if not s.peers[1].is_leader())
        lagging_id = lagging.store_id
        lagging.close()
        live = [s for s in stores if s is not lagging]
        for i in range(200):
            k = b"b%03d" % i
            routed(live, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"2"))
        # The live replicas compacted: their logs no longer reach back far.
        first = [s.peers[1].group._journal.first_index() for s in live]  # type: ignore[union-attr]
        assert all(f is not None and f > 100 for f in first), first
        back = Store(
            StoreConfig(
                store_id=lagging_id,
                data_dir=str(tmp_path / f"s{lagging_id}"),
                raft_addr=addrs[lagging_id],
                raft=cfg,
            )
        )
        stores = [*live, back]
        back.start(addrs)
        wait_for(lambda: back.peers[1].snapshots_installed > 0, what="snapshot installed")
        region = live[0].all_regions()[0]

        def converged() -> bool:
            idx = {s.peers[1].applied_index for s in stores}
            return len(idx) == 1 and len({region_checksum(s, region) for s in stores}) == 1

        wait_for(converged, what="replicas identical after the snapshot")
        assert back.rawstores[1].raw_get(b"b199") == b"2"
        assert back.rawstores[1].raw_get(b"a000") == b"1"
    finally:
        for s in stores:
            s.close()


def test_whole_cluster_restart_after_compaction_keeps_everything(tmp_path: Path) -> None:
    from raft import RaftConfig

    cfg = RaftConfig(snapshot_entries=25)
    stores = make_stores(tmp_path, raft=cfg)
    addrs = {s.store_id: s.raft_addr for s in stores}
    try:
        for i in range(120):
            k = b"c%03d" % i
            v = b"%d" % i
            routed(stores, codec.raw_key(k), lambda h, k=k, v=v: h.rawstore.raw_put(k, v))
        assert any(s.peers[1].group.snapshots_written for s in stores)  # type: ignore[union-attr]
    finally:
        for s in stores:
            s.close()
    stores = [
        Store(StoreConfig(store_id=sid, data_dir=str(tmp_path / f"s{sid}"), raft_addr=a, raft=cfg))
        for sid, a in addrs.items()
    ]
    try:
        for s in stores:
            s.start(addrs)
        for i in range(120):
            k = b"c%03d" % i
            assert (
                routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_get(k)) == b"%d" % i
            )
        routed(stores, codec.raw_key(b"after"), lambda h: h.rawstore.raw_put(b"after", b"1"))
    finally:
        for s in stores:
            s.close()


def test_add_learner_promote_transfer_leader_and_remove_a_replica(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    try:
        for i in range(30):
            k = b"m%02d" % i
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"1"))
        new = Store(StoreConfig(store_id=4, data_dir=str(tmp_path / "s4"), bootstrap=False))
        cluster = {s.store_id: s.raft_addr for s in [*stores, new]}
        new.start(cluster)
        for s in stores:
            s.add_store(4, new.raft_addr)
        stores.append(new)

        region = on_leader(stores, 1, lambda s: s.add_learner(1, 4))
        assert region.epoch.conf_ver == 2
        assert any(p.store_id == 4 and p.is_learner for p in region.peers)
        new.create_peer(region)
        wait_for(lambda: new.rawstores[1].raw_get(b"m29") == b"1", what="learner caught up")
        assert new.peers[1].group is not None and new.peers[1].group.is_learner

        region = on_leader(stores, 1, lambda s: s.promote_learner(1, 4))
        assert all(not p.is_learner for p in region.peers) and len(region.peers) == 4
        wait_for(
            lambda: new.peers[1].group is not None and not new.peers[1].group.is_learner,
            what="the promoted replica runs as a voter",
        )
        lstore, _ = leader(stores, 1)
        routed(
            stores,
            codec.raw_key(b"after-promote"),
            lambda h: h.rawstore.raw_put(b"after-promote", b"2"),
        )

        def caught_up() -> bool:
            g = lstore.peers[1].group
            return g is not None and new.peers[1].applied_index == lstore.peers[1].applied_index

        wait_for(caught_up, what="new voter caught up")
        # A transfer is best effort in Raft (the target campaigns; another
        # replica may still win that election): ask again until it lands.
        for _ in range(10):
            lstore, _h = leader(stores, 1)
            if lstore is new:
                break
            wait_for(caught_up, what="new voter caught up")
            lstore.transfer_leader(1, 4)
            try:
                wait_for(new.peers[1].is_leader, timeout=3, what="leadership on 4")
                break
            except AssertionError:
                continue
        assert new.peers[1].is_leader()

        removed = next(s for s in stores[:3])
        removed_group = removed.peers[1].group
        assert removed_group is not None and removed_group.snap_file is not None
        removed_group.compact_now()
        snap_file = removed_group.snap_file
        assert os.path.exists(snap_file)
        region = new.remove_peer(1, removed.store_id)
        assert region.epoch.conf_ver == 4
        assert all(p.store_id != removed.store_id for p in region.peers)
        wait_for(lambda: 1 not in removed.peers, what="removed replica destroyed")
        routed(
            stores,
            codec.raw_key(b"after-remove"),
            lambda h: h.rawstore.raw_put(b"after-remove", b"3"),
        )
        assert new.rawstores[1].raw_get(b"after-remove") == b"3"
        assert removed.engine.get("default", codec.raw_key(b"m00")) is None  # data dropped there
        # Its snapshot too: a replica added back later must not start from it.
        assert not os.path.exists(snap_file)
    finally:
        for s in stores:
            s.close()


def test_decode_write_fast_path_agrees_with_decode() -> None:
    """Apply decodes writes with ``cmd.decode_write`` (no objects built);
    it must read exactly what ``cmd.decode`` reads, and leave other kinds
    to it."""
    from kvstore.errors import InvalidArgumentError
    from kvstore.raftstore import cmd as raftcmd
    from kvstore.storage import WriteBatch

    batch = WriteBatch()
    batch.put("default", b"k1", b"v1")
    batch.put("write", b"k2", b"")
    batch.delete("lock", b"k3")
    batch.delete_range("default", b"a", b"b")
    epoch = RegionEpoch(3, 7)
    data = raftcmd.encode_write(9, epoch, batch)
    c = raftcmd.decode(data)
    assert c.batch is not None
    assert raftcmd.decode_write(data) == (3, 7, c.batch.ops)
    assert raftcmd.decode_write(data)[2] == batch.ops  # type: ignore[index]
    split = raftcmd.encode_split(9, epoch, raftcmd.SplitRequest(b"m", 10, (11, 12)))
    assert raftcmd.decode_write(split) is None
    with pytest.raises(InvalidArgumentError):
        raftcmd.decode_write(data[:5])
    cut = data[: 25 + 3]  # inside the first op's header (the command header is 25 bytes)
    for decoder in (raftcmd.decode, raftcmd.decode_write):
        with pytest.raises(InvalidArgumentError):
            decoder(cut)


def _learner_get(store: Store, key: bytes) -> bytes | None:
    region = store.region_for_key(codec.raw_key(key))
    return None if region is None else store.rawstores[region.id].raw_get(key)


def test_learner_created_after_splits_gets_every_half_whole(tmp_path: Path) -> None:
    """A learner added to a Region whose replica is created only after the
    Region split (the columnar node joining late: PD creates its replicas of
    the parent and of the halves at once). Each replica must start from a
    snapshot of its Region as it is now: the parent's older snapshot covers
    the halves' keys (installing it wiped what they had applied), and a half
    fed its log from the start lacks the data it inherited at the split."""
    stores = make_stores(tmp_path)
    new = Store(StoreConfig(store_id=4, data_dir=str(tmp_path / "s4"), bootstrap=False))
    try:
        keys = [b"k%03d" % i for i in range(60)]
        for k in keys[:40]:
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"1"))
        new.start({s.store_id: s.raft_addr for s in [*stores, new]})
        for s in stores:
            s.add_store(4, new.raft_addr)
        on_leader(stores, 1, lambda s: s.add_learner(1, 4))  # snapshot of region 1 taken here
        halves = on_leader(stores, 1, lambda s: s.split_region(1, codec.raw_key(b"k020")))
        for k in keys[40:]:
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"2"))
        lstore, _ = leader(stores, 1)
        current = [lstore.peers[1].region, halves[1]]
        assert all(any(p.store_id == 4 and p.is_learner for p in r.peers) for r in current)

        def has(some: list[bytes]) -> bool:
            return all(_learner_get(new, k) == (b"1" if k < b"k040" else b"2") for k in some)

        # What PD does when store 4 reports neither; the half first, so that
        # the parent's old snapshot, if installed, would wipe what it applied.
        assert new.create_peer(halves[1])
        wait_for(lambda: has(keys[20:]), what="the half on the learner, inherited keys too")
        assert new.create_peer(current[0])
        wait_for(lambda: has(keys), what="every key on the learner")
        assert new.peers[1].region == lstore.peers[1].region  # not the parent's old range
        for region in current:
            lead, _ = leader(stores, region.id)
            wait_for(
                lambda r=region, lead=lead: region_checksum(new, r) == region_checksum(lead, r),
                what=f"region {region.id} identical on the learner",
            )
    finally:
        for s in [*stores, new]:
            s.close()


def test_snapshot_over_another_replicas_keys_is_refused(stores: list[Store]) -> None:
    """A snapshot whose range covers another replica on the store (taken
    before a split that store already has the halves of) is refused whole:
    installing it would delete that replica's data."""
    import io

    from kvstore.raftstore.peer import Peer, SnapshotOverlapError
    from kvstore.storage.memory import MemoryEngine

    for i in range(10):
        k = b"s%02d" % i
        routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"v"))
    lstore, h = leader(stores, 1)
    buf = io.BytesIO()
    lstore.driver.call(lambda: h.peer.write_snapshot(buf))
    engine = MemoryEngine()
    target = Peer(h.peer.region, 9, engine, lambda _l, _r: None)
    neighbour = Region(77, codec.raw_key(b"s05"), b"", RegionEpoch(1, 2), ())
    target.overlapping = lambda r: [neighbour]
    with pytest.raises(SnapshotOverlapError, match="overlaps region"):
        buf.seek(0)
        target.read_snapshot(buf)
    assert list(engine.scan("default", b"", None)) == [] and target.applied_index == 0
    target.overlapping = lambda r: []
    buf.seek(0)
    target.read_snapshot(buf)  # the same snapshot with nothing in the way
    assert len(list(engine.scan("default", b"", None))) == 10


class _HoldApply:
    """Apply observer that, once armed, holds the Raft driver inside the
    next apply until released: every later entry waits behind it, as behind
    a driver busy with a snapshot or a long apply."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def on_apply(self, region: Region, index: int, ops: list[WriteOp]) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(30)

    def on_reset(self, region: Region, index: int) -> None:
        pass

    def on_destroy(self, region: Region) -> None:
        pass


def test_write_whose_proposal_timed_out_keeps_its_keys_latched_until_applied(
    tmp_path: Path,
) -> None:
    """A txn command computes its batch on the applied state under its keys'
    latches. When the proposal outlives the caller's deadline (unknown
    outcome) the entry is still in the log and applies later; if the latches
    were let go at the deadline, the next command on those keys would be
    computed on a state without that entry and applied after it.

    Here: txn U's primary commit is held up; check_txn_status on the primary
    (its TTL long expired) must not decide "rolled back" on the state without
    the commit, since the commit then applies anyway: the primary would carry
    both a commit and a rollback record, the resolver would roll back U's
    secondaries (atomicity lost) or hit CommittedError on those U committed.
    """
    import dataclasses

    from kvstore.txn.scheduler import TxnScheduler

    (store,) = make_stores(tmp_path, 1)
    hold = _HoldApply()
    threads: list[threading.Thread] = []
    try:
        _, h = leader([store], 1)
        assert h.peer.group is not None
        group = h.peer.group
        start_ts, commit_ts, now = compose_ts(1000, 0), compose_ts(1001, 0), compose_ts(99_000, 0)
        muts = [Mutation(Op.PUT, b"p", b"1"), Mutation(Op.PUT, b"s", b"1")]
        assert h.scheduler.kv_prewrite(muts, b"p", start_ts, 1) == []
        h.peer.observer = hold
        # From now on every caller's deadline passes before its entry applies.
        group.config = dataclasses.replace(group.config, proposal_timeout=0.0)

        def run(out: list[object], fn: Callable[[TxnScheduler], object]) -> threading.Thread:
            def body() -> None:
                try:
                    out.append(fn(store.region(1, None).scheduler))
                except Exception as e:  # what the caller got is part of the check
                    out.append(e)

            t = threading.Thread(target=body, daemon=True)
            threads.append(t)
            t.start()
            return t

        # An unrelated write, held inside its apply: the driver stops there.
        hold.armed = True
        run([], lambda s: s.kv_prewrite([Mutation(Op.PUT, b"x", b"1")], b"x", start_ts + 5, 1))
        assert hold.entered.wait(10)
        committed: list[object] = []
        t1 = run(committed, lambda s: s.kv_commit([b"p"], start_ts, commit_ts))
        wait_for(lambda: not t1.is_alive() or group._pending, what="the commit proposed")
        status: list[object] = []
        t2 = run(
            status,
            lambda s: s.kv_check_txn_status(b"p", start_ts, 0, now, True),
        )
        # Before the fix the commit's caller is gone (timed out, latch free)
        # and the status check is computed and proposed at once; with it, the
        # commit's caller still holds the latch and the check waits for it.
        wait_for(lambda: not t2.is_alive() or t1.is_alive(), what="the check queued or blocked")
        hold.release.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        # Whatever the callers were told, their entries are in the log: one
        # more write, applied after all of them, makes them visible.
        group.config = dataclasses.replace(group.config, proposal_timeout=5.0)
        h.rawstore.raw_put(b"after", b"1")
        # The primary holds U's commit record and nothing else of U (before
        # the fix: a ROLLBACK record at start_ts as well).
        records = [
            (ts, w.write_type)
            for ts, w in h.scheduler._reader.versions(codec.txn_key(b"p"))
            if w.start_ts == start_ts
        ]
        assert records == [(commit_ts, WriteType.PUT)]
        # The status check saw the commit (before the fix: it decided a TTL
        # rollback, or its own caller timed out with that decision queued).
        assert len(status) == 1 and getattr(status[0], "commit_ts", None) == commit_ts
        # The commit's caller learns the real outcome, not "timed out".
        assert committed == [None]
        # And the secondary can still be committed (the resolver's job).
        h.scheduler.kv_commit([b"s"], start_ts, commit_ts)
    finally:
        hold.release.set()
        for t in threads:
            t.join(30)
        store.close()


class _KeyHistory:
    """Apply observer recording, in log order, the values one raw key is
    given on this replica."""

    def __init__(self, key: bytes) -> None:
        self.key = codec.raw_key(key)
        self.values: list[bytes | None] = []

    def on_apply(self, region: Region, index: int, ops: list[WriteOp]) -> None:
        for _op, cf, key, value in ops:
            if cf == CF_DEFAULT and key == self.key:
                self.values.append(None if value is None else value[1:])  # the TTL byte

    def on_reset(self, region: Region, index: int) -> None:
        pass

    def on_destroy(self, region: Region) -> None:
        pass


def test_async_raw_put_answered_unknown_keeps_its_key_latched_until_applied(
    tmp_path: Path,
) -> None:
    """The async RawPut path (the gRPC server's, when the keys' latches are
    free) answers at the proposal's deadline with an unknown outcome; the
    entry may still be in the log and apply later. If the key's latch were
    let go with that answer, a compare-and-swap on the key could read the
    value before the put and write after it (not linearizable: it reports
    a previous value that is not the one its write replaced)."""
    import dataclasses
    import time

    from raft import RaftConfig

    # The leader never steps down in this test: its followers' acknowledgements
    # are dropped for a while (commit stops), heartbeats still reach them.
    cfg = RaftConfig(snapshot_entries=10_000, leader_step_down_timeout=60.0)
    stores = make_stores(tmp_path, raft=cfg)
    threads: list[threading.Thread] = []
    cut = threading.Event()
    try:
        lstore, h = leader(stores, 1)
        group = h.peer.group
        assert group is not None
        h.rawstore.raw_put(b"k", b"old")
        history = _KeyHistory(b"k")
        h.peer.observer = history
        transport = group.obj._SyncObj__transport
        deliver = transport.deliver

        def drop_acks(addr: str, message: object) -> None:
            if (
                cut.is_set()
                and isinstance(message, dict)
                and message.get("type") == "next_node_idx"
            ):
                return
            deliver(addr, message)

        transport.deliver = drop_acks
        cut.set()
        group.config = dataclasses.replace(group.config, proposal_timeout=0.0)
        answers: list[Exception | None] = []
        assert lstore.region(1, None).rawstore.raw_batch_put_async(
            [(b"k", b"put")], None, answers.append
        )
        wait_for(lambda: answers, what="the put's answer at its deadline")
        assert isinstance(answers[0], ProposalDroppedError)  # unknown outcome
        swapped: list[object] = []

        def cas() -> None:
            try:
                rawstore = lstore.region(1, None).rawstore
                swapped.append(rawstore.raw_compare_and_swap(b"k", b"old", b"cas"))
            except Exception as e:  # what the caller got is part of the check
                swapped.append(e)

        t = threading.Thread(target=cas, daemon=True)
        threads.append(t)
        t.start()
        # Before the fix the latch is free: the CAS reads "old" and proposes
        # its write at once (a second batch in flight). With it, the CAS
        # waits for the put's latch and nothing more is proposed.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and len(group._in_flight) < 2:
            time.sleep(0.005)
        cut.clear()
        t.join(30)
        assert not t.is_alive()
        group.config = dataclasses.replace(group.config, proposal_timeout=5.0)
        # The put applied after all; the CAS ran after it and saw it (before
        # the fix: (True, b"old"), its write applied right after the put's).
        assert swapped == [(False, b"put")]
        assert history.values == [b"put"]
        assert h.rawstore.raw_get(b"k") == b"put"
    finally:
        cut.clear()
        for t in threads:
            t.join(30)
        for s in stores:
            s.close()


def test_split_without_snapshots_applies_the_new_regions_first_entries(tmp_path: Path) -> None:
    """With snapshots off, a Region born of a split counts its log from 1 (no
    inherited-state snapshot at RAFT_INIT_INDEX): its first writes apply."""
    from raft import RaftConfig

    stores = make_stores(tmp_path, raft=RaftConfig(snapshot_entries=0))
    try:
        routed(stores, codec.raw_key(b"a"), lambda h: h.rawstore.raw_put(b"a", b"0"))
        _left, right = on_leader(stores, 1, lambda s: s.split_region(1, codec.raw_key(b"m")))
        keys = [b"n%d" % i for i in range(8)]
        for k in keys:
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"1"))
        for s in stores:
            wait_for(
                lambda s=s: all(s.rawstores[right.id].raw_get(k) == b"1" for k in keys),
                what=f"the new Region's first writes on store {s.store_id}",
            )
    finally:
        for s in stores:
            s.close()


def test_a_snapshot_is_written_off_the_driver_thread_at_its_capture_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Region's snapshot is captured in the driver thread (an engine
    snapshot, between two applies) and written by another thread: while a
    write is held up, the Region keeps committing, pysyncobj keeps its log
    (it truncates only once the file is complete), and the file holds the
    state at the capture point, not the writes made since."""
    import json
    import struct

    from kvstore.raftstore.peer import Peer
    from raft import RaftConfig

    release = threading.Event()
    captured: list[int] = []
    original = Peer.snapshot_writer

    def held_writer(self: Peer) -> Callable[[object], None]:
        write = original(self)
        captured.append(self.applied_index)

        def slow(f: object) -> None:
            assert release.wait(60), "the test never released the snapshot"
            write(f)  # type: ignore[arg-type]

        return slow

    monkeypatch.setattr(Peer, "snapshot_writer", held_writer)
    cfg = RaftConfig(snapshot_entries=20)
    stores = make_stores(tmp_path, raft=cfg)
    try:
        for i in range(30):
            k = b"p%03d" % i
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"1"))
        wait_for(lambda: len(captured) >= 3, what="every replica to start a snapshot")
        # Held in the writing thread: a driver stuck in it would time these out.
        for i in range(30):
            k = b"q%03d" % i
            routed(stores, codec.raw_key(k), lambda h, k=k: h.rawstore.raw_put(k, b"2"))
        groups = [s.peers[1].group for s in stores]
        assert all(g is not None and g.snapshots_written == 0 for g in groups)
        # Nothing truncated while no snapshot is complete.
        assert all(g._journal.first_index() in (None, 1) for g in groups if g is not None)
        release.set()
        wait_for(
            lambda: all(g is not None and g.snapshots_written >= 1 for g in groups),
            what="the held snapshots to complete",
        )
        g = groups[0]
        assert g is not None and g.snap_file is not None
        with open(g.snap_file, "rb") as f:
            (n,) = struct.unpack(">I", f.read(4))
            f.read(n)  # pysyncobj's metadata
            (n,) = struct.unpack(">I", f.read(4))
            head = json.loads(f.read(n))
            keys = []
            while True:
                cf, klen, vlen = struct.unpack(">BII", f.read(9))
                if cf == 255:
                    break
                keys.append(f.read(klen))
                f.read(vlen)
        assert head["applied_index"] in captured
        assert codec.raw_key(b"p000") in keys
        # Written after every capture: not in any snapshot.
        assert not any(k.startswith(codec.raw_key(b"q")) for k in keys)
    finally:
        release.set()
        for s in stores:
            s.close()
