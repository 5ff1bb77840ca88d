"""The storage engine contract, run against RocksEngine and MemoryEngine alike.

Plus tests that pin rocksdict's known bugs (DESIGN.md §4) directly against the
library, and tests that RocksEngine works around them.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict, ReadOptions

from kvstore.errors import ClosedError, InvalidArgumentError, KVError
from kvstore.storage import (
    ALL_CFS,
    CF_DEFAULT,
    CF_LOCK,
    CF_RAFT,
    CF_WRITE,
    Engine,
    MemoryEngine,
    RocksEngine,
    WriteBatch,
)
from kvstore.storage.rocks import RocksSnapshot

ENGINE_KINDS = ["memory", "rocks"]


def make_engine(kind: str, path: Path | str) -> Engine:
    return MemoryEngine() if kind == "memory" else RocksEngine(path)


@pytest.fixture(params=ENGINE_KINDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(request.param, tmp_path / "db")
    yield e
    e.close()


@pytest.fixture
def rocks(tmp_path: Path) -> Iterator[RocksEngine]:
    e = RocksEngine(tmp_path / "db")
    yield e
    e.close()


def put_all(engine: Engine, cf: str, items: dict[bytes, bytes], *, sync: bool = False) -> None:
    b = WriteBatch()
    for k, v in items.items():
        b.put(cf, k, v)
    engine.write(b, sync=sync)


def scan(r: object, cf: str, start: bytes = b"", end: bytes | None = None, **kw: object) -> list:
    return list(r.scan(cf, start, end, **kw))  # type: ignore[attr-defined]


KEYS = [b"a", b"b", b"ba", b"c", b"d\x00", b"d\xff", b"e"]
DATA = {k: b"v-" + k for k in KEYS}


# --------------------------------------------------------------------------
# point operations through WriteBatch
# --------------------------------------------------------------------------


def test_put_get_delete(engine: Engine) -> None:
    assert engine.get(CF_DEFAULT, b"k") is None
    put_all(engine, CF_DEFAULT, {b"k": b"v1", b"empty": b""})
    assert engine.get(CF_DEFAULT, b"k") == b"v1"
    # An empty value is a value, not an absent key.
    assert engine.get(CF_DEFAULT, b"empty") == b""
    put_all(engine, CF_DEFAULT, {b"k": b"v2"})
    assert engine.get(CF_DEFAULT, b"k") == b"v2"
    b = WriteBatch()
    b.delete(CF_DEFAULT, b"k")
    b.delete(CF_DEFAULT, b"empty")
    b.delete(CF_DEFAULT, b"never-written")
    engine.write(b)
    assert engine.get(CF_DEFAULT, b"k") is None
    assert engine.get(CF_DEFAULT, b"empty") is None
    assert scan(engine, CF_DEFAULT) == []


def test_column_families_are_separate_key_spaces(engine: Engine) -> None:
    b = WriteBatch()
    for cf in ALL_CFS:
        b.put(cf, b"k", cf.encode())
    engine.write(b)
    for cf in ALL_CFS:
        assert engine.get(cf, b"k") == cf.encode()
        assert scan(engine, cf) == [(b"k", cf.encode())]
    b = WriteBatch()
    b.delete(CF_LOCK, b"k")
    engine.write(b)
    assert engine.get(CF_LOCK, b"k") is None
    for cf in (CF_DEFAULT, CF_WRITE, CF_RAFT):
        assert engine.get(cf, b"k") == cf.encode()


def test_ops_in_one_batch_apply_in_order(engine: Engine) -> None:
    b = WriteBatch()
    b.put(CF_WRITE, b"x", b"1")
    b.delete(CF_WRITE, b"x")  # put then delete: gone
    b.delete(CF_WRITE, b"y")
    b.put(CF_WRITE, b"y", b"2")  # delete then put: present
    b.put(CF_WRITE, b"z", b"3")
    b.delete_range(CF_WRITE, b"z", b"zz")
    b.put(CF_WRITE, b"z", b"4")  # range delete then put: present
    engine.write(b)
    assert scan(engine, CF_WRITE) == [(b"y", b"2"), (b"z", b"4")]


def test_delete_range_removes_exactly_start_inclusive_end_exclusive(engine: Engine) -> None:
    put_all(engine, CF_LOCK, DATA)
    put_all(engine, CF_WRITE, DATA)
    b = WriteBatch()
    b.delete_range(CF_LOCK, b"b", b"d\xff")
    engine.write(b)
    expected = [(k, v) for k, v in DATA.items() if not b"b" <= k < b"d\xff"]
    assert scan(engine, CF_LOCK) == expected
    assert [k for k, _ in expected] == [b"a", b"d\xff", b"e"]
    # Other column families are untouched.
    assert scan(engine, CF_WRITE) == sorted(DATA.items())
    # An empty range deletes nothing.
    b = WriteBatch()
    b.delete_range(CF_LOCK, b"e", b"e")
    engine.write(b)
    assert scan(engine, CF_LOCK) == expected
    # A reversed range is a caller bug, refused before it reaches either engine.
    with pytest.raises(InvalidArgumentError):
        WriteBatch().delete_range(CF_LOCK, b"e", b"a")


def test_empty_batch_is_a_no_op(engine: Engine) -> None:
    engine.write(WriteBatch())
    engine.write(WriteBatch(), sync=True)
    assert all(scan(engine, cf) == [] for cf in ALL_CFS)


def test_sync_write_is_visible(engine: Engine) -> None:
    put_all(engine, CF_RAFT, {b"hwm": b"1"}, sync=True)
    assert engine.get(CF_RAFT, b"hwm") == b"1"


# --------------------------------------------------------------------------
# scans
# --------------------------------------------------------------------------


def test_scan_forward_bounds(engine: Engine) -> None:
    put_all(engine, CF_DEFAULT, DATA)
    items = sorted(DATA.items())
    assert scan(engine, CF_DEFAULT) == items
    # start inclusive, end exclusive
    assert [k for k, _ in scan(engine, CF_DEFAULT, b"b", b"d\xff")] == [b"b", b"ba", b"c", b"d\x00"]
    # bounds that fall between keys
    assert [k for k, _ in scan(engine, CF_DEFAULT, b"b\x00", b"d")] == [b"ba", b"c"]
    # end=None: to the end
    assert [k for k, _ in scan(engine, CF_DEFAULT, b"d")] == [b"d\x00", b"d\xff", b"e"]
    # limit
    assert scan(engine, CF_DEFAULT, b"b", None, limit=2) == items[1:3]
    assert scan(engine, CF_DEFAULT, b"b", None, limit=0) == []
    assert scan(engine, CF_DEFAULT, b"b", b"c", limit=100) == items[1:3]
    # empty and inverted ranges
    assert scan(engine, CF_DEFAULT, b"c", b"c") == []
    assert scan(engine, CF_DEFAULT, b"d", b"c") == []
    assert scan(engine, CF_DEFAULT, b"f") == []


def test_scan_reverse_bounds(engine: Engine) -> None:
    put_all(engine, CF_DEFAULT, DATA)
    desc = sorted(DATA.items(), reverse=True)
    assert scan(engine, CF_DEFAULT, reverse=True) == desc
    # start inclusive, end exclusive, descending
    got = [k for k, _ in scan(engine, CF_DEFAULT, b"b", b"d\xff", reverse=True)]
    assert got == [b"d\x00", b"c", b"ba", b"b"]
    # a lower bound between keys is respected
    assert [k for k, _ in scan(engine, CF_DEFAULT, b"c\x00", None, reverse=True)] == [
        b"e",
        b"d\xff",
        b"d\x00",
    ]
    # an upper bound past every key
    assert [k for k, _ in scan(engine, CF_DEFAULT, b"d", b"zzz", reverse=True)] == [
        b"e",
        b"d\xff",
        b"d\x00",
    ]
    # limit takes the largest keys first
    assert scan(engine, CF_DEFAULT, b"", b"d", limit=2, reverse=True) == [
        (b"c", DATA[b"c"]),
        (b"ba", DATA[b"ba"]),
    ]
    assert scan(engine, CF_DEFAULT, b"", None, limit=0, reverse=True) == []
    assert scan(engine, CF_DEFAULT, b"c", b"c", reverse=True) == []
    assert scan(engine, CF_DEFAULT, b"d", b"c", reverse=True) == []
    assert scan(engine, CF_DEFAULT, b"", b"a", reverse=True) == []


def test_scan_does_not_leak_across_column_families(engine: Engine) -> None:
    # Neighbouring CFs with keys on both sides of the scanned range.
    put_all(engine, CF_DEFAULT, {b"a": b"1", b"z": b"1"})
    put_all(engine, CF_LOCK, {b"m": b"2"})
    put_all(engine, CF_WRITE, {b"a": b"3", b"z": b"3"})
    for reverse in (False, True):
        assert scan(engine, CF_LOCK, reverse=reverse) == [(b"m", b"2")]
        assert scan(engine, CF_LOCK, b"n", reverse=reverse) == []
        assert scan(engine, CF_LOCK, b"", b"m", reverse=reverse) == []


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_iterator_created_before_a_write_does_not_see_it(
    engine: Engine, reverse: bool
) -> None:
    put_all(engine, CF_WRITE, {b"a": b"1", b"c": b"1"})
    it = engine.scan(CF_WRITE, b"", None, reverse=reverse)
    b = WriteBatch()
    b.put(CF_WRITE, b"b", b"new")
    b.put(CF_WRITE, b"c", b"2")
    b.delete(CF_WRITE, b"a")
    engine.write(b)
    expected = [(b"a", b"1"), (b"c", b"1")]
    assert list(it) == (expected[::-1] if reverse else expected)
    assert scan(engine, CF_WRITE) == [(b"b", b"new"), (b"c", b"2")]


# --------------------------------------------------------------------------
# the contract against a model, with random batches and snapshots
# --------------------------------------------------------------------------

_alphabet = (b"\x00", b"a", b"b", b"\xff")
model_keys = st.lists(st.sampled_from(_alphabet), max_size=3).map(b"".join)
cfs = st.sampled_from(ALL_CFS)
op = st.one_of(
    st.tuples(st.just("put"), cfs, model_keys, st.binary(max_size=3)),
    st.tuples(st.just("delete"), cfs, model_keys),
    st.tuples(st.just("delete_range"), cfs, model_keys, model_keys).map(
        lambda t: (t[0], t[1], *sorted(t[2:]))
    ),
)
batches = st.lists(st.lists(op, max_size=6), max_size=8)
queries = st.lists(
    st.tuples(
        cfs,
        model_keys,
        st.one_of(st.none(), model_keys),
        st.one_of(st.none(), st.integers(0, 5)),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)

Model = dict[str, dict[bytes, bytes]]


def apply_model(model: Model, batch: list[tuple]) -> None:
    for o in batch:
        data = model[o[1]]
        if o[0] == "put":
            data[o[2]] = o[3]
        elif o[0] == "delete":
            data.pop(o[2], None)
        else:
            for k in [k for k in data if o[2] <= k < o[3]]:
                del data[k]


def model_scan(
    model: Model, cf: str, start: bytes, end: bytes | None, limit: int | None, reverse: bool
) -> list[tuple[bytes, bytes]]:
    items = sorted((k, v) for k, v in model[cf].items() if start <= k and (end is None or k < end))
    if reverse:
        items.reverse()
    return items if limit is None else items[:limit]


def to_batch(ops: list[tuple]) -> WriteBatch:
    b = WriteBatch()
    for o in ops:
        getattr(b, o[0])(*o[1:])
    return b


@pytest.mark.parametrize("kind", ENGINE_KINDS)
@settings(max_examples=40, deadline=None)
@given(batches, st.integers(0, 8), batches, queries)
def test_engine_matches_model(
    kind: str, before: list, snap_at: int, after: list, qs: list[tuple]
) -> None:
    """Random batches, a snapshot somewhere in the middle, more batches: the
    engine and the snapshot both answer every scan and get like a dict model."""
    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(kind, d)
        try:
            model: Model = {cf: {} for cf in ALL_CFS}
            snap, snap_model = None, None
            for i, ops in enumerate([*before, *after]):
                if i == snap_at:
                    snap = engine.snapshot()
                    snap_model = {cf: dict(v) for cf, v in model.items()}
                engine.write(to_batch(ops))
                apply_model(model, ops)
            for cf, start, end, limit, reverse in qs:
                assert scan(engine, cf, start, end, limit=limit, reverse=reverse) == model_scan(
                    model, cf, start, end, limit, reverse
                )
                assert engine.get(cf, start) == model[cf].get(start)
                if snap is not None:
                    assert snap_model is not None
                    got = scan(snap, cf, start, end, limit=limit, reverse=reverse)
                    assert got == model_scan(snap_model, cf, start, end, limit, reverse)
                    assert snap.get(cf, start) == snap_model[cf].get(start)
        finally:
            # Release the snapshot first: a rocksdict snapshot that outlives
            # close() (after a delete_range) stalls the final DB drop for ~1 s.
            snap = None
            engine.close()


# --------------------------------------------------------------------------
# atomicity, errors, closing
# --------------------------------------------------------------------------


def test_write_batch_is_atomic_across_column_families(engine: Engine) -> None:
    b = WriteBatch()
    b.put(CF_DEFAULT, b"k", b"d")
    b.put(CF_LOCK, b"k", b"l")
    b.put(CF_WRITE, b"k", b"w")
    b.put(CF_RAFT, b"k", b"r")
    engine.write(b)
    snap = engine.snapshot()
    assert [snap.get(cf, b"k") for cf in ALL_CFS] == [b"d", b"l", b"w", b"r"]

    # A batch with one bad op writes nothing at all, not even the ops before it.
    bad = WriteBatch()
    bad.put(CF_DEFAULT, b"k", b"d2")
    bad.delete(CF_LOCK, b"k")
    bad.put("nope", b"k", b"x")
    with pytest.raises(InvalidArgumentError):
        engine.write(bad)
    assert [engine.get(cf, b"k") for cf in ALL_CFS] == [b"d", b"l", b"w", b"r"]


def test_concurrent_snapshots_see_whole_batches_across_all_cfs(engine: Engine) -> None:
    """A writer puts counter i and row k<i> into every CF in one batch, until
    the reader has checked enough snapshots taken while it was writing: each
    snapshot must see the same counter, and exactly rows 1..i, in every CF,
    for gets and scans."""
    min_checks, min_writes = 300, 50
    stop = threading.Event()
    written = [0]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                i = written[0] + 1
                b = WriteBatch()
                for cf in ALL_CFS:
                    b.put(cf, b"counter", str(i).encode())
                    b.put(cf, b"k%06d" % i, b"x")
                engine.write(b)
                written[0] = i
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    old_interval = sys.getswitchinterval()
    # Switch threads often, so the writer can run between the per-CF views
    # of a snapshot if they are not taken atomically.
    sys.setswitchinterval(1e-6)
    t.start()
    checked = 0
    try:
        while (checked < min_checks or written[0] < min_writes) and not errors:
            snap = engine.snapshot()
            counters = {snap.get(cf, b"counter") for cf in ALL_CFS}
            assert len(counters) == 1, counters
            (c,) = counters
            n = int(c) if c is not None else 0
            for cf in ALL_CFS:
                # The newest row is row n; every 25th check counts them all.
                newest = scan(snap, cf, b"k", b"l", limit=1, reverse=True)
                assert newest == ([(b"k%06d" % n, b"x")] if n else []), (cf, n, newest)
                if checked % 25 == 0:
                    assert len(scan(snap, cf, b"k", b"l")) == n
                assert scan(snap, cf, b"counter", b"counter\x00") == (
                    [(b"counter", c)] if c else []
                )
            checked += 1
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old_interval)
    assert not errors
    assert engine.get(CF_RAFT, b"counter") == str(written[0]).encode()


def test_snapshot_is_a_point_in_time_for_get_and_scan(engine: Engine) -> None:
    for cf in ALL_CFS:
        put_all(engine, cf, DATA)
    snap = engine.snapshot()
    for cf in ALL_CFS:
        b = WriteBatch()
        b.put(cf, b"a", b"changed")
        b.put(cf, b"new", b"n")
        b.delete(cf, b"c")
        b.delete_range(cf, b"d", b"e")
        engine.write(b)
    old = sorted(DATA.items())
    for cf in ALL_CFS:
        assert snap.get(cf, b"a") == DATA[b"a"]
        assert snap.get(cf, b"c") == DATA[b"c"]
        assert snap.get(cf, b"d\x00") == DATA[b"d\x00"]
        assert snap.get(cf, b"new") is None
        assert snap.get(cf, b"missing") is None
        # The same snapshot serves several scans, each consistent.
        for _ in range(2):
            assert scan(snap, cf) == old
            assert scan(snap, cf, reverse=True) == old[::-1]
            assert scan(snap, cf, b"b", b"d\xff", limit=2) == old[1:3]
            assert scan(snap, cf, b"c\x00", None, reverse=True) == old[:3:-1]
        # The engine itself moved on.
        assert engine.get(cf, b"a") == b"changed"
        assert [k for k, _ in scan(engine, cf)] == [b"a", b"b", b"ba", b"e", b"new"]


def test_snapshot_of_empty_engine_stays_empty(engine: Engine) -> None:
    snap = engine.snapshot()
    for cf in ALL_CFS:
        put_all(engine, cf, DATA)
    for cf in ALL_CFS:
        assert snap.get(cf, b"a") is None
        assert scan(snap, cf) == []
        assert scan(snap, cf, reverse=True) == []


def test_unknown_column_family_is_invalid_argument(engine: Engine) -> None:
    with pytest.raises(InvalidArgumentError):
        engine.get("nope", b"k")
    with pytest.raises(InvalidArgumentError):
        engine.scan("nope", b"", None)
    b = WriteBatch()
    b.put("nope", b"k", b"v")
    with pytest.raises(InvalidArgumentError):
        engine.write(b)
    snap = engine.snapshot()
    with pytest.raises(InvalidArgumentError):
        snap.get("nope", b"k")
    with pytest.raises(InvalidArgumentError):
        snap.scan("nope", b"", None)


def test_closed_engine_raises_closed_error(engine: Engine) -> None:
    put_all(engine, CF_DEFAULT, {b"k": b"v"})
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(ClosedError):
        engine.get(CF_DEFAULT, b"k")
    with pytest.raises(ClosedError):
        engine.scan(CF_DEFAULT, b"", None)
    b = WriteBatch()
    b.put(CF_DEFAULT, b"k", b"v2")
    with pytest.raises(ClosedError):
        engine.write(b)
    with pytest.raises(ClosedError):
        engine.write(b, sync=True)
    with pytest.raises(ClosedError):
        engine.snapshot()


# --------------------------------------------------------------------------
# RocksEngine specifics
# --------------------------------------------------------------------------


def test_rocks_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "db"
    e = RocksEngine(path)
    for cf in ALL_CFS:
        put_all(e, cf, DATA, sync=cf == CF_RAFT)
    b = WriteBatch()
    b.delete(CF_LOCK, b"a")
    b.delete_range(CF_WRITE, b"b", b"d")
    e.write(b)
    e.close()

    e = RocksEngine(path)
    try:
        assert scan(e, CF_DEFAULT) == sorted(DATA.items())
        assert scan(e, CF_RAFT) == sorted(DATA.items())
        assert e.get(CF_LOCK, b"a") is None
        assert [k for k, _ in scan(e, CF_LOCK)] == KEYS[1:]
        assert [k for k, _ in scan(e, CF_WRITE)] == [b"a", b"d\x00", b"d\xff", b"e"]
        put_all(e, CF_DEFAULT, {b"after": b"reopen"})
        assert e.get(CF_DEFAULT, b"after") == b"reopen"
    finally:
        e.close()


def test_rocks_snapshot_refuses_a_second_open_scan_of_one_cf(rocks: RocksEngine) -> None:
    """A RocksSnapshot has one pinned iterator per CF: two interleaved scans of
    the same CF must be refused, never silently mixed."""
    put_all(rocks, CF_WRITE, DATA)
    put_all(rocks, CF_LOCK, DATA)
    snap = rocks.snapshot()
    assert isinstance(snap, RocksSnapshot)

    it1 = snap.scan(CF_WRITE, b"", None)
    assert next(it1) == (b"a", DATA[b"a"])
    with pytest.raises(KVError):
        snap.scan(CF_WRITE, b"", None)
    # Other CFs are independent.
    assert scan(snap, CF_LOCK) == sorted(DATA.items())

    # Two scans created before either starts: the second to start is refused.
    it2 = snap.scan(CF_LOCK, b"", None)
    it3 = snap.scan(CF_LOCK, b"c", None)
    assert next(it2) == (b"a", DATA[b"a"])
    with pytest.raises(KVError):
        next(it3)
    # it2 was not disturbed.
    assert [k for k, _ in it2] == KEYS[1:]

    # Once a scan is finished (or closed), the CF is free again.
    assert [k for k, _ in it1] == KEYS[1:]
    assert scan(snap, CF_WRITE, b"c") == sorted(DATA.items())[3:]
    it4 = snap.scan(CF_WRITE, b"", None)
    next(it4)
    it4.close()  # type: ignore[attr-defined]
    assert len(scan(snap, CF_WRITE)) == len(DATA)


def test_rocks_snapshot_scan_ignores_later_writes(rocks: RocksEngine) -> None:
    """The workaround for rocksdict bug 1: RocksEngine's snapshot scans are
    consistent although rocksdict's Snapshot iteration is not."""
    put_all(rocks, CF_DEFAULT, {b"a": b"1", b"c": b"3"})
    snap = rocks.snapshot()
    put_all(rocks, CF_DEFAULT, {b"a": b"9", b"b": b"2"})
    assert scan(snap, CF_DEFAULT) == [(b"a", b"1"), (b"c", b"3")]
    assert scan(snap, CF_DEFAULT, reverse=True) == [(b"c", b"3"), (b"a", b"1")]
    assert snap.get(CF_DEFAULT, b"a") == b"1"
    assert snap.get(CF_DEFAULT, b"b") is None


def test_rocks_reverse_scan_respects_lower_bound(rocks: RocksEngine) -> None:
    """The workaround for rocksdict bug 2: a lower bound is honoured in both
    directions, although set_iterate_lower_bound() sets an upper bound."""
    put_all(rocks, CF_DEFAULT, {k: k for k in (b"a", b"b", b"c", b"d", b"e", b"f")})
    assert [k for k, _ in scan(rocks, CF_DEFAULT, b"c", None, reverse=True)] == [
        b"f",
        b"e",
        b"d",
        b"c",
    ]
    assert [k for k, _ in scan(rocks, CF_DEFAULT, b"c", b"e", reverse=True)] == [b"d", b"c"]
    assert [k for k, _ in scan(rocks, CF_DEFAULT, b"c", None)] == [b"c", b"d", b"e", b"f"]
    snap = rocks.snapshot()
    assert [k for k, _ in scan(snap, CF_DEFAULT, b"c", None, reverse=True)] == [
        b"f",
        b"e",
        b"d",
        b"c",
    ]


# --------------------------------------------------------------------------
# rocksdict bugs, pinned against the library itself
# --------------------------------------------------------------------------


@contextmanager
def raw_rdict(path: Path) -> Iterator[Rdict]:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(str(path), options=opts)
    try:
        yield db
    finally:
        db.close()


def _keys_of(it: object) -> list[tuple[bytes, bytes]]:
    out = []
    it.seek_to_first()  # type: ignore[attr-defined]
    while it.valid():  # type: ignore[attr-defined]
        out.append((it.key(), it.value()))  # type: ignore[attr-defined]
        it.next()  # type: ignore[attr-defined]
    return out


def test_rocksdict_bug_snapshot_iteration_ignores_the_snapshot(tmp_path: Path) -> None:
    """Pins rocksdict 0.3.29: iterating a Snapshot sees writes made after it
    (only ``snap[key]`` is consistent). If this fails, the library fixed the
    bug: revisit kvstore/storage/rocks.py (RocksSnapshot's pinned iterators)."""
    with raw_rdict(tmp_path / "raw") as db:
        db[b"a"] = b"1"
        db[b"c"] = b"3"
        snap = db.snapshot()
        db[b"a"] = b"9"
        db[b"b"] = b"2"
        # Point reads honour the snapshot...
        assert snap[b"a"] == b"1"
        # ...iteration does not: it sees the later overwrite and insert.
        assert _keys_of(snap.iter()) == [(b"a", b"9"), (b"b", b"2"), (b"c", b"3")]
        assert list(snap.items()) == [(b"a", b"9"), (b"b", b"2"), (b"c", b"3")]
        # What the workaround relies on: a plain iterator pins the state at its
        # creation.
        it = db.iter()
        db[b"d"] = b"4"
        assert _keys_of(it) == [(b"a", b"9"), (b"b", b"2"), (b"c", b"3")]


def test_rocksdict_bug_snapshot_getitem_missing_key_raises_bare_exception(
    tmp_path: Path,
) -> None:
    """Pins rocksdict 0.3.29: ``snap[missing]`` raises a bare
    ``Exception("key not found")``, not KeyError (``db[missing]`` does raise
    KeyError). If this fails, the library changed: revisit
    kvstore/storage/rocks.py (RocksSnapshot.get)."""
    with raw_rdict(tmp_path / "raw") as db:
        db[b"a"] = b"1"
        snap = db.snapshot()
        db[b"b"] = b"2"
        with pytest.raises(Exception, match=r"^key not found$") as info:
            snap[b"b"]
        assert type(info.value) is Exception
        with pytest.raises(KeyError):
            db[b"missing"]


def test_rocksdict_bug_iterate_lower_bound_acts_as_upper_bound(tmp_path: Path) -> None:
    """Pins rocksdict 0.3.29: ``ReadOptions.set_iterate_lower_bound(x)`` makes
    the iterator stop *before* x (an upper bound). If this fails, the library
    fixed the bug: revisit kvstore/storage/rocks.py (scan bounds)."""
    with raw_rdict(tmp_path / "raw") as db:
        for k in (b"a", b"b", b"c", b"d", b"e"):
            db[k] = k
        ro = ReadOptions()
        ro.set_iterate_lower_bound(b"c")
        assert [k for k, _ in _keys_of(db.iter(ro))] == [b"a", b"b"]
        ro = ReadOptions()
        ro.set_iterate_lower_bound(b"c")
        it = db.iter(ro)
        it.seek_to_last()
        backwards = []
        while it.valid():
            backwards.append(it.key())
            it.prev()
        assert backwards == [b"b", b"a"]
        # The upper bound setter is correct, which is what rocks.py uses.
        ro = ReadOptions()
        ro.set_iterate_upper_bound(b"c")
        assert [k for k, _ in _keys_of(db.iter(ro))] == [b"a", b"b"]
