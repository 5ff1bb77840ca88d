"""One thread that drives every Raft group of a process.

Each loop: flush every group's new log entries with one fsync, send the
follower acknowledgements that waited for that flush, turn queued proposals
into log entries, tick every group (timers, commit index, apply, sends), then
wait on one poller shared by all groups for network events, a proposal, or
the next timer. With ``autoTick=False`` pysyncobj does nothing on its own, so
all of its state lives in this thread.

Shared poller: pysyncobj creates a poller per object through the module-level
name ``pysyncobj.syncobj.createPoller``; while this driver constructs a group
it points that name at its own poller. Groups are only ever constructed here,
in the driver thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pysyncobj.syncobj as _syncobj
from pysyncobj.poller import POLL_EVENT_TYPE, createPoller

from raft.config import RaftConfig
from raft.group import RaftGroup, StateMachine
from raft.log_store import LogFlushError, RaftLogStore
from raft.transport import StoreTransportHub

log = logging.getLogger(__name__)

_construct_lock = threading.Lock()  # the createPoller/createJournal patch is process-wide

# This driver wakes itself when a proposal is queued and drains proposals into
# pysyncobj from its own thread, so pysyncobj's per-object wake-up pipe is
# never needed (and would need a poller of its own).
_syncobj.PIPE_NOTIFIER_ENABLED = False


class _NoPoller:
    """What each group gets as "its" poller. pysyncobj ends every tick with a
    poll of it; the shared poller is polled once per loop by the driver
    instead (an idle tick costs ~40 µs instead of 60-200 µs)."""

    def subscribe(self, descr: int, callback: Any, event_mask: int) -> None:
        raise RuntimeError("raft groups own no sockets: the hub does")

    def unsubscribe(self, descr: int) -> None:
        pass

    def poll(self, timeout: float) -> None:
        pass


_NO_POLLER = _NoPoller()
_encryptors: dict[str, Any] = {}


def _cached_encryptor(password: Any) -> Any:
    # PBKDF2 with 100k rounds per SyncObj: derive once per secret, not per group.
    key = password if isinstance(password, str) else bytes(password).decode()
    if key not in _encryptors:
        from pysyncobj.encryptor import getEncryptor

        _encryptors[key] = getEncryptor(password)
    return _encryptors[key]


class RaftDriver:
    def __init__(
        self,
        log_store: RaftLogStore,
        raft_addr: str,
        *,
        secret: str | None = None,
        dial: dict[str, str] | None = None,
        snap_dir: str | None = None,
        idle_wait: float = 0.01,
        name: str = "raft",
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """``raft_addr``: this process's one Raft address (host:port; bind
        to loopback unless the cluster spans machines). ``secret``: the
        cluster secret; without it Raft traffic is unauthenticated.
        ``on_fatal``: called once, from the driver thread, when the log
        cannot be made durable (:class:`~raft.log_store.LogFlushError`); the
        driver has stopped by then (no tick, no acknowledgement, no apply)
        and a server process should exit (a restart re-reads the disk)."""
        self.log_store = log_store
        self.raft_addr = raft_addr
        self.snap_dir = snap_dir
        if snap_dir is not None:
            os.makedirs(snap_dir, exist_ok=True)
        self.idle_wait = idle_wait
        self.on_fatal = on_fatal
        self.fatal: BaseException | None = None
        self.groups: dict[int, RaftGroup] = {}
        self._poller = createPoller("auto")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.subscribe(self._wake_r, self._on_wake, POLL_EVENT_TYPE.READ)
        self.hub = StoreTransportHub(
            self._poller,
            raft_addr,
            encryptor=_cached_encryptor(secret) if secret else None,
            dial=dial,
        )
        self.hub.bind()
        self.raft_addr = self.hub.self_addr  # the real port if 0 was asked for
        self._deferred: list[Callable[[], None]] = []
        self._appends: dict[RaftGroup, None] = {}  # groups whose appends are due (ordered)
        self._timers: dict[RaftGroup, float] = {}  # group -> when to send its appends
        self._calls: list[tuple[Callable[[], Any], threading.Event, list[Any]]] = []
        self._calls_lock = threading.Lock()
        self._loop_cv = threading.Condition()
        self._loops = 0
        self._loop_waiters = 0  # threads in wait_loop (guarded by _loop_cv)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-driver", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ API
    def add_group(
        self,
        group_id: int,
        voters: list[str],
        state_machine: StateMachine,
        config: RaftConfig,
        *,
        learner: bool = False,
        fresh: bool = False,
        initial_index: int = 0,
    ) -> RaftGroup:
        """Host a replica of group ``group_id`` whose voters are the stores at
        ``voters`` (Raft addresses, this one's included unless ``learner``).
        ``fresh``: the replica never existed before (a split creates it), so
        it may vote at once (see raft/lease.py: a restarted one may not).
        ``initial_index``: the state machine's state is that at this log
        index, and the log starts after it (see
        :meth:`RaftGroup._write_initial_snapshot`)."""
        self_addr = None if learner else self.raft_addr

        def make() -> RaftGroup:
            journal = self.log_store.journal(group_id)
            with _construct_lock:
                saved = (_syncobj.createPoller, _syncobj.createJournal)
                _syncobj.createPoller = lambda _t: _NO_POLLER
                _syncobj.createJournal = lambda _f: journal
                try:
                    g = RaftGroup(
                        self,
                        group_id,
                        self_addr,
                        voters,
                        state_machine,
                        journal,
                        config,
                        fresh=fresh,
                        initial_index=initial_index,
                    )
                finally:
                    _syncobj.createPoller, _syncobj.createJournal = saved
            self.groups[group_id] = g
            return g

        group: RaftGroup = self.call(make)
        return group

    def remove_group(self, group_id: int, *, drop_log: bool = False) -> None:
        def drop() -> None:
            g = self.groups.pop(group_id, None)
            if g is None:
                return
            g.destroyed = True
            self._timers.pop(g, None)
            g.fail_pending("group removed")
            g.obj._doDestroy()
            if drop_log:
                self.log_store.drop_group(group_id)
                g.discard_snapshots()

        self.call(drop)

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``fn`` in the driver thread and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        if self.fatal is not None:
            raise LogFlushError(f"raft driver stopped: {self.fatal}")
        ev = threading.Event()
        box: list[Any] = []
        with self._calls_lock:
            self._calls.append((fn, ev, box))
        self.wake()
        if not ev.wait(timeout):
            raise TimeoutError("raft driver did not run the call in time")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` right after the next log flush (driver thread only)."""
        self._deferred.append(fn)

    def _want_appends(self, group: RaftGroup) -> None:
        """Driver thread: send ``group``'s appends at the end of this loop's
        ticks (see ``_Replica._SyncObj__sendAppendEntries``)."""
        self._appends[group] = None

    def wake_at(self, when: float, group: RaftGroup) -> None:
        """Driver thread: have ``group`` send its appends again at ``when``
        (``time.monotonic()``), waking up for it if idle."""
        due = self._timers.get(group)
        if due is None or when < due:
            self._timers[group] = when

    def _run_timers(self, now: float) -> None:
        for g, due in list(self._timers.items()):
            if due <= now:
                del self._timers[g]
                self._want_appends(g)

    def _poll_timeout(self) -> float:
        if not self._timers:
            return self.idle_wait
        return max(0.0, min(self.idle_wait, min(self._timers.values()) - time.monotonic()))

    def _send_appends(self) -> None:
        while self._appends:
            groups, self._appends = self._appends, {}
            for g in groups:
                g.obj._send_appends_now()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the driver is awake anyway
            os.write(self._wake_w, b"x")

    def wait_loop(self, timeout: float = 1.0) -> None:
        """Block until the driver completes another loop."""
        with self._loop_cv:
            self._loop_waiters += 1
            try:
                n = self._loops
                self._loop_cv.wait_for(lambda: self._loops > n or self._stop, timeout)
            finally:
                self._loop_waiters -= 1

    def stop(self) -> None:
        if self._stop:
            return
        if self.fatal is None:
            for gid in list(self.groups):
                self.remove_group(gid)
        self._stop = True
        self.wake()
        self._thread.join(timeout=10)
        if self.log_store.failed is None:
            self.log_store.flush()
        self.hub.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ------------------------------------------------------------ loop
    def _on_wake(self, _fd: int, _ev: int) -> None:
        # One read: a wake-up is one byte and writers rarely pile up more
        # than 4096 (what is left makes the next poll return at once); a
        # second read would only fail with EAGAIN, a syscall and an
        # exception per wake-up.
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def _run(self) -> None:
        while not self._stop:
            try:
                self._loop_once()
            except LogFlushError as e:
                # Nothing may be acknowledged any more: stop driving (see
                # RaftLogStore). Callers see their proposals time out.
                log.critical("raft log cannot be made durable, stopping: %s", e)
                self.fatal = e
                with self._calls_lock:
                    calls, self._calls = self._calls, []
                for _fn, ev, box in calls:
                    box.append(LogFlushError(f"raft driver stopped: {e}"))
                    ev.set()
                for g in list(self.groups.values()):
                    g.fail_pending(f"raft log cannot be made durable: {e}")
                with self._loop_cv:
                    self._loop_cv.notify_all()
                if self.on_fatal is not None:
                    self.on_fatal(e)
                return
            except Exception:  # one bad tick must not kill every group
                log.exception("raft driver loop failed")

    def _loop_once(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for fn, ev, box in calls:
            try:
                box.append(fn())
            except BaseException as e:
                box.append(e)
            ev.set()
        groups = list(self.groups.values())
        if calls:  # a call may have changed any group's state: tick them all
            for g in groups:
                g.obj._wants_tick = True
        self._flush()
        for g in groups:
            g._drain()
        now = time.monotonic()
        self.hub.tick()
        if self._timers:
            self._run_timers(now)
        for g in groups:
            g.tick_if_due(now)
            g._expire(now)
        self._send_appends()
        self._flush()
        self._poller.poll(self._poll_timeout())
        # Only the driver writes _loops. A waiter registers under the lock
        # before reading it, so either it reads the new value or we see it
        # registered: taking the lock to notify no one (most loops) is saved.
        self._loops += 1
        if self._loop_waiters:
            with self._loop_cv:
                self._loop_cv.notify_all()

    def _flush(self) -> None:
        self.log_store.flush()
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            for fn in deferred:
                fn()
