"""A store: one RocksDB, one Raft driver, many Region peers.

The store hosts a :class:`~kvstore.raftstore.peer.Peer` per Region replica,
each driven as a Raft group by the store's single
:class:`~raft.RaftDriver`, with the Raft log in the same RocksDB (``raft``
column family). Commands reach a Region through :meth:`Store.region`: the
returned :class:`RegionHandle` checks the routing (leader, epoch, key range)
and exposes the Region's transaction scheduler and raw store, whose writes
are proposed to the Region's Raft group (:class:`PeerSink`).

Cluster membership: ``StoreConfig.cluster`` maps store ids to Raft
addresses; :meth:`Store.add_store` learns more (PD's store directory, in a
cluster). New ids (Regions and peers created by a split) come from
``StoreConfig.id_allocator`` (PD's ``AllocID`` in a cluster) or, without
one, from a per-store allocator, ``store_id << 40 | counter``, unique without
coordination.

Whoever reports to PD subscribes with :meth:`Store.on_region_changed`: it is
called (in the Raft driver thread: keep it short) after every split and
membership change applied here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from kvstore import codec
from kvstore.errors import (
    EpochNotMatchError,
    InvalidArgumentError,
    KeyNotInRegionError,
    NotLeaderError,
    RegionNotFoundError,
)
from kvstore.raftstore import cmd as raftcmd
from kvstore.raftstore.meta import (
    ID_ALLOC_KEY,
    REGION_PREFIX,
    applied_key,
    decode_region,
    decode_u64,
    encode_region,
    encode_u64,
    meta_key,
)
from kvstore.raftstore.peer import RAFT_INIT_INDEX, ApplyObserver, Peer
from kvstore.rawkv import RawStore
from kvstore.storage import CF_DEFAULT, CF_RAFT, CF_WRITE, DATA_CFS, RocksEngine, WriteBatch
from kvstore.txn import Latches, TxnScheduler
from kvstore.types import Peer as PeerMeta
from kvstore.types import Region, RegionEpoch
from raft import RaftConfig, RaftDriver, RaftLogStore

log = logging.getLogger(__name__)

ID_BITS = 40


@dataclass
class StoreConfig:
    store_id: int
    data_dir: str
    raft_addr: str = "127.0.0.1:0"
    # store id -> Raft address of every store (this one included).
    cluster: dict[int, str] = field(default_factory=dict)
    secret: str | None = None
    raft: RaftConfig = field(default_factory=lambda: RaftConfig(snapshot_entries=10_000))
    # Split a Region once it holds more than this many keys (0: never).
    split_threshold_keys: int = 0
    split_check_interval: float = 0.5
    # With no Region on disk, create the first one (whole key space, a peer
    # on every store of ``cluster``). Every store of a new cluster does this
    # identically, so they agree without talking. (Off under PD: the first
    # store bootstraps the cluster through PD with a one-peer Region.)
    bootstrap: bool = True
    # ``count -> first of count fresh ids``; None: the per-store allocator.
    id_allocator: Callable[[int], int] | None = None
    # Sees every replica's applied data (the columnar learner's feed).
    apply_observer: ApplyObserver | None = None
    # Called once if the Raft log cannot be made durable (a failed fsync):
    # the store has stopped acknowledging; a server process should exit.
    on_fatal: Callable[[BaseException], None] | None = None


class EngineLogStorage:
    """The Raft log's storage: the store engine's ``raft`` column family."""

    def __init__(self, engine: RocksEngine) -> None:
        self.engine = engine

    def scan_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.engine.scan(CF_RAFT, prefix, prefix + b"\xff")

    def apply(
        self, puts: list[tuple[bytes, bytes]], deletes: list[tuple[bytes, bytes]], *, sync: bool
    ) -> None:
        b = WriteBatch()
        for s, e in deletes:
            b.delete_range(CF_RAFT, s, e)
        for k, v in puts:
            b.put(CF_RAFT, k, v)
        # A synced rocksdict write holds the GIL through the fsync (measured:
        # other threads of the process stalled 5 ms, the switch interval, per
        # write); flush_wal(sync) releases it. Same durability: the unsynced
        # write is in the WAL, and the WAL sync covers every write before it.
        self.engine.write(b, sync=False)
        if sync:
            self.engine.sync_wal()


class PeerSink:
    """Where a Region's commands write: a proposal to its Raft group. The
    call returns once the batch is applied on this (leader) replica.

    A proposal carries the epoch the *request* was routed with (set per
    thread by :class:`RegionHandle`), so a split applied while the command
    ran makes apply reject it instead of acting on a narrower Region than the
    client asked for."""

    def __init__(self, peer: Peer, engine: RocksEngine) -> None:
        self.peer = peer
        self.engine = engine
        self._request = threading.local()

    def use_epoch(self, epoch: RegionEpoch, term: int | None = None) -> None:
        self._request.epoch = epoch
        self._request.term = term

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self.engine.get(cf, key)

    def write(self, batch: WriteBatch, *, sync: bool = False) -> None:
        # ``sync`` is moot: the Raft log is fsync'd before the entry commits.
        r = self._request
        self.peer.propose_write(batch, getattr(r, "epoch", None), getattr(r, "term", None))

    def write_async(
        self,
        batch: WriteBatch,
        done: Callable[[Exception | None], None],
        settled: Callable[[], None],
    ) -> None:
        """:meth:`write` without waiting: ``done(error or None)`` once the
        batch is applied here or the proposal's deadline passed (unknown
        outcome), ``settled()`` once its fate here is known, which may be
        later: the caller's latches are held until then, as :meth:`write`
        holds them. Both in the Raft driver thread (or at once in this one if
        this replica cannot propose)."""
        r = self._request
        self.peer.propose_write_async(
            batch,
            lambda _result, err: done(err),
            getattr(r, "epoch", None),
            term=getattr(r, "term", None),
            settled=settled,
        )


class RegionHandle:
    """A routed request's view of one Region (see :meth:`Store.region`)."""

    def __init__(self, store: Store, peer: Peer, term: int | None = None) -> None:
        self.store = store
        self.peer = peer
        self.region = peer.region
        self.scheduler = store.schedulers[peer.region_id]
        self.rawstore = store.rawstores[peer.region_id]
        # The term the leadership check was made in: a write computed under
        # this handle is proposed only if still in that term (Peer.propose_write).
        store.sinks[peer.region_id].use_epoch(self.region.epoch, term)

    def check_epoch_unchanged(self) -> None:
        """Raise EpochNotMatch if the Region split (or changed) since this
        request was routed."""
        current = self.peer.region
        if current.epoch.version != self.region.epoch.version:
            raise EpochNotMatchError(current.id, self.store.regions_overlapping(self.region))

    def check_txn_keys(self, keys: Sequence[bytes]) -> None:
        self._check([codec.txn_key(k) for k in keys if isinstance(k, bytes)])

    def check_raw_keys(self, keys: Sequence[bytes]) -> None:
        self._check([codec.raw_key(k) for k in keys if isinstance(k, bytes)])

    def _check(self, encoded: list[bytes]) -> None:
        r = self.region
        for k in encoded:
            if not r.contains(k):
                raise KeyNotInRegionError(k, r.id, r.start_key, r.end_key)

    def read_barrier(self) -> None:
        self.peer.read_barrier()


class Store:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.store_id = config.store_id
        os.makedirs(config.data_dir, exist_ok=True)
        self.engine = RocksEngine(os.path.join(config.data_dir, "db"))
        self.driver = RaftDriver(
            RaftLogStore(EngineLogStorage(self.engine)),
            config.raft_addr,
            secret=config.secret,
            snap_dir=os.path.join(config.data_dir, "snap"),
            name=f"store{config.store_id}",
            on_fatal=config.on_fatal,
        )
        self.raft_addr = self.driver.raft_addr
        self.cluster: dict[int, str] = {}
        self.latches = Latches()
        self.peers: dict[int, Peer] = {}
        self.schedulers: dict[int, TxnScheduler] = {}
        self.rawstores: dict[int, RawStore] = {}
        self.sinks: dict[int, PeerSink] = {}
        self._peers_lock = threading.Lock()
        self._id_lock = threading.Lock()
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        self._region_listeners: list[Callable[[Region], None]] = []
        if config.cluster:
            self.start(config.cluster)

    def start(self, cluster: dict[int, str]) -> None:
        """Start serving once every store's Raft address is known (a store
        bound to port 0 learns its own only after binding)."""
        self.cluster = dict(cluster)
        self.cluster[self.store_id] = self.raft_addr
        regions = self._load_regions()
        if not regions and self.config.bootstrap:
            regions = [self._bootstrap_region()]
        for r in regions:
            self._start_peer(r)
        if self.config.split_threshold_keys > 0:
            self._checker = threading.Thread(
                target=self._split_check_loop, name=f"split-check-{self.store_id}", daemon=True
            )
            self._checker.start()

    # ------------------------------------------------------------ regions
    def _load_regions(self) -> list[Region]:
        out = []
        for k, v in self.engine.scan(CF_RAFT, REGION_PREFIX, REGION_PREFIX + b"\xff"):
            if k.endswith(b"/meta"):
                out.append(decode_region(v))
        return out

    def _bootstrap_region(self) -> Region:
        peers = tuple(PeerMeta(sid, sid) for sid in sorted(self.cluster))
        region = Region(1, b"", b"", RegionEpoch(1, 1), peers)
        b = WriteBatch()
        b.put(CF_RAFT, meta_key(region.id), encode_region(region))
        self.engine.write(b, sync=True)
        return region

    def _start_peer(self, region: Region, *, fresh: bool = False) -> Peer:
        peer = Peer(region, self.store_id, self.engine, self._on_split, self._on_change)
        initial = 0
        if fresh and self.config.raft.snapshot_entries > 0 and self.driver.snap_dir is not None:
            # Born of a split, with snapshots on: the inherited data is the
            # state at RAFT_INIT_INDEX and the log starts after it (the group
            # writes that snapshot). Without snapshots the log starts at 1 and
            # so does the count of applied entries.
            initial = RAFT_INIT_INDEX
            b = WriteBatch()
            b.put(CF_RAFT, applied_key(region.id), encode_u64(initial))
            self.engine.write(b, sync=True)
            peer.applied_index = initial
        peer.overlapping = lambda r, rid=region.id: [
            o for o in self.regions_overlapping(r) if o.id != rid
        ]
        obs = self.config.apply_observer
        if obs is not None:
            peer.observer = obs
            obs.on_reset(region, peer.applied_index)
        me = peer.meta
        voters = [self.cluster[p.store_id] for p in region.peers if not p.is_learner]

        def bounds(peer: Peer = peer) -> tuple[bytes, bytes]:
            r = peer.region
            return r.start_key, r.end_key

        sink = PeerSink(peer, self.engine)
        with self._peers_lock:
            self.peers[region.id] = peer
            self.sinks[region.id] = sink
            self.schedulers[region.id] = TxnScheduler(
                self.engine, sink, latches=self.latches, bounds=bounds
            )
            self.rawstores[region.id] = RawStore(
                self.engine, sink, latches=self.latches, bounds=bounds
            )
        peer.group = self.driver.add_group(
            region.id,
            voters,
            peer,
            self.config.raft,
            learner=me.is_learner,
            fresh=fresh,
            initial_index=initial,
        )
        return peer

    # ------------------------------------------------------------ membership
    def add_store(self, store_id: int, raft_addr: str) -> None:
        """Learn a store that joined the cluster."""
        self.cluster[store_id] = raft_addr

    def on_region_changed(self, fn: Callable[[Region], None]) -> None:
        """Call ``fn(region)`` after each split (once per half) and membership
        change applied on this store (in the driver thread)."""
        self._region_listeners.append(fn)

    def _notify(self, region: Region) -> None:
        for fn in self._region_listeners:
            try:
                fn(region)
            except Exception:  # a listener must never break the apply path
                log.exception("region listener failed")

    def create_peer(self, region: Region) -> bool:
        """Host a new replica of ``region``, whose peers already name this
        store (as a learner: it catches up before it may vote). Called on the
        target store by whoever drives the change (an operator, PD).

        Refused (False) while a local replica overlaps the range: that one is
        behind (a split it has not applied yet will create this Region here
        with the data it owns; a removal will destroy it). A fresh replica
        over the same keys would apply newer entries before the old replica
        applies older ones."""
        me = next((p for p in region.peers if p.store_id == self.store_id), None)
        if me is None:
            raise InvalidArgumentError(f"region {region.id} has no peer on store {self.store_id}")
        if region.id in self.peers:
            return True
        if self.regions_overlapping(region):
            return False
        b = WriteBatch()
        b.put(CF_RAFT, meta_key(region.id), encode_region(region))
        self.engine.write(b, sync=True)
        self._start_peer(region)
        return True

    def destroy_peer(self, region_id: int) -> None:
        """Drop this store's replica of ``region_id`` (no longer a member: PD
        saw it removed while this store was away)."""
        peer = self.peers.get(region_id)
        if peer is not None:
            region = peer.region
            self.driver.call(lambda: self._destroy_peer(region))

    def add_learner(self, region_id: int, store_id: int, peer_id: int | None = None) -> Region:
        """Leader: add a learner replica on ``store_id`` (peer id ``peer_id``,
        or a fresh one); the target store must then :meth:`create_peer` the
        returned Region."""
        h = self.region(region_id, None)
        if peer_id is None:
            peer_id = self.alloc_id()
        change = raftcmd.ChangePeer(raftcmd.ADD_LEARNER, peer_id, store_id)
        region = h.peer.propose_change(change)
        # The new replica must start from a snapshot taken after this change:
        # replaying the log from the start under the new Region epoch would
        # reject (and so skip) every older command.
        assert h.peer.group is not None
        h.peer.group.compact_now()
        return region

    def promote_learner(self, region_id: int, store_id: int) -> Region:
        """Leader: make a caught-up learner a voter."""
        h = self.region(region_id, None)
        region = h.peer.propose_change(raftcmd.ChangePeer(raftcmd.PROMOTE_LEARNER, 0, store_id))
        assert h.peer.group is not None
        h.peer.group.add_member(self.cluster[store_id])
        return region

    def remove_peer(self, region_id: int, store_id: int) -> Region:
        """Leader: remove the replica on ``store_id`` (not the leader's own:
        transfer leadership first)."""
        if store_id == self.store_id:
            raise InvalidArgumentError("the leader cannot remove itself; transfer leadership first")
        h = self.region(region_id, None)
        was_voter = any(p.store_id == store_id and not p.is_learner for p in h.region.peers)
        region = h.peer.propose_change(raftcmd.ChangePeer(raftcmd.REMOVE_PEER, 0, store_id))
        if was_voter:
            assert h.peer.group is not None
            h.peer.group.remove_member(self.cluster[store_id])
        return region

    def transfer_leader(self, region_id: int, store_id: int) -> None:
        h = self.region(region_id, None)
        assert h.peer.group is not None
        h.peer.group.transfer_leader(self.cluster[store_id])

    def _on_change(self, region: Region, change: raftcmd.ChangePeer) -> None:
        # Driver thread, right after the change is applied on this replica.
        self._notify(region)
        if change.store_id != self.store_id:
            return
        if change.change == raftcmd.PROMOTE_LEARNER:
            # Re-create our group as a voter (the log is kept in the store).
            self.driver.defer(lambda: self._restart_group(region))
        elif change.change == raftcmd.REMOVE_PEER:
            self.driver.defer(lambda: self._destroy_peer(region))

    def _restart_group(self, region: Region) -> None:
        peer = self.peers[region.id]
        self.driver.remove_group(region.id)
        self.driver.log_store.flush()
        voters = [self.cluster[p.store_id] for p in region.peers if not p.is_learner]
        peer.group = self.driver.add_group(region.id, voters, peer, self.config.raft)

    def _destroy_peer(self, region: Region) -> None:
        """This store no longer replicates ``region``: drop its group, log and
        data here."""
        with self._peers_lock:
            peer = self.peers.pop(region.id, None)
            self.schedulers.pop(region.id, None)
            self.rawstores.pop(region.id, None)
            self.sinks.pop(region.id, None)
        if peer is None:
            return
        if peer.observer is not None:
            peer.observer.on_destroy(region)
        self.driver.remove_group(region.id, drop_log=True)
        b = WriteBatch()
        end = region.end_key or b"\xff"
        for cf in DATA_CFS:
            b.delete_range(cf, region.start_key, end)
        b.delete(CF_RAFT, meta_key(region.id))
        b.delete(CF_RAFT, applied_key(region.id))
        self.engine.write(b, sync=True)

    def _on_split(self, left: Region, right: Region) -> None:
        # Driver thread, right after the split entry is applied here.
        if right.id not in self.peers:
            self._start_peer(right, fresh=True)
        # The left half's last snapshot still covers the right half: sent to
        # a replica created since (a learner added late), it would be refused
        # there (SnapshotOverlapError) or replay the split. Take a new one.
        left_peer = self.peers.get(left.id)
        if left_peer is not None and left_peer.group is not None:
            left_peer.group.request_compaction()
        self._notify(left)
        self._notify(right)

    def region(
        self, region_id: int, epoch: RegionEpoch | None, *, leader: bool = True
    ) -> RegionHandle:
        """Route a request: the Region must be here, led here (unless
        ``leader=False``), and at the epoch the request was routed with."""
        peer = self.peers.get(region_id)
        if peer is None:
            raise RegionNotFoundError(region_id)
        # Read before the leadership check: leading in this term then means
        # every write of earlier terms is in our applied state.
        term = peer.group.term() if leader and peer.group is not None else None
        if leader and not peer.is_leader():
            raise self.not_leader(peer)
        if epoch is not None and epoch.version != peer.region.epoch.version:
            raise EpochNotMatchError(region_id, self.regions_overlapping(peer.region))
        return RegionHandle(self, peer, term)

    def not_leader(self, peer: Peer) -> NotLeaderError:
        leader_addr = peer.group.leader() if peer.group is not None else None
        leader_store = next((sid for sid, a in self.cluster.items() if a == leader_addr), 0)
        leader_peer = next((p.id for p in peer.region.peers if p.store_id == leader_store), 0)
        return NotLeaderError(peer.region_id, leader_store, leader_peer)

    def regions_overlapping(self, region: Region) -> list[Region]:
        out = []
        for p in list(self.peers.values()):
            r = p.region
            if (not region.end_key or r.start_key < region.end_key) and (
                not r.end_key or r.end_key > region.start_key
            ):
                out.append(r)
        return sorted(out, key=lambda r: r.start_key)

    def region_for_key(self, encoded_key: bytes) -> Region | None:
        for p in list(self.peers.values()):
            if p.region.contains(encoded_key):
                return p.region
        return None

    def all_regions(self) -> list[Region]:
        return sorted((p.region for p in list(self.peers.values())), key=lambda r: r.start_key)

    # ------------------------------------------------------------ split
    def alloc_id(self) -> int:
        if self.config.id_allocator is not None:
            return self.config.id_allocator(1)
        with self._id_lock:
            n = decode_u64(self.engine.get(CF_RAFT, ID_ALLOC_KEY)) + 1
            b = WriteBatch()
            b.put(CF_RAFT, ID_ALLOC_KEY, encode_u64(n))
            self.engine.write(b, sync=True)
            return (self.store_id << ID_BITS) | n

    def split_region(self, region_id: int, split_key: bytes) -> tuple[Region, Region]:
        """Propose splitting ``region_id`` at encoded ``split_key`` (leader)."""
        handle = self.region(region_id, None)
        new_id = self.alloc_id()
        peer_ids = tuple(self.alloc_id() for _ in handle.region.peers)
        req = raftcmd.SplitRequest(split_key, new_id, peer_ids)
        return handle.peer.propose_split(req)

    def approximate_keys(self, region: Region) -> tuple[int, bytes | None]:
        """Distinct keys in the Region (write CF user keys and raw keys) and
        the middle one: a split point that halves it."""
        keys: list[bytes] = []
        last = None
        end = region.end_key or None
        for vk, _ in self.engine.scan(CF_WRITE, region.start_key, end):
            k = vk[:-8]
            if k != last:
                keys.append(k)
                last = k
        raw_lo, raw_hi = codec.raw_range(b"", None)
        lo, hi = max(region.start_key, raw_lo), raw_hi if not end else min(end, raw_hi)
        if lo < hi:
            keys.extend(k for k, _ in self.engine.scan(CF_DEFAULT, lo, hi))
        keys.sort()
        if len(keys) < 2:
            return len(keys), None
        return len(keys), keys[len(keys) // 2]

    def _split_check_loop(self) -> None:
        while not self._stop.wait(self.config.split_check_interval):
            for peer in list(self.peers.values()):
                if not peer.is_leader():
                    continue
                try:
                    n, mid = self.approximate_keys(peer.region)
                    if n > self.config.split_threshold_keys and mid is not None:
                        left, right = self.split_region(peer.region_id, mid)
                        log.info(
                            "store %d split region %d at %r -> %d",
                            self.store_id,
                            left.id,
                            mid,
                            right.id,
                        )
                except Exception:  # a failed check is retried next round
                    log.exception("split check of region %d failed", peer.region_id)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._stop.set()
        if self._checker is not None:
            self._checker.join(timeout=5)
        self.driver.stop()
        self.engine.close()
