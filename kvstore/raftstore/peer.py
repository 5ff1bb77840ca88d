"""A Peer: one store's replica of one Region.

The peer is the Raft group's state machine. Apply runs in the Raft driver
thread, entry by entry in log order, and for each entry writes one engine
batch holding the data of every command in it *and* the Region's applied
index, so a restart resumes exactly after the last applied entry (entries
at or below it are skipped when pysyncobj replays its log).

Per command, apply checks (identically on every replica, so replicas never
diverge):

* the command's epoch equals the Region's, else :class:`EpochNotMatchError`
  (a split or membership change was ordered before it);
* every data key lies inside the Region, else :class:`KeyNotInRegionError`.

Writes are not fsync'd here: the Raft log is the durable record and is
replayed over the engine after a crash.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from kvstore.errors import (
    EpochNotMatchError,
    KeyNotInRegionError,
    NotLeaderError,
    ProposalDroppedError,
)
from kvstore.raftstore import cmd as raftcmd
from kvstore.raftstore.meta import (
    applied_key,
    decode_region,
    decode_u64,
    encode_region,
    encode_u64,
    meta_key,
)
from kvstore.storage import CF_RAFT, DATA_CFS, Engine, WriteBatch
from kvstore.storage.engine import OP_DELETE_RANGE
from kvstore.types import Peer as PeerMeta
from kvstore.types import Region, RegionEpoch
from raft import ProposalError

if TYPE_CHECKING:
    from raft import RaftGroup

_U32 = struct.Struct(">I")
_REC = struct.Struct(">BII")
_END = 255
# A snapshot's writing loop holds the GIL for ~1 µs per record; without a
# break, a thread that wakes (the Raft driver) waits out the interpreter's
# switch interval (5 ms) each time. Yielding this often keeps ~80% of the
# put rate while a snapshot is written, against ~20% without, at the cost
# of a snapshot taking ~4x longer (tests/snapshot_stall.py).
SNAPSHOT_YIELD_EVERY = 128

# A Region born of a split starts its Raft log after this index, with the
# data it inherited as the state at it (TiKV's RAFT_INIT_LOG_INDEX): a replica
# created later for it, which has none of that data, cannot be fed the log
# from the start and must install a snapshot. pysyncobj's own log starts at 1,
# so an index above 2 keeps a new replica's first entry from matching.
RAFT_INIT_INDEX = 5


class SnapshotOverlapError(Exception):
    """A snapshot covers keys another replica on this store holds (it was
    taken before a split this store already has the result of). Installing it
    would delete that replica's data; the leader sends a newer one."""


WriteOp = tuple[int, str, bytes, bytes | None]  # a WriteBatch op: (op, cf, key, value)


class ApplyObserver(Protocol):
    """Sees every change a replica's data goes through, in log order, in the
    Raft driver thread (keep it short). The columnar learner builds its Arrow
    replica from these."""

    def on_apply(self, region: Region, index: int, ops: list[WriteOp]) -> None:
        """The ops of log entry ``index``, just written to the engine (data
        CFs, and ``raft`` CF keys such as the GC safe point)."""

    def on_reset(self, region: Region, index: int) -> None:
        """The Region's data in the engine was replaced (a snapshot installed)
        or is being taken up (the replica starts): read it afresh from the
        engine; it is the state at log ``index``."""

    def on_destroy(self, region: Region) -> None:
        """The replica is gone from this store; its data goes too."""


class Peer:
    def __init__(
        self,
        region: Region,
        store_id: int,
        engine: Engine,
        on_split: Callable[[Region, Region], None],
        on_change: Callable[[Region, raftcmd.ChangePeer], None] | None = None,
    ) -> None:
        self.region = region
        self.store_id = store_id
        self.engine = engine
        self._on_split = on_split
        self._on_change = on_change
        self.applied_index = decode_u64(engine.get(CF_RAFT, applied_key(region.id)))
        self.group: RaftGroup | None = None  # set by the store once created
        self.snapshots_installed = 0
        self.lock = threading.Lock()  # guards ``region`` for readers outside the driver
        self.observer: ApplyObserver | None = None
        # Set by the store: the other replicas here whose range overlaps a
        # given Region (a snapshot over their keys is refused).
        self.overlapping: Callable[[Region], list[Region]] | None = None

    @property
    def region_id(self) -> int:
        return self.region.id

    @property
    def meta(self) -> PeerMeta:
        return next(p for p in self.region.peers if p.store_id == self.store_id)

    def propose_change(self, change: raftcmd.ChangePeer) -> Region:
        r = self.region
        result: Region = self.propose(raftcmd.encode_change_peer(r.id, r.epoch, change))
        return result

    # ------------------------------------------------------------ apply
    def apply(self, index: int, commands: list[bytes]) -> list[Any]:
        if index <= self.applied_index:
            return [None] * len(commands)  # replay of an entry already in the engine
        batch = WriteBatch()
        results: list[Any] = []
        splits: list[tuple[Region, Region]] = []
        changes: list[tuple[Region, raftcmd.ChangePeer]] = []
        for data in commands:
            write = raftcmd.decode_write(data)
            if write is not None:  # the common case, without building a RaftCmd
                conf_ver, version, ops = write
                region = self.region
                epoch = region.epoch
                if conf_ver != epoch.conf_ver or version != epoch.version:
                    results.append(EpochNotMatchError(region.id, [region]))
                    continue
                bad = self._key_outside(ops)
                if bad is not None:
                    results.append(
                        KeyNotInRegionError(bad, region.id, region.start_key, region.end_key)
                    )
                    continue
                batch.ops.extend(ops)
                results.append(None)
                continue
            c = raftcmd.decode(data)
            region = self.region
            if c.epoch != region.epoch:
                results.append(EpochNotMatchError(region.id, [region]))
                continue
            if c.kind == raftcmd.SPLIT:  # (writes took the path above)
                assert c.split is not None
                left, right = self._split(region, c.split)
                batch.put(CF_RAFT, meta_key(left.id), encode_region(left))
                batch.put(CF_RAFT, meta_key(right.id), encode_region(right))
                with self.lock:
                    self.region = left
                splits.append((left, right))
                results.append((left, right))
            elif c.kind == raftcmd.CHANGE_PEER:
                assert c.change is not None
                changed = _change_peers(region, c.change)
                if changed is None:
                    results.append(region)  # already done: idempotent
                    continue
                batch.put(CF_RAFT, meta_key(changed.id), encode_region(changed))
                with self.lock:
                    self.region = changed
                changes.append((changed, c.change))
                results.append(changed)
        batch.put(CF_RAFT, applied_key(self.region.id), encode_u64(index))
        self.engine.write(batch)
        self.applied_index = index
        if self.observer is not None and len(batch.ops) > 1:  # more than the applied index
            self.observer.on_apply(self.region, index, batch.ops)
        for left, right in splits:
            self._on_split(left, right)
        if changes and self.group is not None:
            self.group.hurry_commit()  # the replicas concerned act on it when they apply it
        if self._on_change is not None:
            for changed, change in changes:
                self._on_change(changed, change)
        return results

    def _key_outside(self, ops: list[tuple[int, str, bytes, bytes | None]]) -> bytes | None:
        r = self.region
        start, end = r.start_key, r.end_key
        for op, cf, key, value in ops:
            if cf not in DATA_CFS:
                continue
            if key < start or (end and key >= end):  # not r.contains(key), inlined
                return key
            # A range delete must end inside the Region too.
            if op == OP_DELETE_RANGE and r.end_key and value is not None and value > r.end_key:
                return value
        return None

    @staticmethod
    def _split(region: Region, req: raftcmd.SplitRequest) -> tuple[Region, Region]:
        version = region.epoch.version + 1
        epoch = RegionEpoch(region.epoch.conf_ver, version)
        left = Region(region.id, region.start_key, req.split_key, epoch, region.peers)
        peers = tuple(
            PeerMeta(new_id, old.store_id, old.is_learner)
            for new_id, old in zip(req.new_peer_ids, region.peers, strict=True)
        )
        right = Region(req.new_region_id, req.split_key, region.end_key, epoch, peers)
        return left, right

    def log_applied_index(self) -> int:
        """The last Raft log index applied here, whole: every entry up to it
        has been applied, read barriers and pysyncobj's own no-op entries
        included (``applied_index`` counts only entries that carried
        commands, and survives a restart, when pysyncobj starts from 0)."""
        group_applied = self.group.applied_index() if self.group is not None else 0
        return max(self.applied_index, group_applied)

    @property
    def is_member(self) -> bool:
        return any(p.store_id == self.store_id for p in self.region.peers)

    # ------------------------------------------------------------ snapshots
    # Format: u32 + JSON header {region, applied_index}, then records
    # (cf index u8, key length u32, value length u32, key, value), then a
    # record with cf index 255 as the end mark. Taken in the driver thread
    # between two applies, so it is exactly the state at ``applied_index``.
    def write_snapshot(self, f: BinaryIO) -> None:
        self.snapshot_writer()(f)

    def snapshot_writer(self) -> Callable[[BinaryIO], None]:
        """Driver thread, between two applies: the Region's state now (its
        range of every data CF, read through an engine snapshot taken here),
        as a function that writes it later in any thread. A 1M-row Region
        takes seconds to write; the driver must not stop for it."""
        r, index = self.region, self.applied_index
        snap = self.engine.snapshot()

        def write(f: BinaryIO) -> None:
            head = json.dumps({"region": encode_region(r).decode(), "applied_index": index})
            f.write(_U32.pack(len(head)) + head.encode())
            for i, cf in enumerate(DATA_CFS):
                for n, (k, v) in enumerate(snap.scan(cf, r.start_key, r.end_key or None), 1):
                    f.write(_REC.pack(i, len(k), len(v)) + k + v)
                    if n % SNAPSHOT_YIELD_EVERY == 0:
                        time.sleep(0)  # let the driver thread take the GIL
            f.write(_REC.pack(_END, 0, 0))

        return write

    def read_snapshot(self, f: BinaryIO) -> None:
        (n,) = _U32.unpack(f.read(4))
        head = json.loads(f.read(n))
        index = int(head["applied_index"])
        if index <= self.applied_index:
            return  # start-up re-read of our own snapshot: the engine is newer
        region = decode_region(head["region"].encode())
        others = self.overlapping(region) if self.overlapping is not None else []
        if others:
            raise SnapshotOverlapError(
                f"snapshot of region {region.id} at index {index} "
                f"[{region.start_key.hex()}, {region.end_key.hex()}) overlaps region(s) "
                f"{[r.id for r in others]} on store {self.store_id}: refused"
            )
        batch = WriteBatch()
        # Every data key starts with an encoded key-space byte (b"r", b"x"),
        # so b"\xff" lies past all of them.
        end = region.end_key or b"\xff"
        for cf in DATA_CFS:
            batch.delete_range(cf, region.start_key, end)
        while True:
            cfi, klen, vlen = _REC.unpack(f.read(_REC.size))
            if cfi == _END:
                break
            k = f.read(klen)
            batch.put(DATA_CFS[cfi], k, f.read(vlen))
        batch.put(CF_RAFT, meta_key(region.id), encode_region(region))
        batch.put(CF_RAFT, applied_key(region.id), encode_u64(index))
        self.engine.write(batch, sync=True)
        with self.lock:
            self.region = region
        self.applied_index = index
        self.snapshots_installed += 1
        if self.observer is not None:
            self.observer.on_reset(region, index)

    # ------------------------------------------------------------ proposing
    def _group(self) -> RaftGroup:
        if self.group is None:
            raise NotLeaderError(self.region.id)
        return self.group

    def propose(
        self,
        data: bytes,
        timeout: float | None = None,
        *,
        term: int | None = None,
        settle: bool = False,
    ) -> Any:
        """See :meth:`raft.RaftGroup.propose` for ``term`` and ``settle``."""
        try:
            result = self._group().propose(data, timeout, term=term, settle=settle)
        except ProposalError as e:
            if e.unknown:
                raise ProposalDroppedError(self.region.id, e.reason) from None
            raise self.not_leader(e.leader) from None
        if isinstance(result, Exception):
            raise result
        return result

    def propose_async(
        self,
        data: bytes,
        callback: Callable[[Any, Exception | None], None],
        *,
        term: int | None = None,
        settled: Callable[[], None] | None = None,
    ) -> None:
        """:meth:`propose` without waiting: ``callback(result, error)`` gets
        the result or the error :meth:`propose` would raise, in the Raft
        driver thread; ``settled()`` once the entry's fate here is known (see
        :meth:`raft.RaftGroup.propose_async` for both and for ``term``)."""

        def done(result: Any, err: ProposalError | None) -> None:
            if err is not None:
                if err.unknown:
                    callback(None, ProposalDroppedError(self.region.id, err.reason))
                else:
                    callback(None, self.not_leader(err.leader))
            elif isinstance(result, Exception):
                callback(None, result)
            else:
                callback(result, None)

        group = self.group
        if group is None:
            if settled is not None:
                settled()
            callback(None, NotLeaderError(self.region.id))
            return
        group.propose_async(data, done, term=term, settled=settled)

    def propose_write_async(
        self,
        batch: WriteBatch,
        callback: Callable[[Any, Exception | None], None],
        epoch: RegionEpoch | None = None,
        *,
        term: int | None = None,
        settled: Callable[[], None] | None = None,
    ) -> None:
        """:meth:`propose_write` without waiting: the caller hears the outcome
        in ``callback`` (at the deadline at the latest, maybe "unknown") and
        releases its latches in ``settled``, which may come later."""
        data = raftcmd.encode_write(self.region.id, epoch or self.region.epoch, batch)
        self.propose_async(data, callback, term=term, settled=settled)

    def propose_write(
        self, batch: WriteBatch, epoch: RegionEpoch | None = None, term: int | None = None
    ) -> None:
        """Propose a write batch computed from this replica's applied state
        (under the caller's latches): ``term`` is the Raft term read before
        that state was, and the call returns only once the entry's fate is
        known, so that the latches outlast a proposal that times out."""
        data = raftcmd.encode_write(self.region.id, epoch or self.region.epoch, batch)
        self.propose(data, term=term, settle=True)

    def propose_split(self, req: raftcmd.SplitRequest) -> tuple[Region, Region]:
        r = self.region
        if not (r.contains(req.split_key) and req.split_key != r.start_key):
            raise KeyNotInRegionError(req.split_key, r.id, r.start_key, r.end_key)
        result: tuple[Region, Region] = self.propose(raftcmd.encode_split(r.id, r.epoch, req))
        return result

    def read_barrier(self) -> None:
        try:
            self._group().read_barrier()
        except ProposalError as e:
            if e.unknown:
                raise ProposalDroppedError(self.region.id, e.reason) from None
            raise self.not_leader(e.leader) from None

    def not_leader(self, leader_addr: str | None = None) -> NotLeaderError:
        return NotLeaderError(self.region.id)

    def is_leader(self) -> bool:
        return self.group is not None and self.group.is_ready_leader()


def _change_peers(region: Region, c: raftcmd.ChangePeer) -> Region | None:
    """The Region after a membership change (conf_ver bumped), or None if the
    change is already in effect."""
    peers = list(region.peers)
    existing = next((p for p in peers if p.store_id == c.store_id), None)
    if c.change == raftcmd.ADD_LEARNER:
        if existing is not None:
            return None
        peers.append(PeerMeta(c.peer_id, c.store_id, is_learner=True))
    elif c.change == raftcmd.PROMOTE_LEARNER:
        if existing is None or not existing.is_learner:
            return None
        peers = [PeerMeta(p.id, p.store_id) if p is existing else p for p in peers]
    elif c.change == raftcmd.REMOVE_PEER:
        if existing is None:
            return None
        peers.remove(existing)
    else:
        return None
    epoch = RegionEpoch(region.epoch.conf_ver + 1, region.epoch.version)
    return Region(region.id, region.start_key, region.end_key, epoch, tuple(peers))
