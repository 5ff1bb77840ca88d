"""Timestamps over PD's ``Tso`` stream, with batching (TiKV client-go style).

:class:`TsoBatcher` keeps one long-lived ``Tso`` stream open. Concurrent
callers of :meth:`TsoBatcher.get_ts` do not each send a request: they queue,
and one dispatcher thread sends *one* request for the sum of their counts,
then hands each caller its own consecutive slice of the reserved range. So
N threads asking at once cost one round trip, not N (a gRPC stream carries
only ~10k messages/s, DESIGN.md §4).

Ordering: a caller that returns before another caller starts gets a smaller
timestamp (the second is served by a later request, and the PD leader's
oracle is strictly increasing and proves its leadership before answering).

Where requests go is the owner's business (``connect``): a fixed address
(:class:`~kvstore.client.grpc_backend.GrpcTsoBackend`) or the PD leader
(:class:`~kvstore.client.pd_client.PdClient`, which also retries on another
member after ``NOT_LEADER`` or a broken stream, under the caller's deadline).
A retried request is always safe: timestamps it reserved are just skipped.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from kvstore.errors import (
    ClosedError,
    InvalidArgumentError,
    KVError,
    PdNotLeaderError,
    PdUnavailableError,
)
from kvstore.proto import pdpb_pb2
from kvstore.proto.convert import pd_header_error
from kvstore.proto.rpc import TSO_PATH
from kvstore.types import compose_ts

log = logging.getLogger(__name__)

MAX_TSO_BATCH = 1 << 16  # per request; the server refuses more
ATTEMPT_TIMEOUT_S = 3.0  # one request on the stream; then the stream is dropped

# connect(refresh) -> (address, channel) of where to send; ``refresh`` says
# the previous target failed (find the leader again).
Connect = Callable[[bool], tuple[str, grpc.Channel]]


@dataclass(eq=False)
class _Waiter:
    count: int
    deadline: float
    event: threading.Event = field(default_factory=threading.Event)
    ts: int = 0
    error: BaseException | None = None


class _BrokenError(Exception):
    """The stream failed (transport error, or no answer in time)."""


class _Stream:
    """One open ``Tso`` call: requests go in through a queue, a reader thread
    puts each response (or the error that ended the call) on another."""

    _END = object()

    def __init__(self, addr: str, channel: grpc.Channel) -> None:
        self.addr = addr
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._responses: queue.SimpleQueue[object] = queue.SimpleQueue()
        method = channel.stream_stream(
            TSO_PATH,
            request_serializer=pdpb_pb2.TsoRequest.SerializeToString,
            response_deserializer=pdpb_pb2.TsoResponse.FromString,
        )
        self._call = method(self._iter_requests())
        threading.Thread(target=self._read, name="tso-stream-reader", daemon=True).start()

    def _iter_requests(self) -> Iterator[pdpb_pb2.TsoRequest]:
        while True:
            item = self._requests.get()
            if item is self._END:
                return
            assert isinstance(item, pdpb_pb2.TsoRequest)
            yield item

    def _read(self) -> None:
        try:
            for resp in self._call:
                self._responses.put(resp)
            self._responses.put(_BrokenError("stream ended"))
        except Exception as e:  # grpc.RpcError: cancelled, unavailable, ...
            self._responses.put(_BrokenError(str(e)))

    def roundtrip(self, req: pdpb_pb2.TsoRequest, timeout: float) -> pdpb_pb2.TsoResponse:
        self._requests.put(req)
        try:
            item = self._responses.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            raise _BrokenError(f"no Tso answer from {self.addr} in {timeout:.1f} s") from None
        if isinstance(item, _BrokenError):
            raise item
        assert isinstance(item, pdpb_pb2.TsoResponse)
        return item

    def close(self) -> None:
        self._requests.put(self._END)
        self._call.cancel()


class TsoBatcher:
    """Thread-safe. ``retry``: on ``NOT_LEADER`` or a broken stream, ask
    ``connect(True)`` for a new target and try again until the caller's
    deadline (else the first failure is the caller's error)."""

    def __init__(
        self,
        connect: Connect,
        *,
        timeout: float = 10.0,
        retry: bool = True,
        cluster_id: Callable[[], int] = lambda: 0,
        on_not_leader: Callable[[PdNotLeaderError], None] | None = None,
    ) -> None:
        self._connect = connect
        self.timeout = timeout
        self._retry = retry
        self._cluster_id = cluster_id
        self._on_not_leader = on_not_leader
        self._waiting: list[_Waiter] = []
        self._cv = threading.Condition()
        self._closed = False
        self._stream: _Stream | None = None
        self.requests_sent = 0  # how many stream requests served all callers
        self._thread = threading.Thread(target=self._run, name="tso-dispatcher", daemon=True)
        self._thread.start()

    def get_ts(self, count: int = 1) -> int:
        """Reserve ``count`` timestamps; return the largest."""
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_TSO_BATCH:
            raise InvalidArgumentError(f"count must be an int in 1..{MAX_TSO_BATCH}")
        w = _Waiter(count, time.monotonic() + self.timeout)
        with self._cv:
            if self._closed:
                raise ClosedError("TSO client closed")
            self._waiting.append(w)
            self._cv.notify()
        # The dispatcher always finishes a waiter (by its deadline at the
        # latest); the margin covers a request already on the wire.
        if not w.event.wait(self.timeout + ATTEMPT_TIMEOUT_S + 1.0):
            raise PdUnavailableError("no timestamp in time")
        if w.error is not None:
            raise w.error
        return w.ts

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=ATTEMPT_TIMEOUT_S + 2.0)

    # ------------------------------------------------------------ dispatcher
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._closed:
                    self._cv.wait()
                if self._closed:
                    batch, self._waiting = self._waiting, []
                    for w in batch:
                        w.error = ClosedError("TSO client closed")
                        w.event.set()
                    if self._stream is not None:
                        self._stream.close()
                    return
                batch, total = [], 0
                while self._waiting and total + self._waiting[0].count <= MAX_TSO_BATCH:
                    w = self._waiting.pop(0)
                    batch.append(w)
                    total += w.count
            try:
                self._serve(batch, total)
            except Exception as e:  # a bug: never leave callers hanging
                log.exception("TSO dispatcher failed")
                for w in batch:
                    if not w.event.is_set():
                        w.error = e
                        w.event.set()

    def _serve(self, batch: list[_Waiter], total: int) -> None:
        deadline = min(w.deadline for w in batch)
        refresh = False
        attempt = 0
        last_error: KVError | str = "no attempt made"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f"no timestamp before the deadline: {last_error}"
                self._fail(batch, PdUnavailableError(why))
                return
            try:
                if self._stream is None or refresh:
                    if self._stream is not None:
                        self._stream.close()
                        self._stream = None
                    addr, channel = self._connect(refresh)
                    self._stream = _Stream(addr, channel)
                req = pdpb_pb2.TsoRequest(count=total)
                req.header.cluster_id = self._cluster_id()
                self.requests_sent += 1
                resp = self._stream.roundtrip(req, min(remaining, ATTEMPT_TIMEOUT_S))
            except (_BrokenError, KVError) as e:
                last_error = e if isinstance(e, KVError) else str(e)
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None
                if not self._retry:
                    self._fail(batch, PdUnavailableError(f"Tso failed: {e}"))
                    return
                refresh = True
            else:
                err = pd_header_error(resp.header)
                if err is None:
                    last = compose_ts(resp.timestamp.physical, resp.timestamp.logical)
                    ts = last - total
                    for w in batch:
                        ts += w.count
                        w.ts = ts
                        w.event.set()
                    return
                if not (self._retry and isinstance(err, PdNotLeaderError)):
                    self._fail(batch, err)
                    return
                last_error = err
                if self._on_not_leader is not None:
                    self._on_not_leader(err)
                refresh = True
            attempt += 1
            # Exponential backoff with jitter, capped, within the deadline.
            pause = min(0.5, 0.01 * 2**attempt) * random.uniform(0.5, 1.0)
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _fail(batch: list[_Waiter], e: BaseException) -> None:
        for w in batch:
            w.error = e
            w.event.set()


__all__ = ["MAX_TSO_BATCH", "TsoBatcher"]
