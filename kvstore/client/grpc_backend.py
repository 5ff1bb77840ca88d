"""The client's backends over gRPC: :class:`GrpcKvBackend` and :class:`GrpcTsoBackend`.

:class:`GrpcKvBackend` implements :class:`~kvstore.client.backend.KvBackend`
against one store's ``htapkv.tikvpb.Tikv`` service over one channel, so the
same :class:`~kvstore.client.Client` that runs against an embedded store runs
against a server::

    kv = GrpcKvBackend("127.0.0.1:20160")
    client = Client(kv, GrpcTsoBackend("127.0.0.1:2379"), on_close=kv.close)

Outcomes come back as the exceptions the embedded store raises (the response's
``region_error``/``error`` fields decoded by :mod:`kvstore.proto.convert`). A
failed *call* — server unreachable, deadline exceeded, message too large
(``RESOURCE_EXHAUSTED``), server bug (``INTERNAL``) — raises
:class:`grpc.RpcError`: its outcome is unknown (the transaction code treats a
non-KVError on the primary commit as undetermined).

Two transports:

* unary (default): one RPC per call, ~0.6 ms each; concurrency comes from
  the caller's threads.
* ``batching=True`` (client-go's batch client): calls from all threads are
  queued; a sender drains the queue into one ``BatchCommands`` stream message
  (up to ``max_batch`` requests) whenever the stream is free, and a receiver
  thread hands each response to its waiting caller by request id. The more
  concurrent callers, the more requests per gRPC message. The stream is
  reopened after a failure; calls in flight on the broken one fail with its
  error.

``ctx_provider`` (optional) gives the :class:`~kvstore.proto.convert.RequestContext`
sent with each request (Region, epoch, peer); without one the context is
empty, which a single-store server ignores.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from kvstore.client.backend import KvBackend, TsoBackend
from kvstore.client.client import Client
from kvstore.client.tso import TsoBatcher
from kvstore.errors import InvalidArgumentError
from kvstore.proto import kvrpcpb_pb2 as pb
from kvstore.proto import tikvpb_pb2
from kvstore.proto.convert import (
    GcResult,
    RequestContext,
    context_to_pb,
    encoding_error,
    lock_info_from_pb,
    mutation_to_pb,
    prewrite_outcome,
    response_error,
    txn_status_from_pb,
)
from kvstore.proto.rpc import (
    BATCH_COMMANDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    KV_METHODS,
    KV_SERVICE,
    KvMethod,
    channel_options,
)
from kvstore.types import LockInfo, Mutation, TxnStatus, validate_limit, validate_range

DEFAULT_TIMEOUT_S = 30.0
_STATUS_BY_CODE = {c.value[0]: c for c in grpc.StatusCode}


class BatchRpcError(grpc.RpcError):  # type: ignore[misc]
    """A request of a BatchCommands stream failed as a call (what a unary
    call would report as its status): same ``code()``/``details()`` as the
    :class:`grpc.RpcError` of a unary call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _new(cls: type[Any], **fields: Any) -> Any:
    """Build a request message; values protobuf refuses (wrong type, out of
    range) are the caller's mistake."""
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise encoding_error(e) from None


def _key_list(keys: object, *, allow_empty: bool = False) -> list[bytes]:
    # The wire cannot tell a list from any other iterable, nor None from []:
    # check here what the store would have checked.
    if not isinstance(keys, (list, tuple)) or not (keys or allow_empty):
        raise InvalidArgumentError("expected a non-empty list of keys")
    return list(keys)


# --------------------------------------------------------------------------
# BatchCommands transport
# --------------------------------------------------------------------------
class _Pending:
    __slots__ = ("_done", "error", "field", "request", "response")

    def __init__(self, field: str, request: Message) -> None:
        self.field = field
        self.request = request
        # Held until the answer (or the error) is in: cheaper than an Event,
        # whose every wait allocates a lock and a condition.
        self._done = threading.Lock()
        self._done.acquire()
        self.response: tikvpb_pb2.BatchCommandsResponse.Response | None = None
        self.error: Exception | None = None

    def set_done(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released: never twice
            self._done.release()

    def wait(self, timeout: float | None) -> bool:
        return self._done.acquire(timeout=-1 if timeout is None else timeout)


class _Stream:
    """One open BatchCommands stream: a sender (the request iterator grpc
    consumes) and a receiver thread."""

    def __init__(self, open_call: Any, max_batch: int, max_in_flight: int) -> None:
        self._max_batch = max_batch
        # At most this many messages awaiting their answer: while the window
        # is full, requests pile up in the queue and leave together.
        self._window = threading.Semaphore(max_in_flight)
        self._q: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._pending: dict[int, _Pending] = {}
        # The server answers a message's requests as they finish, possibly in
        # several replies: a window slot frees once all of them are answered.
        self._msg_of: dict[int, int] = {}  # request id -> message sequence
        self._unanswered: dict[int, int] = {}  # message sequence -> requests left
        self._msgs = itertools.count(1)
        self._ids = itertools.count(1)
        self._mu = threading.Lock()
        self.broken = False
        self._error: Exception = BatchRpcError(grpc.StatusCode.UNAVAILABLE, "stream closed")
        self._call = open_call(self._requests())
        threading.Thread(target=self._receive, name="kv-batch-recv", daemon=True).start()

    def submit(self, p: _Pending) -> bool:
        """Queue ``p``; False if the stream is broken (use a new one)."""
        with self._mu:
            if self.broken:
                return False
            self._q.put(p)
            return True

    def forget(self, p: _Pending) -> None:
        with self._mu:
            for rid, q in list(self._pending.items()):
                if q is p:
                    del self._pending[rid]

    def _requests(self) -> Iterator[tikvpb_pb2.BatchCommandsRequest]:
        while True:
            first = self._q.get()
            if first is None:
                return
            self._window.acquire()
            batch = [first]
            closing = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                    break
                batch.append(nxt)
            msg = tikvpb_pb2.BatchCommandsRequest()
            with self._mu:
                if self.broken:  # taken off the queue after _fail drained it
                    for p in batch:
                        p.error = self._error
                        p.set_done()
                    return
                seq = next(self._msgs)
                self._unanswered[seq] = len(batch)
                for p in batch:
                    rid = next(self._ids)
                    self._pending[rid] = p
                    self._msg_of[rid] = seq
                    msg.request_ids.append(rid)
                    getattr(msg.requests.add(), p.field).CopyFrom(p.request)
            yield msg
            if closing:
                return

    def _receive(self) -> None:
        error: Exception = BatchRpcError(grpc.StatusCode.UNAVAILABLE, "stream closed")
        try:
            for msg in self._call:
                freed = 0
                with self._mu:
                    waiting = [self._pending.pop(rid, None) for rid in msg.request_ids]
                    for rid in msg.request_ids:
                        seq = self._msg_of.pop(rid, None)
                        if seq is None:
                            continue
                        self._unanswered[seq] -= 1
                        if self._unanswered[seq] == 0:
                            del self._unanswered[seq]
                            freed += 1
                for _ in range(freed):
                    self._window.release()
                for p, resp in zip(waiting, msg.responses, strict=False):
                    if p is not None:
                        p.response = resp
                        p.set_done()
        except grpc.RpcError as e:
            error = e
        except Exception as e:  # a response we cannot read: fail the stream
            error = BatchRpcError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        with self._mu:
            self.broken = True
            self._error = error
            failed = list(self._pending.values())
            self._pending.clear()
            while True:
                try:
                    p = self._q.get_nowait()
                except queue.Empty:
                    break
                if p is not None:
                    failed.append(p)
            self._q.put(None)  # stop the sender
            self._window.release()  # in case it waits for a slot
        for p in failed:
            p.error = error
            p.set_done()

    def close(self) -> None:
        self._q.put(None)
        self._call.cancel()


class _Batcher:
    def __init__(self, channel: grpc.Channel, max_batch: int, max_in_flight: int) -> None:
        self._open = channel.stream_stream(
            f"/{KV_SERVICE}/{BATCH_COMMANDS}",
            request_serializer=tikvpb_pb2.BatchCommandsRequest.SerializeToString,
            response_deserializer=tikvpb_pb2.BatchCommandsResponse.FromString,
        )
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._mu = threading.Lock()
        self._stream: _Stream | None = None
        self._closed = False

    def call(self, method: KvMethod, req: Message, timeout: float | None) -> Message:
        p = _Pending(method.batch_field, req)
        while True:
            with self._mu:
                if self._closed:
                    raise BatchRpcError(grpc.StatusCode.CANCELLED, "backend closed")
                if self._stream is None or self._stream.broken:
                    self._stream = _Stream(self._open, self._max_batch, self._max_in_flight)
                stream = self._stream
            if stream.submit(p):
                break
        if not p.wait(timeout):
            stream.forget(p)
            raise BatchRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method.name} timed out")
        if p.error is not None:
            raise p.error
        resp = p.response
        assert resp is not None
        kind = resp.WhichOneof("cmd")
        if kind == "status":
            code = _STATUS_BY_CODE.get(resp.status.code, grpc.StatusCode.UNKNOWN)
            raise BatchRpcError(code, resp.status.message)
        if kind != method.batch_field:
            raise BatchRpcError(grpc.StatusCode.INTERNAL, f"{method.name}: got a {kind} response")
        out: Message = getattr(resp, kind)
        return out

    def close(self) -> None:
        with self._mu:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


# --------------------------------------------------------------------------
# The backends
# --------------------------------------------------------------------------
class GrpcKvBackend(KvBackend):
    """:class:`~kvstore.client.backend.KvBackend` over gRPC to one store."""

    def __init__(
        self,
        addr: str,
        ctx_provider: Callable[[], RequestContext] | None = None,
        *,
        batching: bool = False,
        max_batch: int = 256,
        max_in_flight: int = 2,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.addr = addr
        self.timeout = timeout
        self._ctx_provider = ctx_provider
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(
            addr, options=channel_options(max_message_bytes)
        )
        self._unary = {
            m.name: self._channel.unary_unary(
                m.path,
                request_serializer=m.request.SerializeToString,
                response_deserializer=m.response.FromString,
            )
            for m in KV_METHODS.values()
        }
        self._batcher = _Batcher(self._channel, max_batch, max_in_flight) if batching else None

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        if self._own_channel:
            self._channel.close()

    def _call(self, name: str, req: Message) -> Any:
        """Send ``req``; return the response if it reports no error, else
        raise the error it reports."""
        resp = self._send(name, req)
        err = response_error(resp)
        if err is not None:
            raise err
        return resp

    def _send(self, name: str, req: Message) -> Any:
        if self._ctx_provider is not None:
            req.context.CopyFrom(context_to_pb(self._ctx_provider()))  # type: ignore[attr-defined]
        if self._batcher is not None:
            return self._batcher.call(KV_METHODS[name], req, self.timeout)
        return self._unary[name](req, timeout=self.timeout)

    # ---------------------------------------------------------------- transactional
    def kv_get(self, key: bytes, version: int, bypass_locks: Collection[int] = ()) -> bytes | None:
        req = _new(pb.GetRequest, key=key, version=version, resolved_locks=list(bypass_locks))
        resp: pb.GetResponse = self._call("KvGet", req)
        return None if resp.not_found else resp.value

    def kv_batch_get(
        self, keys: Sequence[bytes], version: int, bypass_locks: Collection[int] = ()
    ) -> dict[bytes, bytes]:
        req = _new(
            pb.BatchGetRequest,
            keys=_key_list(keys, allow_empty=True),
            version=version,
            resolved_locks=list(bypass_locks),
        )
        resp: pb.BatchGetResponse = self._call("KvBatchGet", req)
        return {p.key: p.value for p in resp.pairs}

    def kv_scan(
        self,
        start: bytes,
        end: bytes | None,
        version: int,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]:
        start, end = validate_range(start, end)
        req = _new(
            pb.ScanRequest,
            start_key=start,
            end_key=end,
            version=version,
            limit=validate_limit(limit),
            resolved_locks=list(bypass_locks),
        )
        resp: pb.ScanResponse = self._call("KvScan", req)
        return [(p.key, p.value) for p in resp.pairs]

    def kv_prewrite(
        self,
        mutations: Sequence[Mutation],
        primary: bytes,
        start_ts: int,
        lock_ttl: int,
        txn_size: int = 0,
        min_commit_ts: int = 0,
    ) -> list[LockInfo]:
        try:
            muts = [mutation_to_pb(m) for m in mutations]
        except (TypeError, ValueError) as e:
            raise encoding_error(e) from None
        req = _new(
            pb.PrewriteRequest,
            mutations=muts,
            primary_lock=primary,
            start_version=start_ts,
            lock_ttl=lock_ttl,
            txn_size=txn_size,
            min_commit_ts=min_commit_ts,
        )
        resp: pb.PrewriteResponse = self._send("KvPrewrite", req)
        return prewrite_outcome(resp)

    def kv_commit(self, keys: Sequence[bytes], start_ts: int, commit_ts: int) -> None:
        req = _new(
            pb.CommitRequest, keys=_key_list(keys), start_version=start_ts, commit_version=commit_ts
        )
        self._call("KvCommit", req)

    def kv_batch_rollback(self, keys: Sequence[bytes], start_ts: int) -> None:
        req = _new(pb.BatchRollbackRequest, keys=_key_list(keys), start_version=start_ts)
        self._call("KvBatchRollback", req)

    def kv_check_txn_status(
        self,
        primary: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool = True,
    ) -> TxnStatus:
        req = _new(
            pb.CheckTxnStatusRequest,
            primary_key=primary,
            lock_ts=lock_ts,
            caller_start_ts=caller_start_ts,
            current_ts=current_ts,
            rollback_if_not_exist=rollback_if_not_exist,
        )
        resp: pb.CheckTxnStatusResponse = self._call("KvCheckTxnStatus", req)
        return txn_status_from_pb(resp)

    def kv_resolve_lock(
        self, start_ts: int, commit_ts: int, keys: Sequence[bytes] | None = None
    ) -> int:
        # An empty key list on the wire means "every key of the transaction".
        wire_keys = [] if keys is None else _key_list(keys)
        req = _new(
            pb.ResolveLockRequest,
            start_version=start_ts,
            commit_version=commit_ts,
            keys=wire_keys,
        )
        resp: pb.ResolveLockResponse = self._call("KvResolveLock", req)
        return resp.resolved_count

    def kv_scan_lock(
        self, max_ts: int, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[LockInfo]:
        start, end = validate_range(start, end)
        req = _new(
            pb.ScanLockRequest,
            max_version=max_ts,
            start_key=start,
            end_key=end,
            limit=validate_limit(limit),
        )
        resp: pb.ScanLockResponse = self._call("KvScanLock", req)
        return [lock_info_from_pb(i) for i in resp.locks]

    def kv_txn_heart_beat(self, primary: bytes, start_ts: int, advise_ttl: int) -> int:
        req = _new(
            pb.TxnHeartBeatRequest,
            primary_lock=primary,
            start_version=start_ts,
            advise_lock_ttl=advise_ttl,
        )
        resp: pb.TxnHeartBeatResponse = self._call("KvTxnHeartBeat", req)
        return resp.lock_ttl

    def kv_gc(self, safe_point: int) -> GcResult:
        resp: pb.GCResponse = self._call("KvGC", _new(pb.GCRequest, safe_point=safe_point))
        return GcResult(resp.keys_scanned, resp.versions_removed)

    def kv_import(self, pairs: Sequence[tuple[bytes, bytes]], commit_ts: int, table_id: int) -> int:
        if not isinstance(pairs, (list, tuple)):
            raise InvalidArgumentError("import takes a list of (key, value) pairs")
        kvs = []
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgumentError("import takes (key, value) pairs")
            kvs.append(_new(pb.KvPair, key=pair[0], value=pair[1]))
        req = _new(pb.ImportRequest, pairs=kvs, commit_version=commit_ts, table_id=table_id)
        resp: pb.ImportResponse = self._call("KvImport", req)
        return resp.written

    # ---------------------------------------------------------------- raw
    def raw_get(self, key: bytes) -> bytes | None:
        resp: pb.RawGetResponse = self._call("RawGet", _new(pb.RawGetRequest, key=key))
        return None if resp.not_found else resp.value

    def raw_batch_get(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        req = _new(pb.RawBatchGetRequest, keys=list(keys))
        resp: pb.RawBatchGetResponse = self._call("RawBatchGet", req)
        return {p.key: p.value for p in resp.pairs}

    def raw_put(self, key: bytes, value: bytes, ttl: int | None = None) -> None:
        self._call("RawPut", _new(pb.RawPutRequest, key=key, value=value, ttl=ttl))

    def raw_batch_put(self, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None) -> None:
        kvs = []
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgumentError("batch_put takes (key, value) pairs")
            kvs.append(_new(pb.KvPair, key=pair[0], value=pair[1]))
        self._call("RawBatchPut", _new(pb.RawBatchPutRequest, pairs=kvs, ttl=ttl))

    def raw_delete(self, key: bytes) -> None:
        self._call("RawDelete", _new(pb.RawDeleteRequest, key=key))

    def raw_scan(
        self, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        start, end = validate_range(start, end)
        req = _new(pb.RawScanRequest, start_key=start, end_key=end, limit=validate_limit(limit))
        resp: pb.RawScanResponse = self._call("RawScan", req)
        return [(p.key, p.value) for p in resp.kvs]

    def raw_delete_range(self, start: bytes, end: bytes | None) -> None:
        start, end = validate_range(start, end)
        self._call("RawDeleteRange", _new(pb.RawDeleteRangeRequest, start_key=start, end_key=end))

    def raw_compare_and_swap(
        self, key: bytes, expected: bytes | None, new: bytes, ttl: int | None = None
    ) -> tuple[bool, bytes | None]:
        req = _new(
            pb.RawCASRequest,
            key=key,
            value=new,
            previous_not_exist=expected is None,
            previous_value=expected,
            ttl=ttl,
        )
        resp: pb.RawCASResponse = self._call("RawCompareAndSwap", req)
        return resp.succeed, None if resp.previous_not_exist else resp.previous_value

    def read_index(self) -> int:
        """The Region leader's read index (the Region is the context's)."""
        resp: pb.ReadIndexResponse = self._call("ReadIndex", _new(pb.ReadIndexRequest))
        return int(resp.read_index)


class GrpcTsoBackend(TsoBackend):
    """:class:`~kvstore.client.backend.TsoBackend` over PD's ``Tso`` stream at
    one fixed address (an embedded server's oracle). Concurrent callers are
    batched into one request (:class:`~kvstore.client.tso.TsoBatcher`); a
    failure is the caller's error, not retried elsewhere (for a PD cluster
    use :class:`~kvstore.client.pd_client.PdClient`)."""

    def __init__(
        self,
        addr: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.timeout = timeout
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(addr, options=channel_options())
        self._batcher = TsoBatcher(
            lambda _refresh: (addr, self._channel),
            timeout=timeout if timeout is not None else 3600.0,
            retry=False,
        )

    def get_ts(self, count: int = 1) -> int:
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise InvalidArgumentError("count must be a positive int")
        return self._batcher.get_ts(count)

    def close(self) -> None:
        self._batcher.close()
        if self._own_channel:
            self._channel.close()


def connect(
    addr: str, pd_addr: str | None = None, *, batching: bool = False, **client_options: Any
) -> Client:
    """A :class:`~kvstore.client.Client` for the store at ``addr`` with
    timestamps from PD at ``pd_addr`` (default: ``addr``). Closing the client
    closes the channels."""
    kv = GrpcKvBackend(addr, batching=batching)
    tso = GrpcTsoBackend(pd_addr or addr)

    def close() -> None:
        kv.close()
        tso.close()

    return Client(kv, tso, on_close=close, **client_options)


__all__ = ["BatchRpcError", "GrpcKvBackend", "GrpcTsoBackend", "connect"]
