"""PD's replicated state machine (kvstore.pd.cluster), without Raft: commands
applied in order, epochs, stale reports, snapshots, ID ranges."""

from __future__ import annotations

import io
import json
import threading

import pytest

from kvstore.errors import InvalidArgumentError
from kvstore.pd import cluster as c
from kvstore.pd.cluster import ClusterState, IdAllocator
from kvstore.types import PdMember, Peer, Region, RegionEpoch, StoreMeta, StoreState


def region(
    rid: int,
    start: bytes = b"",
    end: bytes = b"",
    conf_ver: int = 1,
    version: int = 1,
    peers: tuple[tuple[int, int], ...] = ((100, 1),),
) -> Region:
    return Region(
        rid, start, end, RegionEpoch(conf_ver, version), tuple(Peer(p, s) for p, s in peers)
    )


class Machine:
    """A ClusterState fed one command per log index, like the Raft group does."""

    def __init__(self) -> None:
        self.sm = ClusterState()
        self.index = 0

    def __call__(self, *commands: bytes) -> list[object]:
        self.index += 1
        return self.sm.apply(self.index, list(commands))

    def one(self, command: bytes) -> object:
        return self(command)[0]


def test_cluster_id_is_chosen_once() -> None:
    m = Machine()
    assert m.one(c.cmd_init(42)) == 42
    assert m.one(c.cmd_init(7)) == 42  # a second leader's init loses
    assert m.sm.cluster_id == 42


def test_bootstrap_once_and_retry_succeeds() -> None:
    m = Machine()
    store = StoreMeta(1, "127.0.0.1:1")
    first = region(2, peers=((3, 1),))
    assert not m.sm.bootstrapped
    assert m.one(c.cmd_bootstrap(store, first)) == c.OK
    assert m.sm.bootstrapped and m.sm.regions[2] == first and m.sm.stores[1] == store
    assert m.one(c.cmd_bootstrap(store, first)) == c.OK  # our own retry
    other = region(9, peers=((10, 8),))
    assert m.one(c.cmd_bootstrap(StoreMeta(8, "x:1"), other)) == c.ALREADY_BOOTSTRAPPED
    assert m.sm.id_end > 3  # ids the bootstrap brought are never handed out


def test_id_ranges_are_never_reused() -> None:
    m = Machine()
    first = m.one(c.cmd_alloc(1000))
    second = m.one(c.cmd_alloc(5))
    assert isinstance(first, int) and isinstance(second, int)
    assert second == first + 1000
    assert m.sm.id_end == second + 5
    # A store registering with an id above the range pushes the end above it.
    m.one(c.cmd_put_store(StoreMeta(10_000, "a:1")))
    assert m.one(c.cmd_alloc(1)) == 10_001


def test_id_allocator_hands_out_from_reserved_ranges() -> None:
    m = Machine()

    def reserve(n: int) -> int:
        first = m.one(c.cmd_alloc(n))
        assert isinstance(first, int)
        return first

    a = IdAllocator(reserve, step=10)
    got = [a.alloc() for _ in range(25)]
    assert got == sorted(set(got)) and len(got) == 25
    # A new leader starts a fresh range: nothing of the old range is reused.
    b = IdAllocator(reserve, step=10)
    assert b.alloc() > max(got) + 1  # the old leader's unused ids are skipped
    # Consecutive ids come from one range, even beyond the step.
    first = b.alloc(50)
    assert all(x not in got for x in range(first, first + 50))
    with pytest.raises(InvalidArgumentError):
        b.alloc(0)


def test_id_allocator_is_thread_safe() -> None:
    m = Machine()
    lock = threading.Lock()

    def reserve(n: int) -> int:
        with lock:
            first = m.one(c.cmd_alloc(n))
        assert isinstance(first, int)
        return first

    a = IdAllocator(reserve, step=7)
    out: list[int] = []

    def worker() -> None:
        mine = [a.alloc() for _ in range(200)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == len(set(out)) == 800


def test_tso_high_water_mark_is_compare_and_set() -> None:
    m = Machine()
    assert m.one(c.cmd_tso(0, 100)) == c.OK
    assert m.one(c.cmd_tso(100, 200)) == c.OK
    # An oracle that still believes the mark is 100 (a deposed leader's).
    assert m.one(c.cmd_tso(100, 300)) == c.HWM_MOVED
    assert m.sm.tso_hwm == 200


def test_gc_safe_point_never_moves_backwards() -> None:
    m = Machine()
    assert m.one(c.cmd_gc(50)) == 50
    assert m.one(c.cmd_gc(10)) == 50
    assert m.one(c.cmd_gc(60)) == 60


def test_tombstone_store_stays_one() -> None:
    m = Machine()
    m.one(c.cmd_put_store(StoreMeta(1, "a:1", StoreState.TOMBSTONE)))
    assert m.one(c.cmd_put_store(StoreMeta(1, "a:1"))) == c.TOMBSTONE
    assert m.sm.stores[1].state == StoreState.TOMBSTONE


@pytest.mark.parametrize(
    ("new", "accepted"),
    [
        (region(1, conf_ver=2, version=1, peers=((100, 1), (101, 2))), True),  # conf change
        (region(1, conf_ver=1, version=2, end=b"m"), True),  # split (narrower)
        (region(1, conf_ver=1, version=1), False),  # same epoch: nothing new
        (region(1, conf_ver=0, version=3), False),  # conf_ver went back
        (region(1, conf_ver=5, version=0), False),  # version went back
    ],
)
def test_region_epochs(new: Region, accepted: bool) -> None:
    m = Machine()
    old = region(1)
    assert m.one(c.cmd_regions([old])) == [True]
    assert m.one(c.cmd_regions([new])) == [accepted]
    assert m.sm.regions[1] == (new if accepted else old)


def test_split_halves_replace_the_parent_and_stale_reports_are_ignored() -> None:
    m = Machine()
    parent = region(1, version=1)
    m.one(c.cmd_regions([parent]))
    # The new Region arrives first: it overlaps the (older) parent, which goes.
    right = region(2, start=b"m", version=2)
    assert m.one(c.cmd_regions([right])) == [True]
    assert 1 not in m.sm.regions
    left = region(1, end=b"m", version=2)
    assert m.one(c.cmd_regions([left])) == [True]
    assert m.sm.region_by_key(b"a") == left
    assert m.sm.region_by_key(b"m") == right
    assert m.sm.region_by_key(b"zzz") == right
    # A late heartbeat of the parent from before the split: stale, ignored.
    assert m.sm.check_region(parent) == c.STALE
    assert m.one(c.cmd_regions([parent])) == [False]
    assert m.sm.regions[1] == left and m.sm.regions[2] == right
    # ... and so is a Region overlapping a newer one.
    ghost = region(3, start=b"k", end=b"p", version=1)
    assert m.one(c.cmd_regions([ghost])) == [False]
    assert m.sm.scan_regions(b"", b"", 0) == [left, right]
    assert m.sm.scan_regions(b"n", b"", 0) == [right]
    assert m.sm.scan_regions(b"", b"b", 0) == [left]
    assert m.sm.scan_regions(b"", b"", 1) == [left]


def test_replayed_entries_are_skipped() -> None:
    m = Machine()
    m.one(c.cmd_alloc(10))
    end = m.sm.id_end
    assert m.sm.apply(1, [c.cmd_alloc(10)]) == [None]  # index 1 again: already held
    assert m.sm.id_end == end


def test_malformed_commands_are_skipped_not_executed() -> None:
    m = Machine()
    import pickle

    evil = pickle.dumps(print)
    results = m(b"not json", evil, b'{"v": 99, "op": "alloc"}', b'{"v": 1, "op": "nope"}')
    assert results == [c.UNKNOWN_COMMAND] * 4
    assert m.one(c.cmd_alloc(1)) == 1  # and the machine still works


def test_snapshot_round_trip() -> None:
    m = Machine()
    m.one(c.cmd_init(5))
    m.one(c.cmd_bootstrap(StoreMeta(1, "a:1", labels=(("zone", "z1"),)), region(2)))
    m.one(c.cmd_regions([region(7, start=b"\x00m", version=2)]))
    m.one(c.cmd_tso(0, 1234))
    m.one(c.cmd_gc(99))
    m.one(c.cmd_alloc(100))
    m.one(c.cmd_member(PdMember("pd1", 1, "h:1", "h:2")))
    buf = io.BytesIO()
    m.sm.write_snapshot(buf)
    json.loads(buf.getvalue())  # plain JSON: nothing in it can execute
    other = ClusterState()
    other.read_snapshot(io.BytesIO(buf.getvalue()))
    assert other.to_json() == m.sm.to_json()
    assert other.region_by_key(b"\x00z") == m.sm.region_by_key(b"\x00z")
    # A snapshot older than what we hold is ignored.
    m.one(c.cmd_gc(200))
    m.sm.read_snapshot(io.BytesIO(buf.getvalue()))
    assert m.sm.gc_safe_point == 200
