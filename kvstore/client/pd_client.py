"""The placement driver's client: :class:`PdClient`.

One object per process talks to a PD cluster of 1 or 3 members::

    pd = PdClient(["127.0.0.1:2379", "127.0.0.1:2382", "127.0.0.1:2385"])
    ts = pd.get_ts()                      # a TsoBackend: Client(kv, pd)
    region, leader_store = pd.get_region(codec.txn_key(b"k"))

Leader finding: only the PD leader answers. The client asks ``GetMembers``
of the members it knows (the leader it last used first), follows a
follower's ``NOT_LEADER`` to the leader it names, and learns every member's
client address from the answer, so one reachable seed address is enough.
A call that meets ``NOT_LEADER`` or an unreachable member (gRPC
``UNAVAILABLE``/``DEADLINE_EXCEEDED``) is retried on another member, with
exponential backoff and jitter, until the client's ``timeout`` (per call)
has passed; then it raises :class:`~kvstore.errors.PdUnavailableError`.
Retrying is safe for every PD request: allocations (ids, timestamps) made
by an attempt whose answer was lost are skipped, never handed out twice;
the rest are idempotent.

Timestamps go through one long-lived ``Tso`` stream to the leader,
concurrent callers batched into one request
(:class:`~kvstore.client.tso.TsoBatcher`).

Types: Regions in and out are :class:`~kvstore.types.Region` (keys are
*encoded* keys, :mod:`kvstore.codec`); stores, store statistics and Region
heartbeats are their protobuf messages (``metapb.Store``,
``pdpb.StoreStats``, ``pdpb.RegionHeartbeatRequest``/``Response``), because
their consumers (the store process) fill and read them field by field.

Thread-safe. Channels come from :func:`kvstore.client.routing.new_channel`
(the one place where TLS will be added).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import grpc
from google.protobuf.message import Message

from kvstore.client.routing import new_channel
from kvstore.client.tso import ATTEMPT_TIMEOUT_S, TsoBatcher
from kvstore.errors import (
    ClosedError,
    InvalidArgumentError,
    PdError,
    PdNotLeaderError,
    PdUnavailableError,
)
from kvstore.proto import metapb_pb2, pdpb_pb2
from kvstore.proto.convert import (
    encoding_error,
    member_from_pb,
    pd_header_error,
    region_from_pb,
    region_to_pb,
)
from kvstore.proto.rpc import PD_SERVICE
from kvstore.proto.tls import TlsConfig
from kvstore.types import PdMember, Region

_UNREACHABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
_METHODS = {m.name: m for m in pdpb_pb2.DESCRIPTOR.services_by_name["PD"].methods}

RegionAndLeader = tuple[Region, int | None]


def _req(cls: type[Any], **fields: Any) -> Any:
    """Build a request; a value protobuf refuses is the caller's mistake."""
    try:
        return cls(**fields)
    except (ValueError, TypeError) as e:
        raise encoding_error(e) from None


class PdClient:
    def __init__(
        self, addrs: list[str], *, timeout: float = 10.0, tls: TlsConfig | None = None
    ) -> None:
        if not addrs:
            raise InvalidArgumentError("PdClient needs at least one PD address")
        self.timeout = timeout
        self.tls = tls
        self._lock = threading.Lock()
        self._addrs: list[str] = list(dict.fromkeys(addrs))
        self._leader: str | None = None
        self._tso_addr: str | None = None
        self._cluster_id = 0
        self._members: list[PdMember] = []
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._closed = False
        self._tso = TsoBatcher(
            self._tso_connect,
            timeout=timeout,
            retry=True,
            cluster_id=lambda: self._cluster_id,
            on_not_leader=self._follow,
        )

    # ------------------------------------------------------------ plumbing
    def _stub(self, addr: str, name: str) -> Any:
        with self._lock:
            if self._closed:
                raise ClosedError("PD client closed")
            stub = self._stubs.get((addr, name))
            if stub is None:
                ch = self._channels.get(addr)
                if ch is None:
                    ch = self._channels[addr] = new_channel(addr, self.tls)
                m = _METHODS[name]
                stub = ch.unary_unary(
                    f"/{PD_SERVICE}/{name}",
                    request_serializer=lambda r: r.SerializeToString(),
                    response_deserializer=getattr(pdpb_pb2, m.output_type.name).FromString,
                )
                self._stubs[(addr, name)] = stub
            return stub

    def _follow(self, e: PdNotLeaderError) -> None:
        """A member said it is not the leader: go where it points, if anywhere."""
        with self._lock:
            self._leader = e.leader_addr or None
            if e.leader_addr and e.leader_addr not in self._addrs:
                self._addrs.append(e.leader_addr)

    def _candidates(self) -> list[str]:
        with self._lock:
            first = [self._leader] if self._leader else []
            return first + [a for a in self._addrs if a != self._leader]

    def _find_leader(self, deadline: float) -> str:
        """Ask the known members who leads; returns the leader's address."""
        tried: set[str] = set()
        todo = self._candidates()
        last: object = "no member answered"
        while todo and time.monotonic() < deadline:
            addr = todo.pop(0)
            if addr in tried:
                continue
            tried.add(addr)
            req = pdpb_pb2.GetMembersRequest()
            req.header.cluster_id = self._cluster_id
            try:
                resp = self._stub(addr, "GetMembers")(
                    req, timeout=max(0.01, min(ATTEMPT_TIMEOUT_S, deadline - time.monotonic()))
                )
            except grpc.RpcError as e:
                last = f"{addr}: {e.code()}"
                continue
            err = pd_header_error(resp.header)
            if isinstance(err, PdNotLeaderError):
                last = err
                if err.leader_addr:
                    todo.insert(0, err.leader_addr)
                continue
            if err is not None:
                raise err
            self._learn(addr, resp)
            return addr
        raise PdUnavailableError(f"no PD leader found among {sorted(tried)}: {last}")

    def _learn(self, leader: str, resp: pdpb_pb2.GetMembersResponse) -> None:
        with self._lock:
            self._leader = leader
            if resp.header.cluster_id:
                self._cluster_id = resp.header.cluster_id
            self._members = [member_from_pb(m) for m in resp.members]
            for m in self._members:
                if m.client_addr and m.client_addr not in self._addrs:
                    self._addrs.append(m.client_addr)

    def _call(self, name: str, req: Any) -> Any:
        """Send ``req`` to the PD leader (finding it, retrying elsewhere on
        NOT_LEADER or an unreachable member, under ``timeout``); returns the
        response or raises the header's error."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        last: object = "no attempt"
        while True:
            try:
                addr = self._leader or self._find_leader(deadline)
                req.header.cluster_id = self._cluster_id
                remaining = deadline - time.monotonic()
                resp = self._stub(addr, name)(
                    req, timeout=max(0.01, min(ATTEMPT_TIMEOUT_S, remaining))
                )
            except grpc.RpcError as e:
                if e.code() not in _UNREACHABLE:
                    raise PdError(f"{name}: {e.code()}: {e.details()}") from e
                with self._lock:
                    self._leader = None
                last = f"{e.code()}"
            except PdUnavailableError as e:
                last = e
            else:
                err = pd_header_error(resp.header)
                if err is None:
                    if resp.header.cluster_id:
                        self._cluster_id = resp.header.cluster_id
                    return resp
                if not isinstance(err, PdNotLeaderError):
                    raise err
                self._follow(err)
                last = err
            attempt += 1
            pause = min(0.5, 0.01 * 2**attempt) * random.uniform(0.5, 1.0)
            if time.monotonic() + pause >= deadline:
                why = f"{name}: no PD leader answered in {self.timeout} s: {last}"
                raise PdUnavailableError(why)
            time.sleep(pause)

    def _tso_connect(self, refresh: bool) -> tuple[str, grpc.Channel]:
        with self._lock:
            if refresh and self._leader == self._tso_addr:
                self._leader = None  # the stream's target failed and named no one
        addr = self._leader or self._find_leader(time.monotonic() + self.timeout)
        self._tso_addr = addr
        self._stub(addr, "GetMembers")  # makes sure the channel exists
        with self._lock:
            return addr, self._channels[addr]

    # ------------------------------------------------------------ members, TSO
    @property
    def cluster_id(self) -> int:
        if not self._cluster_id:
            self._find_leader(time.monotonic() + self.timeout)
        return self._cluster_id

    def members(self) -> tuple[list[PdMember], PdMember | None]:
        """Every PD member (``client_addr`` empty until the member announced
        it) and the leader."""
        resp = self._call("GetMembers", pdpb_pb2.GetMembersRequest())
        leader = member_from_pb(resp.leader) if resp.HasField("leader") else None
        return [member_from_pb(m) for m in resp.members], leader

    def get_ts(self, count: int = 1) -> int:
        """Reserve ``count`` timestamps; return the largest (TsoBackend)."""
        return self._tso.get_ts(count)

    def tso(self, count: int = 1) -> int:
        """Same as :meth:`get_ts`."""
        return self._tso.get_ts(count)

    # ------------------------------------------------------------ bootstrap, ids
    def is_bootstrapped(self) -> bool:
        return bool(self._call("IsBootstrapped", pdpb_pb2.IsBootstrappedRequest()).bootstrapped)

    def bootstrap(self, store: metapb_pb2.Store, region: Region) -> None:
        """Create the cluster with its first store and Region. Raises
        :class:`~kvstore.errors.AlreadyBootstrappedError` if another first
        Region won; a retry of our own successful bootstrap succeeds."""
        req = _req(pdpb_pb2.BootstrapRequest, store=store, region=region_to_pb(region))
        self._call("Bootstrap", req)

    def alloc_id(self, count: int = 1) -> int:
        """``count`` fresh consecutive ids (never handed out before, by any
        PD leader); returns the first."""
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise InvalidArgumentError("count must be a positive int")
        resp = self._call("AllocID", _req(pdpb_pb2.AllocIDRequest, count=count))
        return int(resp.id)

    # ------------------------------------------------------------ stores
    def put_store(self, store: metapb_pb2.Store) -> None:
        self._call("PutStore", _req(pdpb_pb2.PutStoreRequest, store=store))

    def get_store(self, store_id: int) -> metapb_pb2.Store | None:
        resp = self._call("GetStore", _req(pdpb_pb2.GetStoreRequest, store_id=store_id))
        return resp.store if resp.HasField("store") else None

    def get_all_stores(self, *, exclude_tombstone: bool = False) -> list[metapb_pb2.Store]:
        req = _req(pdpb_pb2.GetAllStoresRequest, exclude_tombstone_stores=exclude_tombstone)
        return list(self._call("GetAllStores", req).stores)

    def store_heartbeat(self, stats: pdpb_pb2.StoreStats) -> pdpb_pb2.StoreHeartbeatResponse:
        resp: pdpb_pb2.StoreHeartbeatResponse = self._call(
            "StoreHeartbeat", _req(pdpb_pb2.StoreHeartbeatRequest, stats=stats)
        )
        return resp

    # ------------------------------------------------------------ regions
    def region_heartbeat(
        self, req: pdpb_pb2.RegionHeartbeatRequest
    ) -> pdpb_pb2.RegionHeartbeatResponse:
        """Report a Region (as its leader); the answer may carry one operator
        step. ``req`` is not modified (its header is filled on a copy)."""
        copy = pdpb_pb2.RegionHeartbeatRequest()
        copy.CopyFrom(req)
        resp: pdpb_pb2.RegionHeartbeatResponse = self._call("RegionHeartbeat", copy)
        return resp

    @staticmethod
    def _located(resp: Message) -> RegionAndLeader | None:
        r: Any = resp
        if not r.HasField("region"):
            return None
        leader = r.leader.store_id if r.HasField("leader") else None
        return region_from_pb(r.region), leader

    def get_region(self, encoded_key: bytes) -> RegionAndLeader | None:
        """The Region holding ``encoded_key`` and its leader's store id (None:
        not known yet), or None if no Region covers the key."""
        resp = self._call("GetRegion", _req(pdpb_pb2.GetRegionRequest, region_key=encoded_key))
        return self._located(resp)

    def get_region_by_id(self, region_id: int) -> RegionAndLeader | None:
        req = _req(pdpb_pb2.GetRegionByIDRequest, region_id=region_id)
        return self._located(self._call("GetRegionByID", req))

    def scan_regions(self, start: bytes, end: bytes = b"", limit: int = 0) -> list[RegionAndLeader]:
        """Regions overlapping ``[start, end)`` in key order (``end`` empty:
        unbounded; ``limit`` 0: all)."""
        req = _req(pdpb_pb2.ScanRegionsRequest, start_key=start, end_key=end, limit=limit)
        resp = self._call("ScanRegions", req)
        return [
            (region_from_pb(x.region), x.leader.store_id if x.HasField("leader") else None)
            for x in resp.regions
        ]

    def ask_batch_split(self, region: Region, count: int) -> list[tuple[int, list[int]]]:
        """Ids for ``count`` new Regions split off ``region``: per new Region,
        its id and one peer id per peer of ``region`` (in its order)."""
        req = _req(pdpb_pb2.AskBatchSplitRequest, region=region_to_pb(region), split_count=count)
        resp = self._call("AskBatchSplit", req)
        return [(int(s.new_region_id), [int(p) for p in s.new_peer_ids]) for s in resp.ids]

    def report_batch_split(self, regions: list[Region]) -> None:
        req = _req(pdpb_pb2.ReportBatchSplitRequest, regions=[region_to_pb(r) for r in regions])
        self._call("ReportBatchSplit", req)

    # ------------------------------------------------------------ GC
    def get_gc_safe_point(self) -> int:
        return int(self._call("GetGCSafePoint", pdpb_pb2.GetGCSafePointRequest()).safe_point)

    def update_gc_safe_point(self, safe_point: int) -> int:
        """Move the safe point forward to ``safe_point``; returns the safe
        point now in force (never lower than before)."""
        req = _req(pdpb_pb2.UpdateGCSafePointRequest, safe_point=safe_point)
        return int(self._call("UpdateGCSafePoint", req).new_safe_point)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._tso.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
            self._stubs.clear()
        for ch in channels:
            ch.close()

    def __enter__(self) -> PdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PdClient", "RegionAndLeader"]
