"""The Kv service end to end over gRPC.

A real store server runs in a child process (``python -m
kvstore.server.kv_service``, RocksDB in a temporary directory, port 0, ready
when its port file appears); the ordinary :class:`~kvstore.Client` talks to it
through :class:`GrpcKvBackend` — unary and BatchCommands — with timestamps
from the same process's PD ``Tso`` RPC. Checked: raw and transactional API,
conflicts, lock resolution, typed errors for bad input, RESOURCE_EXHAUSTED for
oversized messages, and that garbage bytes do not hurt the server. In-process
servers with fake handlers check what no real store can be made to do on
demand: Region errors, the routing context, and server bugs (status INTERNAL).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore.client import Client
from kvstore.client.grpc_backend import BatchRpcError, GrpcKvBackend, GrpcTsoBackend
from kvstore.errors import (
    AlreadyExistsError,
    EpochNotMatchError,
    InvalidArgumentError,
    KeyIsLockedError,
    NotLeaderError,
    ServerIsBusyError,
    WriteConflictError,
)
from kvstore.proto import kvrpcpb_pb2, pdpb_pb2, tikvpb_pb2
from kvstore.proto.convert import RequestContext
from kvstore.proto.rpc import KV_SERVICE, TSO_PATH, channel_options
from kvstore.server.embedded import EmbeddedStore
from kvstore.server.kv_service import EmbeddedHandler, serve
from kvstore.server.launcher import StoreProcess
from kvstore.storage import MemoryEngine
from kvstore.types import LockType, Mutation, Op, Peer, Region, RegionEpoch

MAX_MESSAGE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    data = tmp_path_factory.mktemp("grpc-store")
    proc = StoreProcess(data, extra_args=["--max-message-bytes", str(MAX_MESSAGE)])
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(params=["unary", "batching"])
def client(request: pytest.FixtureRequest, server: StoreProcess) -> Iterator[Client]:
    kv = GrpcKvBackend(server.address, batching=request.param == "batching")
    tso = GrpcTsoBackend(server.address)

    def close() -> None:
        kv.close()
        tso.close()

    c = Client(kv, tso, on_close=close, lock_ttl_ms=500, lock_wait_timeout=10.0)
    try:
        yield c
    finally:
        c.close()
        assert server.alive(), server.log_tail()


def prefix(request: pytest.FixtureRequest) -> bytes:
    """Keys private to one test (the server is shared by the module)."""
    return request.node.name.encode() + b"/"


# ----------------------------------------------------------------- raw
def test_raw_operations(client: Client, request: pytest.FixtureRequest) -> None:
    p = prefix(request)
    raw = client.raw
    assert raw.get(p + b"a") is None
    raw.put(p + b"a", b"1")
    raw.batch_put([(p + b"b", b"2"), (p + b"c", b"3"), (p + b"d", b"")])
    assert raw.get(p + b"a") == b"1"
    assert raw.get(p + b"d") == b""  # empty value, not absent
    assert raw.batch_get([p + b"a", p + b"c", p + b"zz"]) == {p + b"a": b"1", p + b"c": b"3"}
    assert raw.scan(p, p + b"\xff") == [
        (p + b"a", b"1"),
        (p + b"b", b"2"),
        (p + b"c", b"3"),
        (p + b"d", b""),
    ]
    assert raw.scan(p, p + b"\xff", limit=2) == [(p + b"a", b"1"), (p + b"b", b"2")]
    raw.delete(p + b"a")
    assert raw.get(p + b"a") is None
    assert raw.compare_and_swap(p + b"a", None, b"new") == (True, None)
    assert raw.compare_and_swap(p + b"a", b"old", b"x") == (False, b"new")
    assert raw.compare_and_swap(p + b"a", b"new", b"x", ttl=100) == (True, b"new")
    assert raw.get(p + b"a") == b"x"
    raw.put(p + b"t", b"v", ttl=60)
    assert raw.get(p + b"t") == b"v"
    raw.delete_range(p + b"b", p + b"d")
    assert [k for k, _ in raw.scan(p, p + b"\xff")] == [p + b"a", p + b"d", p + b"t"]


# ----------------------------------------------------------------- transactions
def test_transactions(client: Client, request: pytest.FixtureRequest) -> None:
    p = prefix(request)
    with client.begin() as txn:
        txn.put(p + b"x", b"1")
        txn.put(p + b"y", b"2")
        txn.insert(p + b"z", b"3")
    assert client.transaction(lambda t: t.batch_get([p + b"x", p + b"y", p + b"w"])) == {
        p + b"x": b"1",
        p + b"y": b"2",
    }
    assert client.transaction(lambda t: t.scan(p, p + b"\xff", limit=2)) == [
        (p + b"x", b"1"),
        (p + b"y", b"2"),
    ]

    def bump(t: Any) -> None:
        t.put(p + b"x", b"%d" % (int(t.get(p + b"x")) + 1))
        t.delete(p + b"y")

    client.transaction(bump)
    assert client.transaction(lambda t: (t.get(p + b"x"), t.get(p + b"y"))) == (b"2", None)

    t = client.begin()
    t.insert(p + b"z", b"again")
    with pytest.raises(AlreadyExistsError):
        t.commit()


def test_write_conflict(client: Client, request: pytest.FixtureRequest) -> None:
    p = prefix(request)
    t1, t2 = client.begin(), client.begin()
    t1.put(p + b"k", b"t1")
    t2.put(p + b"k", b"t2")
    t1.commit()
    with pytest.raises(WriteConflictError) as info:
        t2.commit()
    assert info.value.key == p + b"k" and info.value.start_ts == t2.start_ts
    assert client.transaction(lambda t: t.get(p + b"k")) == b"t1"


def test_concurrent_increments_are_not_lost(client: Client, request: pytest.FixtureRequest) -> None:
    p = prefix(request)
    client.transaction(lambda t: t.put(p + b"n", b"0"))

    def inc(t: Any) -> None:
        t.put(p + b"n", b"%d" % (int(t.get(p + b"n")) + 1))

    def worker() -> None:
        for _ in range(5):
            client.transaction(inc, max_retries=100)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert client.transaction(lambda t: t.get(p + b"n")) == b"20"


def test_abandoned_locks_are_resolved(client: Client, request: pytest.FixtureRequest) -> None:
    p = prefix(request)
    kv = client.backend
    # A crashed committer: primary committed, secondary still locked.
    ts = client.tso()
    muts = [Mutation(Op.PUT, p + b"a", b"A"), Mutation(Op.PUT, p + b"b", b"B")]
    assert kv.kv_prewrite(muts, p + b"a", ts, lock_ttl=1) == []
    kv.kv_commit([p + b"a"], ts, client.tso())
    # A crashed writer before its commit point: primary and secondary locked.
    ts2 = client.tso()
    muts2 = [Mutation(Op.PUT, p + b"c", b"C"), Mutation(Op.PUT, p + b"d", b"D")]
    assert kv.kv_prewrite(muts2, p + b"c", ts2, lock_ttl=1) == []

    reader = client.tso()
    with pytest.raises(KeyIsLockedError) as info:
        kv.kv_get(p + b"b", reader)
    assert info.value.lock.primary == p + b"a" and info.value.lock.lock_type is LockType.PUT
    locks = kv.kv_scan_lock(reader, p, p + b"\xff")
    assert sorted(lock.key for lock in locks) == [p + b"b", p + b"c", p + b"d"]
    # A prewrite meeting the locks is told about them, not failed.
    blocked = kv.kv_prewrite([Mutation(Op.PUT, p + b"d", b"x")], p + b"d", client.tso(), 100)
    assert [lock.key for lock in blocked] == [p + b"d"]

    # The client resolves them: the first transaction committed, the second
    # (TTL long expired) rolled back.
    assert client.transaction(lambda t: t.scan(p, p + b"\xff")) == [
        (p + b"a", b"A"),
        (p + b"b", b"B"),
    ]
    assert kv.kv_scan_lock(client.tso(), p, p + b"\xff") == []
    status = kv.kv_check_txn_status(p + b"c", ts2, 0, client.tso())
    assert status.is_rolled_back


def test_heart_beat_and_gc(client: Client, request: pytest.FixtureRequest) -> None:
    p = prefix(request)
    kv = client.backend
    ts = client.tso()
    assert kv.kv_prewrite([Mutation(Op.PUT, p + b"h", b"v")], p + b"h", ts, 100) == []
    assert kv.kv_txn_heart_beat(p + b"h", ts, 5000) == 5000
    kv.kv_batch_rollback([p + b"h"], ts)
    assert kv.kv_resolve_lock(ts, 0) == 0  # nothing left to resolve
    stats = client.gc(client.tso())
    assert stats.keys_scanned >= 0  # type: ignore[attr-defined]


# ----------------------------------------------------------------- bad input
def test_bad_input_is_an_invalid_argument(client: Client) -> None:
    kv = client.backend
    ts = client.tso()
    cases: list[Any] = [
        lambda: client.raw.put("str", b"v"),  # refused by the client library
        lambda: kv.raw_put(b"", b"v"),  # refused by the server
        lambda: kv.raw_put("str", b"v"),  # refused by protobuf
        lambda: kv.raw_get(b"k" * 5000),
        lambda: kv.raw_put(b"k", b"v", ttl=-1),
        lambda: kv.raw_put(b"k", b"v", ttl=0),
        lambda: kv.raw_put(b"k", b"v", ttl=True),
        lambda: kv.raw_scan(b"a", b"z", limit=-1),
        lambda: kv.raw_batch_put([[b"k", b"v"]]),
        lambda: kv.kv_get(b"k", 0),
        lambda: kv.kv_get(b"k", 2**64),
        lambda: kv.kv_commit([], ts, ts + 1),
        lambda: kv.kv_commit(b"k", ts, ts + 1),
        lambda: kv.kv_resolve_lock(ts, 0, []),
        lambda: kv.kv_prewrite([], b"k", ts, 100),
        lambda: kv.kv_prewrite([Mutation(Op.PUT, b"k", b"v")], b"k", ts, 0),
        lambda: kv.kv_prewrite([("put", b"k", b"v")], b"k", ts, 100),
        lambda: kv.kv_gc(0),
        lambda: client.pd.get_ts(0),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(InvalidArgumentError) as info:
            case()
        assert "Traceback" not in str(info.value), i


def test_oversized_message_is_resource_exhausted(client: Client, server: StoreProcess) -> None:
    big = b"x" * (MAX_MESSAGE + 1024)
    with pytest.raises(grpc.RpcError) as info:
        client.backend.raw_put(b"big", big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.raw.get(b"big") is None
    client.raw.put(b"after-big", b"ok")  # the server and the connection still work
    assert client.raw.get(b"after-big") == b"ok"


def test_garbage_bytes_do_not_hurt_the_server(server: StoreProcess) -> None:
    garbage = b"\xff\xfe\x00\x01garbage\x80\x80\x80"
    with grpc.insecure_channel(server.address, options=channel_options()) as ch:
        # A unary method: a typed invalid-argument answer.
        raw_put = ch.unary_unary(f"/{KV_SERVICE}/RawPut")
        resp = kvrpcpb_pb2.RawPutResponse.FromString(raw_put(garbage, timeout=10))
        assert resp.error.WhichOneof("kind") == "invalid_argument"
        prewrite = ch.unary_unary(f"/{KV_SERVICE}/KvPrewrite")
        presp = kvrpcpb_pb2.PrewriteResponse.FromString(prewrite(garbage, timeout=10))
        assert presp.errors[0].WhichOneof("kind") == "invalid_argument"
        # A valid message with an unknown enum value: typed too.
        bad_op = kvrpcpb_pb2.PrewriteRequest(
            mutations=[kvrpcpb_pb2.Mutation(op=3, key=b"k")], primary_lock=b"k"
        )
        presp = kvrpcpb_pb2.PrewriteResponse.FromString(
            prewrite(bad_op.SerializeToString(), timeout=10)
        )
        assert presp.errors[0].WhichOneof("kind") == "invalid_argument"
        # The stream: refused with INVALID_ARGUMENT.
        stream = ch.stream_stream(f"/{KV_SERVICE}/BatchCommands")
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([garbage]), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # An empty request inside a valid batch: a per-request status.
        batch = tikvpb_pb2.BatchCommandsRequest(request_ids=[7])
        batch.requests.add()
        [reply] = list(stream(iter([batch.SerializeToString()]), timeout=10))
        out = tikvpb_pb2.BatchCommandsResponse.FromString(reply)
        assert list(out.request_ids) == [7]
        assert out.responses[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        # Garbage to PD and to a method that does not exist.
        tso = ch.stream_stream(TSO_PATH)
        [answer] = list(tso(iter([garbage]), timeout=10))  # the stream stays usable
        header = pdpb_pb2.TsoResponse.FromString(answer).header
        assert header.error.type == pdpb_pb2.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(f"/{KV_SERVICE}/NoSuchMethod")(garbage, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert server.alive(), server.log_tail()
    kv = GrpcKvBackend(server.address)
    kv.raw_put(b"after-garbage", b"ok")
    assert kv.raw_get(b"after-garbage") == b"ok"
    kv.close()


# ----------------------------------------------------------------- in-process handlers
class FakeHandler(EmbeddedHandler):
    """An embedded store whose ``raw_get`` raises what the test says and
    which records the contexts it sees."""

    def __init__(self) -> None:
        super().__init__(EmbeddedStore(MemoryEngine(), durable=False))
        self.raise_: BaseException | None = None
        self.contexts: list[RequestContext] = []

    def raw_get(self, ctx: RequestContext, key: bytes) -> bytes | None:
        self.contexts.append(ctx)
        if self.raise_ is not None:
            raise self.raise_
        return super().raw_get(ctx, key)


@pytest.fixture
def fake() -> Iterator[tuple[FakeHandler, str]]:
    handler = FakeHandler()
    bound = serve(handler, "127.0.0.1:0")
    try:
        yield handler, bound.address
    finally:
        bound.stop(grace=None)
        handler.store.close()


@pytest.mark.parametrize("batching", [False, True])
def test_region_errors_arrive_typed(fake: tuple[FakeHandler, str], batching: bool) -> None:
    handler, addr = fake
    kv = GrpcKvBackend(addr, batching=batching)
    region = Region(7, b"a", b"m", RegionEpoch(2, 3), (Peer(1, 1), Peer(2, 2, is_learner=True)))
    try:
        for err in [
            NotLeaderError(7, leader_store_id=2, leader_peer_id=5),
            EpochNotMatchError(7, [region]),
            ServerIsBusyError("too many requests", backoff_ms=20),
        ]:
            handler.raise_ = err
            with pytest.raises(type(err)) as info:
                kv.raw_get(b"k")
            assert vars(info.value) == vars(err)
    finally:
        kv.close()


@pytest.mark.parametrize("batching", [False, True])
def test_server_bug_is_internal_and_survivable(
    fake: tuple[FakeHandler, str], batching: bool
) -> None:
    handler, addr = fake
    kv = GrpcKvBackend(addr, batching=batching)
    try:
        handler.raise_ = RuntimeError("boom")
        with pytest.raises(grpc.RpcError) as info:
            kv.raw_get(b"k")
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "boom" in info.value.details()
        if batching:
            assert isinstance(info.value, BatchRpcError)
        handler.raise_ = None
        kv.raw_put(b"k", b"v")
        assert kv.raw_get(b"k") == b"v"
    finally:
        kv.close()


def test_the_routing_context_reaches_the_handler(fake: tuple[FakeHandler, str]) -> None:
    handler, addr = fake
    ctx = RequestContext(region_id=9, region_epoch=RegionEpoch(4, 5), peer=Peer(11, 3))
    kv = GrpcKvBackend(addr, ctx_provider=lambda: ctx)
    try:
        kv.raw_get(b"k")
    finally:
        kv.close()
    plain = GrpcKvBackend(addr)
    try:
        plain.raw_get(b"k")
    finally:
        plain.close()
    assert handler.contexts == [ctx, RequestContext()]


def test_batching_merges_concurrent_requests(fake: tuple[FakeHandler, str]) -> None:
    _, addr = fake
    kv = GrpcKvBackend(addr, batching=True, max_in_flight=1)
    try:
        kv.raw_batch_put([(b"k%d" % i, b"v%d" % i) for i in range(64)])
        results: dict[int, bytes | None] = {}

        def read(i: int) -> None:
            results[i] = kv.raw_get(b"k%d" % i)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(64)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert results == {i: b"v%d" % i for i in range(64)}
    finally:
        kv.close()


def test_a_closed_backend_fails_cleanly(server: StoreProcess) -> None:
    kv = GrpcKvBackend(server.address, batching=True)
    kv.raw_get(b"k")
    kv.close()
    with pytest.raises((grpc.RpcError, ValueError)):
        kv.raw_get(b"k")


def test_tso_is_monotonic_over_grpc(server: StoreProcess) -> None:
    tso = GrpcTsoBackend(server.address)
    try:
        a = tso.get_ts()
        b = tso.get_ts(10)
        c = tso.get_ts()
        assert a < b < c and b - a >= 10
    finally:
        tso.close()


def test_the_server_stops_cleanly(tmp_path: Path) -> None:
    proc = StoreProcess(tmp_path / "db")
    kv = GrpcKvBackend(proc.address)
    kv.raw_put(b"k", b"v")
    kv.close()
    assert proc.stop() == 0, proc.log_tail()


def batch_stream(ch: grpc.Channel) -> Any:
    """The raw BatchCommands stream of ``ch``, typed both ways."""
    return ch.stream_stream(
        f"/{KV_SERVICE}/BatchCommands",
        request_serializer=tikvpb_pb2.BatchCommandsRequest.SerializeToString,
        response_deserializer=tikvpb_pb2.BatchCommandsResponse.FromString,
    )


class PutRecorder(EmbeddedHandler):
    """Records how RawPuts reach the handler; fails them on demand."""

    def __init__(self) -> None:
        super().__init__(EmbeddedStore(MemoryEngine(), durable=False))
        self.batches: list[list[tuple[bytes, bytes]]] = []
        self.raise_: BaseException | None = None

    def raw_batch_put(self, ctx: Any, pairs: Any, ttl: int | None = None) -> None:
        pairs = list(pairs)
        self.batches.append(pairs)
        if self.raise_ is not None:
            raise self.raise_
        super().raw_batch_put(ctx, pairs, ttl)


def test_batched_raw_puts_to_one_region_are_coalesced() -> None:
    handler = PutRecorder()
    bound = serve(handler, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(bound.address, options=channel_options()) as ch:
            stream = batch_stream(ch)

            def send() -> list[Any]:
                msg = tikvpb_pb2.BatchCommandsRequest(request_ids=[1, 2, 3, 4, 5])
                for key in (b"a", b"b", b"", b"c"):  # b"": invalid, must fail alone
                    msg.requests.add().RawPut.CopyFrom(
                        kvrpcpb_pb2.RawPutRequest(key=key, value=b"v")
                    )
                msg.requests.add().RawGet.key = b"a"
                # Answers come as their tasks finish, in one or more replies.
                by_id = {}
                for reply in stream(iter([msg]), timeout=10):
                    by_id.update(zip(reply.request_ids, reply.responses, strict=True))
                assert sorted(by_id) == [1, 2, 3, 4, 5]
                return [by_id[i] for i in sorted(by_id)]

            r = send()
            assert handler.batches == [[(b"a", b"v"), (b"b", b"v"), (b"c", b"v")]]
            assert [x.RawPut.error.WhichOneof("kind") for x in r[:4]] == [
                None,
                None,
                "invalid_argument",
                None,
            ]
            assert handler.raw_get(None, b"c") == b"v"  # type: ignore[arg-type]
            # A Region error reaches every coalesced request, typed.
            handler.raise_ = NotLeaderError(1, leader_store_id=2, leader_peer_id=3)
            r = send()
            assert all(x.RawPut.region_error.HasField("not_leader") for x in (r[0], r[1], r[3]))
    finally:
        bound.stop(grace=None)
        handler.store.close()


class SlowKeyHandler(EmbeddedHandler):
    """RawGet of b"slow" blocks until released."""

    def __init__(self) -> None:
        super().__init__(EmbeddedStore(MemoryEngine(), durable=False))
        self.release = threading.Event()

    def raw_get(self, ctx: Any, key: bytes) -> bytes | None:
        if key == b"slow":
            self.release.wait(30)
        return super().raw_get(ctx, key)


def test_a_slow_request_does_not_hold_up_its_message() -> None:
    handler = SlowKeyHandler()
    bound = serve(handler, "127.0.0.1:0", batch_chunk=1)
    try:
        with grpc.insecure_channel(bound.address, options=channel_options()) as ch:
            stream = batch_stream(ch)
            msg = tikvpb_pb2.BatchCommandsRequest(request_ids=[1, 2])
            msg.requests.add().RawGet.key = b"slow"
            msg.requests.add().RawGet.key = b"fast"
            replies = stream(iter([msg]), timeout=30)
            first = next(replies)
            # The fast request's answer arrives while the slow one still waits.
            assert list(first.request_ids) == [2] and not handler.release.is_set()
            handler.release.set()
            assert [list(r.request_ids) for r in replies] == [[1]]
    finally:
        handler.release.set()
        bound.stop(grace=None)
        handler.store.close()


class AsyncPutHandler(EmbeddedHandler):
    """Takes RawPuts asynchronously (as the Region handler does), records
    the thread each group arrives on, and completes them when told, from
    another thread (the Raft driver's role); ``busy`` refuses the async
    path (a latch taken) so the blocking one must run."""

    def __init__(self) -> None:
        super().__init__(EmbeddedStore(MemoryEngine(), durable=False))
        self.threads: list[str] = []
        self.pending: list[tuple[list[tuple[bytes, bytes]], Any]] = []
        self.blocking: list[list[tuple[bytes, bytes]]] = []
        self.busy = False
        self.cv = threading.Condition()

    def raw_batch_put_async(self, ctx: Any, pairs: Any, ttl: int | None, done: Any) -> bool:
        if self.busy:
            return False
        if pairs and pairs[0][0] == b"refused":
            raise NotLeaderError(1, leader_store_id=2, leader_peer_id=3)
        with self.cv:
            self.threads.append(threading.current_thread().name)
            self.pending.append((list(pairs), done))
            self.cv.notify_all()
        return True

    def raw_batch_put(self, ctx: Any, pairs: Any, ttl: int | None = None) -> None:
        self.blocking.append(list(pairs))
        super().raw_batch_put(ctx, pairs, ttl)

    def complete(self, n: int, error: Exception | None = None) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.pending) >= n, 10)
            pending, self.pending = self.pending, []

        def driver() -> None:
            for pairs, done in pending:
                if error is None:
                    super(AsyncPutHandler, self).raw_batch_put(None, pairs)  # type: ignore[arg-type]
                done(error)

        t = threading.Thread(target=driver, name="fake-raft-driver")
        t.start()
        t.join()


def test_raw_puts_start_from_the_reader_and_are_answered_from_the_apply() -> None:
    handler = AsyncPutHandler()
    bound = serve(handler, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(bound.address, options=channel_options()) as ch:
            stream = batch_stream(ch)

            def send(keys: list[bytes], complete: Any = None) -> list[Any]:
                msg = tikvpb_pb2.BatchCommandsRequest(request_ids=list(range(1, len(keys) + 1)))
                for key in keys:
                    msg.requests.add().RawPut.CopyFrom(
                        kvrpcpb_pb2.RawPutRequest(key=key, value=b"v" + key)
                    )
                replies = stream(iter([msg]), timeout=10)
                if complete is not None:
                    complete()
                by_id = {}
                for reply in replies:
                    by_id.update(zip(reply.request_ids, reply.responses, strict=True))
                return [by_id[i] for i in sorted(by_id)]

            # A lone put and a group of 40 (answered by a worker, not the driver).
            for keys in ([b"one"], [b"g%02d" % i for i in range(40)]):
                r = send(keys, lambda: handler.complete(1))
                assert [x.WhichOneof("cmd") for x in r] == ["RawPut"] * len(keys)
                assert not any(x.RawPut.HasField("error") for x in r)
                assert all(handler.raw_get(None, k) == b"v" + k for k in keys)  # type: ignore[arg-type]
            # Proposed from the stream's reader thread: no worker took them.
            assert handler.threads == ["kv-batch-reader", "kv-batch-reader"]
            assert handler.blocking == []
            # An error from the apply reaches every request of the group, typed.
            r = send([b"a", b"b"], lambda: handler.complete(1, NotLeaderError(1, 2, 3)))
            assert all(x.RawPut.region_error.HasField("not_leader") for x in r)
            # Refused before proposing: typed too.
            r = send([b"refused"])
            assert r[0].RawPut.region_error.HasField("not_leader")
            # A busy latch: the blocking path runs instead, same answer.
            handler.busy = True
            r = send([b"late"])
            assert handler.blocking == [[(b"late", b"vlate")]] and not r[0].RawPut.HasField("error")
    finally:
        bound.stop(grace=None)
        handler.store.close()


def test_raw_write_with_unknown_outcome_is_retried_only_when_asked() -> None:
    """A raw put whose proposal was dropped may still apply later: sent again,
    it is not linearizable (the first attempt can land after another client's
    later write). By default the routing layer retries it (as TiKV's client
    does); with ``raw_retry_unknown=False`` it raises UndeterminedError and
    is sent once."""
    from kvstore.client.routing import RegionLocation, RoutedKvBackend
    from kvstore.errors import ProposalDroppedError, UndeterminedError
    from kvstore.types import Peer as PeerMeta
    from kvstore.types import Region, RegionEpoch

    region = Region(1, b"", b"", RegionEpoch(1, 1), (PeerMeta(1, 1),))

    class Source:
        def locate(self, encoded_key: bytes) -> list[RegionLocation]:
            return [RegionLocation(region, 1)]

        def store_addr(self, store_id: int) -> str | None:
            return "127.0.0.1:1"

        def close(self) -> None:
            pass

    class Store:
        def __init__(self) -> None:
            self.puts = 0

        def raw_put(self, key: bytes, value: bytes, ttl: int | None = None) -> None:
            self.puts += 1
            if self.puts == 1:
                raise ProposalDroppedError(1, "leader changed")

    for retry, sent in ((True, 2), (False, 1)):
        store = Store()
        kv = RoutedKvBackend(source=Source(), timeout=5.0, raw_retry_unknown=retry)
        kv._stub = lambda _sid, store=store: store  # type: ignore[method-assign,assignment,misc]
        try:
            if retry:
                kv.raw_put(b"k", b"v")
            else:
                with pytest.raises(UndeterminedError, match="outcome unknown"):
                    kv.raw_put(b"k", b"v")
        finally:
            kv.close()
        assert store.puts == sent
