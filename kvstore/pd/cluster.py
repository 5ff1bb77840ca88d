"""PD's replicated state machine: what every PD member agrees on.

:class:`ClusterState` is the state machine of PD's one Raft group
(:class:`raft.SnapshotMachine`): the leader turns requests into commands
(:func:`encode_command`), the group replicates them, and every member applies
them in log order (:meth:`ClusterState.apply`). The state lives in memory;
it is rebuilt at start-up from the latest snapshot plus the log after it.

State: the cluster id (random, chosen by the first PD leader), the
bootstrapped flag, the TSO high-water mark, the ID allocator's reserved end,
the stores, the Region directory, the GC safe point and the PD members'
addresses.

Commands are JSON objects ``{"v": 1, "op": ..., ...}`` (bytes as hex): the
log must never execute anything when it is read (pysyncobj pickles; we do
not). A command this version does not understand is skipped identically on
every member and answered with an error result.

Determinism: :meth:`ClusterState.apply` reads no clock and draws no random
number; the random cluster id and every timestamp come inside commands.

Invariants enforced at apply (so that they hold whichever leader proposed):

* a Region is replaced only by a *newer* epoch of itself (``version`` and
  ``conf_ver`` never go down; an equal epoch changes nothing), and a Region
  is refused when an overlapping Region has a newer ``version``; Regions it
  overlaps with are dropped (a split's halves replace the parent);
* the TSO high-water mark is extended by compare-and-set on its previous
  value, so an oracle that lost leadership can never extend it again;
* ids are reserved in ranges from ``id_end`` upwards and never reused; ids a
  store or Region brings along (bootstrap) push ``id_end`` above them;
* the GC safe point never moves backwards; a tombstone store stays one.

Leader-only soft state (Region leaders, heartbeat times, ...) is not here: it
lives in the server and is rebuilt from heartbeats after a leader change.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from kvstore.errors import InvalidArgumentError
from kvstore.types import (
    PdMember,
    Peer,
    Region,
    RegionEpoch,
    StoreMeta,
    StoreState,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Results of commands that can be refused (apply returns them to the proposer).
OK = "ok"
STALE = "stale"
ALREADY_BOOTSTRAPPED = "already_bootstrapped"
TOMBSTONE = "tombstone"
HWM_MOVED = "hwm_moved"
UNKNOWN_COMMAND = "unknown_command"


# --------------------------------------------------------------------------
# Encoding of values inside commands and snapshots
# --------------------------------------------------------------------------
def region_to_json(r: Region) -> dict[str, Any]:
    return {
        "id": r.id,
        "start": r.start_key.hex(),
        "end": r.end_key.hex(),
        "conf_ver": r.epoch.conf_ver,
        "version": r.epoch.version,
        "peers": [[p.id, p.store_id, int(p.is_learner)] for p in r.peers],
    }


def region_from_json(d: dict[str, Any]) -> Region:
    return Region(
        id=int(d["id"]),
        start_key=bytes.fromhex(d["start"]),
        end_key=bytes.fromhex(d["end"]),
        epoch=RegionEpoch(conf_ver=int(d["conf_ver"]), version=int(d["version"])),
        peers=tuple(Peer(int(i), int(s), bool(lr)) for i, s, lr in d["peers"]),
    )


def store_to_json(s: StoreMeta) -> dict[str, Any]:
    return {
        "id": s.id,
        "address": s.address,
        "state": int(s.state),
        "labels": [list(kv) for kv in s.labels],
        "version": s.version,
        "raft_address": s.raft_address,
        "status_address": s.status_address,
        "start_timestamp": s.start_timestamp,
    }


def store_from_json(d: dict[str, Any]) -> StoreMeta:
    return StoreMeta(
        id=int(d["id"]),
        address=str(d["address"]),
        state=StoreState(int(d["state"])),
        labels=tuple((str(k), str(v)) for k, v in d["labels"]),
        version=str(d["version"]),
        raft_address=str(d["raft_address"]),
        status_address=str(d["status_address"]),
        start_timestamp=int(d["start_timestamp"]),
    )


def member_to_json(m: PdMember) -> dict[str, Any]:
    return {"name": m.name, "id": m.member_id, "client": m.client_addr, "peer": m.peer_addr}


def member_from_json(d: dict[str, Any]) -> PdMember:
    return PdMember(str(d["name"]), int(d["id"]), str(d["client"]), str(d["peer"]))


def encode_command(op: str, **fields: Any) -> bytes:
    """One replicated command (see the module docstring for the format)."""
    return json.dumps({"v": FORMAT_VERSION, "op": op, **fields}, separators=(",", ":")).encode()


# Command builders: the leader's vocabulary.
def cmd_init(cluster_id: int) -> bytes:
    return encode_command("init", cluster_id=cluster_id)


def cmd_bootstrap(store: StoreMeta, region: Region) -> bytes:
    return encode_command("bootstrap", store=store_to_json(store), region=region_to_json(region))


def cmd_tso(prev_hwm: int, hwm: int) -> bytes:
    return encode_command("tso", prev=prev_hwm, hwm=hwm)


def cmd_alloc(count: int) -> bytes:
    return encode_command("alloc", count=count)


def cmd_put_store(store: StoreMeta) -> bytes:
    return encode_command("put_store", store=store_to_json(store))


def cmd_regions(regions: list[Region]) -> bytes:
    return encode_command("regions", regions=[region_to_json(r) for r in regions])


def cmd_gc(safe_point: int) -> bytes:
    return encode_command("gc", safe_point=safe_point)


def cmd_member(member: PdMember) -> bytes:
    return encode_command("member", member=member_to_json(member))


# --------------------------------------------------------------------------
# Epoch rules (pure)
# --------------------------------------------------------------------------
def epoch_is_stale(new: RegionEpoch, old: RegionEpoch) -> bool:
    """``new`` is older than ``old`` in either counter."""
    return new.version < old.version or new.conf_ver < old.conf_ver


def overlaps(a: Region, b: Region) -> bool:
    a_before_b_ends = not b.end_key or a.start_key < b.end_key
    b_before_a_ends = not a.end_key or b.start_key < a.end_key
    return a_before_b_ends and b_before_a_ends


class ClusterState:
    """The replicated PD state (see the module docstring). Thread-safe:
    ``apply`` runs in the Raft driver thread, reads in gRPC threads; every
    read goes through the lock and returns immutable values."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.applied_index = 0
        self.cluster_id = 0
        self.bootstrapped = False
        self.tso_hwm = 0
        self.id_end = 1  # ids below are handed out (in ranges); 0 is never an id
        self.stores: dict[int, StoreMeta] = {}
        self.regions: dict[int, Region] = {}
        self._starts: list[tuple[bytes, int]] = []  # sorted (start_key, region id)
        self.gc_safe_point = 0
        self.members: dict[str, PdMember] = {}
        # Bumped whenever the Region directory changes: callers cache views of it.
        self.region_generation = 0

    # ------------------------------------------------------------ apply
    def apply(self, index: int, commands: list[bytes]) -> list[Any]:
        with self.lock:
            if index <= self.applied_index:  # replayed after a snapshot we already hold
                return [None] * len(commands)
            self.applied_index = index
            return [self._apply_one(c) for c in commands]

    def _apply_one(self, data: bytes) -> Any:
        try:
            cmd = json.loads(data)
            if cmd.get("v") != FORMAT_VERSION:
                raise ValueError(f"command version {cmd.get('v')}")
            handler = getattr(self, "_op_" + str(cmd["op"]), None)
            if handler is None:
                raise ValueError(f"unknown op {cmd['op']!r}")
            return handler(cmd)
        except (ValueError, KeyError, TypeError) as e:
            # Identical on every member (same bytes, same code): skipping is safe.
            log.error("skipping PD command %r: %s", data[:200], e)
            return UNKNOWN_COMMAND

    def _bump_ids(self, *ids: int) -> None:
        top = max(ids, default=0)
        if top >= self.id_end:
            self.id_end = top + 1

    def _op_init(self, cmd: dict[str, Any]) -> int:
        if self.cluster_id == 0:
            self.cluster_id = int(cmd["cluster_id"])
        return self.cluster_id

    def _op_bootstrap(self, cmd: dict[str, Any]) -> str:
        store = store_from_json(cmd["store"])
        region = region_from_json(cmd["region"])
        if self.bootstrapped:
            first = self.regions.get(region.id)
            # A retried bootstrap (the first answer was lost) succeeds again.
            same = first is not None and store.id in self.stores
            return OK if same else ALREADY_BOOTSTRAPPED
        self.bootstrapped = True
        self.stores[store.id] = store
        self._put_region(region)
        self._bump_ids(store.id, region.id, *(p.id for p in region.peers))
        return OK

    def _op_tso(self, cmd: dict[str, Any]) -> str:
        if int(cmd["prev"]) != self.tso_hwm:
            return HWM_MOVED  # another leader extended it since: this oracle is stale
        self.tso_hwm = max(self.tso_hwm, int(cmd["hwm"]))
        return OK

    def _op_alloc(self, cmd: dict[str, Any]) -> int:
        count = int(cmd["count"])
        if count <= 0:
            raise ValueError("alloc count must be positive")
        first = self.id_end
        self.id_end += count
        return first

    def _op_put_store(self, cmd: dict[str, Any]) -> str:
        store = store_from_json(cmd["store"])
        old = self.stores.get(store.id)
        if old is not None and old.state == StoreState.TOMBSTONE:
            return TOMBSTONE
        self.stores[store.id] = store
        self._bump_ids(store.id)
        return OK

    def _op_regions(self, cmd: dict[str, Any]) -> list[bool]:
        out = []
        for d in cmd["regions"]:
            r = region_from_json(d)
            ok = self._put_region(r)
            if ok:
                self._bump_ids(r.id, *(p.id for p in r.peers))
            out.append(ok)
        return out

    def _op_gc(self, cmd: dict[str, Any]) -> int:
        self.gc_safe_point = max(self.gc_safe_point, int(cmd["safe_point"]))
        return self.gc_safe_point

    def _op_member(self, cmd: dict[str, Any]) -> str:
        m = member_from_json(cmd["member"])
        self.members[m.name] = m
        return OK

    # ------------------------------------------------------------ regions
    def check_region(self, r: Region) -> str:
        """What putting ``r`` would do: ``OK`` (it is news), ``STALE`` (an
        older or equal epoch than what is known). Pure read."""
        with self.lock:
            old = self.regions.get(r.id)
            if old is not None and (epoch_is_stale(r.epoch, old.epoch) or r.epoch == old.epoch):
                return STALE
            for o in self._overlapping(r):
                if o.id != r.id and o.epoch.version > r.epoch.version:
                    return STALE
            return OK

    def _put_region(self, r: Region) -> bool:
        if self.check_region(r) != OK:
            return False
        old = self.regions.get(r.id)
        if old is not None:
            self._unindex(old)
        for o in list(self._overlapping(r)):
            if o.id != r.id:
                self._unindex(o)
                del self.regions[o.id]
        self.regions[r.id] = r
        bisect.insort(self._starts, (r.start_key, r.id))
        self.region_generation += 1
        return True

    def _unindex(self, r: Region) -> None:
        i = bisect.bisect_left(self._starts, (r.start_key, r.id))
        if i < len(self._starts) and self._starts[i] == (r.start_key, r.id):
            del self._starts[i]

    def _overlapping(self, r: Region) -> Iterator[Region]:
        # The Region starting at or before r.start_key, then every one
        # starting inside r.
        i = bisect.bisect_right(self._starts, (r.start_key, 2**64)) - 1
        for _, rid in self._starts[max(i, 0) :]:
            o = self.regions[rid]
            if r.end_key and o.start_key >= r.end_key:
                break
            if overlaps(o, r):
                yield o

    def region_by_key(self, key: bytes) -> Region | None:
        with self.lock:
            i = bisect.bisect_right(self._starts, (key, 2**64)) - 1
            if i < 0:
                return None
            r = self.regions[self._starts[i][1]]
            return r if r.contains(key) else None

    def scan_regions(self, start: bytes, end: bytes, limit: int) -> list[Region]:
        """Regions overlapping ``[start, end)`` (``end`` empty: unbounded) in
        key order, at most ``limit`` (0: all)."""
        with self.lock:
            i = max(bisect.bisect_right(self._starts, (start, 2**64)) - 1, 0)
            out: list[Region] = []
            for _, rid in self._starts[i:]:
                r = self.regions[rid]
                if end and r.start_key >= end:
                    break
                if r.end_key and r.end_key <= start:
                    continue
                out.append(r)
                if limit and len(out) >= limit:
                    break
            return out

    # ------------------------------------------------------------ snapshots
    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "v": FORMAT_VERSION,
                "applied_index": self.applied_index,
                "cluster_id": self.cluster_id,
                "bootstrapped": self.bootstrapped,
                "tso_hwm": self.tso_hwm,
                "id_end": self.id_end,
                "stores": [store_to_json(s) for s in self.stores.values()],
                "regions": [region_to_json(r) for r in self.regions.values()],
                "gc_safe_point": self.gc_safe_point,
                "members": [member_to_json(m) for m in self.members.values()],
            }

    def load_json(self, d: dict[str, Any]) -> None:
        if d.get("v") != FORMAT_VERSION:
            raise InvalidArgumentError(f"PD snapshot of unknown version {d.get('v')}")
        with self.lock:
            self.applied_index = int(d["applied_index"])
            self.cluster_id = int(d["cluster_id"])
            self.bootstrapped = bool(d["bootstrapped"])
            self.tso_hwm = int(d["tso_hwm"])
            self.id_end = int(d["id_end"])
            self.stores = {s.id: s for s in map(store_from_json, d["stores"])}
            self.regions = {r.id: r for r in map(region_from_json, d["regions"])}
            self._starts = sorted((r.start_key, r.id) for r in self.regions.values())
            self.gc_safe_point = int(d["gc_safe_point"])
            self.members = {m.name: m for m in map(member_from_json, d["members"])}
            self.region_generation += 1

    def write_snapshot(self, f: BinaryIO) -> None:
        f.write(json.dumps(self.to_json(), separators=(",", ":")).encode())

    def read_snapshot(self, f: BinaryIO) -> None:
        d = json.loads(f.read())
        with self.lock:
            if int(d["applied_index"]) <= self.applied_index:
                return  # ours is as new (pysyncobj re-reads our own at start-up)
            self.load_json(d)


class IdAllocator:
    """The leader's ID allocator (TiKV PD's scheme): reserve ``step`` ids per
    replicated ``alloc`` command, hand them out from memory. A new leader
    starts with an empty range, so ids a deposed leader still held are
    skipped, never handed out twice. Not replicated itself; thread-safe."""

    def __init__(self, reserve: Callable[[int], int], step: int = 1000) -> None:
        self._reserve = reserve  # proposes cmd_alloc(count), returns the first id
        self.step = step
        self._next = 0
        self._end = 0
        self._lock = threading.Lock()

    def alloc(self, count: int = 1) -> int:
        """``count`` consecutive fresh ids; returns the first."""
        if count <= 0:
            raise InvalidArgumentError("count must be positive")
        with self._lock:
            if self._end - self._next < count:
                # Consecutive ids must come from one range: a range too short
                # for the request is dropped (its ids are simply never used).
                n = max(self.step, count)
                first = self._reserve(n)
                self._next, self._end = first, first + n
            first = self._next
            self._next += count
            return first


__all__ = [
    "ALREADY_BOOTSTRAPPED",
    "HWM_MOVED",
    "OK",
    "STALE",
    "TOMBSTONE",
    "UNKNOWN_COMMAND",
    "ClusterState",
    "IdAllocator",
    "cmd_alloc",
    "cmd_bootstrap",
    "cmd_gc",
    "cmd_init",
    "cmd_member",
    "cmd_put_store",
    "cmd_regions",
    "cmd_tso",
    "encode_command",
    "epoch_is_stale",
    "overlaps",
]
