"""Raw (non-transactional) KV through the public client, in memory and on RocksDB.

TTL expiry is tested on a :class:`kvstore.rawkv.RawStore` with a fake clock,
so expiry is a deterministic step of the test, never a wait.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

import kvstore
from kvstore.errors import ProposalDroppedError
from kvstore.rawkv import RawStore
from kvstore.storage import MemoryEngine, RocksEngine

KEYS = [b"a", b"a\x00", b"ab", b"abcdefgh", b"abcdefghi", b"b", b"c", b"c\xff", b"d", b"\xff\xff"]


@pytest.fixture(params=["memory", "rocksdb"])
def client(request, tmp_path) -> Iterator[kvstore.Client]:
    c = kvstore.open(None if request.param == "memory" else tmp_path / "db")
    yield c
    c.close()


def fill(c: kvstore.Client) -> dict[bytes, bytes]:
    data = {k: b"v-" + k for k in KEYS}
    c.raw.batch_put(list(data.items()))
    return data


# ----------------------------------------------------------------- basic ops
def test_get_put_delete(client):
    raw = client.raw
    assert raw.get(b"k") is None
    raw.put(b"k", b"v1")
    assert raw.get(b"k") == b"v1"
    raw.put(b"k", b"v2")
    assert raw.get(b"k") == b"v2"
    raw.put(b"empty", b"")
    assert raw.get(b"empty") == b""  # an empty value is not absence
    raw.delete(b"k")
    assert raw.get(b"k") is None
    raw.delete(b"never-there")  # deleting an absent key is fine
    assert raw.get(b"never-there") is None
    big = bytes(range(256)) * 4096  # 1 MiB
    raw.put(b"big", big)
    assert raw.get(b"big") == big


def test_batch_get_and_batch_put(client):
    data = fill(client)
    got = client.raw.batch_get([*KEYS, b"missing", b"zz"])
    assert got == data
    assert client.raw.batch_get([]) == {}
    assert client.raw.batch_get([b"missing"]) == {}
    client.raw.batch_put([(b"a", b"new"), (b"x", b"x")])
    assert client.raw.batch_get([b"a", b"x", b"b"]) == {b"a": b"new", b"x": b"x", b"b": b"v-b"}
    client.raw.batch_put([])  # nothing to do


def test_scan(client):
    data = fill(client)
    ordered = sorted(data.items())
    raw = client.raw
    assert raw.scan(b"", None) == ordered
    assert raw.scan(b"", b"") == ordered  # b"" as end means unbounded
    assert raw.scan(b"", None, limit=3) == ordered[:3]
    assert raw.scan(b"", None, limit=0) == []
    assert raw.scan(b"", None, limit=1000) == ordered
    assert raw.scan(b"ab", None) == [kv for kv in ordered if kv[0] >= b"ab"]
    assert raw.scan(b"a", b"b") == [kv for kv in ordered if b"a" <= kv[0] < b"b"]
    assert raw.scan(b"a\x00", b"abcdefghi") == [
        (b"a\x00", b"v-a\x00"),
        (b"ab", b"v-ab"),
        (b"abcdefgh", b"v-abcdefgh"),
    ]
    assert raw.scan(b"c", b"d", limit=1) == [(b"c", b"v-c")]
    assert raw.scan(b"e", b"f") == []
    assert raw.scan(b"\xff", None) == [(b"\xff\xff", b"v-\xff\xff")]


def test_delete_range(client):
    data = fill(client)
    raw = client.raw
    raw.delete_range(b"b", b"d")
    expect = {k: v for k, v in data.items() if not b"b" <= k < b"d"}
    assert dict(raw.scan(b"", None)) == expect
    assert raw.get(b"d") == b"v-d"  # end is exclusive
    raw.delete_range(b"abcdefgh", None)
    expect = {k: v for k, v in expect.items() if k < b"abcdefgh"}
    assert dict(raw.scan(b"", None)) == expect
    raw.delete_range(b"", None)
    assert raw.scan(b"", None) == []


def test_compare_and_swap(client):
    raw = client.raw
    # expected None: only if absent
    assert raw.compare_and_swap(b"k", None, b"1") == (True, None)
    assert raw.get(b"k") == b"1"
    assert raw.compare_and_swap(b"k", None, b"2") == (False, b"1")
    assert raw.get(b"k") == b"1"
    # expected value: only if equal
    assert raw.compare_and_swap(b"k", b"0", b"2") == (False, b"1")
    assert raw.compare_and_swap(b"k", b"1", b"2") == (True, b"1")
    assert raw.get(b"k") == b"2"
    # an empty value is a value, not absence
    assert raw.compare_and_swap(b"e", b"", b"x") == (False, None)
    assert raw.get(b"e") is None
    raw.put(b"e", b"")
    assert raw.compare_and_swap(b"e", None, b"x") == (False, b"")
    assert raw.compare_and_swap(b"e", b"", b"x") == (True, b"")
    # after a delete the key is absent again
    raw.delete(b"k")
    assert raw.compare_and_swap(b"k", b"2", b"3") == (False, None)
    assert raw.compare_and_swap(b"k", None, b"3") == (True, None)
    assert raw.get(b"k") == b"3"


def test_raw_and_txn_key_spaces_are_separate(client):
    long = b"L" * 1000  # stored in the default CF next to raw values
    client.raw.put(b"k", b"raw")
    client.raw.put(b"only-raw", b"r")
    with client.begin() as txn:
        assert txn.get(b"k") is None
        assert txn.get(b"only-raw") is None
        assert txn.scan(b"", None) == []
        txn.put(b"k", b"txn")
        txn.put(b"only-txn", long)
    assert client.raw.get(b"k") == b"raw"
    assert client.raw.get(b"only-txn") is None
    assert client.raw.scan(b"", None) == [(b"k", b"raw"), (b"only-raw", b"r")]
    assert client.raw.batch_get([b"k", b"only-txn"]) == {b"k": b"raw"}
    # Raw deletes, even of everything, leave transactional data alone.
    client.raw.delete(b"k")
    client.raw.delete_range(b"", None)
    assert client.raw.scan(b"", None) == []
    txn = client.begin()
    assert txn.scan(b"", None) == [(b"k", b"txn"), (b"only-txn", long)]
    # ... and a raw CAS does not see transactional values either.
    assert client.raw.compare_and_swap(b"only-txn", None, b"r") == (True, None)
    assert txn.get(b"only-txn") == long


def test_rocksdb_data_survives_reopen(tmp_path):
    with kvstore.open(tmp_path / "db") as c:
        c.raw.batch_put([(b"a", b"1"), (b"b", b"2")])
        c.raw.delete(b"b")
    with kvstore.open(tmp_path / "db") as c:
        assert c.raw.scan(b"", None) == [(b"a", b"1")]


# ----------------------------------------------------------------- CAS atomicity
def test_cas_is_atomic_under_threads(client):
    threads, per_thread = 8, 200
    # Switch threads as often as possible, so that an unprotected
    # read-compare-write would interleave (checked: without latches this fails).
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        _run_cas_counter(client, threads, per_thread)
    finally:
        sys.setswitchinterval(old_interval)


def _run_cas_counter(client: kvstore.Client, threads: int, per_thread: int) -> None:
    raw = client.raw
    start = threading.Barrier(threads)
    successes: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            done = 0
            cur = raw.get(b"ctr")
            while done < per_thread:
                new = str(int(cur or b"0") + 1).encode()
                ok, prev = raw.compare_and_swap(b"ctr", cur, new)
                if ok:
                    assert prev == cur
                    done += 1
                    cur = new
                else:
                    assert prev != cur
                    cur = prev
            successes.append(done)
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert not errors, errors
    assert successes == [per_thread] * threads
    assert raw.get(b"ctr") == str(threads * per_thread).encode()


# ----------------------------------------------------------------- TTL (fake clock)
class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture(params=["memory", "rocksdb"])
def ttl_store(request, tmp_path) -> Iterator[tuple[RawStore, Clock]]:
    engine = MemoryEngine() if request.param == "memory" else RocksEngine(tmp_path / "db")
    clock = Clock(1_000_000)
    yield RawStore(engine, engine, clock_ms=clock), clock
    engine.close()


def test_ttl_expiry(ttl_store):
    st, clock = ttl_store
    st.raw_put(b"t", b"temp", ttl=10)
    st.raw_put(b"p", b"perm")
    st.raw_batch_put([(b"b1", b"x"), (b"b2", b"y")], ttl=5)
    clock.ms += 4_999
    assert st.raw_get(b"b1") == b"x"
    assert st.raw_batch_get([b"b1", b"b2", b"t"]) == {b"b1": b"x", b"b2": b"y", b"t": b"temp"}
    clock.ms += 1  # exactly 5 s: gone
    assert st.raw_get(b"b1") is None
    assert st.raw_batch_get([b"b1", b"b2", b"t", b"p"]) == {b"t": b"temp", b"p": b"perm"}
    assert st.raw_scan(b"", None) == [(b"p", b"perm"), (b"t", b"temp")]
    clock.ms = 1_000_000 + 9_999
    assert st.raw_get(b"t") == b"temp"
    clock.ms += 1
    assert st.raw_get(b"t") is None
    assert st.raw_scan(b"", None) == [(b"p", b"perm")]
    assert st.raw_scan(b"", None, limit=1) == [(b"p", b"perm")]
    clock.ms += 10**9
    assert st.raw_get(b"p") == b"perm"  # no TTL: never expires


def test_ttl_expired_scan_limit_skips_expired(ttl_store):
    st, clock = ttl_store
    st.raw_batch_put([(b"a", b"1"), (b"b", b"2")], ttl=1)
    st.raw_put(b"c", b"3")
    st.raw_put(b"d", b"4")
    clock.ms += 1000
    assert st.raw_scan(b"", None, limit=1) == [(b"c", b"3")]


def test_ttl_cas_and_overwrite(ttl_store):
    st, clock = ttl_store
    st.raw_put(b"k", b"old", ttl=1)
    assert st.raw_compare_and_swap(b"k", None, b"x") == (False, b"old")
    clock.ms += 1000
    # Expired reads as absent, for CAS too.
    assert st.raw_compare_and_swap(b"k", b"old", b"x") == (False, None)
    assert st.raw_compare_and_swap(b"k", None, b"new", ttl=2) == (True, None)
    assert st.raw_get(b"k") == b"new"
    clock.ms += 1999
    assert st.raw_get(b"k") == b"new"
    clock.ms += 1
    assert st.raw_get(b"k") is None
    # A put without TTL replaces the expiry.
    st.raw_put(b"k", b"v", ttl=1)
    st.raw_put(b"k", b"v2")
    clock.ms += 10**6
    assert st.raw_get(b"k") == b"v2"


def test_ttl_through_client_is_not_expired_immediately(client):
    client.raw.put(b"k", b"v", ttl=3600)
    client.raw.batch_put([(b"j", b"w")], ttl=3600)
    assert client.raw.batch_get([b"k", b"j"]) == {b"k": b"v", b"j": b"w"}


class DeferredSink:
    """A sink that writes later, when told (as a Raft apply would)."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine
        self.pending: list[tuple[object, object, object]] = []

    def write(self, batch, *, sync: bool = False) -> None:
        self.engine.write(batch, sync=sync)

    def write_async(self, batch, done, settled) -> None:
        self.pending.append((batch, done, settled))

    def apply_all(self, error: Exception | None = None) -> None:
        pending, self.pending = self.pending, []
        for batch, done, settled in pending:
            if error is None:
                self.engine.write(batch)
            settled()
            done(error)

    def time_out_all(self) -> None:
        """Answer every write "unknown" at its deadline; they stay pending
        (the entries are still in the log)."""
        pending, self.pending = self.pending, []
        for batch, done, settled in pending:
            done(ProposalDroppedError(1, "proposal timed out"))
            self.pending.append((batch, lambda _err: None, settled))  # answered once


def test_async_batch_put_holds_its_latches_until_applied() -> None:
    engine = MemoryEngine()
    sink = DeferredSink(engine)
    store = RawStore(engine, sink)
    outcomes: list[Exception | None] = []
    assert store.raw_batch_put_async([(b"k", b"1")], None, outcomes.append)
    assert sink.pending and store.raw_get(b"k") is None and outcomes == []
    # The key's latch is held until the apply: a second put must not start
    # asynchronously (it would race the first), nor be queued behind it.
    assert not store.raw_batch_put_async([(b"k", b"2")], None, outcomes.append)
    assert len(sink.pending) == 1
    sink.apply_all()
    assert outcomes == [None] and store.raw_get(b"k") == b"1"
    # Released: the next one starts, and its error reaches the caller.
    assert store.raw_batch_put_async([(b"k", b"2")], None, outcomes.append)
    failure = RuntimeError("proposal dropped")
    sink.apply_all(failure)
    assert outcomes == [None, failure] and store.raw_get(b"k") == b"1"
    assert store.raw_batch_put_async([(b"k", b"3")], None, outcomes.append)  # latch free again
    # Bad input is refused before anything is proposed.
    with pytest.raises(kvstore.InvalidArgumentError):
        store.raw_batch_put_async([(b"", b"v")], None, outcomes.append)
    # A sink without write_async: the caller must take the blocking path.
    assert not RawStore(engine, engine).raw_batch_put_async([(b"x", b"v")], None, outcomes.append)


def test_async_batch_put_answered_unknown_keeps_its_latches_until_settled() -> None:
    # The proposal's deadline passes: the client is told "unknown" at once,
    # but the entry may still apply, so the key stays latched until the sink
    # settles it. A compare-and-swap waits for that, then sees the put.
    engine = MemoryEngine()
    sink = DeferredSink(engine)
    store = RawStore(engine, sink)
    outcomes: list[Exception | None] = []
    assert store.raw_batch_put_async([(b"k", b"1")], None, outcomes.append)
    sink.time_out_all()
    assert len(outcomes) == 1 and isinstance(outcomes[0], ProposalDroppedError)
    assert not store.raw_batch_put_async([(b"k", b"2")], None, outcomes.append)  # still held
    swapped: list[tuple[bool, bytes | None]] = []
    cas = threading.Thread(
        target=lambda: swapped.append(store.raw_compare_and_swap(b"k", None, b"cas")),
        daemon=True,
    )
    cas.start()
    cas.join(0.2)
    assert cas.is_alive() and swapped == []  # waiting for the put's latch
    sink.apply_all()  # the put applies after all, then settles
    cas.join(10)
    assert swapped == [(False, b"1")]
    assert len(outcomes) == 1  # the client was answered once, at the deadline
    assert store.raw_get(b"k") == b"1"
