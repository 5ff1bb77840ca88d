"""Faults injected into a :class:`kvstore.LocalCluster` during a check run.

The nemesis runs in the parent process, in a thread, in rounds: wait a
little, break one node (chosen at random among PD, stores and the columnar
node), wait a few seconds, repair it. Every fault is recorded as an interval
(:class:`Fault`) for the report and the timeline plot.

* ``kill``: SIGKILL, then restart on the same data directory (waiting until
  the process is ready again);
* ``pause``: SIGSTOP, then SIGCONT (a process frozen mid-request: its peers
  and clients see timeouts, its leases and timers jump when it wakes);
* ``partition``: cut every packet a node sends and every packet sent to its
  ports, with iptables on the loopback interface (the node's own sockets are
  matched through a cgroup v2 of its own); needs root and ``iptables``, else
  the run stops with :class:`NemesisUnavailableError` saying why;
* ``all``: each round one of the above that is available.

:meth:`Nemesis.heal` undoes whatever is in force (resumes, reconnects,
restarts): a run always ends on a whole cluster.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstore.errors import KVError

KINDS = ("none", "kill", "pause", "partition", "all")
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
CHAIN = "HTAPKV_CHECK"


class NemesisUnavailableError(KVError):
    """This fault cannot be injected on this machine (the message says why)."""


@dataclass
class Fault:
    kind: str
    target: str
    start: float  # time.monotonic()
    end: float | None = None


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


def _ports(info: Any) -> list[int]:
    addrs = [info.addr, info.peer_addr, info.raft_addr, info.status_addr]
    return sorted({int(a.rsplit(":", 1)[1]) for a in addrs if a and ":" in a} - {0})


class Nemesis:
    """Runs faults of ``kind`` on ``cluster`` until :meth:`stop` (see the
    module docstring). ``up`` / ``down``: seconds between faults / of each
    fault, drawn uniformly from the ranges."""

    def __init__(
        self,
        cluster: Any,
        kind: str,
        rng: random.Random,
        *,
        up: tuple[float, float] = (1.0, 3.0),
        down: tuple[float, float] = (2.0, 4.0),
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
        self.kinds = ["kill", "pause", "partition"] if kind == "all" else [kind]
        if "partition" in self.kinds:
            if kind == "all" and partition_unavailable_reason():
                self.kinds.remove("partition")
            else:
                self._partitioner = Partitioner()

    def start(self) -> None:
        if self.kind == "none":
            return
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.up)):
            kind = self.rng.choice(self.kinds)
            names = sorted(self.cluster.procs)
            target = self.rng.choice(names)
            fault = Fault(kind, target, time.monotonic())
            self.faults.append(fault)
            try:
                self._break(kind, target)
                self._stop.wait(self.rng.uniform(*self.down))
                self._repair(kind, target)
            except Exception as e:  # keep going: heal() repairs at the end
                self.errors.append(f"{kind} {target}: {type(e).__name__}: {e}")
            fault.end = time.monotonic()

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
        for name, proc in sorted(self.cluster.procs.items()):
            if not proc.alive():
                self.cluster.restart(name)
        self.cluster.wait_pd_leader()
        self.cluster.wait_serving()
