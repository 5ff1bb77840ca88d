"""Faults injected into a :class:`kvstore.LocalCluster` during a check run.

The nemesis runs in the parent process, in a thread, in rounds: wait a
little, break one node, wait a few seconds, repair it. Every fault is
recorded as an interval (:class:`Fault`) for the report and the timeline
plot, with evidence that it took effect in ``Fault.detail``.

Targets. ``kill``, ``pause`` and ``partition`` hit a *leader* every other
round (the first round included), and a node chosen at random (PD, store or
columnar node) in between. Leader rounds take turns between the PD leader
(only with 3 PD nodes: with one, there is no other to take over) and the
store leading the most Regions (as PD sees it: ``scan_regions``). Detail:
``chosen`` (``pd-leader``, ``store-leader`` or ``random``), ``pd_leader``
and ``regions_led`` (the target's share of leaders when it was hit), and,
when the target led, ``leader_after``, waited for during the fault (at most
:data:`LEADER_MOVE_WAIT_S` past its planned end): the PD member that leads
once the other two have elected one, or ``"others"`` once PD sees no Region
led by the target (with ``regions_led_after``, every store's count).

Quorums. A cluster of 3 PD nodes and 3 stores runs one PD Raft group of 3
and, per Region, a Raft group of 3 voters (one per store; the columnar node
is a learner and votes nowhere). Cutting off one node is therefore always a
minority (1) / majority (2) split of the groups it is in: the majority keeps
a quorum and elects a leader, the isolated node can lead nothing (a leader
there stops serving reads at its read barrier and steps down). Detail
``split`` names both sides per group. With 1 PD node, cutting it off leaves
no PD quorum at all: timestamps and routing stop until it heals.

* ``kill``: SIGKILL, then restart on the same data directory (waiting until
  the process is ready again);
* ``pause``: SIGSTOP, then SIGCONT (a process frozen mid-request: its peers
  and clients see timeouts, its leases and timers jump when it wakes);
* ``partition``: cut every packet a node sends and every packet sent to its
  ports, with iptables on the loopback interface (the node's own sockets are
  matched through a cgroup v2 of its own); needs root and ``iptables``, else
  the run stops with :class:`NemesisUnavailableError` saying why;
* ``clock``: restart a node under libfaketime with its wall clock off by a
  seeded choice of :data:`CLOCK_SKEWS` (stepped ahead, stepped behind, or
  drifting fast; the monotonic clock stays true, see
  :mod:`bench.check.faults`), then restart it with the true clock. Evidence
  per fault (``Fault.detail``): the clock the node's log lines carry, its
  HTTP ``Date`` (stores) or its TSO (PD) at the end of the skew, and every
  TSO sampled before, during and after, which must increase strictly (a
  decrease is a nemesis error);
* ``disk``: a row store's disk fails, two ways in turn (power loss first;
  ``detail["fault"]`` says which):

  - ``fsync``: restart the store with ``failfsync.c`` preloaded, make its
    ``fsync``/``fdatasync`` fail with ``EIO`` for a while (at least until
    one call has failed, up to :data:`FSYNC_HIT_WAIT_S` longer), then kill
    it and restart it normally. Evidence: the failed calls, whether the
    store exited by itself, its log lines about the error;
  - ``power-loss``: when the run put the stores' data directories on the
    power-losing filesystem (:mod:`bench.check.faults.powerloss`; the
    runner does so whenever FUSE works here), cut one store's power: wait
    until its RocksDB write-ahead log holds unsynced data (checked with the
    store SIGSTOPped and every thread of it stopped, so no write or fsync
    on the mount is in flight and nothing syncs it in between), SIGKILL it,
    drop every unsynced byte under its data directory, restart it on what
    is left. Evidence: what was unsynced at the cut and what was dropped,
    per file. Without FUSE the ``disk`` nemesis runs ``fsync`` only and
    says why in :attr:`Nemesis.left_out` (key ``disk/power-loss``).
    ``disk_faults`` picks one of the two (tests);
* ``all``: each round one of the above that is available, every kind once
  (in a seeded order) before any repeats (the others are
  left out, with the reason in :attr:`Nemesis.left_out`).

:meth:`Nemesis.heal` undoes whatever is in force (resumes, reconnects,
restarts): a run always ends on a whole cluster.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.check import faults
from bench.check.faults import powerloss
from kvstore.errors import KVError
from kvstore.types import physical_ms

KINDS = ("none", "kill", "pause", "partition", "clock", "disk", "all")
# libfaketime FAKETIME values: stepped ahead, stepped behind (a PD restarted
# behind must still hand out increasing timestamps), ahead by more than PD's
# GC life time (600 s: the GC safe point jumps past every running
# transaction), and a wall clock running 1.5x fast.
CLOCK_SKEWS = ("+30s", "-30s", "+900s", "-900s", "+0 x1.5")
_LOG_TIME = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", re.MULTILINE)
_DISK_ERRORS = re.compile(rb"^.*(?:Input/output error|StorageError|I/O error|IO error).*$", re.M)
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
CHAIN = "HTAPKV_CHECK"
DISK_FAULTS = ("power-loss", "fsync")  # the order the disk nemesis takes them in
# RocksDB's write-ahead log files (000123.log), not its info log (LOG).
_WAL_FILE = re.compile(r"(?:^|/)\d+\.log$")
# How long a power-loss round waits for the store to hold unsynced WAL data
# (a store that writes nothing has none: the cut then drops nothing, and
# says so), and how long a leader round waits for another leader.
UNSYNCED_WAIT_S = 10.0
LEADER_MOVE_WAIT_S = 15.0
# How much longer than its drawn length a failing-fsync round waits for the
# store's first sync attempt (a round that failed no call tested nothing).
FSYNC_HIT_WAIT_S = 10.0


class NemesisUnavailableError(KVError):
    """This fault cannot be injected on this machine (the message says why)."""


@dataclass
class Fault:
    kind: str
    target: str
    start: float  # time.monotonic()
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # evidence the fault took effect


def power_loss_unavailable_reason() -> str | None:
    """Why the ``disk`` nemesis cannot cut power here, or None when it can."""
    return powerloss.unavailable_reason()


def wants_power_loss(kind: str) -> bool:
    """Whether a run of nemesis ``kind`` should put the stores' data
    directories on a :class:`~bench.check.faults.powerloss.PowerLossFS`."""
    return (
        kind in ("disk", "all")
        and faults.disk_unavailable_reason() is None
        and power_loss_unavailable_reason() is None
    )


def partition_unavailable_reason() -> str | None:
    """Why partitions cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "partitions need root (iptables rules on the loopback interface)"
    if _iptables() is None:
        return "partitions need iptables-legacy (Debian: apt-get install iptables)"
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        return f"partitions need a writable cgroup v2 hierarchy at {CGROUP_ROOT}"
    return None


def _iptables() -> str | None:
    return shutil.which("iptables-legacy")


def socket_ports(pid: int) -> list[int]:
    """Local TCP ports of the sockets process ``pid`` holds open (listening
    and connected), from ``/proc``."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports - {0})


class Partitioner:
    """Isolates one process at a time with iptables (see the module
    docstring). Rules live in a chain of our own, so :meth:`heal` removes
    exactly them."""

    def __init__(self) -> None:
        why = partition_unavailable_reason()
        if why:
            raise NemesisUnavailableError(why)
        self.cgroup = CGROUP_ROOT / f"htapkv-check-{os.getpid()}"
        self._ipt("-N", CHAIN, check=False)
        self._ipt("-F", CHAIN)
        for hook in ("INPUT", "OUTPUT"):
            if self._ipt("-C", hook, "-j", CHAIN, check=False) != 0:
                self._ipt("-I", hook, "-j", CHAIN)

    @staticmethod
    def _ipt(*args: str, check: bool = True) -> int:
        cmd = [_iptables() or "iptables-legacy", "-w", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and r.returncode != 0:
            raise NemesisUnavailableError(f"iptables {' '.join(args)}: {r.stderr.strip()}")
        return r.returncode

    def isolate(self, pid: int, ports: list[int]) -> None:
        self.cgroup.mkdir(exist_ok=True)
        (self.cgroup / "cgroup.procs").write_text(str(pid))
        rel = str(self.cgroup.relative_to(CGROUP_ROOT))
        self._ipt("-A", CHAIN, "-o", "lo", "-m", "cgroup", "--path", rel, "-j", "DROP")
        for port in sorted(set(ports) | set(socket_ports(pid))):
            self._ipt("-A", CHAIN, "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP")
            self._ipt("-A", CHAIN, "-o", "lo", "-p", "tcp", "--sport", str(port), "-j", "DROP")

    def heal(self) -> None:
        self._ipt("-F", CHAIN, check=False)
        if self.cgroup.exists():
            # Move the processes back to the root group, then drop ours.
            with contextlib.suppress(OSError):
                for pid in (self.cgroup / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()

    def close(self) -> None:
        self.heal()
        for hook in ("INPUT", "OUTPUT"):
            self._ipt("-D", hook, "-j", CHAIN, check=False)
        self._ipt("-X", CHAIN, check=False)


def log_clock_offset(
    log: Path, offset: int, t0: float, t1: float, wait: float = 5.0
) -> dict[str, float] | None:
    """How far a process's wall clock is off, from the time stamp of the last
    line it logged (``log`` from byte ``offset``) since a restart that began
    at ``t0`` in true time: ``{"min": stamp - t, "max": stamp - t0}``, where
    ``t`` (at least ``t1``) is when the line was seen; waits up to ``wait``
    seconds for a line (a process may log only after it is ready); None
    without one. The stamp is the process's ``time.time()``, through
    ``logging``'s ``asctime``."""
    deadline = time.monotonic() + wait
    while True:
        with open(log, "rb") as f:
            f.seek(offset)
            stamps = _LOG_TIME.findall(f.read())
        seen = max(t1, time.time())
        if stamps:
            break
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)  # polling the log file for the condition "a line is there"
    t1 = seen
    day, ms = stamps[-1]
    stamp = time.mktime(time.strptime(day.decode(), "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    return {"min": round(stamp - t1, 3), "max": round(stamp - t0, 3)}


def threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (state ``T``): after a
    SIGSTOP, a thread still waiting for a system call to finish (a FUSE
    request is not interrupted by it) shows another state until it does."""
    for stat_file in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = stat_file.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # the thread exited meanwhile
            continue
        if state not in ("T", "t"):
            return False
    return True


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _largest(files: dict[str, int], n: int = 5) -> dict[str, int]:
    """The ``n`` files with the most bytes (evidence, kept short)."""
    return dict(sorted(files.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def _ports(info: Any) -> list[int]:
    addrs = [info.addr, info.peer_addr, info.raft_addr, info.status_addr]
    return sorted({int(a.rsplit(":", 1)[1]) for a in addrs if a and ":" in a} - {0})


class Nemesis:
    """Runs faults of ``kind`` on ``cluster`` until :meth:`stop` (see the
    module docstring). ``up`` / ``down``: seconds between faults / of each
    fault, drawn uniformly from the ranges. ``power``: the filesystem the
    stores' data directories are on, if it can lose power (the ``disk``
    nemesis then cuts it). ``disk_faults``: which disk faults, in the
    order they take turns (default :data:`DISK_FAULTS`)."""

    def __init__(
        self,
        cluster: Any,
        kind: str,
        rng: random.Random,
        *,
        up: tuple[float, float] = (1.0, 3.0),
        down: tuple[float, float] = (2.0, 4.0),
        power: powerloss.PowerLossFS | None = None,
        disk_faults: tuple[str, ...] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise NemesisUnavailableError(f"unknown nemesis {kind!r}; one of {', '.join(KINDS)}")
        self.cluster = cluster
        self.kind = kind
        self.rng = rng
        self.up, self.down = up, down
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused: set[str] = set()
        self._partitioner: Partitioner | None = None
        self.kinds = ["kill", "pause", "partition", "clock", "disk"] if kind == "all" else [kind]
        self.left_out: dict[str, str] = {}  # kind -> why ``all`` runs without it
        self._queue: list[str] = []
        checks = {
            "partition": partition_unavailable_reason,
            "clock": faults.clock_unavailable_reason,
            "disk": faults.disk_unavailable_reason,
        }
        for k, why_not in checks.items():
            if k in self.kinds and (why := why_not()):
                if kind != "all":
                    raise NemesisUnavailableError(why)
                self.kinds.remove(k)
                self.left_out[k] = why
        self.power = power
        self.disk_faults = list(disk_faults or DISK_FAULTS)
        if unknown := set(self.disk_faults) - set(DISK_FAULTS):
            raise NemesisUnavailableError(f"unknown disk faults {sorted(unknown)}")
        if "disk" in self.kinds and power is None and "power-loss" in self.disk_faults:
            self.disk_faults.remove("power-loss")
            self.left_out["disk/power-loss"] = (
                power_loss_unavailable_reason()
                or "the stores' data directories are not on a power-losing filesystem"
            )
            if not self.disk_faults:
                raise NemesisUnavailableError(self.left_out["disk/power-loss"])
        self._disk_rounds = 0
        self._leader_rounds = 0
        if "partition" in self.kinds:
            self._partitioner = Partitioner()
        self._tso_max = 0
        self._fault_dir: Path | None = None
        if cluster is not None and ("clock" in self.kinds or "disk" in self.kinds):
            self._fault_dir = Path(cluster.data_dir).parent / "faults"
            self._fault_dir.mkdir(exist_ok=True)
            if "clock" in self.kinds:
                faults.build_shim("sleepfix", self._fault_dir)
            if "disk" in self.kinds:
                faults.build_shim("failfsync", self._fault_dir)

    def start(self) -> None:
        if self.kind == "none":
            return
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _next_kind(self) -> str:
        """Every kind once, in a seeded order, before any kind repeats: a run
        of ``len(kinds)`` rounds has seen each fault ``all`` can inject."""
        if not self._queue:
            self._queue = list(self.kinds)
            self.rng.shuffle(self._queue)
        return self._queue.pop()

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.up)):
            kind = self._next_kind()
            detail: dict[str, Any] = {}
            if kind == "disk":  # disk faults are for row stores (see the docstring)
                names = sorted(n for n, p in self.cluster.procs.items() if p.info.role == "store")
                target = self.rng.choice(names)
            elif kind in ("kill", "pause", "partition"):
                target, detail = self._pick_target()
            else:
                target = self.rng.choice(sorted(self.cluster.procs))
            fault = Fault(kind, target, time.monotonic(), detail=detail)
            self.faults.append(fault)
            try:
                if kind == "clock":
                    self._clock(fault)
                elif kind == "disk":
                    self._disk(fault)
                else:
                    if kind == "partition":
                        fault.detail["split"] = self._split(target)
                    self._break(kind, target)
                    until = time.monotonic() + self.rng.uniform(*self.down)
                    self._watch_leader(fault, until + LEADER_MOVE_WAIT_S)
                    self._stop.wait(max(0.0, until - time.monotonic()))
                    self._repair(kind, target)
            except Exception as e:  # keep going: heal() repairs at the end
                self.errors.append(f"{kind} {target}: {type(e).__name__}: {e}")
            fault.end = time.monotonic()

    # ------------------------------------------------------------ targets, leaders
    def _pd_leader(self) -> str | None:
        """Name of the PD leader (as the PD members answering us see it)."""
        _members, lead = self.cluster.pd().members()
        if lead is None:
            return None
        return next(
            (n for n, p in self.cluster.procs.items() if p.info.addr == lead.client_addr), None
        )

    def _regions_led(self) -> dict[str, int]:
        """Store name -> how many Regions it leads, in PD's view."""
        led = dict.fromkeys((n for n, p in self.cluster.procs.items() if p.info.role == "store"), 0)
        for _region, leader in self.cluster.pd().scan_regions(b"", b"", 0):
            if leader:
                with contextlib.suppress(StopIteration):
                    led[self.cluster.name_of_store(leader)] += 1
        return led

    def _pick_target(self) -> tuple[str, dict[str, Any]]:
        """Every other round a leader (the PD leader and the store leading the
        most Regions in turn; the PD leader only with 3 PD nodes), else a
        random node. Returns the target and what is known of it."""
        self._leader_rounds += 1
        detail: dict[str, Any] = {"chosen": "random"}
        try:
            pd_leader = self._pd_leader()
            led = self._regions_led()
        except Exception as e:  # PD unreachable: no leader to aim at
            detail["leader_lookup_error"] = f"{type(e).__name__}: {e}"
            return self.rng.choice(sorted(self.cluster.procs)), detail
        detail["pd_leader"] = pd_leader
        target = self.rng.choice(sorted(self.cluster.procs))
        if self._leader_rounds % 2 == 1:
            choices = (["pd-leader"] if self.cluster.n_pd > 1 and pd_leader else []) + (
                ["store-leader"] if any(led.values()) else []
            )
            if choices:
                chosen = choices[(self._leader_rounds // 2) % len(choices)]
                detail["chosen"] = chosen
                if chosen == "pd-leader":
                    assert pd_leader is not None
                    target = pd_leader
                else:  # ties: the lowest store name, so a seed replays alike
                    target = max(sorted(led), key=lambda n: led[n])
        detail["is_pd_leader"] = target == pd_leader
        if target in led:
            detail["regions_led"] = led[target]
            detail["regions_total"] = sum(led.values())
        return target, detail

    def _split(self, target: str) -> dict[str, dict[str, list[str]]]:
        """The two sides of cutting ``target`` off, per kind of Raft group
        it votes in (see the module docstring)."""
        role = self.cluster.procs[target].info.role
        peers = sorted(
            n for n, p in self.cluster.procs.items() if p.info.role == role and n != target
        )
        if role == "columnar":  # a learner: no vote, no quorum changes
            return {}
        group = "pd" if role == "pd" else "regions"
        return {group: {"minority": [target], "majority": peers}}

    def _watch_leader(self, fault: Fault, deadline: float) -> None:
        """When the target led, wait (until ``deadline``) for the others to
        take over, and record who leads then (``leader_after``)."""
        d, target = fault.detail, fault.target
        t0 = time.monotonic()
        if d.get("is_pd_leader") and self.cluster.n_pd > 1:

            def moved() -> dict[str, Any] | None:
                lead = self._pd_leader()
                return {"leader_after": lead} if lead not in (None, target) else None

        elif d.get("regions_led"):

            def moved() -> dict[str, Any] | None:
                led = self._regions_led()
                if led.get(target, 0):
                    return None
                return {"leader_after": "others", "regions_led_after": led}

        else:
            return
        last: Any = None
        while time.monotonic() < deadline:
            try:
                if got := moved():
                    d.update(got)
                    d["leader_moved_after_s"] = round(time.monotonic() - t0, 2)
                    return
            except Exception as e:  # PD electing: ask again
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)  # polling PD for the condition "another node leads"
        d["leader_after"] = None
        d["leader_watch_error"] = last

    # ------------------------------------------------------------ clock
    def _sample_tso(self, fault: Fault, when: str) -> None:
        """One TSO from PD, checked against every one seen before."""
        try:
            ts = int(self.cluster.pd().get_ts())
        except Exception as e:  # PD electing or restarting: no sample
            fault.detail.setdefault("tso_errors", []).append(f"{when}: {type(e).__name__}")
            return
        fault.detail.setdefault("tso", []).append(
            {"when": when, "ts": ts, "offset_s": round(physical_ms(ts) / 1000 - time.time(), 3)}
        )
        if ts <= self._tso_max:
            self.errors.append(
                f"clock {fault.target}: TSO went backwards {when}: {ts} after {self._tso_max}"
            )
        self._tso_max = max(self._tso_max, ts)

    def _restart_with(self, name: str, env: dict[str, str] | None) -> tuple[int, float, float]:
        """SIGTERM ``name`` and start it again with ``env``; return where its
        log ended before and the wall-clock interval of the restart."""
        self.cluster.kill(name, signal.SIGTERM)
        log = Path(self.cluster.log_path(name))
        offset = log.stat().st_size if log.exists() else 0
        t0 = time.time()
        self.cluster.restart(name, env=env)
        return offset, t0, time.time()

    def _log_clock(self, name: str, offset: int, t0: float, t1: float) -> dict[str, float] | None:
        return log_clock_offset(self.cluster.log_path(name), offset, t0, t1)

    def _http_clock(self, name: str) -> float | None:
        """A store's clock offset from the ``Date`` of its metrics endpoint
        (whole seconds: +-1 s)."""
        addrs = Path(self.cluster.procs[name].info.data_dir) / "addrs.json"
        try:
            status = json.loads(addrs.read_text()).get("status")
            with urllib.request.urlopen(f"http://{status}/metrics", timeout=2) as r:
                date = r.headers["Date"]
            return round(email.utils.parsedate_to_datetime(date).timestamp() - time.time(), 1)
        except Exception:
            return None

    def _clock(self, fault: Fault) -> None:
        assert self._fault_dir is not None
        name = fault.target
        spec = self.rng.choice(CLOCK_SKEWS)
        fault.detail["faketime"] = spec
        self._sample_tso(fault, "before")
        env = faults.clock_env(spec, self._fault_dir)
        offset, t0, t1 = self._restart_with(name, env)
        fault.detail["log_clock_offset_s"] = self._log_clock(name, offset, t0, t1)
        self._sample_tso(fault, "skewed")
        self._stop.wait(self.rng.uniform(*self.down))
        if self.cluster.procs[name].info.role == "pd":
            self._sample_tso(fault, "end of skew")
        else:
            fault.detail["http_clock_offset_s"] = self._http_clock(name)
        offset, t0, t1 = self._restart_with(name, None)
        fault.detail["restored_log_clock_offset_s"] = self._log_clock(name, offset, t0, t1)
        self._sample_tso(fault, "restored")

    # ------------------------------------------------------------ disk
    def _disk(self, fault: Fault) -> None:
        which = self.disk_faults[self._disk_rounds % len(self.disk_faults)]
        self._disk_rounds += 1
        fault.detail["fault"] = which
        if which == "power-loss":
            self._power_loss(fault)
        else:
            self._fsync(fault)

    def _power_loss(self, fault: Fault) -> None:
        """Cut one store's power (see the module docstring)."""
        assert self.power is not None
        name = fault.target
        data_dir = Path(self.cluster.procs[name].info.data_dir)
        pid = self.cluster.procs[name].info.pid
        deadline = time.monotonic() + UNSYNCED_WAIT_S
        polls = 0
        while True:
            polls += 1
            self._paused.add(name)
            self.cluster.kill(name, signal.SIGSTOP)
            # A thread inside a write or fsync on the mount finishes it before
            # it stops: look only once every thread has stopped.
            settle = time.monotonic() + UNSYNCED_WAIT_S
            while not threads_stopped(pid) and time.monotonic() < settle:
                time.sleep(0.005)  # polling /proc for "every thread stopped"
            dirty = self.power.dirty(data_dir)
            if any(_WAL_FILE.search(f) for f in dirty) or time.monotonic() > deadline:
                break
            self.cluster.kill(name, signal.SIGCONT)
            self._paused.discard(name)
            time.sleep(0.05)  # polling the filesystem for "the WAL has unsynced data"
        self.cluster.kill(name, signal.SIGKILL)  # a stopped process dies without running
        self._paused.discard(name)
        lost = self.power.power_loss(data_dir)
        dropped: dict[str, int] = lost["dropped"]
        fault.detail.update(
            {
                "polls_until_unsynced": polls,
                "unsynced_at_cut": _largest(dirty),
                "files_dropped": lost["files"],
                "bytes_dropped": lost["dirty_bytes_dropped"],
                "wal_bytes_dropped": sum(b for f, b in dropped.items() if _WAL_FILE.search(f)),
                "dropped_first": _largest(dropped),
            }
        )
        t0 = time.monotonic()
        self.cluster.restart(name)
        fault.detail["restart_s"] = round(time.monotonic() - t0, 2)

    def _fsync(self, fault: Fault) -> None:
        assert self._fault_dir is not None
        name = fault.target
        trigger = self._fault_dir / f"{name}.fail-fsync"
        eio_log = self._fault_dir / f"{name}.eio.{len(self.faults)}.log"
        trigger.unlink(missing_ok=True)
        env = faults.disk_env(trigger, eio_log, self._fault_dir)
        offset, _t0, _t1 = self._restart_with(name, env)
        proc = self.cluster.procs[name]
        trigger.touch()
        # Unlike the other faults this one is not cut short by stop(): the
        # clients keep writing until stop() returns, and the store only syncs
        # when a write reaches it (it may still be catching up after the
        # restart), so the round lasts its drawn length and then until the
        # first failed call has been logged, within FSYNC_HIT_WAIT_S more.
        t0 = time.monotonic()
        length = self.rng.uniform(*self.down)
        while (waited := time.monotonic() - t0) < length or (
            waited < length + FSYNC_HIT_WAIT_S and not _nonempty(eio_log)
        ):
            time.sleep(0.02)  # polling the shim's evidence log
        trigger.unlink(missing_ok=True)
        fault.detail["fsync_fault_s"] = round(time.monotonic() - t0, 2)
        calls = eio_log.read_text().splitlines() if eio_log.exists() else []
        fault.detail["eio_calls"] = len(calls)
        fault.detail["eio_first"] = calls[:3]
        exited = not proc.alive()
        fault.detail["exited_by_itself"] = exited
        if exited and proc.popen is not None:
            fault.detail["exit_code"] = proc.popen.returncode
        with open(self.cluster.log_path(name), "rb") as f:
            f.seek(offset)
            errors = _DISK_ERRORS.findall(f.read())
        fault.detail["log_error_lines"] = len(errors)
        fault.detail["log_errors_first"] = [e.decode(errors="replace")[:300] for e in errors[:3]]
        # RocksDB is read-only after a failed sync: only a restart recovers.
        self.cluster.kill(name, signal.SIGKILL)
        self.cluster.restart(name)

    # ------------------------------------------------------------ kill, pause, partition
    def _break(self, kind: str, target: str) -> None:
        if kind == "kill":
            self.cluster.kill(target, signal.SIGKILL)
        elif kind == "pause":
            self._paused.add(target)
            self.cluster.kill(target, signal.SIGSTOP)
        elif kind == "partition":
            assert self._partitioner is not None
            info = self.cluster.procs[target].info
            self._partitioner.isolate(info.pid, _ports(info))

    def _repair(self, kind: str, target: str) -> None:
        if kind == "kill":
            self.cluster.restart(target)
        elif kind == "pause":
            self.cluster.kill(target, signal.SIGCONT)
            self._paused.discard(target)
        elif kind == "partition":
            assert self._partitioner is not None
            self._partitioner.heal()

    def heal(self) -> None:
        """Resume, reconnect and restart everything; then wait until the
        cluster serves again (every Region replicated, with a leader)."""
        self.stop()
        for name in sorted(self._paused):
            self.cluster.kill(name, signal.SIGCONT)
        self._paused.clear()
        if self._partitioner is not None:
            self._partitioner.close()
        if self._fault_dir is not None:
            for trigger in self._fault_dir.glob("*.fail-fsync"):
                trigger.unlink()
        for name, proc in sorted(self.cluster.procs.items()):
            if proc.alive() and self.cluster.environment(name):
                self.cluster.kill(name, signal.SIGKILL)  # still skewed or preloaded
            if not proc.alive():
                self.cluster.restart(name)
        self.cluster.wait_pd_leader()
        self.cluster.wait_serving()
