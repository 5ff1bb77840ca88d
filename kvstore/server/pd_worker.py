"""The store's side of the placement driver (TiKV's ``pd_worker``).

Three loops, each its own thread so that a slow one (an operator that waits
for a Raft round, a GC pass over a big Region) never delays the others:

* **store heartbeat** (every ``store_heartbeat_s``): reports this store's
  Regions with their epochs; PD answers with the store directory (Raft
  addresses of every store), peers to create here (a learner PD added), peers
  to destroy here (removed while this store was away), and the GC safe point.
* **region heartbeat** (every ``region_heartbeat_s``, and at once after a
  split or membership change applied here): for each Region this store
  leads, its meta, pending and down peers. PD may answer with one operator
  step (add learner, promote, remove, transfer leader), executed here if the
  Region's epoch has not moved since.
* **GC** (every ``gc_interval_s``): each Region led here drops the versions
  that the safe point makes unreachable (``kv_gc``).

PD being unreachable is not an error here: the store keeps serving with what
it knows, and the loops try again next round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvstore.client.pd_client import PdClient
from kvstore.errors import KVError
from kvstore.proto import metapb_pb2, pdpb_pb2
from kvstore.proto.convert import region_from_pb, region_to_pb
from kvstore.raftstore import Store
from kvstore.types import Region

log = logging.getLogger(__name__)

# A learner this many entries or fewer behind the leader's commit index
# counts as caught up: under a steady write load it never reaches zero.
CAUGHT_UP_SLACK = 64


@dataclass
class PdWorkerConfig:
    store_heartbeat_s: float = 1.0
    region_heartbeat_s: float = 2.0
    gc_interval_s: float = 10.0


def _peer_pb(peer: Any) -> metapb_pb2.Peer:
    return metapb_pb2.Peer(
        id=peer.id,
        store_id=peer.store_id,
        role=metapb_pb2.Learner if peer.is_learner else metapb_pb2.Voter,
    )


class PdWorker:
    def __init__(
        self,
        store: Store,
        pd: PdClient,
        data_dir: str,
        config: PdWorkerConfig | None = None,
    ) -> None:
        self.store = store
        self.pd = pd
        self.data_dir = data_dir
        self.config = config or PdWorkerConfig()
        self.gc_safe_point = 0
        self.kv_addrs: dict[int, str] = {}  # store id -> Kv address, from PD
        self.started = time.time()
        self.stats: dict[str, int] = {
            "operators": 0,
            "gc_runs": 0,
            "gc_scans_skipped": 0,
            "gc_versions_removed": 0,
        }
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._dirty: set[int] = set()
        self._dirty_mu = threading.Lock()
        self._threads: list[threading.Thread] = []
        store.on_region_changed(self._on_region_changed)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for name, loop in (
            ("store-hb", self._store_heartbeat_loop),
            ("region-hb", self._region_heartbeat_loop),
            ("gc", self._gc_loop),
        ):
            t = threading.Thread(target=loop, name=f"pd-{name}-{self.store.store_id}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        for t in self._threads:
            t.join(timeout=10)

    def _every(self, interval: float, fn: Callable[[], None], *, kick: bool = False) -> None:
        while not self._stop.is_set():
            try:
                fn()
            except KVError as e:  # PD away, a Region moved: next round
                log.info("%s: %s", fn.__name__, e)
            except Exception:
                log.exception("%s failed", fn.__name__)
            if kick:
                self._kick.wait(interval)
                self._kick.clear()
            else:
                self._stop.wait(interval)

    # ------------------------------------------------------------ store heartbeat
    def _store_heartbeat_loop(self) -> None:
        self._every(self.config.store_heartbeat_s, self.store_heartbeat)

    def store_stats(self) -> pdpb_pb2.StoreStats:
        st = self.store
        peers = list(st.peers.values())
        usage = shutil.disk_usage(self.data_dir)
        stats = pdpb_pb2.StoreStats(
            store_id=st.store_id,
            region_count=len(peers),
            leader_count=sum(1 for p in peers if p.is_leader()),
            capacity=usage.total,
            available=usage.free,
            used_size=_dir_size(self.data_dir),
            start_time=int(self.started),
        )
        for p in peers:
            r = p.region
            rep = stats.replicas.add(region_id=r.id, peer_id=p.meta.id)
            rep.region_epoch.conf_ver = r.epoch.conf_ver
            rep.region_epoch.version = r.epoch.version
        return stats

    def store_heartbeat(self) -> None:
        resp = self.pd.store_heartbeat(self.store_stats())
        for s in resp.stores:
            if s.raft_address and s.id != self.store.store_id:
                self.store.add_store(s.id, s.raft_address)
            if s.address:
                self.kv_addrs[s.id] = s.address
        self.gc_safe_point = max(self.gc_safe_point, resp.gc_safe_point)
        for rid in resp.destroy_peers:
            log.info(
                "store %d: destroying region %d (no longer a member)", self.store.store_id, rid
            )
            self.store.destroy_peer(rid)
        for r_pb in resp.create_peers:
            region = region_from_pb(r_pb)
            if self.store.create_peer(region):
                log.info("store %d: created a peer of region %d", self.store.store_id, region.id)

    # ------------------------------------------------------------ region heartbeat
    def _on_region_changed(self, region: Region) -> None:
        with self._dirty_mu:
            self._dirty.add(region.id)
        self._kick.set()

    def _region_heartbeat_loop(self) -> None:
        last_full = 0.0
        led: dict[int, bool] = {}

        def round_() -> None:
            nonlocal last_full
            now = time.monotonic()
            with self._dirty_mu:
                dirty, self._dirty = self._dirty, set()
            # A peer that just became leader reports at once, so PD (and the
            # clients that ask it) learn the new leader within a round.
            for rid, peer in list(self.store.peers.items()):
                leads = peer.is_leader()
                if leads and not led.get(rid):
                    dirty.add(rid)
                led[rid] = leads
            if now - last_full >= self.config.region_heartbeat_s:
                last_full = now
                ids = list(self.store.peers)
            else:
                ids = list(dirty)
            for rid in ids:
                self.region_heartbeat(rid)

        # Woken by a split or membership change; otherwise a full round at the
        # heartbeat interval. A short wait lets a burst of changes share a round.
        self._every(min(self.config.region_heartbeat_s, 0.2), round_, kick=True)

    def _progress(self, peer: Any) -> tuple[list[metapb_pb2.Peer], list[metapb_pb2.Peer]]:
        """(pending, down) peers of a Region led here, from the leader's
        replication state."""
        group = peer.group
        if group is None:
            return [], []
        status = self.store.driver.call(group.status, timeout=5.0)
        commit = int(status.get("commit_idx", 0))
        pending: list[metapb_pb2.Peer] = []
        down: list[metapb_pb2.Peer] = []
        for p in peer.region.peers:
            if p.store_id == self.store.store_id:
                continue
            addr = self.store.cluster.get(p.store_id)
            if addr is None:
                pending.append(_peer_pb(p))
                continue
            match = status.get(f"match_idx_server_{addr}")
            kind = "readonly_node" if p.is_learner else "partner_node"
            connected = status.get(f"{kind}_status_server_{addr}", 0) == 2
            if match is None or int(match) + CAUGHT_UP_SLACK < commit:
                pending.append(_peer_pb(p))
            if not connected and not p.is_learner:
                down.append(_peer_pb(p))
        return pending, down

    def region_heartbeat(self, region_id: int) -> None:
        peer = self.store.peers.get(region_id)
        if peer is None or not peer.is_leader():
            return
        region = peer.region
        pending, down = self._progress(peer)
        req = pdpb_pb2.RegionHeartbeatRequest(
            region=region_to_pb(region),
            leader=_peer_pb(peer.meta),
            applied_index=peer.applied_index,
        )
        if peer.group is not None:
            req.term = peer.group.term()
        req.pending_peers.extend(pending)
        for d in down:
            req.down_peers.add(peer=d)
        resp = self.pd.region_heartbeat(req)
        if pending:
            # A replica is catching up: report again soon, so PD can promote
            # it as soon as it is there rather than a full interval later.
            with self._dirty_mu:
                self._dirty.add(region.id)
        self.execute(region, resp)

    def execute(self, region: Region, resp: pdpb_pb2.RegionHeartbeatResponse) -> None:
        """Run the operator step PD answered with, if the Region is still at
        the epoch PD decided on."""
        has_change = resp.HasField("change_peer")
        has_transfer = resp.HasField("transfer_leader")
        if not has_change and not has_transfer:
            return
        peer = self.store.peers.get(region.id)
        if peer is None:
            return
        cur = peer.region.epoch
        want = resp.region_epoch
        if resp.HasField("region_epoch") and (
            cur.conf_ver != want.conf_ver or cur.version != want.version
        ):
            return  # PD decided on an older view; it will decide again
        st = self.store
        self.stats["operators"] += 1
        if has_transfer:
            target = resp.transfer_leader.peer.store_id
            log.info(
                "store %d: region %d transfer leader -> store %d", st.store_id, region.id, target
            )
            st.transfer_leader(region.id, target)
            return
        change = resp.change_peer
        target = change.peer.store_id
        if change.change_type == pdpb_pb2.AddLearnerNode:
            log.info("store %d: region %d add learner on store %d", st.store_id, region.id, target)
            st.add_learner(region.id, target, peer_id=change.peer.id or None)
        elif change.change_type == pdpb_pb2.AddNode:
            log.info(
                "store %d: region %d promote learner on store %d", st.store_id, region.id, target
            )
            st.promote_learner(region.id, target)
        elif change.change_type == pdpb_pb2.RemoveNode:
            if target == st.store_id:
                # The leader cannot remove itself: hand leadership to another
                # voter; the new leader gets the same operator.
                other = next(
                    (
                        p.store_id
                        for p in peer.region.peers
                        if p.store_id != target and not p.is_learner
                    ),
                    None,
                )
                if other is not None:
                    st.transfer_leader(region.id, other)
                return
            log.info("store %d: region %d remove peer on store %d", st.store_id, region.id, target)
            st.remove_peer(region.id, target)
        self._on_region_changed(region)

    # ------------------------------------------------------------ GC
    def _gc_loop(self) -> None:
        self._every(self.config.gc_interval_s, self.gc_round)

    def gc_round(self) -> None:
        """Drop versions below the safe point in every Region led here."""
        sp = self.gc_safe_point
        if sp <= 0:
            return
        for rid, peer in list(self.store.peers.items()):
            if not peer.is_leader():
                continue
            scheduler = self.store.schedulers.get(rid)
            if scheduler is None or scheduler.gc_safe_point >= sp:
                continue
            group = peer.group
            try:
                # The term: all writes of the Region pass through this
                # leader's scheduler while it lasts (GC may then skip a scan
                # that could collect nothing).
                stats = scheduler.kv_gc(sp, epoch=group.term() if group is not None else None)
            except KVError as e:
                # A lock at or below the safe point: its owner's readers may
                # still need the old versions. Clients resolve such locks
                # when they meet them; GC tries again next round.
                log.info("store %d: GC of region %d deferred: %s", self.store.store_id, rid, e)
                continue
            self.stats["gc_runs"] += 1
            self.stats["gc_scans_skipped"] += stats.skipped
            self.stats["gc_versions_removed"] += stats.versions_removed


def _dir_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file compacted away while we walked
                total += os.path.getsize(os.path.join(root, f))
    return total


__all__ = ["PdWorker", "PdWorkerConfig"]
