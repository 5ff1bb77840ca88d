"""The store's Kv service over gRPC: ``htapkv.tikvpb.Tikv`` (kvproto's names).

:class:`KvService` turns RPCs into calls on a :class:`KvHandler` (the Kv
methods of :class:`~kvstore.client.backend.KvBackend` with the request's
:class:`~kvstore.proto.convert.RequestContext` first) and their results or
errors back into responses. Today the handler is :class:`EmbeddedHandler`
(one :class:`~kvstore.server.embedded.EmbeddedStore`, context ignored); the
Region-aware store will check the context (leader, epoch, key range) and
answer with Region errors.

What a caller sees, whatever it sends:

* a :class:`~kvstore.errors.KVError` becomes a response field
  (``region_error``, or ``error``/``errors``) via :mod:`kvstore.proto.convert`;
* bytes that do not parse as the request, or values the store cannot
  represent, give an ``invalid_argument`` KeyError — never a crash, never a
  stack trace on the wire. (That is why requests are registered without a
  deserializer: grpc's own would answer a parse failure with a bare INTERNAL.)
* an unexpected exception (a bug) is logged and answered with status
  INTERNAL; the server keeps serving;
* a message over ``max_message_bytes`` is refused by grpc with status
  RESOURCE_EXHAUSTED.

``BatchCommands`` carries many requests per message (DESIGN.md §4: a gRPC
message costs ~0.6 ms, a request inside one far less). The requests of a
message run concurrently on a thread pool; when all are done their
responses go back in one message with the same ``request_ids``. Messages are
read ahead, so one slow request does not stall the stream behind it; answers
to different messages may come back in any order.

Run a store: ``python -m kvstore.server.kv_service --data-dir D --addr
127.0.0.1:0 --port-file F`` serves an embedded store's Kv service and its
timestamp oracle (PD ``Tso``), and writes the bound port to ``F``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import queue
import signal
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from kvstore.errors import InvalidArgumentError, KVError
from kvstore.proto import kvrpcpb_pb2 as pb
from kvstore.proto import tikvpb_pb2
from kvstore.proto.convert import (
    RequestContext,
    context_from_pb,
    lock_info_to_pb,
    mutation_from_pb,
    set_error,
    txn_status_to_pb,
)
from kvstore.proto.rpc import (
    BATCH_COMMANDS,
    BY_BATCH_FIELD,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_BYTES,
    KV_METHODS,
    KV_SERVICE,
    KvMethod,
    channel_options,
)
from kvstore.proto.tls import TlsConfig, add_port
from kvstore.server.embedded import EmbeddedStore
from kvstore.types import LockInfo, Mutation, TxnStatus, validate_key, validate_value

log = logging.getLogger(__name__)
# A coalesced group of at most this many RawPuts is answered from the Raft
# driver thread that applied it; a larger one is handed to a worker, so
# serialising answers never holds up the driver.
ASYNC_INLINE_ANSWERS = 16


class KvHandler(Protocol):
    """The Kv service as the server sees it: ``KvBackend``'s methods with the
    request's routing context first. Raise :mod:`kvstore.errors` exceptions;
    they reach the client as the same exceptions."""

    # ---- transactional
    def kv_get(
        self, ctx: RequestContext, key: bytes, version: int, bypass_locks: Collection[int] = ()
    ) -> bytes | None: ...

    def kv_batch_get(
        self,
        ctx: RequestContext,
        keys: Sequence[bytes],
        version: int,
        bypass_locks: Collection[int] = (),
    ) -> dict[bytes, bytes]: ...

    def kv_scan(
        self,
        ctx: RequestContext,
        start: bytes,
        end: bytes | None,
        version: int,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]: ...

    def kv_prewrite(
        self,
        ctx: RequestContext,
        mutations: Sequence[Mutation],
        primary: bytes,
        start_ts: int,
        lock_ttl: int,
        txn_size: int = 0,
        min_commit_ts: int = 0,
    ) -> list[LockInfo]: ...

    def kv_commit(
        self, ctx: RequestContext, keys: Sequence[bytes], start_ts: int, commit_ts: int
    ) -> None: ...

    def kv_batch_rollback(
        self, ctx: RequestContext, keys: Sequence[bytes], start_ts: int
    ) -> None: ...

    def kv_check_txn_status(
        self,
        ctx: RequestContext,
        primary: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool = True,
    ) -> TxnStatus: ...

    def kv_resolve_lock(
        self,
        ctx: RequestContext,
        start_ts: int,
        commit_ts: int,
        keys: Sequence[bytes] | None = None,
    ) -> int: ...

    def kv_scan_lock(
        self,
        ctx: RequestContext,
        max_ts: int,
        start: bytes = b"",
        end: bytes | None = None,
        limit: int | None = None,
    ) -> list[LockInfo]: ...

    def kv_txn_heart_beat(
        self, ctx: RequestContext, primary: bytes, start_ts: int, advise_ttl: int
    ) -> int: ...

    def kv_gc(self, ctx: RequestContext, safe_point: int) -> Any: ...

    # ---- raw
    def raw_get(self, ctx: RequestContext, key: bytes) -> bytes | None: ...

    def raw_batch_get(self, ctx: RequestContext, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def raw_put(
        self, ctx: RequestContext, key: bytes, value: bytes, ttl: int | None = None
    ) -> None: ...

    def raw_batch_put(
        self, ctx: RequestContext, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None
    ) -> None: ...

    def raw_delete(self, ctx: RequestContext, key: bytes) -> None: ...

    def raw_scan(
        self, ctx: RequestContext, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def raw_delete_range(self, ctx: RequestContext, start: bytes, end: bytes | None) -> None: ...

    def raw_compare_and_swap(
        self,
        ctx: RequestContext,
        key: bytes,
        expected: bytes | None,
        new: bytes,
        ttl: int | None = None,
    ) -> tuple[bool, bytes | None]: ...

    def read_index(self, ctx: RequestContext) -> int: ...

    def kv_import(
        self,
        ctx: RequestContext,
        pairs: Sequence[tuple[bytes, bytes]],
        commit_ts: int,
        table_id: int,
    ) -> int: ...


class EmbeddedHandler:
    """A :class:`KvHandler` over one embedded store: a single node that owns
    the whole key space, so the routing context is ignored."""

    def __init__(self, store: EmbeddedStore) -> None:
        self.store = store

    def kv_get(
        self, ctx: RequestContext, key: bytes, version: int, bypass_locks: Collection[int] = ()
    ) -> bytes | None:
        return self.store.kv_get(key, version, bypass_locks)

    def kv_batch_get(
        self,
        ctx: RequestContext,
        keys: Sequence[bytes],
        version: int,
        bypass_locks: Collection[int] = (),
    ) -> dict[bytes, bytes]:
        return self.store.kv_batch_get(keys, version, bypass_locks)

    def kv_scan(
        self,
        ctx: RequestContext,
        start: bytes,
        end: bytes | None,
        version: int,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]:
        return self.store.kv_scan(start, end, version, limit, bypass_locks)

    def kv_prewrite(
        self,
        ctx: RequestContext,
        mutations: Sequence[Mutation],
        primary: bytes,
        start_ts: int,
        lock_ttl: int,
        txn_size: int = 0,
        min_commit_ts: int = 0,
    ) -> list[LockInfo]:
        return self.store.kv_prewrite(
            mutations, primary, start_ts, lock_ttl, txn_size, min_commit_ts
        )

    def kv_commit(
        self, ctx: RequestContext, keys: Sequence[bytes], start_ts: int, commit_ts: int
    ) -> None:
        self.store.kv_commit(keys, start_ts, commit_ts)

    def kv_batch_rollback(self, ctx: RequestContext, keys: Sequence[bytes], start_ts: int) -> None:
        self.store.kv_batch_rollback(keys, start_ts)

    def kv_check_txn_status(
        self,
        ctx: RequestContext,
        primary: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool = True,
    ) -> TxnStatus:
        return self.store.kv_check_txn_status(
            primary, lock_ts, caller_start_ts, current_ts, rollback_if_not_exist
        )

    def kv_resolve_lock(
        self,
        ctx: RequestContext,
        start_ts: int,
        commit_ts: int,
        keys: Sequence[bytes] | None = None,
    ) -> int:
        return self.store.kv_resolve_lock(start_ts, commit_ts, keys)

    def kv_scan_lock(
        self,
        ctx: RequestContext,
        max_ts: int,
        start: bytes = b"",
        end: bytes | None = None,
        limit: int | None = None,
    ) -> list[LockInfo]:
        return self.store.kv_scan_lock(max_ts, start, end, limit)

    def kv_txn_heart_beat(
        self, ctx: RequestContext, primary: bytes, start_ts: int, advise_ttl: int
    ) -> int:
        return self.store.kv_txn_heart_beat(primary, start_ts, advise_ttl)

    def kv_gc(self, ctx: RequestContext, safe_point: int) -> Any:
        return self.store.kv_gc(safe_point)

    def raw_get(self, ctx: RequestContext, key: bytes) -> bytes | None:
        return self.store.raw_get(key)

    def raw_batch_get(self, ctx: RequestContext, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.store.raw_batch_get(keys)

    def raw_put(
        self, ctx: RequestContext, key: bytes, value: bytes, ttl: int | None = None
    ) -> None:
        self.store.raw_put(key, value, ttl)

    def raw_batch_put(
        self, ctx: RequestContext, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None
    ) -> None:
        self.store.raw_batch_put(pairs, ttl)

    def raw_delete(self, ctx: RequestContext, key: bytes) -> None:
        self.store.raw_delete(key)

    def raw_scan(
        self, ctx: RequestContext, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        return self.store.raw_scan(start, end, limit)

    def raw_delete_range(self, ctx: RequestContext, start: bytes, end: bytes | None) -> None:
        self.store.raw_delete_range(start, end)

    def raw_compare_and_swap(
        self,
        ctx: RequestContext,
        key: bytes,
        expected: bytes | None,
        new: bytes,
        ttl: int | None = None,
    ) -> tuple[bool, bytes | None]:
        return self.store.raw_compare_and_swap(key, expected, new, ttl)

    def read_index(self, ctx: RequestContext) -> int:
        return 0  # one node, no log: every read is as fresh as it gets

    def kv_import(
        self,
        ctx: RequestContext,
        pairs: Sequence[tuple[bytes, bytes]],
        commit_ts: int,
        table_id: int,
    ) -> int:
        return self.store.kv_import(pairs, commit_ts, table_id)


# --------------------------------------------------------------------------
# Request -> handler call -> response, one function per RPC. Each returns the
# filled response or raises a KVError (KvService.execute records it).
# --------------------------------------------------------------------------
_Impl = Callable[[KvHandler, RequestContext, Any], Message]


def _limit(req: Any) -> int | None:
    return int(req.limit) if req.HasField("limit") else None


def _ttl(req: Any) -> int | None:
    return int(req.ttl) if req.HasField("ttl") else None


def _pairs(rows: Iterable[tuple[bytes, bytes]]) -> list[pb.KvPair]:
    return [pb.KvPair(key=k, value=v) for k, v in rows]


def _kv_get(h: KvHandler, ctx: RequestContext, r: pb.GetRequest) -> pb.GetResponse:
    v = h.kv_get(ctx, r.key, r.version, frozenset(r.resolved_locks))
    return pb.GetResponse(value=v or b"", not_found=v is None)


def _kv_scan(h: KvHandler, ctx: RequestContext, r: pb.ScanRequest) -> pb.ScanResponse:
    rows = h.kv_scan(
        ctx, r.start_key, r.end_key or None, r.version, _limit(r), frozenset(r.resolved_locks)
    )
    return pb.ScanResponse(pairs=_pairs(rows))


def _kv_batch_get(h: KvHandler, ctx: RequestContext, r: pb.BatchGetRequest) -> pb.BatchGetResponse:
    found = h.kv_batch_get(ctx, list(r.keys), r.version, frozenset(r.resolved_locks))
    return pb.BatchGetResponse(pairs=_pairs(found.items()))


def _kv_prewrite(h: KvHandler, ctx: RequestContext, r: pb.PrewriteRequest) -> pb.PrewriteResponse:
    mutations = [mutation_from_pb(m) for m in r.mutations]
    locks = h.kv_prewrite(
        ctx, mutations, r.primary_lock, r.start_version, r.lock_ttl, r.txn_size, r.min_commit_ts
    )
    return pb.PrewriteResponse(errors=[pb.KeyError(locked=lock_info_to_pb(i)) for i in locks])


def _kv_commit(h: KvHandler, ctx: RequestContext, r: pb.CommitRequest) -> pb.CommitResponse:
    h.kv_commit(ctx, list(r.keys), r.start_version, r.commit_version)
    return pb.CommitResponse()


def _kv_batch_rollback(
    h: KvHandler, ctx: RequestContext, r: pb.BatchRollbackRequest
) -> pb.BatchRollbackResponse:
    h.kv_batch_rollback(ctx, list(r.keys), r.start_version)
    return pb.BatchRollbackResponse()


def _kv_check_txn_status(
    h: KvHandler, ctx: RequestContext, r: pb.CheckTxnStatusRequest
) -> pb.CheckTxnStatusResponse:
    status = h.kv_check_txn_status(
        ctx, r.primary_key, r.lock_ts, r.caller_start_ts, r.current_ts, r.rollback_if_not_exist
    )
    return txn_status_to_pb(status)


def _kv_resolve_lock(
    h: KvHandler, ctx: RequestContext, r: pb.ResolveLockRequest
) -> pb.ResolveLockResponse:
    n = h.kv_resolve_lock(ctx, r.start_version, r.commit_version, list(r.keys) or None)
    return pb.ResolveLockResponse(resolved_count=n)


def _kv_scan_lock(h: KvHandler, ctx: RequestContext, r: pb.ScanLockRequest) -> pb.ScanLockResponse:
    locks = h.kv_scan_lock(ctx, r.max_version, r.start_key, r.end_key or None, _limit(r))
    return pb.ScanLockResponse(locks=[lock_info_to_pb(i) for i in locks])


def _kv_txn_heart_beat(
    h: KvHandler, ctx: RequestContext, r: pb.TxnHeartBeatRequest
) -> pb.TxnHeartBeatResponse:
    ttl = h.kv_txn_heart_beat(ctx, r.primary_lock, r.start_version, r.advise_lock_ttl)
    return pb.TxnHeartBeatResponse(lock_ttl=ttl)


def _kv_gc(h: KvHandler, ctx: RequestContext, r: pb.GCRequest) -> pb.GCResponse:
    stats = h.kv_gc(ctx, r.safe_point)
    return pb.GCResponse(
        keys_scanned=int(getattr(stats, "keys_scanned", 0)),
        versions_removed=int(getattr(stats, "versions_removed", 0)),
    )


def _raw_get(h: KvHandler, ctx: RequestContext, r: pb.RawGetRequest) -> pb.RawGetResponse:
    v = h.raw_get(ctx, r.key)
    return pb.RawGetResponse(value=v or b"", not_found=v is None)


def _raw_batch_get(
    h: KvHandler, ctx: RequestContext, r: pb.RawBatchGetRequest
) -> pb.RawBatchGetResponse:
    return pb.RawBatchGetResponse(pairs=_pairs(h.raw_batch_get(ctx, list(r.keys)).items()))


def _raw_put(h: KvHandler, ctx: RequestContext, r: pb.RawPutRequest) -> pb.RawPutResponse:
    h.raw_put(ctx, r.key, r.value, _ttl(r))
    return pb.RawPutResponse()


def _raw_batch_put(
    h: KvHandler, ctx: RequestContext, r: pb.RawBatchPutRequest
) -> pb.RawBatchPutResponse:
    h.raw_batch_put(ctx, [(p.key, p.value) for p in r.pairs], _ttl(r))
    return pb.RawBatchPutResponse()


def _raw_delete(h: KvHandler, ctx: RequestContext, r: pb.RawDeleteRequest) -> pb.RawDeleteResponse:
    h.raw_delete(ctx, r.key)
    return pb.RawDeleteResponse()


def _raw_scan(h: KvHandler, ctx: RequestContext, r: pb.RawScanRequest) -> pb.RawScanResponse:
    rows = h.raw_scan(ctx, r.start_key, r.end_key or None, _limit(r))
    return pb.RawScanResponse(kvs=_pairs(rows))


def _raw_delete_range(
    h: KvHandler, ctx: RequestContext, r: pb.RawDeleteRangeRequest
) -> pb.RawDeleteRangeResponse:
    h.raw_delete_range(ctx, r.start_key, r.end_key or None)
    return pb.RawDeleteRangeResponse()


def _read_index(h: KvHandler, ctx: RequestContext, r: pb.ReadIndexRequest) -> pb.ReadIndexResponse:
    return pb.ReadIndexResponse(read_index=h.read_index(ctx))


def _kv_import(h: KvHandler, ctx: RequestContext, r: pb.ImportRequest) -> pb.ImportResponse:
    pairs = [(p.key, p.value) for p in r.pairs]
    return pb.ImportResponse(written=h.kv_import(ctx, pairs, r.commit_version, r.table_id))


def _raw_cas(h: KvHandler, ctx: RequestContext, r: pb.RawCASRequest) -> pb.RawCASResponse:
    expected = None if r.previous_not_exist else r.previous_value
    ok, prev = h.raw_compare_and_swap(ctx, r.key, expected, r.value, _ttl(r))
    return pb.RawCASResponse(
        succeed=ok, previous_not_exist=prev is None, previous_value=prev or b""
    )


_IMPLS: dict[str, _Impl] = {
    "KvGet": _kv_get,
    "KvScan": _kv_scan,
    "KvBatchGet": _kv_batch_get,
    "KvPrewrite": _kv_prewrite,
    "KvCommit": _kv_commit,
    "KvBatchRollback": _kv_batch_rollback,
    "KvCheckTxnStatus": _kv_check_txn_status,
    "KvResolveLock": _kv_resolve_lock,
    "KvScanLock": _kv_scan_lock,
    "KvTxnHeartBeat": _kv_txn_heart_beat,
    "KvGC": _kv_gc,
    "RawGet": _raw_get,
    "RawBatchGet": _raw_batch_get,
    "RawPut": _raw_put,
    "RawBatchPut": _raw_batch_put,
    "RawDelete": _raw_delete,
    "RawScan": _raw_scan,
    "RawDeleteRange": _raw_delete_range,
    "RawCompareAndSwap": _raw_cas,
    "ReadIndex": _read_index,
    "KvImport": _kv_import,
}
if set(_IMPLS) != set(KV_METHODS):
    raise RuntimeError(f"Kv RPCs without an implementation: {set(KV_METHODS) - set(_IMPLS)}")


@dataclass(frozen=True, slots=True)
class _Abort:
    code: grpc.StatusCode
    details: str


class KvService:
    """The ``htapkv.tikvpb.Tikv`` servicer over a :class:`KvHandler`.

    Thread-safe; register it with :meth:`rpc_handler` (or use :func:`serve`).
    ``batch_workers`` threads run the requests of BatchCommands messages, in
    chunks of up to ``batch_chunk`` consecutive requests per task. A task per
    request costs more than a cheap request itself (the embedded store peaked
    at ~30k requests/s that way, ~88k/s with whole messages per task); chunks
    keep that gain while a handler that blocks (a Raft proposal waiting to
    commit) still gets ``len/batch_chunk``-fold concurrency per message — set
    ``batch_chunk=1`` for such a handler unless it batches by itself.
    """

    def __init__(
        self,
        handler: KvHandler,
        *,
        batch_workers: int = 8,
        batch_chunk: int = 16,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if batch_chunk < 1:
            raise ValueError("batch_chunk must be at least 1")
        self.handler = handler
        self.max_in_flight = max_in_flight
        self._in_flight: dict[str, int] = {}  # client connection -> requests running
        self._in_flight_mu = threading.Lock()
        self._batch_chunk = batch_chunk
        self._pool = ThreadPoolExecutor(batch_workers, thread_name_prefix="kv-batch")

    # ------------------------------------------------------------ core
    def execute(self, method: KvMethod, req: Message) -> Message:
        """Run one decoded request. KVErrors become response fields; any
        other exception propagates (a bug: the caller reports INTERNAL)."""
        try:
            ctx = context_from_pb(req.context)  # type: ignore[attr-defined]
            return _IMPLS[method.name](self.handler, ctx, req)
        except KVError as e:
            resp = method.response()
            set_error(resp, e)
            return resp

    @staticmethod
    def _malformed(method: KvMethod, e: Exception) -> Message:
        resp = method.response()
        set_error(resp, InvalidArgumentError(f"malformed {method.name} request: {e}"))
        return resp

    # ------------------------------------------------------------ limits
    def _admit(self, peer: str, n: int) -> bool:
        """Count ``n`` more requests in flight on connection ``peer``, unless
        that would pass :attr:`max_in_flight`."""
        with self._in_flight_mu:
            cur = self._in_flight.get(peer, 0)
            if cur + n > self.max_in_flight:
                return False
            self._in_flight[peer] = cur + n
            return True

    def _release(self, peer: str, n: int) -> None:
        with self._in_flight_mu:
            left = self._in_flight.get(peer, 0) - n
            if left > 0:
                self._in_flight[peer] = left
            else:
                self._in_flight.pop(peer, None)

    def _finish_batch(self, peer: str, n: int, complete: Callable[[], None]) -> None:
        self._release(peer, n)
        complete()

    def _too_many(self) -> str:
        return f"more than {self.max_in_flight} requests in flight on this connection"

    # ------------------------------------------------------------ unary
    def _unary(self, method: KvMethod) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def handle(data: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                req = method.request.FromString(data)
            except DecodeError as e:
                return self._malformed(method, e).SerializeToString()
            peer = context.peer()
            if not self._admit(peer, 1):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_many())
            try:
                resp = self.execute(method, req)
            except Exception as e:
                log.exception("%s failed", method.name)
                context.abort(grpc.StatusCode.INTERNAL, f"{method.name}: {type(e).__name__}: {e}")
                raise  # not reached: abort raises
            finally:
                self._release(peer, 1)
            return resp.SerializeToString()

        return handle

    # ------------------------------------------------------------ batch
    def _run_one(
        self, sub: tikvpb_pb2.BatchCommandsRequest.Request
    ) -> tikvpb_pb2.BatchCommandsResponse.Response:
        out = tikvpb_pb2.BatchCommandsResponse.Response()
        field = sub.WhichOneof("cmd")
        if field is None:
            out.status.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            out.status.message = "empty BatchCommands request"
            return out
        method = BY_BATCH_FIELD[field]
        try:
            resp = self.execute(method, getattr(sub, field))
        except Exception as e:
            log.exception("%s (batched) failed", method.name)
            out.status.code = grpc.StatusCode.INTERNAL.value[0]
            out.status.message = f"{method.name}: {type(e).__name__}: {e}"
            return out
        getattr(out, field).CopyFrom(resp)
        return out

    def _run_raw_puts(
        self, subs: list[tikvpb_pb2.BatchCommandsRequest.Request]
    ) -> list[tikvpb_pb2.BatchCommandsResponse.Response]:
        """Several RawPuts routed to the same Region with the same TTL, as
        one ``raw_batch_put``: one latch round, one Raft proposal, one apply
        (a write batch is atomic, and concurrent puts have no order to keep).
        The outcome, a Region error included, is every request's outcome."""
        first = subs[0].RawPut
        try:
            ctx = context_from_pb(first.context)
            self.handler.raw_batch_put(
                ctx, [(s.RawPut.key, s.RawPut.value) for s in subs], _ttl(first)
            )
        except Exception as e:
            return self._raw_put_outcome(len(subs), e)
        return self._raw_put_outcome(len(subs), None)

    @staticmethod
    def _raw_put_outcome(
        n: int, error: Exception | None
    ) -> list[tikvpb_pb2.BatchCommandsResponse.Response]:
        outs = [tikvpb_pb2.BatchCommandsResponse.Response() for _ in range(n)]
        if isinstance(error, KVError):
            for out in outs:
                set_error(out.RawPut, error)
        elif error is not None:
            log.error("RawPut (coalesced) failed", exc_info=error)
            for out in outs:
                out.status.code = grpc.StatusCode.INTERNAL.value[0]
                out.status.message = f"RawPut: {type(error).__name__}: {error}"
        else:
            for out in outs:
                out.RawPut.SetInParent()
        return outs

    def _start_raw_puts(
        self,
        subs: list[tikvpb_pb2.BatchCommandsRequest.Request],
        finish: Callable[[list[tikvpb_pb2.BatchCommandsResponse.Response]], None],
    ) -> bool:
        """Start :meth:`_run_raw_puts`'s work from this (the stream's reader)
        thread without waiting for it, if the handler can
        (``raw_batch_put_async``): ``finish`` gets the answers once the Raft
        round is done. No worker thread takes the request or waits on the
        round: at 1 in flight that is two thread hand-offs fewer. False: the
        caller must run it on the pool (no async path, or a latch is busy)."""
        put_async = getattr(self.handler, "raw_batch_put_async", None)
        if put_async is None:
            return False
        n = len(subs)

        def done(err: Exception | None) -> None:
            # The Raft driver thread: a few answers are built here; a big
            # group goes to the pool, so the driver gets back to Raft.
            if n <= ASYNC_INLINE_ANSWERS:
                finish(self._raw_put_outcome(n, err))
            else:
                self._pool.submit(lambda: finish(self._raw_put_outcome(n, err)))

        first = subs[0].RawPut
        try:
            ctx = context_from_pb(first.context)
            started: bool = put_async(
                ctx, [(s.RawPut.key, s.RawPut.value) for s in subs], _ttl(first), done
            )
        except Exception as e:  # refused before anything was proposed
            finish(self._raw_put_outcome(n, e))
            return True
        return started

    @staticmethod
    def _coalescable_puts(
        msg: tikvpb_pb2.BatchCommandsRequest,
    ) -> tuple[list[list[int]], list[int]]:
        """Split ``msg``'s requests into groups of valid RawPuts sharing a
        routing context and TTL and everything else."""
        groups: dict[bytes, list[int]] = {}
        rest: list[int] = []
        for i, sub in enumerate(msg.requests):
            if sub.WhichOneof("cmd") != "RawPut":
                rest.append(i)
                continue
            r = sub.RawPut
            try:  # an invalid one runs alone, to get its own error
                validate_key(r.key)
                validate_value(r.value)
            except KVError:
                rest.append(i)
                continue
            ttl = b"|%d|%d" % (r.HasField("ttl"), r.ttl)
            key = r.context.SerializeToString(deterministic=True) + ttl
            groups.setdefault(key, []).append(i)
        coalesced = []
        # A lone put is a group too: it can take the asynchronous path.
        coalesced = list(groups.values())
        return coalesced, rest

    def _start_batch(
        self,
        msg: tikvpb_pb2.BatchCommandsRequest,
        send: Callable[[bytes], None],
        complete: Callable[[], None],
    ) -> None:
        """Run the requests of ``msg`` on the pool. Each task's answers go
        out as soon as it finishes (``send`` gets a serialized response
        message naming its request ids), so a slow request never holds up
        the others of its message; ``complete`` is called after the last.
        RawPuts to one Region are coalesced into one task
        (:meth:`_run_raw_puts`); the rest run in chunks of up to
        ``batch_chunk`` consecutive requests."""
        coalesced, rest = self._coalescable_puts(msg)
        step = self._batch_chunk
        tasks: list[list[int]] = [*coalesced]
        tasks += [rest[lo : lo + step] for lo in range(0, len(rest), step)]
        remaining = [len(tasks)]  # counted before any task can finish
        mu = threading.Lock()

        def finish(idxs: list[int], outs: list[tikvpb_pb2.BatchCommandsResponse.Response]) -> None:
            reply = tikvpb_pb2.BatchCommandsResponse(request_ids=[msg.request_ids[i] for i in idxs])
            reply.responses.extend(outs)
            send(reply.SerializeToString())
            with mu:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                complete()

        def run(idxs: list[int], together: bool) -> None:
            if together:
                outs = self._run_raw_puts([msg.requests[i] for i in idxs])
            else:
                outs = [self._run_one(msg.requests[i]) for i in idxs]
            finish(idxs, outs)

        if not tasks:
            complete()
        for k, idxs in enumerate(tasks):
            together = k < len(coalesced)
            if together and self._start_raw_puts(
                [msg.requests[i] for i in idxs], functools.partial(finish, idxs)
            ):
                continue
            self._pool.submit(run, idxs, together)

    def _batch_commands(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        out: queue.SimpleQueue[bytes | _Abort | None] = queue.SimpleQueue()
        peer = context.peer()
        mu = threading.Lock()
        state = {"in_flight": 0, "reading": True}

        def complete() -> None:
            with mu:
                state["in_flight"] -= 1
                end = not state["reading"] and state["in_flight"] == 0
            if end:
                out.put(None)

        def reader() -> None:
            try:
                for data in request_iterator:
                    try:
                        msg = tikvpb_pb2.BatchCommandsRequest.FromString(data)
                    except DecodeError as e:
                        out.put(_Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed: {e}"))
                        return
                    if len(msg.request_ids) != len(msg.requests):
                        out.put(
                            _Abort(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                "request_ids and requests differ in length",
                            )
                        )
                        return
                    with mu:
                        state["in_flight"] += 1
                    n = len(msg.requests)
                    if not self._admit(peer, n):
                        # Refuse this message's requests, each with its own
                        # status; the stream and the requests already
                        # running carry on.
                        refused = tikvpb_pb2.BatchCommandsResponse(request_ids=msg.request_ids)
                        for _ in range(n):
                            r = refused.responses.add()
                            r.status.code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                            r.status.message = self._too_many()
                        out.put(refused.SerializeToString())
                        complete()
                        continue
                    self._start_batch(
                        msg, out.put, functools.partial(self._finish_batch, peer, n, complete)
                    )
            except Exception as e:  # the stream broke (cancelled, connection lost)
                log.debug("BatchCommands stream ended: %s", e)
            finally:
                with mu:
                    state["reading"] = False
                    end = state["in_flight"] == 0
                if end:
                    out.put(None)

        threading.Thread(target=reader, name="kv-batch-reader", daemon=True).start()
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, _Abort):
                context.abort(item.code, item.details)
                return
            yield item

    # ------------------------------------------------------------ wiring
    def rpc_handler(self) -> grpc.GenericRpcHandler:
        handlers: dict[str, grpc.RpcMethodHandler] = {
            m.name: grpc.unary_unary_rpc_method_handler(self._unary(m)) for m in KV_METHODS.values()
        }
        handlers[BATCH_COMMANDS] = grpc.stream_stream_rpc_method_handler(self._batch_commands)
        return grpc.method_handlers_generic_handler(KV_SERVICE, handlers)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class BoundServer(NamedTuple):
    """A started server and where it listens (``port`` is the real one, also
    when 0 was asked for)."""

    server: grpc.Server
    port: int
    address: str
    service: KvService

    def stop(self, grace: float | None = 1.0) -> None:
        self.server.stop(grace).wait()
        self.service.close()


def serve(
    handler: KvHandler,
    addr: str = "127.0.0.1:0",
    *,
    tso: Any = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 16,
    batch_workers: int = 8,
    batch_chunk: int = 16,
    tls: TlsConfig | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> BoundServer:
    """Start a gRPC server with the Kv service on ``handler`` (and PD's
    ``Tso`` if ``tso``, an object with ``get_ts(count)``, is given). Each
    unary call and each BatchCommands stream holds one of ``max_workers``
    threads while it runs. ``tls``: require mutual TLS. ``max_in_flight``:
    requests one client connection may have running at once; more are
    refused with RESOURCE_EXHAUSTED (each request of a BatchCommands message
    gets that status; the stream carries on)."""
    from kvstore.server.pd_service import TsoService

    service = KvService(
        handler, batch_workers=batch_workers, batch_chunk=batch_chunk, max_in_flight=max_in_flight
    )
    options: list[tuple[str, Any]] = [
        *channel_options(max_message_bytes),
        # Refuse a port another server already has, instead of sharing it.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(ThreadPoolExecutor(max_workers, "grpc"), options=options)
    server.add_generic_rpc_handlers((service.rpc_handler(),))
    if tso is not None:
        server.add_generic_rpc_handlers((TsoService(tso).rpc_handler(),))
    port = add_port(server, addr, tls)
    if port == 0:
        raise OSError(f"cannot bind {addr}")
    server.start()
    host = addr.rsplit(":", 1)[0]
    return BoundServer(server, port, f"{host}:{port}", service)


# --------------------------------------------------------------------------
# python -m kvstore.server.kv_service
# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--data-dir", help="RocksDB directory (omit with --memory)")
    p.add_argument("--memory", action="store_true", help="keep everything in memory")
    p.add_argument("--addr", default="127.0.0.1:0", help="host:port (port 0: any free one)")
    p.add_argument("--port-file", help="write the bound port here once serving")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--max-workers", type=int, default=16)
    p.add_argument("--batch-chunk", type=int, default=16, help="BatchCommands requests per task")
    p.add_argument("--no-durable", action="store_true", help="do not fsync commits")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from kvstore.storage import Engine, MemoryEngine, RocksEngine

    if not args.memory and not args.data_dir:
        p.error("give --data-dir or --memory")
    engine: Engine = MemoryEngine() if args.memory else RocksEngine(args.data_dir)
    store = EmbeddedStore(engine, durable=not args.no_durable)
    bound = serve(
        EmbeddedHandler(store),
        args.addr,
        tso=store,
        max_message_bytes=args.max_message_bytes,
        max_workers=args.max_workers,
        batch_chunk=args.batch_chunk,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.port_file:
        # Written whole, then renamed: a reader never sees a partial number.
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{bound.port}\n")
        os.replace(tmp, args.port_file)
    log.info("serving the Kv service on %s", bound.address)
    stop.wait()
    log.info("stopping")
    bound.stop(grace=1.0)
    store.close()


if __name__ == "__main__":
    main()
