"""One replica of one Raft group, on pysyncobj.

Commands are opaque bytes. A proposal is tagged with the term in which the
leader computed it; when an entry is applied whose log term differs from that
tag (pysyncobj forwarded it to a new leader, who appended it in a later
term), it is skipped on every replica alike and its proposer told
:class:`ProposalError`. This matters because commands are computed on the
leader's state: applying one computed by a deposed leader could act on stale
reads.

A leader accepts proposals only once it has applied its own no-op entry, i.e.
every entry of earlier terms: until then its state may lag the log.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import pickle
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import pysyncobj.serializer as _serializer
from pysyncobj import FAIL_REASON, SyncObj, replicated
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.monotonic import monotonic as syncobj_monotonic
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _COMMAND_TYPE, _RAFT_STATE

from raft.config import RaftConfig
from raft.lease import LeaderLease
from raft.log_store import RocksJournal
from raft.transport import transport_class

if TYPE_CHECKING:
    from raft.driver import RaftDriver

log = logging.getLogger(__name__)

BARRIER = b""  # an empty command: applied as a no-op, proves leadership


def _durable_replace(src: str, dst: str) -> bool:
    """pysyncobj renames snapshot files into place without fsync: a follower
    that installed a received snapshot (and truncated its log) came back from
    a power loss with an empty file and could never apply again (found by
    tests/test_power_loss.py). Sync the file, rename, sync the directory."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    d = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY)
    try:
        os.fsync(d)
    finally:
        os.close(d)
    return True


_serializer.atomicReplace = _durable_replace  # the module-level seam the Serializer uses


_EXPIRY_CHECK_INTERVAL = 0.1  # seconds between two scans for timed-out proposals
# How often a caller waiting for its proposal to settle looks whether the
# group was removed (the driver settles it otherwise: see _expire).
_SETTLE_POLL_INTERVAL = 0.05
# A group nothing happened to is ticked at its next Raft deadline (heartbeat
# or election timeout), else at least this often: for pysyncobj's slower
# timers (the leader's step-down check, the once-a-second journal save, log
# compaction), which tolerate being this late.
IDLE_TICK_INTERVAL = 0.1
# Longest a follower waits for a commit index it could have been sent alone
# (see _Replica._lingering_voters): it only delays the follower's apply.
COMMIT_LINGER = 0.005


class ProposalError(Exception):
    """A proposal did not take effect *as far as we know*: not leader, leader
    changed, timed out, or skipped as stale. ``unknown`` says whether it may
    still have been applied (timeouts and leader changes) or surely was not."""

    def __init__(self, reason: str, *, unknown: bool, leader: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown = unknown
        self.leader = leader


class StateMachine(Protocol):
    def apply(self, index: int, commands: list[bytes]) -> list[Any]:
        """Apply the commands of log entry ``index`` in order; return one
        result per command. Runs in the driver thread; must be
        deterministic. Called again after a restart for entries above the
        last index the state machine made durable: skip those it has."""
        ...


class SnapshotMachine(StateMachine, Protocol):
    """A state machine whose state can be shipped: enables log compaction."""

    def write_snapshot(self, f: BinaryIO) -> None:
        """Write the state as of the last applied entry (called in the driver
        thread, between two applies). A machine whose state is large may
        also offer ``snapshot_writer() -> Callable[[BinaryIO], None]``:
        called there, it captures the state cheaply (an engine snapshot),
        and the function it returns writes it later, in another thread, so
        the driver goes on ticking every group meanwhile."""
        ...

    def read_snapshot(self, f: BinaryIO) -> None:
        """Replace the state with a snapshot's, unless ours is already newer
        (at start-up pysyncobj re-reads our own latest snapshot)."""
        ...


ProposalCallback = Callable[[Any, "ProposalError | None"], None]


class _SnapshotJob:
    """One snapshot being written (see :meth:`RaftGroup._serialize`)."""

    def __init__(self, group: RaftGroup, path: str, raft_data: Any) -> None:
        self.group = group
        self.path = path
        self.raft_data = raft_data
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self, write_state: Callable[[BinaryIO], None]) -> None:
        g = self.group
        # Its own name: a group re-created for the same Region (a learner
        # promoted) may start a job of its own before this one ends.
        partial = f"{self.path}.{id(self):x}.bg"
        try:
            g._write_snapshot_file(partial, self.raft_data, write_state)
            with g._snapshot_file_lock:
                if g.destroyed:
                    os.unlink(partial)
                    raise ProposalError(
                        "group removed while its snapshot was written", unknown=False
                    )
                _durable_replace(partial, self.path)
        except BaseException as e:  # reported by the checker; the log stays
            self.error = e
        finally:
            self.done.set()
            # The checker runs on the group's tick: have it run now.
            g.obj._wants_tick = True
            g._driver.wake()


class _Proposal:
    """One proposal: a waiting caller's (``event``) or a callback's.

    ``done`` is the answer the caller gets (possibly "timed out" at its
    deadline); ``settle`` records the entry's real fate on this replica when
    it is known (applied, discarded, never proposed, or this replica no
    longer leads in the proposal's term), which may be later. Both happen
    once; all calls after the first are ignored.
    """

    __slots__ = (
        "callback",
        "command",
        "deadline",
        "error",
        "event",
        "final",
        "finished",
        "on_settled",
        "result",
        "settled",
        "term",
    )

    def __init__(
        self,
        command: bytes,
        deadline: float,
        callback: ProposalCallback | None = None,
        term: int | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.command = command
        self.deadline = deadline
        self.callback = callback
        # The term in which the caller decided what to propose: the entry
        # must be appended in that same term or not at all (see _drain).
        self.term = term
        self.on_settled = on_settled
        self.event = threading.Event() if callback is None else None
        self.settled = threading.Event() if callback is None else None
        self.final: tuple[Any, ProposalError | None] | None = None
        self.result: Any = None
        self.error: ProposalError | None = None
        self.finished = False

    def done(self, result: Any, error: ProposalError | None) -> None:
        if self.finished:  # e.g. the result of a proposal already timed out
            return
        self.finished = True
        self.result, self.error = result, error
        if self.event is not None:
            self.event.set()
        else:
            assert self.callback is not None
            try:
                self.callback(result, error)
            except Exception:  # a caller's bug must not break the driver loop
                log.exception("proposal callback failed")

    def settle(self, result: Any, error: ProposalError | None) -> None:
        # Settled early (leadership lost while the entry was in flight), then
        # called back by pysyncobj when this replica applied the index.
        if self.final is not None:
            return
        self.final = (result, error)
        # Before the answer: a client told the outcome finds the latches
        # this proposal's caller held free again.
        if self.on_settled is not None:
            try:
                self.on_settled()
            except Exception:
                log.exception("proposal settled callback failed")
        self.done(result, error)
        if self.settled is not None:
            self.settled.set()


class _Replica(SyncObj):  # type: ignore[misc]
    """pysyncobj object of one replica; all calls happen in the driver thread
    except ``_applyCommand`` (a thread-safe queue put)."""

    def __init__(
        self, group: RaftGroup, self_addr: str | None, peers: list[str], conf: Any, transport: Any
    ) -> None:
        self._group = group
        self._linger_until: float | None = None
        self._hurry = False  # the next appends go to every follower (see hurry_commit)
        # Something happened to this replica outside its tick (a message, a
        # link going up or down, a proposal, a driver call): the driver
        # ticks it in its next loop (see RaftGroup.tick_due). Set by any
        # thread-free path of the driver thread; only the driver clears it.
        self._wants_tick = True
        super().__init__(self_addr, peers, conf, transportClass=transport)

    @replicated  # type: ignore[untyped-decorator]
    def _apply_batch(self, term: int, commands: list[bytes]) -> list[Any] | None:
        index = self.raftLastApplied + 1
        return self._group._on_apply(index, term, commands)

    # What ``self._apply_batch(term, commands, callback=cb)`` does, with a
    # cheaper pickle. pysyncobj pickles a replicated call with protocol 2,
    # where every ``bytes`` object becomes a call to ``_codecs.encode`` of a
    # latin-1 string: an entry of 133 commands of ~150 bytes took ~380 µs to
    # dump on the leader and ~360 µs to load on *every* replica at apply
    # (protocol 5: ~6 µs each), and was 60% bigger in the log and on the
    # wire. The entry is the same ``(funcID, args)`` tuple pysyncobj's apply
    # unpickles (``pickle.loads`` reads any protocol), so entries already in
    # a log written before this change still apply.
    def propose_batch(self, term: int, commands: list[bytes], callback: Any) -> None:
        func_id = self._methodToID[self._getFuncName("_apply_batch")]
        data = pickle.dumps((func_id, (term, commands)), protocol=pickle.HIGHEST_PROTOCOL)
        self._applyCommand(data, callback, _COMMAND_TYPE.REGULAR)

    # Follower's append acknowledgement: deferred until the driver has
    # flushed the log (the entries it acknowledges must be durable). Only the
    # latest acknowledgement per leader is sent: older ones say less.
    def _SyncObj__sendNextNodeIdx(
        self,
        node: Any,
        reset: bool = False,
        nextNodeIdx: int | None = None,
        success: bool = False,
    ) -> None:
        if nextNodeIdx is None:
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        pending = self._group._pending_acks
        if node not in pending:
            self._group._driver.defer(functools.partial(self._send_ack, node))
        pending[node] = (reset, nextNodeIdx, success)

    def _send_ack(self, node: Any) -> None:
        args = self._group._pending_acks.pop(node, None)
        if args is not None and not self._group.destroyed:
            super()._SyncObj__sendNextNodeIdx(node, *args)

    # pysyncobj sends appends right away wherever it wants them sent: after
    # an apply (to spread the commit index) and again for each new entry, so
    # a write cost two messages per follower. The driver sends them once per
    # loop instead, after every group has ticked and before the log flush
    # (followers write the entries while we do): one message per follower
    # carries the new entries and the commit index together.
    def _SyncObj__sendAppendEntries(self) -> None:
        self._group._driver._want_appends(self._group)

    def _send_appends_now(self) -> None:
        if self._group.destroyed:
            return
        lingering = self._lingering_voters()
        if not lingering:
            self._linger_until = None
            self._hurry = False
            super()._SyncObj__sendAppendEntries()
            return
        # Send to the others only: pysyncobj iterates its voter set.
        voters: set[Any] = getattr(self, "_SyncObj__otherNodes")  # noqa: B009 (mypy: untyped)
        self._SyncObj__otherNodes = voters - lingering
        try:
            super()._SyncObj__sendAppendEntries()
        finally:
            self._SyncObj__otherNodes = voters

    # After each apply pysyncobj sends every follower an append that carries
    # nothing but the new commit index, and each follower acknowledges it: at
    # one write in flight that is four more messages (and process wake-ups)
    # per write than the entry and its two acknowledgements, on machines
    # where a wake-up costs more than the Raft logic. Committing needs none of
    # them (the leader alone decides), so a voter that is up to date and only
    # lacks the commit index gets it with the next entry, the next heartbeat,
    # or after COMMIT_LINGER at the latest, whichever is first. Learners
    # (the columnar replica, whose reads wait for the commit) get it at once.
    def _lingering_voters(self) -> set[Any]:
        if self._SyncObj__raftState != _RAFT_STATE.LEADER:
            return set()
        # pysyncobj's clock (CLOCK_MONOTONIC_RAW), not time.monotonic().
        if syncobj_monotonic() > self._SyncObj__newAppendEntriesTime:  # heartbeat due: everyone
            return set()
        now = time.monotonic()
        if self._hurry or (self._linger_until is not None and now >= self._linger_until):
            return set()
        nxt = self._SyncObj__raftLog[-1][1] + 1
        next_index = self._SyncObj__raftNextIndex
        connected = self._SyncObj__connectedNodes
        out = {n for n in self._SyncObj__otherNodes if n in connected and next_index.get(n) == nxt}
        if out and self._linger_until is None:
            self._linger_until = now + COMMIT_LINGER
            self._group._driver.wake_at(self._linger_until, self._group)
        return out

    # Acknowledgements reach the leader after it has already sent further
    # entries; pysyncobj would then move nextIndex back and resend (and make
    # the follower truncate and rewrite) entries in flight. Keep nextIndex
    # from going backwards on a *successful* acknowledgement.
    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if (
            isinstance(message, dict)
            and message.get("transmission") in ("process", "finish")
            and not isinstance(self._SyncObj__recvTransmission, bytes)
        ):
            # A later chunk of an entry whose first chunk we never took: a
            # deposed leader's chunks, still arriving on its own link after
            # the new leader's whole entry (seen under load). pysyncobj would
            # append bytes to its str placeholder and crash the driver loop;
            # nothing is lost by dropping it (a current leader resends).
            return
        if isinstance(message, dict) and message.get("transmission") == "finish":
            # pysyncobj cuts an entry of appendEntriesBatchSizeBytes or more
            # into chunks and marks the last one by comparing with the
            # command's length, not the (longer) pickled entry's: for some
            # sizes a chunk marked "finish" is not the last, and unpickling
            # the truncated entry fails. Such a chunk is a middle one: take
            # it as "process"; the real last chunk (also marked "finish")
            # completes the entry.
            got = self._SyncObj__recvTransmission + message["data"]
            try:
                # The C unpickler only: pysyncobj's loads retries a failure
                # with pickle's pure-Python one, which took longer than
                # applying the entry for every chunked (>= 64 KB) entry
                # (measured in a bulk import: a third of a follower's CPU).
                pickle.loads(got)
            except Exception:  # truncated: EOFError, UnpicklingError, ...
                message = dict(message, transmission="process")
        if isinstance(message, dict) and message.get("type") == "next_node_idx":
            next_index = self._SyncObj__raftNextIndex
            before = next_index.get(node)
            super()._SyncObj__onMessageReceived(node, message)
            after = next_index.get(node)
            if (
                before is not None
                and after is not None
                and message.get("success")
                and not message.get("reset")
                and after < before
            ):
                next_index[node] = before
            return
        super()._SyncObj__onMessageReceived(node, message)


class RaftGroup:
    """A replica of group ``group_id``: a voter at ``self_addr`` among
    ``peers`` (all voters' addresses), or a learner when ``self_addr`` is
    None. Create through :meth:`RaftDriver.add_group`."""

    def __init__(
        self,
        driver: RaftDriver,
        group_id: int,
        self_addr: str | None,
        peers: list[str],
        state_machine: StateMachine,
        journal: RocksJournal,
        config: RaftConfig,
        *,
        fresh: bool = False,
        initial_index: int = 0,
    ) -> None:
        self.group_id = group_id
        self.self_addr = self_addr
        self.config = config
        self._driver = driver
        self._sm = state_machine
        self._journal = journal
        self._pending: list[_Proposal] = []
        self._pending_lock = threading.Lock()
        self._in_flight: dict[int, list[_Proposal]] = {}
        self._next_expiry = 0.0
        self._pending_acks: dict[Any, tuple[bool, int, bool]] = {}
        self._tick_due = 0.0  # time.monotonic() of the next tick without news
        self.ticks = 0  # how often it was ticked (tests see idle groups skipped)
        self.last_applied_index = 0
        self.destroyed = False
        extra: dict[str, Any] = {}
        if (
            config.snapshot_entries > 0
            and driver.snap_dir is not None
            and hasattr(state_machine, "write_snapshot")
        ):
            extra = {
                "serializer": self._serialize,
                "serializeChecker": self._serialize_state,
                "deserializer": self._read_snapshot,
                "fullDumpFile": os.path.join(driver.snap_dir, f"group-{group_id}.snap"),
                "logCompactionMinEntries": config.snapshot_entries,
            }
        self.snapshots_written = 0
        self.snapshots_read = 0
        self._snapshot_job: _SnapshotJob | None = None
        # Serialises a snapshot job's rename into place with discard_snapshots.
        self._snapshot_file_lock = threading.Lock()
        self._snapshots = bool(extra)  # ours; pysyncobj's own would pickle the object
        self.snap_file: str | None = extra.get("fullDumpFile")
        if self.snap_file is not None:  # partial files of jobs a crash cut short
            for path in glob.glob(glob.escape(self.snap_file) + ".*.bg"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if initial_index > 2 and extra and not os.path.exists(extra["fullDumpFile"]):
            self._write_initial_snapshot(extra["fullDumpFile"], initial_index, peers)
        conf = config.sync_obj_conf(**extra)
        others = [p for p in peers if p != self_addr]
        self.lease = LeaderLease(config.election_timeout_min, fresh=fresh)
        self.obj = _Replica(
            self, self_addr, others, conf, transport_class(driver.hub, group_id, self.lease)
        )
        # A group created while the store's links are already up (after a
        # split) must learn at once that its peers are reachable: pysyncobj
        # only asks its transport while it is not ready, and ours already is.
        self.obj._SyncObj__transport.tryGetReady()

    # ------------------------------------------------------------ status
    @property
    def is_learner(self) -> bool:
        return self.self_addr is None

    def is_leader(self) -> bool:
        return bool(self.obj._isLeader())

    def is_ready_leader(self) -> bool:
        """Leader that has applied every entry of earlier terms."""
        if not self.obj._isLeader():
            return False
        noop = self.obj._SyncObj__noopIDx
        return noop is not None and self.obj.raftLastApplied >= noop

    def leader(self) -> str | None:
        node = self.obj._getLeader()
        return None if node is None else str(node.address if hasattr(node, "address") else node)

    def term(self) -> int:
        return int(self.obj.raftCurrentTerm)

    def commit_index(self) -> int:
        return int(self.obj.raftCommitIndex)

    def applied_index(self) -> int:
        return int(self.obj.raftLastApplied)

    def status(self) -> dict[str, Any]:
        return dict(self.obj.getStatus())

    # ------------------------------------------------------------ proposals
    def propose(
        self,
        command: bytes,
        timeout: float | None = None,
        *,
        term: int | None = None,
        settle: bool = False,
    ) -> Any:
        """Replicate ``command`` and return the state machine's result for it.

        Raises :class:`ProposalError`: not the (ready) leader (nothing was
        proposed), or leader changed / timed out (unknown outcome).

        ``term``: the term read *before* the caller's leadership check and
        before it read the state ``command`` was computed from; the command
        is refused (not leader, nothing proposed) unless appended in that
        term. Leadership lost and regained in between would otherwise let a
        command computed on a state that misses the other leader's writes
        apply after them. Default: the term now.

        ``settle``: once the deadline passes, keep waiting until the entry's
        fate here is known (applied: its result is returned; discarded, or
        this replica no longer leads in that term). A caller that holds
        locks over what it read to compute ``command`` (the transaction
        scheduler's latches) must not let go of them while the entry may
        still apply: the next command on those keys would be computed on a
        state without it and applied after it.
        """
        if term is None:
            term = self.term()
        if not self.is_ready_leader() or self.term() != term:
            raise ProposalError("not leader", unknown=False, leader=self.leader())
        wait = timeout if timeout is not None else self.config.proposal_timeout
        p = _Proposal(command, time.monotonic() + wait, term=term)
        self._enqueue(p)
        assert p.event is not None
        answered = p.event.wait(wait)
        if settle:
            if p.final is None:  # timed out (here or in _expire): not settled yet
                self._wait_settled(p)
            if p.final is not None:
                answered = True
                p.result, p.error = p.final
        if not answered:
            raise ProposalError("proposal timed out", unknown=True, leader=self.leader())
        if p.error is not None:
            raise p.error
        return p.result

    def _wait_settled(self, p: _Proposal) -> None:
        assert p.settled is not None
        # The driver settles it (see _expire); a removed group has failed it.
        while not p.settled.wait(_SETTLE_POLL_INTERVAL):
            if self.destroyed:
                return

    def propose_async(
        self,
        command: bytes,
        callback: ProposalCallback,
        timeout: float | None = None,
        *,
        term: int | None = None,
        settled: Callable[[], None] | None = None,
    ) -> None:
        """Like :meth:`propose`, without waiting: ``callback(result, error)``
        is called exactly once, with the state machine's result or a
        :class:`ProposalError` (same meaning as :meth:`propose`'s), at the
        deadline at the latest. It runs in the driver thread, so it must be
        quick and must not wait for the driver (no :meth:`propose`,
        :meth:`RaftDriver.call` in it; :meth:`propose_async` is fine); a
        rejection (not the ready leader) is called back at once in the
        caller's thread. One thread can keep many proposals in flight this
        way, without a thread hand-off each.

        ``term``: as for :meth:`propose` (default: the term now).

        ``settled()`` is called exactly once, when the entry's fate here is
        known: what ``settle=True`` waits for in :meth:`propose`. A caller
        holding latches over the command's keys releases them there, not in
        ``callback``, which may come first (at the deadline). When both are
        due at once, ``settled`` runs first. Same threads as ``callback``."""
        if term is None:
            term = self.term()
        if not self.is_ready_leader() or self.term() != term:
            if settled is not None:
                settled()
            callback(None, ProposalError("not leader", unknown=False, leader=self.leader()))
            return
        wait = timeout if timeout is not None else self.config.proposal_timeout
        self._enqueue(_Proposal(command, time.monotonic() + wait, callback, term, settled))

    def _enqueue(self, p: _Proposal) -> None:
        with self._pending_lock:
            first = not self._pending
            self._pending.append(p)
        if first:  # later ones find the driver woken already
            self._driver.wake()

    def in_lease(self) -> bool:
        """Ready leader whose lease (raft/lease.py) holds now: no other
        replica can have been elected, and every write acknowledged by any
        leader is in our applied state."""
        # isLeader before the term: a step-down between the two changes the
        # term, which the lease check then refuses.
        return self.is_ready_leader() and self.lease.valid(self.term())

    def read_barrier(self, timeout: float | None = None) -> None:
        """Return once a read of our applied state is linearizable: at once
        under the leader lease, else once a no-op proposed *after* this call
        is applied here as leader (everything committed before the call is
        then in our state, and we were leader when the barrier committed).
        Concurrent readers share one barrier entry."""
        if self.in_lease():
            self.lease.lease_reads += 1
            return
        self.propose(BARRIER, timeout)

    # ------------------------------------------------------------ ticking
    # pysyncobj's doTick costs 20-40 µs even when there is nothing to do,
    # and the driver loops once per network event, i.e. several times per
    # write: ticking every group every loop made a store's CPU per write grow
    # with its number of Regions, busy or not. A group is ticked only in a
    # loop where it has something to do: something happened to it (a
    # message, a proposal, a link change, a driver call: ``_wants_tick``),
    # it has entries not yet committed or applied, or one of its timers is
    # due. Everything pysyncobj does in a tick is driven by one of these.
    def tick_if_due(self, now: float) -> bool:
        """Driver thread: tick if due (``now``: ``time.monotonic()``);
        returns whether it ticked."""
        obj = self.obj
        if not obj._wants_tick and now < self._tick_due:
            return False
        obj._wants_tick = False
        obj.doTick(0.0)
        self.ticks += 1
        self._tick_due = self._next_tick_due(now)
        return True

    def _next_tick_due(self, now: float) -> float:
        obj = self.obj
        commit = obj._SyncObj__raftCommitIndex
        if obj.raftLastApplied < commit:
            return now  # committed, not applied yet
        state = obj._SyncObj__raftState
        # pysyncobj's deadlines are on its own clock (CLOCK_MONOTONIC_RAW):
        # turned into delays, never compared with ours.
        raw_now = syncobj_monotonic()
        if state == _RAFT_STATE.LEADER:
            if obj._SyncObj__raftLog[-1][1] > commit:
                return now  # entries waiting for their commit: every loop
            delay = obj._SyncObj__newAppendEntriesTime - raw_now  # the next heartbeat
        elif self.self_addr is not None:  # a voter: its election timeout
            delay = obj._SyncObj__raftElectionDeadline - raw_now
        else:
            delay = IDLE_TICK_INTERVAL
        return now + max(0.0, min(float(delay), IDLE_TICK_INTERVAL))

    def _expire(self, now: float) -> None:
        """Driver thread: fail proposals past their deadline (unknown
        outcome). A waiting caller times out by itself; a callback has no one
        else to tell it."""
        if now < self._next_expiry:
            return
        self._next_expiry = now + _EXPIRY_CHECK_INTERVAL
        # A batch stays in flight until pysyncobj calls it back, which it does
        # once this replica applies the entry's index (SUCCESS, or DISCARDED
        # if another leader's entry took it): callers that settle wait for it.
        for batch in list(self._in_flight.values()):
            for p in batch:
                if p.deadline > now:
                    continue
                p.done(None, ProposalError("proposal timed out", unknown=True))
                if p.final is None and not self._leads_in(p.term):
                    # No longer leading in the proposal's term. If the entry
                    # is in our log, it is applied (or discarded) here before
                    # this replica can be a ready leader again, and so
                    # compute anything; a command computed in that term and
                    # not yet appended is refused (propose, _drain). So the
                    # caller may let go of its latches now, rather than for
                    # as long as a partitioned replica hears from no leader.
                    p.settle(None, ProposalError("leadership lost", unknown=True))

    def _leads_in(self, term: int | None) -> bool:
        """Driver thread: leader, in ``term`` if one is given."""
        return (
            not self.destroyed
            and (term is None or self.term() == term)
            and bool(self.obj._isLeader())
        )

    def _drain(self) -> None:
        """Driver thread: turn queued proposals into one log entry."""
        if not self._pending:  # unlocked peek: a proposal arriving now wakes us again
            return
        with self._pending_lock:
            if not self._pending:
                return
            batch = self._pending[: self.config.max_batch_commands]
            del self._pending[: len(batch)]
            more = bool(self._pending)
        term = self.term()
        stale = [p for p in batch if p.term is not None and p.term != term]
        if stale:
            # Decided in an earlier term (leadership was lost, maybe won back,
            # since): never appended.
            for p in stale:
                p.settle(None, ProposalError("not leader", unknown=False, leader=self.leader()))
            batch = [p for p in batch if p.term is None or p.term == term]
            if not batch:
                if more:
                    self._driver.wake()
                return
        # The id keys the batch until its callback; the entry carries the term.
        key = id(batch)
        self._in_flight[key] = batch

        def on_result(result: Any, err: int) -> None:
            done = self._in_flight.pop(key, None)
            if done is None:
                return
            if err == FAIL_REASON.SUCCESS and isinstance(result, list):
                for prop, r in zip(done, result, strict=True):
                    prop.settle(r, None)
                return
            if err == FAIL_REASON.SUCCESS:  # skipped as stale
                error = ProposalError("stale proposal skipped", unknown=False)
            elif err in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER):
                error = ProposalError("not leader", unknown=False, leader=self.leader())
            else:
                error = ProposalError(f"proposal failed ({err})", unknown=True)
            for prop in done:
                prop.settle(None, error)

        self.obj.propose_batch(term, [p.command for p in batch], on_result)
        self.obj._wants_tick = True
        if more:
            self._driver.wake()

    def _on_apply(self, index: int, term: int, commands: list[bytes]) -> list[Any] | None:
        entry_term = self._journal.term_at(index)
        self.last_applied_index = index
        if entry_term is not None and entry_term != term:
            return None  # computed by a deposed leader: skipped everywhere
        real = [c for c in commands if c != BARRIER]
        results = self._sm.apply(index, real) if real else []
        it = iter(results)
        return [None if c == BARRIER else next(it) for c in commands]

    def hurry_commit(self) -> None:
        """Driver thread, from the state machine's apply: send the commit of
        the entry being applied to every replica at once rather than with
        the next entry. For membership changes: a replica being removed
        would otherwise never learn that it was (the leader stops sending to
        it once the removal is proposed)."""
        self.obj._hurry = True

    def campaign(self) -> None:
        """Try to become leader, from a follower's side (an operator or a
        benchmark): ask the current leader to hand leadership over (it sends
        TimeoutNow once we have caught up); without a known leader, start an
        election now. Voters that heard from a live leader lately refuse
        a plain election (raft/lease.py), so only the leader can be asked."""

        def start() -> None:
            if self.is_learner or self.obj._isLeader():
                return
            leader = self.leader()
            transport: Any = self.obj._SyncObj__transport
            if leader is not None and transport.request_transfer(leader):
                return
            self.obj._SyncObj__raftElectionDeadline = 0

        self._driver.call(start)

    # ------------------------------------------------------------ snapshots
    def request_compaction(self) -> None:
        """Driver thread: compact the log into a new snapshot at the next
        tick (no-op without snapshots, or before two entries are applied)."""
        if self._snapshots:
            self.obj.forceLogCompaction()
            self.obj._wants_tick = True

    def compact_now(self, timeout: float = 10.0) -> None:
        """Snapshot the state machine and truncate the log up to the last
        applied entry. A replica joining afterwards must then start from the
        snapshot, not from a log replay under state it never had."""
        before = self.snapshots_written
        self._driver.call(self.obj.forceLogCompaction)
        deadline = time.monotonic() + timeout
        while self.snapshots_written == before:
            if time.monotonic() > deadline:
                raise ProposalError("log compaction did not happen in time", unknown=False)
            self._driver.wait_loop()

    # File: u32 length + pickled pysyncobj metadata (last two entries and the
    # membership), then the state machine's own bytes. It only ever travels
    # between replicas over the authenticated Raft links.
    @staticmethod
    def _write_snapshot_file(
        path: str, raft_data: Any, write_state: Callable[[BinaryIO], None]
    ) -> None:
        meta = pickle.dumps(raft_data)
        with open(path, "wb") as f:
            f.write(struct.pack(">I", len(meta)) + meta)
            write_state(f)
            f.flush()
            os.fsync(f.fileno())

    def _serialize(self, tmp_path: str, raft_data: Any) -> None:
        """pysyncobj's serializer (driver thread, between two applies): start
        writing the snapshot of the state now, in the background if the
        state machine can capture it (``snapshot_writer``).

        pysyncobj renames ``tmp_path`` into place as soon as this returns
        and, finding no file there, records a failure that our checker
        (:meth:`_serialize_state`) overrides; while the job runs it sends no
        snapshot to followers (the previous file stays whole meanwhile). The
        job writes its own file and renames it into place when complete, and
        only then does pysyncobj truncate the log (on our SUCCESS)."""
        final = tmp_path.removesuffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)  # a crash's leftover must not be renamed into place
        sm: Any = self._sm
        capture = getattr(sm, "snapshot_writer", None)
        job = _SnapshotJob(self, final, raft_data)
        self._snapshot_job = job
        if capture is None:
            job.run(sm.write_snapshot)  # here, in the driver thread
            return
        write_state = capture()
        threading.Thread(
            target=job.run,
            args=(write_state,),
            name=f"raft-snapshot-{self.group_id}",
            daemon=True,
        ).start()

    def _serialize_state(self) -> int:
        """pysyncobj's serialize checker (driver thread, every tick)."""
        job = self._snapshot_job
        if job is None:
            return int(SERIALIZER_STATE.NOT_SERIALIZING)
        if not job.done.is_set():
            return int(SERIALIZER_STATE.SERIALIZING)
        self._snapshot_job = None
        if job.error is not None:
            log.warning("group %d: writing a snapshot failed: %s", self.group_id, job.error)
            return int(SERIALIZER_STATE.FAILED)
        self.snapshots_written += 1
        return int(SERIALIZER_STATE.SUCCESS)

    def discard_snapshots(self) -> None:
        """This replica is gone for good (its log dropped): delete its
        snapshot files, and keep a job still writing one from renaming it
        into place, so that a replica of the same Region added back later
        does not start from this one's old state."""
        with self._snapshot_file_lock:
            self.destroyed = True
            if self.snap_file is None:
                return
            leftovers = glob.glob(glob.escape(self.snap_file) + ".*.bg")
            for path in (self.snap_file, self.snap_file + ".tmp", *leftovers):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _write_initial_snapshot(self, path: str, index: int, voters: list[str]) -> None:
        """A new group whose state at log ``index`` is what the state machine
        holds now (a Region born of a split: the data it inherited). Written
        as the dump pysyncobj loads at start, its log then begins with two
        no-op entries at ``index - 1`` and ``index`` (term 0, the same on
        every replica, so they match): a replica that lacks the state finds
        no entry to start from and is sent this snapshot instead."""
        noop = bytes([_COMMAND_TYPE.NO_OP])
        cluster = {TCPNode(a) for a in voters}
        raft_data = ((noop, index, 0), (noop, index - 1, 0), cluster)
        sm: Any = self._sm
        self._write_snapshot_file(path + ".tmp", raft_data, sm.write_snapshot)
        _durable_replace(path + ".tmp", path)
        self.snapshots_written += 1

    def _read_snapshot(self, path: str) -> Any:
        sm: Any = self._sm
        with open(path, "rb") as f:
            (n,) = struct.unpack(">I", f.read(4))
            raft_data = pickle.loads(f.read(n))
            sm.read_snapshot(f)
        self.snapshots_read += 1
        return raft_data

    def fail_pending(self, reason: str) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for batch in [pending, *self._in_flight.values()]:
            for p in batch:
                p.settle(None, ProposalError(reason, unknown=True))
        self._in_flight.clear()

    # ------------------------------------------------------------ membership
    def _admin(self, fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> None:
        ev = threading.Event()
        out: list[int] = []

        def cb(_res: Any, err: int) -> None:
            out.append(err)
            ev.set()

        self._driver.call(lambda: fn(*args, callback=cb))
        if not ev.wait(timeout):
            raise ProposalError("membership change timed out", unknown=True)
        if out[0] != FAIL_REASON.SUCCESS:
            raise ProposalError(f"membership change failed ({out[0]})", unknown=False)

    def add_member(self, addr: str, timeout: float = 5.0) -> None:
        """Add a voter (it must already run with the new member list)."""
        self._admin(self.obj.addNodeToCluster, addr, timeout=timeout)

    def remove_member(self, addr: str, timeout: float = 5.0) -> None:
        self._admin(self.obj.removeNodeFromCluster, addr, timeout=timeout)

    def transfer_leader(self, addr: str | None = None, timeout: float = 5.0) -> None:
        """Ask the leader to hand leadership to ``addr`` (a caught-up voter);
        waits until this replica sees another leader."""
        self._admin(self.obj.transferLeadership, addr, timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.is_leader() and time.monotonic() < deadline:
            self._driver.wait_loop()
