"""The placement driver process: ``python -m kvstore.server.pd_server``.

Serves ``htapkv.pdpb.PD`` (every RPC of ``pdpb.proto``) over gRPC, with its
state (:class:`~kvstore.pd.cluster.ClusterState`) replicated by one Raft
group (group id 1) among 1 or 3 PD processes. The Raft log lives in the
process's own RocksDB (``DATA_DIR/db``, ``raft`` column family, the store's
:class:`~kvstore.raftstore.store.EngineLogStorage`), compacted through
snapshots of the state machine (``DATA_DIR/snap``).

Who answers: only the PD leader, once it is *ready*: it has applied every
entry of earlier terms, the cluster id exists (the first leader picks a
random one), it has recorded its own client address for the others to
redirect to, and its timestamp oracle has resumed strictly above the
replicated TSO high-water mark. A follower answers ``NOT_LEADER`` with the
leader's :class:`Member` in the header. Errors always travel in the header
(:func:`~kvstore.proto.convert.set_pd_error`), never as a gRPC status; a
malformed request gets ``INVALID_ARGUMENT``, a bug ``UNKNOWN`` and a log line.

Timestamps never go backwards: the oracle persists its high-water mark
through Raft (compare-and-set on the previous mark, so an oracle of a
deposed leader can never extend it), and every ``Tso`` answer follows a read
barrier in the oracle's own term, so a partitioned old leader cannot answer
after a newer leader did.

Soft state (Region leaders, store heartbeat times, pending operators) is the
leader's alone and starts empty after a leader change; every store counts
as heard from at that moment, so none is declared down before
``--max-store-down-time`` has passed under the new leader.

Start-up files, as :mod:`kvstore.server.store_server`: ``DATA_DIR/addrs.json``
(``{"client", "peer"}``: a restart binds the same ports), ``DATA_DIR/pd.json``
(name and initial cluster, so a restart needs neither) and ``DATA_DIR/ready``
once serving. SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from kvstore.errors import (
    AlreadyBootstrappedError,
    ClusterMismatchError,
    InvalidArgumentError,
    KVError,
    NotBootstrappedError,
    PdNotLeaderError,
    StoreTombstoneError,
)
from kvstore.pd import cluster as cmds
from kvstore.pd.cluster import ClusterState, IdAllocator
from kvstore.pd.scheduler import (
    Operator,
    OpKind,
    PendingOperator,
    Progress,
    RegionStatus,
    ScheduleConfig,
    StoreStatus,
    operator_progress,
    schedule,
)
from kvstore.pd.tso import TimestampOracle, wall_clock_ms
from kvstore.proto import pdpb_pb2
from kvstore.proto.convert import (
    epoch_to_pb,
    member_from_pb,
    member_to_pb,
    peer_from_pb,
    peer_to_pb,
    region_from_pb,
    region_to_pb,
    set_pd_error,
    store_from_pb,
    store_to_pb,
)
from kvstore.proto.rpc import PD_SERVICE, channel_options
from kvstore.proto.tls import TlsConfig, add_port, add_tls_arguments, make_channel, tls_from_args
from kvstore.raftstore.store import EngineLogStorage
from kvstore.server.pd_service import TsoService
from kvstore.storage import RocksEngine
from kvstore.types import PdMember, Region, StoreMeta, StoreState, compose_ts
from raft import ProposalError, RaftConfig, RaftDriver, RaftLogStore

log = logging.getLogger(__name__)

PD_GROUP_ID = 1
MAX_ALLOC_COUNT = 100_000
MAX_SPLIT_COUNT = 1000


def member_id(name: str) -> int:
    """A stable id per member name (pdpb.Member.member_id)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest()) >> 1


@dataclass
class PdConfig:
    data_dir: str
    name: str = "pd1"
    client_addr: str = "127.0.0.1:0"
    peer_addr: str = "127.0.0.1:0"
    # name -> Raft address of every member (this one included); empty: a
    # single-node PD made of this process alone.
    initial_cluster: dict[str, str] = field(default_factory=dict)
    # Mutual TLS for the gRPC service (and this node's calls to the leader).
    tls: TlsConfig | None = None
    secret: str | None = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    gc_life_time: float = 600.0  # the safe point trails now by this much
    raft: RaftConfig = field(default_factory=lambda: RaftConfig(snapshot_entries=10_000))
    id_step: int = 1000  # ids reserved per replicated allocation
    tick: float = 0.1  # background loop: GC schedule, member announcements
    max_workers: int = 64  # gRPC threads (each open Tso stream holds one)
    # Called once if the Raft log cannot be made durable (see RaftDriver).
    on_fatal: Callable[[BaseException], None] | None = None


class _LeaderState:
    """Everything that lives only on the leader, for one term."""

    def __init__(self, term: int, now: float) -> None:
        self.term = term
        self.started = now
        self.hwm = 0  # the TSO high-water mark this oracle last replicated
        self.oracle: TimestampOracle | None = None
        self.ids: IdAllocator | None = None
        self.lock = threading.Lock()  # soft state and scheduling
        self.region_status: dict[int, RegionStatus] = {}
        self.region_stats: dict[int, tuple[int, int]] = {}  # approximate size, keys
        self.store_heartbeat: dict[int, float] = {}
        self.store_stats: dict[int, pdpb_pb2.StoreStats] = {}
        self.pending_ops: dict[int, PendingOperator] = {}
        self.region_counts: dict[int, int] = {}
        self.region_counts_gen = -1


class PdServer:
    def __init__(self, cfg: PdConfig) -> None:
        self.cfg = cfg
        data = Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.engine = RocksEngine(data / "db")
        self.driver = RaftDriver(
            RaftLogStore(EngineLogStorage(self.engine)),
            cfg.peer_addr,
            secret=cfg.secret,
            snap_dir=str(data / "snap"),
            name=f"pd-{cfg.name}",
            on_fatal=cfg.on_fatal,
        )
        self.peer_addr = self.driver.raft_addr
        self.cluster = dict(cfg.initial_cluster) or {cfg.name: self.peer_addr}
        if self.cluster.get(cfg.name) != self.peer_addr:
            self.driver.stop()
            self.engine.close()
            raise ValueError(
                f"--initial-cluster gives {cfg.name}={self.cluster.get(cfg.name)} "
                f"but this member's Raft address is {self.peer_addr}"
            )
        self.name_by_peer = {addr: name for name, addr in self.cluster.items()}
        self.state = ClusterState()
        self.group = self.driver.add_group(
            PD_GROUP_ID, list(self.cluster.values()), self.state, cfg.raft
        )
        self.client_addr = ""
        self._server: grpc.Server | None = None
        self._ls: _LeaderState | None = None
        self._leader_lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._announce_channel: tuple[str, grpc.Channel] | None = None
        self._was_leader = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Serve gRPC on ``cfg.client_addr``; returns the bound address."""
        server = grpc.server(
            ThreadPoolExecutor(self.cfg.max_workers, "pd-grpc"),
            options=[*channel_options(), ("grpc.so_reuseport", 0)],
        )
        server.add_generic_rpc_handlers((self._rpc_handler(),))
        port = add_port(server, self.cfg.client_addr, self.cfg.tls)
        if port == 0:
            raise OSError(f"cannot bind {self.cfg.client_addr}")
        server.start()
        self._server = server
        self.client_addr = f"{self.cfg.client_addr.rsplit(':', 1)[0]}:{port}"
        self._loop = threading.Thread(target=self._background, name="pd-loop", daemon=True)
        self._loop.start()
        return self.client_addr

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(1.0).wait()
        if self._loop is not None:
            self._loop.join(timeout=5)
        if self._announce_channel is not None:
            self._announce_channel[1].close()
        self.driver.stop()
        self.engine.close()

    def me(self) -> PdMember:
        return PdMember(self.cfg.name, member_id(self.cfg.name), self.client_addr, self.peer_addr)

    # ------------------------------------------------------------ leadership
    def _proposal_failed(self, e: ProposalError) -> PdNotLeaderError:
        log.info("PD proposal failed: %s", e.reason)
        return self._not_leader(f"proposal failed: {e.reason}")

    def _propose(self, command: bytes) -> Any:
        try:
            return self.group.propose(command, timeout=self.cfg.raft.proposal_timeout)
        except ProposalError as e:
            raise self._proposal_failed(e) from e

    def _not_leader(self, why: str = "not the PD leader") -> PdNotLeaderError:
        peer = self.group.leader()
        name = self.name_by_peer.get(peer or "", "")
        m = self.state.members.get(name)
        addr = m.client_addr if m is not None and m.peer_addr == peer else ""
        if peer == self.peer_addr:
            addr = self.client_addr
        return PdNotLeaderError(why, leader_name=name, leader_addr=addr)

    def _leader(self) -> _LeaderState:
        """The leader state of the current term, set up on first use; raises
        :class:`PdNotLeaderError` on anything but a ready leader."""
        ls = self._ls
        if ls is not None and self.group.is_ready_leader() and self.group.term() == ls.term:
            return ls
        with self._leader_lock:
            if not self.group.is_ready_leader():
                self._ls = None
                raise self._not_leader()
            term = self.group.term()
            if self._ls is not None and self._ls.term == term:
                return self._ls
            self._ls = None
            self._ls = self._become_leader(term)
            return self._ls

    def _become_leader(self, term: int) -> _LeaderState:
        t0 = time.monotonic()
        try:
            # Everything of earlier terms applied (and leadership proven now).
            self.group.read_barrier(timeout=self.cfg.raft.proposal_timeout)
        except ProposalError as e:
            raise self._proposal_failed(e) from e
        if self.state.cluster_id == 0:
            self._propose(cmds.cmd_init(random.getrandbits(63) | 1))
        if self.state.members.get(self.cfg.name) != self.me():
            self._propose(cmds.cmd_member(self.me()))
        ls = _LeaderState(term, time.monotonic())

        def load() -> int:
            ls.hwm = self.state.tso_hwm
            return ls.hwm

        ls.oracle = TimestampOracle(load, lambda hwm: self._save_hwm(ls, hwm))
        ls.ids = IdAllocator(self._reserve_ids, self.cfg.id_step)
        with self.state.lock:
            for sid in self.state.stores:
                ls.store_heartbeat[sid] = ls.started
        log.info(
            "PD %s is leader (term %d), ready in %.3f s; cluster id %d, TSO above %d",
            self.cfg.name,
            term,
            time.monotonic() - t0,
            self.state.cluster_id,
            ls.hwm,
        )
        return ls

    def _save_hwm(self, ls: _LeaderState, hwm: int) -> None:
        result = self._propose(cmds.cmd_tso(ls.hwm, hwm))
        if result != cmds.OK:
            # Another leader extended the mark since this oracle loaded it.
            with self._leader_lock:
                if self._ls is ls:
                    self._ls = None
            raise self._not_leader("TSO high-water mark moved: leadership changed")
        ls.hwm = hwm

    def _reserve_ids(self, count: int) -> int:
        first = self._propose(cmds.cmd_alloc(count))
        if not isinstance(first, int):
            raise KVError(f"ID allocation failed: {first}")
        return first

    def get_ts(self, count: int = 1) -> int:
        """PD's TSO source (for :class:`TsoService`)."""
        ls = self._leader()
        if len(self.cluster) > 1:
            try:
                # Proves we still lead *now*: no newer leader can have answered
                # a Tso request before this one arrived. (A single PD node
                # cannot be deposed: it needs no proof, and its timestamps
                # cost no Raft round. A leader lease would spare 3 nodes the
                # round too, but pysyncobj grants votes while a leader is
                # alive, so a lease is not safe on it as it is.)
                self.group.read_barrier(timeout=self.cfg.raft.proposal_timeout)
            except ProposalError as e:
                raise self._proposal_failed(e) from e
        if self.group.term() != ls.term:
            raise self._not_leader("leadership changed")
        assert ls.oracle is not None
        return ls.oracle.get_ts(count)

    # ------------------------------------------------------------ background
    def _background(self) -> None:
        gc_interval = max(1.0, min(60.0, self.cfg.gc_life_time / 10))
        next_gc = 0.0
        next_announce = 0.0
        while not self._stop.wait(self.cfg.tick):
            try:
                leader = self.group.is_ready_leader()
                if leader != self._was_leader:
                    self._was_leader = leader
                    if not leader:
                        log.info("PD %s is no longer leader", self.cfg.name)
                now = time.monotonic()
                if leader:
                    self._leader()
                    if now >= next_gc:
                        next_gc = now + gc_interval
                        self._advance_gc_safe_point()
                elif now >= next_announce:
                    next_announce = now + 1.0
                    self._announce()
            except KVError as e:
                log.debug("PD background: %s", e)
            except Exception:
                log.exception("PD background loop failed")

    def _advance_gc_safe_point(self) -> None:
        sp = compose_ts(wall_clock_ms() - int(self.cfg.gc_life_time * 1000), 0)
        if sp > self.state.gc_safe_point:
            new = self._propose(cmds.cmd_gc(sp))
            log.info("GC safe point advanced to %d (now - %.0f s)", new, self.cfg.gc_life_time)

    def _announce(self) -> None:
        """Tell the leader our client address if the replicated member list
        lacks it (a follower cannot propose; the leader records it)."""
        me = self.me()
        if self.state.members.get(me.name) == me:
            return
        peer = self.group.leader()
        m = self.state.members.get(self.name_by_peer.get(peer or "", ""))
        if m is None or not m.client_addr or m.name == me.name:
            return
        if self._announce_channel is None or self._announce_channel[0] != m.client_addr:
            if self._announce_channel is not None:
                self._announce_channel[1].close()
            self._announce_channel = (
                m.client_addr,
                make_channel(m.client_addr, channel_options(), self.cfg.tls),
            )
        call = self._announce_channel[1].unary_unary(
            f"/{PD_SERVICE}/GetMembers",
            request_serializer=pdpb_pb2.GetMembersRequest.SerializeToString,
            response_deserializer=pdpb_pb2.GetMembersResponse.FromString,
        )
        try:
            call(pdpb_pb2.GetMembersRequest(member=member_to_pb(me)), timeout=2.0)
        except grpc.RpcError as e:
            log.debug("announcing to the PD leader failed: %s", e)

    # ------------------------------------------------------------ gRPC plumbing
    def check_header(self, h: pdpb_pb2.RequestHeader) -> int:
        cid = self.state.cluster_id
        if h.cluster_id and cid and h.cluster_id != cid:
            raise ClusterMismatchError(f"request for cluster {h.cluster_id}, this is {cid}")
        return cid

    def _unary(
        self,
        name: str,
        fn: Callable[[Any, Any], None],
        *,
        bootstrapped: bool = False,
    ) -> grpc.RpcMethodHandler:
        method = pdpb_pb2.DESCRIPTOR.services_by_name["PD"].methods_by_name[name]
        req_type: type[Message] = getattr(pdpb_pb2, method.input_type.name)
        resp_type: type[Message] = getattr(pdpb_pb2, method.output_type.name)

        def handle(data: bytes, context: grpc.ServicerContext) -> bytes:
            resp: Any = resp_type()
            try:
                req: Any = req_type.FromString(data)
            except DecodeError as e:
                set_pd_error(resp.header, InvalidArgumentError(f"malformed {name}: {e}"))
                return bytes(resp.SerializeToString())
            try:
                resp.header.cluster_id = self.check_header(req.header)
                self._leader()
                if bootstrapped and not self.state.bootstrapped:
                    raise NotBootstrappedError("the cluster is not bootstrapped")
                fn(req, resp)
            except KVError as e:
                resp = resp_type()
                resp.header.cluster_id = self.state.cluster_id
                set_pd_error(resp.header, e)
            except Exception as e:  # a bug: answer and keep serving
                log.exception("%s failed", name)
                resp = resp_type()
                set_pd_error(resp.header, KVError(f"{name}: {type(e).__name__}: {e}"))
            return bytes(resp.SerializeToString())

        return grpc.unary_unary_rpc_method_handler(handle)

    def _rpc_handler(self) -> grpc.GenericRpcHandler:
        handlers = TsoService(self, check_header=self.check_header).method_handlers()
        b = {"bootstrapped": True}
        handlers.update(
            {
                "GetMembers": self._unary("GetMembers", self._get_members),
                "IsBootstrapped": self._unary("IsBootstrapped", self._is_bootstrapped),
                "Bootstrap": self._unary("Bootstrap", self._bootstrap),
                "AllocID": self._unary("AllocID", self._alloc_id),
                "PutStore": self._unary("PutStore", self._put_store, **b),
                "GetStore": self._unary("GetStore", self._get_store, **b),
                "GetAllStores": self._unary("GetAllStores", self._get_all_stores, **b),
                "StoreHeartbeat": self._unary("StoreHeartbeat", self._store_heartbeat, **b),
                "RegionHeartbeat": self._unary("RegionHeartbeat", self._region_heartbeat, **b),
                "GetRegion": self._unary("GetRegion", self._get_region, **b),
                "GetRegionByID": self._unary("GetRegionByID", self._get_region_by_id, **b),
                "ScanRegions": self._unary("ScanRegions", self._scan_regions, **b),
                "AskBatchSplit": self._unary("AskBatchSplit", self._ask_batch_split, **b),
                "ReportBatchSplit": self._unary("ReportBatchSplit", self._report_batch_split, **b),
                "GetGCSafePoint": self._unary("GetGCSafePoint", self._get_gc_safe_point),
                "UpdateGCSafePoint": self._unary("UpdateGCSafePoint", self._update_gc_safe_point),
            }
        )
        rpcs = {m.name for m in pdpb_pb2.DESCRIPTOR.services_by_name["PD"].methods}
        if set(handlers) != rpcs:
            raise RuntimeError(f"PD RPCs without a handler: {rpcs - set(handlers)}")
        return grpc.method_handlers_generic_handler(PD_SERVICE, handlers)

    # ------------------------------------------------------------ members, bootstrap, ids
    def _get_members(self, req: pdpb_pb2.GetMembersRequest, resp: Any) -> None:
        if req.HasField("member"):
            m = member_from_pb(req.member)
            if self.cluster.get(m.name) != m.peer_addr or m.member_id != member_id(m.name):
                raise InvalidArgumentError(f"{m.name}={m.peer_addr} is not a member of this PD")
            if self.state.members.get(m.name) != m:
                self._propose(cmds.cmd_member(m))
                log.info("PD member %s serves clients on %s", m.name, m.client_addr)
        for name, peer in sorted(self.cluster.items()):
            known = self.state.members.get(name)
            if known is None or known.peer_addr != peer:
                known = PdMember(name, member_id(name), "", peer)
            resp.members.append(member_to_pb(known))
        resp.leader.CopyFrom(member_to_pb(self.me()))

    def _is_bootstrapped(self, req: Any, resp: Any) -> None:
        resp.bootstrapped = self.state.bootstrapped

    def _bootstrap(self, req: pdpb_pb2.BootstrapRequest, resp: Any) -> None:
        if not req.HasField("store") or not req.HasField("region"):
            raise InvalidArgumentError("Bootstrap needs a store and a region")
        store = _valid_store(store_from_pb(req.store))
        region = _valid_region(region_from_pb(req.region))
        if not any(p.store_id == store.id and not p.is_learner for p in region.peers):
            raise InvalidArgumentError("the first Region needs a voter on the bootstrapping store")
        if self._propose(cmds.cmd_bootstrap(store, region)) != cmds.OK:
            raise AlreadyBootstrappedError("the cluster is already bootstrapped")
        log.info("cluster bootstrapped by store %d with Region %d", store.id, region.id)

    def _alloc_id(self, req: pdpb_pb2.AllocIDRequest, resp: Any) -> None:
        count = req.count or 1
        if count > MAX_ALLOC_COUNT:
            raise InvalidArgumentError(f"count must be at most {MAX_ALLOC_COUNT}")
        resp.id = self._alloc(count)
        resp.count = count

    def _alloc(self, count: int) -> int:
        ids = self._leader().ids
        assert ids is not None
        return ids.alloc(count)

    # ------------------------------------------------------------ stores
    def _put_store(self, req: pdpb_pb2.PutStoreRequest, resp: Any) -> None:
        store = _valid_store(store_from_pb(req.store))
        with self.state.lock:
            old = self.state.stores.get(store.id)
            clash = [
                s.id
                for s in self.state.stores.values()
                if s.id != store.id
                and s.address == store.address
                and s.state != StoreState.TOMBSTONE
            ]
        if old is not None and old.state == StoreState.TOMBSTONE:
            raise StoreTombstoneError(f"store {store.id} is a tombstone")
        if clash:
            raise InvalidArgumentError(f"address {store.address} is used by store {clash[0]}")
        if store.state == StoreState.TOMBSTONE:
            raise InvalidArgumentError("a store cannot make itself a tombstone")
        if old != store:
            if self._propose(cmds.cmd_put_store(store)) == cmds.TOMBSTONE:
                raise StoreTombstoneError(f"store {store.id} is a tombstone")
            log.info("store %d registered at %s (labels %s)", store.id, store.address, store.labels)
        ls = self._leader()
        with ls.lock:
            ls.store_heartbeat[store.id] = time.monotonic()

    def _get_store(self, req: pdpb_pb2.GetStoreRequest, resp: Any) -> None:
        s = self.state.stores.get(req.store_id)
        if s is None:
            return
        resp.store.CopyFrom(store_to_pb(s))
        stats = self._leader().store_stats.get(s.id)
        if stats is not None:
            resp.stats.CopyFrom(stats)

    def _get_all_stores(self, req: pdpb_pb2.GetAllStoresRequest, resp: Any) -> None:
        with self.state.lock:
            stores = sorted(self.state.stores.values(), key=lambda s: s.id)
        for s in stores:
            if req.exclude_tombstone_stores and s.state == StoreState.TOMBSTONE:
                continue
            resp.stores.append(store_to_pb(s))

    def _store_heartbeat(self, req: pdpb_pb2.StoreHeartbeatRequest, resp: Any) -> None:
        stats = req.stats
        sid = stats.store_id
        store = self.state.stores.get(sid)
        if store is None:
            raise InvalidArgumentError(f"store {sid} is not registered (PutStore first)")
        if store.state == StoreState.TOMBSTONE:
            raise StoreTombstoneError(f"store {sid} is a tombstone")
        ls = self._leader()
        with ls.lock:
            ls.store_heartbeat[sid] = time.monotonic()
            ls.store_stats[sid] = stats
        reported = {rr.region_id: rr for rr in stats.replicas}
        with self.state.lock:
            regions = list(self.state.regions.values())
            directory = dict(self.state.regions)
            stores = sorted(self.state.stores.values(), key=lambda s: s.id)
        # A replica that has not applied a split PD knows of may still create
        # the split's new Regions itself: create nothing until it caught up.
        behind = any(
            rid in directory and rr.region_epoch.version < directory[rid].epoch.version
            for rid, rr in reported.items()
        )
        if not behind:
            for r in regions:
                if r.id not in reported and any(p.store_id == sid for p in r.peers):
                    resp.create_peers.append(region_to_pb(r))
        for rid, rr in reported.items():
            known = directory.get(rid)
            if known is None or any(p.store_id == sid for p in known.peers):
                continue
            e = rr.region_epoch
            if known.epoch.conf_ver > e.conf_ver or known.epoch.version > e.version:
                resp.destroy_peers.append(rid)  # removed while this store was away
        resp.stores.extend(store_to_pb(s) for s in stores)
        resp.gc_safe_point = self.state.gc_safe_point

    # ------------------------------------------------------------ regions
    def _region_heartbeat(self, req: pdpb_pb2.RegionHeartbeatRequest, resp: Any) -> None:
        if not req.HasField("region"):
            raise InvalidArgumentError("RegionHeartbeat needs a region")
        region = _valid_region(region_from_pb(req.region))
        leader = peer_from_pb(req.leader) if req.HasField("leader") else None
        if leader is not None and leader.id not in {p.id for p in region.peers}:
            raise InvalidArgumentError(f"leader peer {leader.id} is not a peer of the Region")
        if self.state.check_region(region) == cmds.OK:
            self._propose(cmds.cmd_regions([region]))
        current = self.state.regions.get(region.id)
        if current is None or current.epoch != region.epoch:
            return  # a stale report (PD knows a newer epoch): no scheduling on it
        ls = self._leader()
        rs = RegionStatus(
            region,
            leader,
            frozenset(p.id for p in req.pending_peers),
            frozenset(d.peer.id for d in req.down_peers),
        )
        with ls.lock:
            ls.region_status[region.id] = rs
            ls.region_stats[region.id] = (req.approximate_size, req.approximate_keys)
            op = self._schedule(ls, rs)
        if op is None:
            return
        resp.region_id = region.id
        resp.region_epoch.CopyFrom(epoch_to_pb(region.epoch))
        if leader is not None:
            resp.target_peer.CopyFrom(peer_to_pb(leader))
        if op.kind == OpKind.TRANSFER_LEADER:
            resp.transfer_leader.peer.CopyFrom(peer_to_pb(op.peer))
        else:
            resp.change_peer.peer.CopyFrom(peer_to_pb(op.peer))
            resp.change_peer.change_type = _CHANGE_TYPES[op.kind]

    def _schedule(self, ls: _LeaderState, rs: RegionStatus) -> Operator | None:
        """Called with ``ls.lock`` held: one step for the Region, or None."""
        now = time.monotonic()
        rid = rs.region.id
        pending = ls.pending_ops.get(rid)
        if pending is not None:
            progress = operator_progress(pending, rs, now)
            if progress == Progress.RUNNING:
                return pending.op  # again: the previous response may have been lost
            log.info("region %d: operator %s %s", rid, pending.op, progress.value)
            del ls.pending_ops[rid]
        op = schedule(rs, self._store_statuses(ls, now), now, self.cfg.schedule)
        if op is None:
            return None
        if op.kind == OpKind.ADD_LEARNER:
            op = op.with_peer_id(self._alloc(1))
        ls.pending_ops[rid] = PendingOperator(
            rid, op, rs.region.epoch, now + self.cfg.schedule.operator_timeout
        )
        log.info("schedule region %d: %s (%s)", rid, op, op.reason)
        return op

    def _store_statuses(self, ls: _LeaderState, now: float) -> dict[int, StoreStatus]:
        with self.state.lock:
            stores = dict(self.state.stores)
            if ls.region_counts_gen != self.state.region_generation:
                counts: dict[int, int] = {}
                for r in self.state.regions.values():
                    for p in r.peers:
                        counts[p.store_id] = counts.get(p.store_id, 0) + 1
                ls.region_counts, ls.region_counts_gen = counts, self.state.region_generation
        regions = dict(ls.region_counts)
        leaders: dict[int, int] = {}
        for rid, rs in ls.region_status.items():
            store = rs.leader.store_id if rs.leader is not None else 0
            pend = ls.pending_ops.get(rid)
            if pend is not None and pend.op.kind == OpKind.TRANSFER_LEADER:
                store = pend.op.peer.store_id  # count it where it is going
            leaders[store] = leaders.get(store, 0) + 1
        for pend in ls.pending_ops.values():
            if pend.op.kind == OpKind.ADD_LEARNER:
                sid = pend.op.peer.store_id
                regions[sid] = regions.get(sid, 0) + 1
        return {
            sid: StoreStatus(
                meta,
                ls.store_heartbeat.get(sid, ls.started),
                regions.get(sid, 0),
                leaders.get(sid, 0),
            )
            for sid, meta in stores.items()
        }

    def _fill_region(self, r: Region | None, resp: Any) -> None:
        if r is None:
            return
        resp.region.CopyFrom(region_to_pb(r))
        ls = self._leader()
        rs = ls.region_status.get(r.id)
        if rs is None or rs.region.epoch != r.epoch:
            return
        if rs.leader is not None:
            resp.leader.CopyFrom(peer_to_pb(rs.leader))
        for p in r.peers:
            if p.id in rs.down_peers:
                resp.down_peers.add().peer.CopyFrom(peer_to_pb(p))
            if p.id in rs.pending_peers:
                resp.pending_peers.append(peer_to_pb(p))

    def _get_region(self, req: pdpb_pb2.GetRegionRequest, resp: Any) -> None:
        self._fill_region(self.state.region_by_key(req.region_key), resp)

    def _get_region_by_id(self, req: pdpb_pb2.GetRegionByIDRequest, resp: Any) -> None:
        self._fill_region(self.state.regions.get(req.region_id), resp)

    def _scan_regions(self, req: pdpb_pb2.ScanRegionsRequest, resp: Any) -> None:
        if req.limit < 0:
            raise InvalidArgumentError("limit must not be negative")
        if req.end_key and req.end_key <= req.start_key:
            raise InvalidArgumentError("end_key must be above start_key")
        ls = self._leader()
        for r in self.state.scan_regions(req.start_key, req.end_key, req.limit):
            item = resp.regions.add()
            item.region.CopyFrom(region_to_pb(r))
            rs = ls.region_status.get(r.id)
            if rs is not None and rs.region.epoch == r.epoch and rs.leader is not None:
                item.leader.CopyFrom(peer_to_pb(rs.leader))

    def _ask_batch_split(self, req: pdpb_pb2.AskBatchSplitRequest, resp: Any) -> None:
        if not req.HasField("region"):
            raise InvalidArgumentError("AskBatchSplit needs a region")
        region = _valid_region(region_from_pb(req.region))
        if not 0 < req.split_count <= MAX_SPLIT_COUNT:
            raise InvalidArgumentError(f"split_count must be in 1..{MAX_SPLIT_COUNT}")
        n = len(region.peers)
        for _ in range(req.split_count):
            first = self._alloc(1 + n)
            resp.ids.add(new_region_id=first, new_peer_ids=list(range(first + 1, first + 1 + n)))

    def _report_batch_split(self, req: pdpb_pb2.ReportBatchSplitRequest, resp: Any) -> None:
        regions = [_valid_region(region_from_pb(r)) for r in req.regions]
        news = [r for r in regions if self.state.check_region(r) == cmds.OK]
        if news:
            self._propose(cmds.cmd_regions(news))
            log.info("split reported: Regions %s", [r.id for r in news])

    # ------------------------------------------------------------ GC
    def _get_gc_safe_point(self, req: Any, resp: Any) -> None:
        resp.safe_point = self.state.gc_safe_point

    def _update_gc_safe_point(self, req: pdpb_pb2.UpdateGCSafePointRequest, resp: Any) -> None:
        if req.safe_point > self.state.gc_safe_point:
            resp.new_safe_point = self._propose(cmds.cmd_gc(req.safe_point))
            log.info("GC safe point updated to %d", resp.new_safe_point)
        else:
            resp.new_safe_point = self.state.gc_safe_point


_CHANGE_TYPES = {
    OpKind.ADD_NODE: pdpb_pb2.AddNode,
    OpKind.REMOVE_NODE: pdpb_pb2.RemoveNode,
    OpKind.ADD_LEARNER: pdpb_pb2.AddLearnerNode,
}


def _valid_store(s: StoreMeta) -> StoreMeta:
    if s.id == 0:
        raise InvalidArgumentError("store id must not be 0")
    if not s.address:
        raise InvalidArgumentError("store address must not be empty")
    return s


def _valid_region(r: Region) -> Region:
    if r.id == 0:
        raise InvalidArgumentError("region id must not be 0")
    if r.end_key and r.end_key <= r.start_key:
        raise InvalidArgumentError(f"region {r.id}: end_key must be above start_key")
    ids = [p.id for p in r.peers]
    if 0 in ids or len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"region {r.id}: peer ids must be non-zero and distinct")
    stores = [p.store_id for p in r.peers]
    if 0 in stores or len(set(stores)) != len(stores):
        raise InvalidArgumentError(f"region {r.id}: one peer per store, store ids non-zero")
    return r


# --------------------------------------------------------------------------
# Command line: `htapkv server pd` and `python -m kvstore.server.pd_server`
# --------------------------------------------------------------------------
def _parse_cluster(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, addr = item.partition("=")
        if not sep or not name or ":" not in addr:
            raise argparse.ArgumentTypeError(f"expected name=host:port, got {item!r}")
        out[name] = addr
    return out


def add_pd_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a PD process (shared by the ``htapkv`` CLI)."""
    d = ScheduleConfig()
    parser.add_argument("--data-dir", required=True, help="where PD keeps its Raft log and state")
    add_tls_arguments(parser)
    parser.add_argument("--name", default="pd1", help="this member's name in --initial-cluster")
    parser.add_argument("--addr", default="127.0.0.1:2379", help="gRPC host:port (port 0: any)")
    parser.add_argument(
        "--peer-addr", default="127.0.0.1:2380", help="Raft host:port (port 0: single node only)"
    )
    parser.add_argument(
        "--initial-cluster",
        type=_parse_cluster,
        default=None,
        help="name1=peer_addr1,name2=... every member (omit: single node)",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("HTAPKV_CLUSTER_SECRET"),
        help="cluster secret for Raft (default: $HTAPKV_CLUSTER_SECRET)",
    )
    parser.add_argument(
        "--max-store-down-time",
        type=float,
        default=d.max_store_down_time,
        help="seconds without a store heartbeat before its replicas are replaced",
    )
    parser.add_argument(
        "--gc-life-time",
        type=float,
        default=600.0,
        help="seconds of history the GC safe point keeps",
    )
    parser.add_argument(
        "--leader-schedule-tolerance",
        type=int,
        default=d.leader_schedule_tolerance,
        help="leader-count difference between stores that triggers a transfer",
    )
    parser.add_argument("--max-replicas", type=int, default=d.max_replicas)
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=10_000,
        help="compact PD's Raft log into a snapshot past N entries",
    )


def run_pd(args: argparse.Namespace) -> int:
    """Run a PD process until SIGTERM/SIGINT; returns the exit code."""
    from kvstore.server.store_server import exit_on_storage_failure, write_json_atomic

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "ready").unlink(missing_ok=True)
    addrs_path, meta_path = data / "addrs.json", data / "pd.json"
    previous = json.loads(addrs_path.read_text()) if addrs_path.exists() else {}
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}

    def port0(addr: str) -> bool:
        return addr.rsplit(":", 1)[-1] == "0"

    client_addr = previous["client"] if previous and port0(args.addr) else args.addr
    peer_addr = previous["peer"] if previous and port0(args.peer_addr) else args.peer_addr
    cluster = args.initial_cluster or meta.get("initial_cluster") or {}
    name = meta.get("name", args.name) if not args.initial_cluster else args.name
    cfg = PdConfig(
        data_dir=str(data),
        name=name,
        client_addr=client_addr,
        peer_addr=peer_addr,
        initial_cluster=cluster,
        secret=args.secret,
        tls=tls_from_args(args),
        on_fatal=exit_on_storage_failure,
        schedule=ScheduleConfig(
            max_replicas=args.max_replicas,
            max_store_down_time=args.max_store_down_time,
            leader_schedule_tolerance=args.leader_schedule_tolerance,
        ),
        gc_life_time=args.gc_life_time,
        raft=RaftConfig(snapshot_entries=args.snapshot_entries),
    )
    try:
        server = PdServer(cfg)
    except ValueError as e:
        log.error("%s", e)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except OSError as e:
        log.error("%s", e)
        server.stop()
        return 1
    write_json_atomic(addrs_path, {"client": server.client_addr, "peer": server.peer_addr})
    write_json_atomic(meta_path, {"name": name, "initial_cluster": server.cluster})
    (data / "ready").write_text("1")
    log.info("PD %s serving on %s, Raft on %s", name, server.client_addr, server.peer_addr)
    # A bounded wait: an untimed one can miss a signal while SIGSTOPped.
    while not stop.wait(0.5):
        pass
    log.info("PD %s stopping", name)
    server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_pd_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pd %(name)s %(message)s")
    return run_pd(args)


__all__ = [
    "PD_GROUP_ID",
    "PdConfig",
    "PdServer",
    "add_pd_arguments",
    "main",
    "member_id",
    "run_pd",
]


if __name__ == "__main__":
    raise SystemExit(main())
