"""Region routing: one :class:`~kvstore.client.backend.KvBackend` over a whole cluster.

:class:`RoutedKvBackend` sends each call to the leader of the Region that
holds its keys, over gRPC, with the routing context (Region id, epoch, peer)
the store checks. The ordinary :class:`~kvstore.client.Client` runs on top of
it unchanged::

    kv = RoutedKvBackend(["127.0.0.1:20160", "127.0.0.1:20161"])
    client = Client(kv, tso, on_close=kv.close)

Where Regions are learnt from is pluggable (:class:`RegionSource`). Until
there is a placement driver, :class:`DebugRegionSource` asks the stores
themselves (``Debug.GetRegions``) and merges their views; a PD-backed source
will answer the same two questions (which Region holds this key and who leads
it; where is store N).

The Region cache is keyed by *encoded* key (:func:`kvstore.codec.txn_key` /
:func:`~kvstore.codec.raw_key`), since Regions are ranges of encoded keys:
transactional and raw keys live in the same Regions, in different key spaces.

* Multi-key calls (``kv_batch_get``, ``kv_prewrite`` — the primary's Region
  first —, ``kv_commit``, ``kv_batch_rollback``, ``kv_resolve_lock`` with keys,
  raw batch calls) are split by Region; scans and range calls walk Region by
  Region across boundaries, honouring ``limit``.
* Region errors are handled here, never surfaced while the deadline lasts:
  ``NotLeader`` (go to the named leader, else try the other peers),
  ``EpochNotMatch`` (replace the cache entries with ``current_regions`` and
  re-split the keys), ``KeyNotInRegion``/``RegionNotFound`` (reload),
  ``ServerIsBusy`` (back off), a store that does not answer (gRPC
  ``UNAVAILABLE``/``DEADLINE_EXCEEDED``: try the other peers, reload).
  Backoff is exponential with jitter, under one total deadline per call.
* Unknown outcomes: ``ProposalDropped`` and a transport failure after a write
  may have left are *unknown outcome*. Idempotent writes are retried — every
  Percolator command is idempotent by design —; ``raw_compare_and_swap`` is
  not, and raises :class:`~kvstore.errors.UndeterminedError` instead. A write
  that may have been applied and still fails when the deadline passes raises
  ``UndeterminedError`` too: never report a maybe-applied write as failed.
  ``raw_put``, ``raw_batch_put``, ``raw_delete`` and ``raw_delete_range`` are
  retried by default (as TiKV's client does), which is *not* linearizable:
  the first attempt may still apply after the retry answered, and then after
  another client's later write, which it overwrites (``htapkv check`` caught
  exactly this across a leader kill). With ``raw_retry_unknown=False`` they
  raise ``UndeterminedError`` instead, and single-key raw operations are
  linearizable.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from kvstore import codec
from kvstore.client.backend import KvBackend
from kvstore.client.grpc_backend import GrpcKvBackend
from kvstore.errors import (
    ClosedError,
    EpochNotMatchError,
    InvalidArgumentError,
    KeyNotInRegionError,
    NotLeaderError,
    ProposalDroppedError,
    RegionError,
    RegionNotFoundError,
    ServerIsBusyError,
    UndeterminedError,
)
from kvstore.proto import debugpb_pb2
from kvstore.proto.convert import GcResult, RequestContext, region_from_pb
from kvstore.proto.rpc import channel_options
from kvstore.proto.tls import TlsConfig, make_channel
from kvstore.types import (
    LockInfo,
    Mutation,
    Region,
    TxnStatus,
    validate_limit,
    validate_range,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 20.0  # total, per call, retries included
DEFAULT_RPC_TIMEOUT_S = 6.0  # one attempt (a proposal times out after 5 s on the store)
DEBUG_SERVICE = debugpb_pb2.DESCRIPTOR.services_by_name["Debug"].full_name

# A store that restarts should be dialled again within a second, not after
# gRPC's default reconnect backoff (up to 120 s).
RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# Threads that run the per-Region parts of one call (a prewrite or batch read
# touching many Regions) at once.
FAN_OUT_THREADS = 16

# gRPC status codes that say "this store did not answer": try elsewhere.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def new_channel(addr: str, tls: TlsConfig | None = None) -> grpc.Channel:
    """A channel to a store or PD node, with the message limits of both ends,
    a short reconnect backoff, and mutual TLS if ``tls``. Every channel the
    client opens is made here."""
    return make_channel(addr, [*channel_options(), *RECONNECT_OPTIONS], tls)


# --------------------------------------------------------------------------
# Where Regions are learnt from
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RegionLocation:
    """A Region and the store believed to lead it (0: unknown)."""

    region: Region
    leader_store_id: int = 0


class RegionSource(Protocol):
    """Answers the routing questions; PD will implement it later."""

    def locate(self, encoded_key: bytes) -> list[RegionLocation]:
        """The Region that holds ``encoded_key`` (and, if cheap, others).
        Raises :class:`KVError` or :class:`grpc.RpcError` if it cannot tell."""
        ...

    def store_addr(self, store_id: int) -> str | None:
        """The Kv service address of store ``store_id`` (None: unknown)."""
        ...

    def close(self) -> None: ...


class DebugRegionSource:
    """A :class:`RegionSource` without PD: asks every known store for the
    Regions it hosts (``Debug.GetRegions``, in parallel) and merges the
    answers. Per Region the freshest epoch wins; its leader is the store that
    claims leadership at that epoch (if several do — a deposed leader that has
    not noticed yet — the one the other replicas name), else the leader the
    followers name. Stores are learnt from the answers too, so one reachable
    seed address is enough."""

    def __init__(
        self,
        store_addrs: Iterable[str],
        *,
        timeout: float = 1.0,
        straggler_wait: float = 0.1,
        tls: TlsConfig | None = None,
    ) -> None:
        self.tls = tls
        self.timeout = timeout
        self.straggler_wait = straggler_wait
        self._seeds = list(dict.fromkeys(store_addrs))
        if not self._seeds:
            raise InvalidArgumentError("at least one store address is needed")
        self._mu = threading.Lock()
        self._addrs: dict[int, str] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._closed = False

    def _get_regions(self, addr: str) -> grpc.Future:
        with self._mu:
            if self._closed:
                raise ClosedError("region source is closed")
            ch = self._channels.get(addr)
            if ch is None:
                ch = self._channels[addr] = new_channel(addr, self.tls)
        call = ch.unary_unary(
            f"/{DEBUG_SERVICE}/GetRegions",
            request_serializer=debugpb_pb2.GetRegionsRequest.SerializeToString,
            response_deserializer=debugpb_pb2.GetRegionsResponse.FromString,
        )
        fut: grpc.Future = call.future(debugpb_pb2.GetRegionsRequest(), timeout=self.timeout)
        return fut

    def load(self) -> list[RegionLocation]:
        """Every Region some reachable store hosts, merged. Once one store
        has answered, stragglers get :attr:`straggler_wait` more: a stopped
        store must not hold every reload up for the whole timeout."""
        with self._mu:
            addrs = list(dict.fromkeys([*self._addrs.values(), *self._seeds]))
        futures = [self._get_regions(a) for a in addrs]
        cv = threading.Condition()
        finished: list[grpc.Future] = []

        def on_done(f: grpc.Future) -> None:
            with cv:
                finished.append(f)
                cv.notify_all()

        for f in futures:
            f.add_done_callback(on_done)
        deadline = time.monotonic() + self.timeout
        first_answer: float | None = None
        with cv:
            while len(finished) < len(futures):
                now = time.monotonic()
                if first_answer is None and any(_answered(f) for f in finished):
                    first_answer = now
                if first_answer is not None:
                    deadline = min(deadline, first_answer + self.straggler_wait)
                if now >= deadline:
                    break
                cv.wait(deadline - now)
            done = list(finished)
        for f in futures:
            if f not in done:
                f.cancel()
        answers: list[debugpb_pb2.GetRegionsResponse] = []
        last_error: BaseException | None = None
        for f in done:
            if f.cancelled():
                raise ClosedError("region source is closed")
            err = f.exception()
            if err is None:
                answers.append(f.result())
            else:
                last_error = err
        if not answers:
            if isinstance(last_error, grpc.RpcError):
                raise last_error
            raise _SourceUnavailable(f"no store answered GetRegions ({last_error})")
        with self._mu:
            for a in answers:
                self._addrs.update({int(k): v for k, v in a.store_addrs.items()})
        return merge_views(answers)

    def locate(self, encoded_key: bytes) -> list[RegionLocation]:
        return self.load()

    def store_addr(self, store_id: int) -> str | None:
        with self._mu:
            return self._addrs.get(store_id)

    def close(self) -> None:
        with self._mu:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()


def _answered(f: grpc.Future) -> bool:
    return not f.cancelled() and f.exception() is None


class _SourceUnavailable(grpc.RpcError):  # type: ignore[misc]
    """No store answered in time: treated like an unreachable store."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


def merge_views(answers: Iterable[debugpb_pb2.GetRegionsResponse]) -> list[RegionLocation]:
    """Merge several stores' ``GetRegions`` answers (see
    :class:`DebugRegionSource`)."""
    views: dict[int, list[tuple[int, debugpb_pb2.RegionInfo, Region]]] = {}
    for a in answers:
        for info in a.regions:
            r = region_from_pb(info.region)
            views.setdefault(r.id, []).append((a.store_id, info, r))
    out = []
    for seen in views.values():
        fresh = max((r.epoch.version, r.epoch.conf_ver) for _, _, r in seen)
        current = [(s, i, r) for s, i, r in seen if (r.epoch.version, r.epoch.conf_ver) == fresh]
        region = current[0][2]
        named = Counter(i.leader_store_id for _, i, _ in seen if i.leader_store_id)
        claims = [s for s, i, _ in current if i.is_leader]
        leader = 0
        if len(claims) == 1:
            leader = claims[0]
        elif claims:
            ranked = sorted(claims, key=lambda s: named[s], reverse=True)
            if named[ranked[0]] > named[ranked[1]]:
                leader = ranked[0]
        elif named:
            leader = named.most_common(1)[0][0]
        out.append(RegionLocation(region, leader))
    return sorted(out, key=lambda loc: loc.region.start_key)


# --------------------------------------------------------------------------
# The Region cache
# --------------------------------------------------------------------------
class RegionCache:
    """Non-overlapping Regions ordered by start key, with their leaders.
    Thread-safe."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._starts: list[bytes] = []
        self._regions: list[Region] = []
        self._leaders: dict[int, int] = {}

    def get(self, encoded_key: bytes) -> RegionLocation | None:
        with self._mu:
            i = bisect.bisect_right(self._starts, encoded_key) - 1
            if i < 0 or not self._regions[i].contains(encoded_key):
                return None
            r = self._regions[i]
            return RegionLocation(r, self._leaders.get(r.id, 0))

    def insert(self, loc: RegionLocation) -> bool:
        """Cache ``loc``, dropping the entries it overlaps, unless one of them
        is newer (a higher epoch version: Regions that overlap descend from one
        another, and splits and merges only ever raise the version)."""
        r = loc.region
        with self._mu:
            overlap = [
                i
                for i, c in enumerate(self._regions)
                if (not r.end_key or c.start_key < r.end_key)
                and (not c.end_key or c.end_key > r.start_key)
            ]
            if any(self._regions[i].epoch.version > r.epoch.version for i in overlap):
                return False
            for i in reversed(overlap):
                old = self._regions.pop(i)
                del self._starts[i]
                if old.id != r.id:
                    self._leaders.pop(old.id, None)
            i = bisect.bisect_left(self._starts, r.start_key)
            self._starts.insert(i, r.start_key)
            self._regions.insert(i, r)
            if loc.leader_store_id:
                self._leaders[r.id] = loc.leader_store_id
            return True

    def invalidate(self, region_id: int) -> None:
        with self._mu:
            for i, c in enumerate(self._regions):
                if c.id == region_id:
                    del self._regions[i]
                    del self._starts[i]
                    break
            self._leaders.pop(region_id, None)

    def leader(self, region_id: int) -> int:
        with self._mu:
            return self._leaders.get(region_id, 0)

    def set_leader(self, region_id: int, store_id: int) -> None:
        with self._mu:
            if store_id:
                self._leaders[region_id] = store_id
            else:
                self._leaders.pop(region_id, None)

    def regions(self) -> list[Region]:
        with self._mu:
            return list(self._regions)


# --------------------------------------------------------------------------
# Key spaces
# --------------------------------------------------------------------------
def min_raw_at_or_after(encoded: bytes) -> bytes:
    """The smallest byte string ``s`` with ``codec.encode_bytes(s) >=
    encoded``. A Region boundary is an encoded key; a scan that continues into
    the next Region starts at the first user key the Region can hold (for a
    boundary that is itself an encoded key, that key)."""
    s = b""
    pos = 0
    group = codec.ENC_GROUP_SIZE
    while True:
        g = encoded[pos : pos + group + 1]
        if len(g) <= group:  # end of input, or a partial group
            return s + g.rstrip(b"\x00")
        data, marker = g[:group], g[group]
        if marker == codec.ENC_MARKER:
            s += data  # a full group: match it and go on
            pos += group + 1
            continue
        pad = codec.ENC_MARKER - marker
        real = group - pad
        if pad > group or data[max(real, 0) :] != codec.ENC_PAD[: group - max(real, 0)]:
            # No final group equals this one: the smallest that is greater.
            return s + data.rstrip(b"\x00")
        if pos + group + 1 == len(encoded):
            return s + data[:real]  # exactly the encoding of s + data[:real]
        return s + data[: real + 1]  # encoded is longer: the next string up


def _first_user_key(boundary: bytes, keyspace: bytes) -> bytes | None:
    """The first user key of ``keyspace`` whose encoding is ``>= boundary``;
    None if the key space ends before ``boundary``."""
    s = min_raw_at_or_after(boundary)
    if s[:1] < keyspace:
        return b""
    if s[:1] > keyspace:
        return None
    return s[1:]


@dataclass(frozen=True, slots=True)
class _Space:
    encode: Callable[[bytes], bytes]
    keyspace: bytes

    def end(self, user_end: bytes | None) -> bytes:
        """Encoded end of ``[start, user_end)`` (None: end of the key space)."""
        if user_end:
            return self.encode(user_end)
        return codec.encode_bytes(bytes((self.keyspace[0] + 1,)))


_TXN = _Space(codec.txn_key, codec.TXN_KEYSPACE)
_RAW = _Space(codec.raw_key, codec.RAW_KEYSPACE)


# --------------------------------------------------------------------------
# One call's retry state
# --------------------------------------------------------------------------
_REGROUP = object()  # the Region changed: split the keys again


@dataclass
class _Op:
    name: str
    write: bool
    idempotent: bool
    deadline: float
    rng: random.Random
    closed: threading.Event
    maybe_applied: bool = False
    last_error: BaseException | None = None
    backoffs: Counter[str] = field(default_factory=Counter)
    tried: dict[int, set[int]] = field(default_factory=dict)

    def fail(self) -> BaseException:
        """The error to raise once the deadline has passed."""
        err = self.last_error
        if self.write and self.maybe_applied:
            return UndeterminedError(
                f"{self.name}: outcome unknown (may have been applied; last error: {err})"
            )
        if err is None:
            return RegionError(f"{self.name}: no Region could serve the request in time")
        return err

    def backoff(self, kind: str, base_ms: float, cap_ms: float, floor_ms: float = 0) -> None:
        """Sleep (exponential, with jitter) before the next attempt; raise the
        final error if the deadline does not allow one."""
        n = self.backoffs[kind]
        self.backoffs[kind] += 1
        ms = max(floor_ms, min(cap_ms, base_ms * 2**n))
        delay = self.rng.uniform(ms / 2, ms) / 1000
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail()
        if self.closed.wait(min(delay, left)):
            raise ClosedError("backend closed")

    def check(self) -> None:
        if self.closed.is_set():
            raise ClosedError("backend closed")
        if time.monotonic() > self.deadline:
            raise self.fail()


class _ContextSlot(threading.local):
    ctx: RequestContext | None = None

    def get(self) -> RequestContext:
        assert self.ctx is not None, "a store stub was called outside a routed call"
        return self.ctx


def _not_sent(e: grpc.RpcError) -> bool:
    """A call that surely never reached the server (nothing to connect to)."""
    if e.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (e.details() or "").lower()
    return "failed to connect" in details or "connection refused" in details


# --------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------
_Call = Callable[[GrpcKvBackend], T]


class RoutedKvBackend(KvBackend):
    """:class:`~kvstore.client.backend.KvBackend` that routes every call to
    the leader of the right Region (see the module docstring). Thread-safe.

    ``store_addrs``: Kv addresses of some stores (seeds of the default
    :class:`DebugRegionSource`); ``source``: another :class:`RegionSource`.
    ``timeout``: total time per call, retries included; ``rpc_timeout``: one
    attempt. ``batching``: use BatchCommands streams to each store.
    """

    def __init__(
        self,
        store_addrs: Sequence[str] = (),
        *,
        source: RegionSource | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT_S,
        batching: bool = False,
        seed: int | None = None,
        tls: TlsConfig | None = None,
        raw_retry_unknown: bool = True,
    ) -> None:
        self.tls = tls
        self.raw_retry_unknown = raw_retry_unknown
        self.source: RegionSource = source or DebugRegionSource(store_addrs, tls=tls)
        self.timeout = timeout
        self.rpc_timeout = rpc_timeout
        self.cache = RegionCache()
        self._batching = batching
        self._rng = random.Random(seed)
        self._slot = _ContextSlot()
        self._mu = threading.Lock()
        self._load_mu = threading.Lock()
        self._stubs: dict[int, tuple[str, grpc.Channel, GrpcKvBackend]] = {}
        self._suspect: dict[int, float] = {}  # store id -> when it last failed to answer
        self._closed = threading.Event()
        # Per-Region requests of one call run in parallel here.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            FAN_OUT_THREADS, thread_name_prefix="kv-fan-out"
        )
        self.stats: Counter[str] = Counter()  # what the retries met, for tests and metrics

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close every channel; calls in progress fail with ClosedError."""
        self._closed.set()
        self._pool.shutdown(wait=True)
        with self._mu:
            stubs, self._stubs = list(self._stubs.values()), {}
        for _, ch, stub in stubs:
            stub.close()
            ch.close()
        self.source.close()

    def __enter__(self) -> RoutedKvBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, what: str) -> None:
        with self._mu:
            self.stats[what] += 1

    # ------------------------------------------------------------ routing
    def _new_op(self, name: str, *, write: bool, idempotent: bool = True) -> _Op:
        if self._closed.is_set():
            raise ClosedError("backend closed")
        return _Op(
            name, write, idempotent, time.monotonic() + self.timeout, self._rng, self._closed
        )

    def _stub(self, store_id: int) -> GrpcKvBackend:
        addr = self.source.store_addr(store_id)
        if addr is None:
            raise RegionNotFoundError(0)  # unknown store: reload and retry
        with self._mu:
            if self._closed.is_set():
                raise ClosedError("backend closed")
            entry = self._stubs.get(store_id)
            if entry is not None and entry[0] == addr:
                return entry[2]
            if entry is not None:  # the store moved: drop the old channel
                entry[2].close()
                entry[1].close()
            ch = new_channel(addr, self.tls)
            stub = GrpcKvBackend(
                addr,
                self._slot.get,
                batching=self._batching,
                timeout=self.rpc_timeout,
                channel=ch,
                max_in_flight=16,
            )
            self._stubs[store_id] = (addr, ch, stub)
            return stub

    def _reload(self, encoded_key: bytes, op: _Op, *, force: bool) -> None:
        with self._load_mu:
            if not force and self.cache.get(encoded_key) is not None:
                return
            self._count("reload")
            for loc in self.source.locate(encoded_key):
                self.cache.insert(loc)

    def _locate(self, encoded_key: bytes, op: _Op) -> RegionLocation:
        while True:
            op.check()
            loc = self.cache.get(encoded_key)
            if loc is not None:
                return loc
            try:
                self._reload(encoded_key, op, force=False)
            except grpc.RpcError as e:
                op.last_error = e
                op.backoff("source", 50, 1000)
                continue
            if self.cache.get(encoded_key) is None:
                op.backoff("no-region", 20, 500)

    def _pick_store(self, region: Region, op: _Op) -> int:
        tried = op.tried.setdefault(region.id, set())
        leader = self.cache.leader(region.id)
        if leader and leader not in tried and any(p.store_id == leader for p in region.peers):
            return leader
        voters = [p.store_id for p in region.peers if not p.is_learner]
        left = [s for s in voters if s not in tried]
        if not left:
            # Every peer refused or failed: an election is probably under
            # way. Wait a little, learn the Region afresh, start over.
            tried.clear()
            op.backoff("no-leader", 50, 1000)
            self._try_reload(region.start_key, op)
            left = voters
        now = time.monotonic()
        with self._mu:
            recent = {s for s, t in self._suspect.items() if now - t < 2.0}
        left.sort(key=lambda s: (s in recent, self._rng.random()))
        return left[0]

    def _try_reload(self, encoded_key: bytes, op: _Op) -> None:
        try:
            self._reload(encoded_key, op, force=True)
        except grpc.RpcError as e:
            op.last_error = e

    def _in_region(
        self, loc: RegionLocation, call: _Call[T], op: _Op, key: bytes | None = None
    ) -> T | object:
        """Run ``call`` on the leader of ``loc``'s Region, following the
        leader around. Returns the result, or ``_REGROUP`` when the Region is
        no longer what the cache said (the caller locates its keys again)."""
        region = loc.region
        key = region.start_key if key is None else key
        while True:
            op.check()
            current = self.cache.get(key)
            if current is None or current.region != region:
                return _REGROUP
            store_id = self._pick_store(region, op)
            peer = next(p for p in region.peers if p.store_id == store_id)
            try:
                stub = self._stub(store_id)
                self._slot.ctx = RequestContext(region.id, region.epoch, peer)
                try:
                    result = call(stub)
                finally:
                    self._slot.ctx = None
            except RegionError as e:
                op.last_error = e
                if self._on_region_error(e, region, store_id, op):
                    return _REGROUP
                continue
            except grpc.RpcError as e:
                op.last_error = e
                self._on_rpc_error(e, region, store_id, op)
                continue
            except ValueError:
                if self._closed.is_set():  # grpc: "Cannot invoke RPC on closed channel"
                    raise ClosedError("backend closed") from None
                raise
            self.cache.set_leader(region.id, store_id)
            with self._mu:
                self._suspect.pop(store_id, None)
            return result

    def _on_region_error(self, e: RegionError, region: Region, store_id: int, op: _Op) -> bool:
        """Handle a Region error; True if the keys must be regrouped."""
        self._count(type(e).__name__)
        tried = op.tried.setdefault(region.id, set())
        if isinstance(e, NotLeaderError):
            tried.add(store_id)
            named = e.leader_store_id
            if named and named != store_id and any(p.store_id == named for p in region.peers):
                self.cache.set_leader(region.id, named)
                tried.discard(named)
                if op.backoffs["redirect"] >= 3:  # bouncing between stores: slow down
                    op.backoff("redirect", 10, 500)
                else:
                    op.backoffs["redirect"] += 1
            else:
                # No leader known (election), or the store names itself (a
                # leader not ready yet): ask the others, then wait.
                self.cache.set_leader(region.id, 0)
                if named == store_id:
                    op.backoff("not-ready", 10, 200)
            return False
        if isinstance(e, EpochNotMatchError):
            inserted = False
            for r in e.current_regions:
                if isinstance(r, Region):
                    # The store answered as the leader of the Region asked
                    # about; of the others it may be a mere follower.
                    leader = store_id if r.id == e.region_id else 0
                    inserted |= self.cache.insert(RegionLocation(r, leader))
            if not inserted:
                self.cache.invalidate(region.id)
            # The first re-route is immediate; a Region that keeps changing
            # under us (or a store that keeps answering so) is waited for.
            if not inserted or op.backoffs["epoch-seen"] >= 2:
                op.backoff("epoch", 10, 500)
            op.backoffs["epoch-seen"] += 1
            return True
        if isinstance(e, (KeyNotInRegionError, RegionNotFoundError)):
            self.cache.invalidate(region.id)
            op.backoff("region-miss", 10, 500)
            self._try_reload(region.start_key, op)
            return True
        if isinstance(e, ServerIsBusyError):
            op.backoff("busy", 20, 2000, floor_ms=e.backoff_ms)
            return False
        if isinstance(e, ProposalDroppedError):
            if op.write:
                op.maybe_applied = True
                if not op.idempotent:
                    raise UndeterminedError(
                        f"{op.name}: outcome unknown (region {e.region_id}: {e.reason})"
                    ) from e
            # The leader may be deposed or cut off: let the others speak too.
            tried.add(store_id)
            self.cache.set_leader(region.id, 0)
            op.backoff("dropped", 20, 1000)
            return False
        # Any other Region error (data not ready, ...): refresh and retry.
        self.cache.invalidate(region.id)
        op.backoff("region", 20, 1000)
        return True

    def _on_rpc_error(self, e: grpc.RpcError, region: Region, store_id: int, op: _Op) -> None:
        code = e.code()
        self._count(f"rpc-{code.name}" if code is not None else "rpc")
        if code == grpc.StatusCode.CANCELLED and self._closed.is_set():
            raise ClosedError("backend closed") from e
        if code not in _UNREACHABLE:
            raise e  # a server bug or a refused message: not for retrying
        if op.write and not _not_sent(e):
            op.maybe_applied = True
            if not op.idempotent:
                raise UndeterminedError(f"{op.name}: outcome unknown ({code})") from e
        with self._mu:
            self._suspect[store_id] = time.monotonic()
        op.tried.setdefault(region.id, set()).add(store_id)
        if self.cache.leader(region.id) == store_id:
            self.cache.set_leader(region.id, 0)
        op.backoff("unreachable", 20, 1000)

    # ------------------------------------------------------------ call shapes
    def _one(self, encoded_key: bytes, call: _Call[T], op: _Op) -> T:
        while True:
            loc = self._locate(encoded_key, op)
            out = self._in_region(loc, call, op, encoded_key)
            if out is not _REGROUP:
                return out  # type: ignore[return-value]

    def _grouped(
        self,
        keys: Sequence[T],
        encode: Callable[[T], bytes],
        call: Callable[[GrpcKvBackend, list[T]], Any],
        op: _Op,
        first: bytes | None = None,
    ) -> list[Any]:
        """Split ``keys`` by Region and run ``call`` once per Region: the
        Region holding encoded key ``first`` alone first (a prewrite's primary
        must be locked before any secondary), then the others in parallel.
        Results in Region order."""
        results: list[Any] = []
        pending = list(keys)
        while pending:
            groups: dict[int, tuple[RegionLocation, list[T]]] = {}
            for k in pending:
                loc = self._locate(encode(k), op)
                groups.setdefault(loc.region.id, (loc, []))[1].append(k)
            order = sorted(
                groups.values(),
                key=lambda g: (
                    first is None or not g[0].region.contains(first),
                    g[0].region.start_key,
                ),
            )
            pending = []
            if first is not None and order[0][0].region.contains(first):
                head, order = order[:1], order[1:]
            else:
                head = []
            for loc, ks in head:
                out = self._in_region(loc, _bind(call, ks), op, encode(ks[0]))
                if out is _REGROUP:
                    pending.extend(ks)
                else:
                    results.append(out)
            for (_, ks), out in zip(order, self._fan_out(order, encode, call, op), strict=True):
                if out is _REGROUP:
                    pending.extend(ks)
                else:
                    results.append(out)
        return results

    def _fan_out(
        self,
        groups: list[tuple[RegionLocation, list[T]]],
        encode: Callable[[T], bytes],
        call: Callable[[GrpcKvBackend, list[T]], Any],
        op: _Op,
    ) -> list[Any]:
        """Run one call per Region group, in parallel when there are several;
        each gets its own retry state under the same deadline. The first
        error is raised once every group has finished (none is left running
        behind the caller's back)."""
        if len(groups) <= 1:
            return [self._in_region(loc, _bind(call, ks), op, encode(ks[0])) for loc, ks in groups]
        subs = [
            dataclasses.replace(
                op, backoffs=Counter(), tried={}, rng=random.Random(op.rng.random())
            )
            for _ in groups
        ]
        futures = [
            self._pool.submit(self._in_region, loc, _bind(call, ks), sub, encode(ks[0]))
            for (loc, ks), sub in zip(groups, subs, strict=True)
        ]
        concurrent.futures.wait(futures)
        for sub in subs:
            op.maybe_applied |= sub.maybe_applied
            op.last_error = sub.last_error or op.last_error
        for f in futures:
            err = f.exception()
            if err is not None:
                raise err
        return [f.result() for f in futures]

    def _walk(
        self,
        space: _Space,
        start: bytes,
        end: bytes | None,
        call: Callable[[GrpcKvBackend, bytes, int | None], list[Any]],
        op: _Op,
        limit: int | None = None,
    ) -> list[Any]:
        """Run ``call(stub, region_start, remaining)`` Region by Region over
        ``[start, end)`` of ``space``, concatenating the results until
        ``limit`` items."""
        out: list[Any] = []
        end_enc = space.end(end)
        cur: bytes | None = start
        while cur is not None:
            cur_enc = space.encode(cur)
            if cur_enc >= end_enc or (limit is not None and len(out) >= limit):
                break
            loc = self._locate(cur_enc, op)
            remaining = None if limit is None else limit - len(out)
            rows = self._in_region(loc, _bind(call, cur, remaining), op, cur_enc)
            if rows is _REGROUP:
                continue
            assert isinstance(rows, list)
            out.extend(rows)
            boundary = loc.region.end_key
            if not boundary or boundary >= end_enc:
                break
            cur = _first_user_key(boundary, space.keyspace)
        return out if limit is None else out[:limit]

    # ------------------------------------------------------------ transactional
    def kv_get(self, key: bytes, version: int, bypass_locks: Collection[int] = ()) -> bytes | None:
        op = self._new_op("kv_get", write=False)
        return self._one(
            _encode_key(codec.txn_key, key), lambda s: s.kv_get(key, version, bypass_locks), op
        )

    def kv_batch_get(
        self, keys: Sequence[bytes], version: int, bypass_locks: Collection[int] = ()
    ) -> dict[bytes, bytes]:
        keys = _key_list(keys, allow_empty=True)
        op = self._new_op("kv_batch_get", write=False)
        out: dict[bytes, bytes] = {}
        for part in self._grouped(
            keys, codec.txn_key, lambda s, ks: s.kv_batch_get(ks, version, bypass_locks), op
        ):
            out.update(part)
        return out

    def kv_scan(
        self,
        start: bytes,
        end: bytes | None,
        version: int,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]:
        start, end = validate_range(start, end)
        limit = validate_limit(limit)
        if limit == 0:
            return []
        op = self._new_op("kv_scan", write=False)
        return self._walk(
            _TXN,
            start,
            end,
            lambda s, lo, n: s.kv_scan(lo, end, version, n, bypass_locks),
            op,
            limit,
        )

    def kv_prewrite(
        self,
        mutations: Sequence[Mutation],
        primary: bytes,
        start_ts: int,
        lock_ttl: int,
        txn_size: int = 0,
        min_commit_ts: int = 0,
    ) -> list[LockInfo]:
        if not isinstance(mutations, (list, tuple)) or not mutations:
            raise InvalidArgumentError("prewrite needs a non-empty list of mutations")
        for m in mutations:
            if not isinstance(m, Mutation) or not isinstance(m.key, bytes):
                raise InvalidArgumentError("mutations must be Mutation records")
        if not isinstance(primary, bytes):
            raise InvalidArgumentError("the primary key must be bytes")
        op = self._new_op("kv_prewrite", write=True)
        parts = self._grouped(
            list(mutations),
            lambda m: codec.txn_key(m.key),
            lambda s, ms: s.kv_prewrite(ms, primary, start_ts, lock_ttl, txn_size, min_commit_ts),
            op,
            first=codec.txn_key(primary),
        )
        return [lock for part in parts for lock in part]

    def kv_commit(self, keys: Sequence[bytes], start_ts: int, commit_ts: int) -> None:
        keys = _key_list(keys)
        op = self._new_op("kv_commit", write=True)
        self._grouped(keys, codec.txn_key, lambda s, ks: s.kv_commit(ks, start_ts, commit_ts), op)

    def kv_batch_rollback(self, keys: Sequence[bytes], start_ts: int) -> None:
        keys = _key_list(keys)
        op = self._new_op("kv_batch_rollback", write=True)
        self._grouped(keys, codec.txn_key, lambda s, ks: s.kv_batch_rollback(ks, start_ts), op)

    def kv_check_txn_status(
        self,
        primary: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool = True,
    ) -> TxnStatus:
        op = self._new_op("kv_check_txn_status", write=True)
        return self._one(
            _encode_key(codec.txn_key, primary),
            lambda s: s.kv_check_txn_status(
                primary, lock_ts, caller_start_ts, current_ts, rollback_if_not_exist
            ),
            op,
        )

    def kv_resolve_lock(
        self, start_ts: int, commit_ts: int, keys: Sequence[bytes] | None = None
    ) -> int:
        op = self._new_op("kv_resolve_lock", write=True)
        if keys is None:  # every lock of the transaction: every Region
            counts = self._walk(
                _TXN, b"", None, lambda s, _lo, _n: [s.kv_resolve_lock(start_ts, commit_ts)], op
            )
            return sum(counts)
        parts = self._grouped(
            _key_list(keys),
            codec.txn_key,
            lambda s, ks: s.kv_resolve_lock(start_ts, commit_ts, ks),
            op,
        )
        return sum(parts)

    def kv_scan_lock(
        self, max_ts: int, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[LockInfo]:
        start, end = validate_range(start, end)
        limit = validate_limit(limit)
        if limit == 0:
            return []
        op = self._new_op("kv_scan_lock", write=False)
        return self._walk(
            _TXN, start, end, lambda s, lo, n: s.kv_scan_lock(max_ts, lo, end, n), op, limit
        )

    def kv_txn_heart_beat(self, primary: bytes, start_ts: int, advise_ttl: int) -> int:
        op = self._new_op("kv_txn_heart_beat", write=True)
        return self._one(
            _encode_key(codec.txn_key, primary),
            lambda s: s.kv_txn_heart_beat(primary, start_ts, advise_ttl),
            op,
        )

    def kv_gc(self, safe_point: int) -> GcResult:
        op = self._new_op("kv_gc", write=True)
        parts: list[GcResult] = self._walk(
            _TXN, b"", None, lambda s, _lo, _n: [s.kv_gc(safe_point)], op
        )
        return GcResult(sum(p.keys_scanned for p in parts), sum(p.versions_removed for p in parts))

    def kv_import(self, pairs: Sequence[tuple[bytes, bytes]], commit_ts: int, table_id: int) -> int:
        """Send ``pairs`` to the leaders of their Regions, one request per
        Region, in parallel; a Region that split meanwhile (EpochNotMatch)
        has its part split again and resent. An import writes the same
        records however often it is sent, so every retry is safe."""
        if not isinstance(pairs, (list, tuple)) or not pairs:
            raise InvalidArgumentError("import needs a non-empty list of (key, value) pairs")
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], bytes):
                raise InvalidArgumentError("import takes (key, value) pairs of bytes")
        op = self._new_op("kv_import", write=True)
        # Sorted by user key, a Region's keys are one slice: cut it at the
        # Region's end with one bisection instead of locating every key.
        pending = sorted(pairs, key=lambda p: p[0])
        written = 0
        while pending:
            groups: list[tuple[RegionLocation, list[tuple[bytes, bytes]]]] = []
            i = 0
            while i < len(pending):
                loc = self._locate(codec.txn_key(pending[i][0]), op)
                bound = (
                    _first_user_key(loc.region.end_key, _TXN.keyspace)
                    if loc.region.end_key
                    else None
                )
                j = (
                    len(pending)
                    if bound is None
                    else bisect.bisect_left(pending, bound, lo=i + 1, key=lambda p: p[0])
                )
                groups.append((loc, pending[i:j]))
                i = j
            outs = self._fan_out(
                groups,
                lambda p: codec.txn_key(p[0]),
                lambda s, ps: s.kv_import(ps, commit_ts, table_id),
                op,
            )
            pending = []
            for (_, ps), out in zip(groups, outs, strict=True):
                if out is _REGROUP:
                    pending.extend(ps)
                else:
                    written += out
        return written

    # ------------------------------------------------------------ raw
    def raw_get(self, key: bytes) -> bytes | None:
        op = self._new_op("raw_get", write=False)
        return self._one(_encode_key(codec.raw_key, key), lambda s: s.raw_get(key), op)

    def raw_batch_get(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        keys = _key_list(keys, allow_empty=True)
        op = self._new_op("raw_batch_get", write=False)
        out: dict[bytes, bytes] = {}
        for part in self._grouped(keys, codec.raw_key, lambda s, ks: s.raw_batch_get(ks), op):
            out.update(part)
        return out

    def raw_put(self, key: bytes, value: bytes, ttl: int | None = None) -> None:
        op = self._new_op("raw_put", write=True, idempotent=self.raw_retry_unknown)
        self._one(_encode_key(codec.raw_key, key), lambda s: s.raw_put(key, value, ttl), op)

    def raw_batch_put(self, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None) -> None:
        checked: list[tuple[bytes, bytes]] = []
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], bytes):
                raise InvalidArgumentError("batch_put takes (key, value) pairs")
            checked.append(pair)
        if not checked:
            return
        op = self._new_op("raw_batch_put", write=True, idempotent=self.raw_retry_unknown)
        self._grouped(
            checked, lambda p: codec.raw_key(p[0]), lambda s, ps: s.raw_batch_put(ps, ttl), op
        )

    def raw_delete(self, key: bytes) -> None:
        op = self._new_op("raw_delete", write=True, idempotent=self.raw_retry_unknown)
        self._one(_encode_key(codec.raw_key, key), lambda s: s.raw_delete(key), op)

    def raw_scan(
        self, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        start, end = validate_range(start, end)
        limit = validate_limit(limit)
        if limit == 0:
            return []
        op = self._new_op("raw_scan", write=False)
        return self._walk(_RAW, start, end, lambda s, lo, n: s.raw_scan(lo, end, n), op, limit)

    def raw_delete_range(self, start: bytes, end: bytes | None) -> None:
        start, end = validate_range(start, end)
        if end is not None and end <= start:
            raise InvalidArgumentError("delete_range needs start < end")
        op = self._new_op("raw_delete_range", write=True, idempotent=self.raw_retry_unknown)

        def delete(s: GrpcKvBackend, lo: bytes, _n: int | None) -> list[None]:
            s.raw_delete_range(lo, end)
            return []

        self._walk(_RAW, start, end, delete, op)

    def raw_compare_and_swap(
        self, key: bytes, expected: bytes | None, new: bytes, ttl: int | None = None
    ) -> tuple[bool, bytes | None]:
        op = self._new_op("raw_compare_and_swap", write=True, idempotent=False)
        return self._one(
            _encode_key(codec.raw_key, key),
            lambda s: s.raw_compare_and_swap(key, expected, new, ttl),
            op,
        )


def _bind(fn: Callable[..., T], *args: Any) -> Callable[[GrpcKvBackend], T]:
    """``stub -> fn(stub, *args)``, with ``args`` bound now (not when called)."""
    return lambda stub: fn(stub, *args)


def _key_list(keys: object, *, allow_empty: bool = False) -> list[bytes]:
    # Same checks as the single-store stub: a bad list fails before routing.
    if not isinstance(keys, (list, tuple)) or not (keys or allow_empty):
        raise InvalidArgumentError("expected a non-empty list of keys")
    for k in keys:
        if not isinstance(k, bytes):
            raise InvalidArgumentError(f"keys must be bytes, not {type(k).__name__}")
    return list(keys)


def _encode_key(encode: Callable[[bytes], bytes], key: object) -> bytes:
    if not isinstance(key, bytes):
        raise InvalidArgumentError(f"keys must be bytes, not {type(key).__name__}")
    return encode(key)


__all__ = [
    "DebugRegionSource",
    "RegionCache",
    "RegionLocation",
    "RegionSource",
    "RoutedKvBackend",
    "merge_views",
    "min_raw_at_or_after",
    "new_channel",
]
