"""A whole cluster on this machine: PD node(s), stores, (later) a columnar node.

:class:`LocalCluster` is what ``htapkv cluster up`` runs and what tests,
demos and benchmarks use (as ``kvstore.LocalCluster``): real processes
(``python -m kvstore.server.pd_server`` / ``store_server --pd``), one data
directory each under the cluster's (the stores' under ``store_data_root``
instead when given: another disk, such as the power-losing filesystem of
``htapkv check``), one log file each in the cluster's directory (appended to
across restarts), and ``DATA_DIR/cluster.json`` listing every process: name,
role, addresses and pid.

Ports: with ``base_port`` P, PD node i gets client port P+2i and peer (Raft)
port P+2i+1, store j gets Kv port P+100+j (its Raft and status ports are
picked by the kernel and kept in its ``addrs.json``); without, free ports
are picked. ``start()`` on a directory that has a ``cluster.json`` reuses its
topology and ports, so the data comes back.

Start is complete when PD has a leader, every store has registered, and the
Region directory covers the whole key space with every Region at full
replication (min(3, stores) voters) and a known leader. Every wait is a
condition polled under a deadline; a process that exits or does not get
there in time fails the start with the tail of its log, and a failed start
stops what it started. Unless ``detach`` (``cluster up``), leaving the
``with`` block stops every process: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from kvstore.errors import KVError
from kvstore.proto.tls import TlsConfig
from kvstore.server.store_server import write_json_atomic

T = TypeVar("T")

POLL_S = 0.05
CLUSTER_FILE = "cluster.json"


class ClusterError(KVError):
    """A process did not start or stop, or a condition was not reached in
    time. The message names the process and ends with its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ProcessInfo:
    name: str  # pd1, store1, ...
    role: str  # "pd" | "store" | "columnar"
    data_dir: str
    addr: str  # PD client address or store Kv address
    peer_addr: str = ""  # PD Raft address
    pid: int = 0
    store_id: int = 0
    raft_addr: str = ""
    status_addr: str = ""


class _Proc:
    def __init__(self, info: ProcessInfo, argv: list[str], detach: bool, log_dir: Path) -> None:
        self.info = info
        self.log_dir = log_dir
        self.argv = argv
        self.detach = detach
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.env: dict[str, str] = {}  # extra environment of the running process

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.info.name}.log"

    def start(self, env: dict[str, str] | None = None) -> None:
        Path(self.info.data_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.info.data_dir) / "ready").unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in wait_stopped)
        self.env = dict(env or {})
        self.popen = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env} if self.env else None,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=self.detach,  # survives the `cluster up` command
        )
        self.info.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ready(self) -> bool:
        return (Path(self.info.data_dir) / "ready").exists()

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def wait_stopped(self, timeout: float) -> None:
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


class LocalCluster:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        pd: int = 1,
        stores: int = 3,
        columnar: int = 0,
        base_port: int | None = None,
        host: str = "127.0.0.1",
        detach: bool = False,
        secret: str | None = None,
        tls: TlsConfig | None = None,
        client_tls: TlsConfig | None = None,
        store_args: list[str] | None = None,
        pd_args: list[str] | None = None,
        startup_timeout: float = 180.0,
        store_data_root: str | os.PathLike[str] | None = None,
    ) -> None:
        if pd not in (1, 3):
            raise ClusterError("a cluster has 1 or 3 PD nodes")
        if stores < 1:
            raise ClusterError("a cluster needs at least one store")
        if columnar < 0:
            raise ClusterError("columnar must be 0 or more")
        self.data_dir = Path(data_dir).resolve()
        self.store_data_root = Path(store_data_root or self.data_dir).resolve()
        self.n_pd, self.n_stores, self.n_columnar = pd, stores, columnar
        self.base_port = base_port
        self.host = host
        self.detach = detach
        self.secret = secret
        # Servers use ``tls``; this object's own clients ``client_tls``.
        self.tls = tls
        self.client_tls = client_tls
        self.store_args = store_args or []
        self.pd_args = pd_args or []
        self.startup_timeout = startup_timeout
        self.procs: dict[str, _Proc] = {}
        self._pd_client: Any = None

    # ------------------------------------------------------------ topology
    def _plan(self) -> list[ProcessInfo]:
        path = self.data_dir / CLUSTER_FILE
        if path.exists():  # the same cluster again: same names, dirs, ports
            saved = json.loads(path.read_text())
            infos = [ProcessInfo(**p) for p in saved["processes"]]
            self.n_pd = sum(1 for i in infos if i.role == "pd")
            self.n_stores = sum(1 for i in infos if i.role == "store")
            self.n_columnar = sum(1 for i in infos if i.role == "columnar")
            return infos
        infos = []
        for i in range(self.n_pd):
            if self.base_port is not None:
                client, peer = self.base_port + 2 * i, self.base_port + 2 * i + 1
            else:
                client, peer = free_port(self.host), free_port(self.host)
            infos.append(
                ProcessInfo(
                    name=f"pd{i + 1}",
                    role="pd",
                    data_dir=str(self.data_dir / f"pd{i + 1}"),
                    addr=f"{self.host}:{client}",
                    peer_addr=f"{self.host}:{peer}",
                )
            )
        for j in range(self.n_stores):
            port = self.base_port + 100 + j if self.base_port is not None else 0
            infos.append(
                ProcessInfo(
                    name=f"store{j + 1}",
                    role="store",
                    data_dir=str(self.store_data_root / f"store{j + 1}"),
                    addr=f"{self.host}:{port}",
                )
            )
        for k in range(self.n_columnar):
            port = self.base_port + 200 + k if self.base_port is not None else 0
            infos.append(
                ProcessInfo(
                    name=f"columnar{k + 1}",
                    role="columnar",
                    data_dir=str(self.data_dir / f"columnar{k + 1}"),
                    addr=f"{self.host}:{port}",
                )
            )
        return infos

    @property
    def pd_addrs(self) -> list[str]:
        return [p.info.addr for p in self.procs.values() if p.info.role == "pd"]

    @property
    def pd_addr(self) -> str:
        return ",".join(self.pd_addrs)

    def processes(self) -> list[ProcessInfo]:
        return [p.info for p in self.procs.values()]

    def _argv(self, info: ProcessInfo, pds: list[ProcessInfo]) -> list[str]:
        py = [sys.executable, "-m"]
        secret = ["--secret", self.secret] if self.secret else []
        if self.tls is not None:
            secret += self.tls.as_args()
        if info.role == "pd":
            argv = [*py, "kvstore.server.pd_server", "--name", info.name]
            argv += [
                "--data-dir",
                info.data_dir,
                "--addr",
                info.addr,
                "--peer-addr",
                info.peer_addr,
            ]
            if len(pds) > 1:
                argv += ["--initial-cluster", ",".join(f"{p.name}={p.peer_addr}" for p in pds)]
            return argv + secret + self.pd_args
        module = "columnar_node" if info.role == "columnar" else "store_server"
        argv = [*py, f"kvstore.server.{module}", "--data-dir", info.data_dir]
        argv += ["--pd", ",".join(p.addr for p in pds), "--addr", info.addr]
        return argv + secret + self.store_args

    # ------------------------------------------------------------ lifecycle
    def start(self) -> LocalCluster:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        infos = self._plan()
        pds = [i for i in infos if i.role == "pd"]
        for info in infos:
            self.procs[info.name] = _Proc(info, self._argv(info, pds), self.detach, self.data_dir)
        try:
            for p in self.procs.values():
                if p.info.role == "pd":
                    p.start()
            self._wait_ready([p for p in self.procs.values() if p.info.role == "pd"])
            self.wait_pd_leader()
            for p in self.procs.values():
                if p.info.role != "pd":
                    p.start()
            self._wait_ready([p for p in self.procs.values() if p.info.role != "pd"])
            self._learn_addresses()
            self.wait_serving()
            self.save()
        except BaseException:
            self.stop()
            raise
        return self

    def _learn_addresses(self) -> None:
        for p in self.procs.values():
            addrs_path = Path(p.info.data_dir) / "addrs.json"
            if p.info.role != "pd" and addrs_path.exists():
                a = json.loads(addrs_path.read_text())
                p.info.addr = a.get("kv", p.info.addr)
                p.info.raft_addr = a.get("raft", "")
                p.info.status_addr = a.get("status", "")
            ident = Path(p.info.data_dir) / "store_ident.json"
            if ident.exists():
                p.info.store_id = int(json.loads(ident.read_text())["store_id"])

    def save(self) -> None:
        write_json_atomic(
            self.data_dir / CLUSTER_FILE,
            {"pd_addrs": self.pd_addrs, "processes": [asdict(i) for i in self.processes()]},
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every process (stores first, PD last), then SIGKILL
        whatever has not exited after ``timeout``."""
        self.stop_clients()
        order = sorted(self.procs.values(), key=lambda p: p.info.role == "pd")
        for p in order:
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in order:
            p.wait_stopped(max(0.1, deadline - time.monotonic()))

    def stop_clients(self) -> None:
        """Close this object's PD client (the processes keep running)."""
        if self._pd_client is not None:
            self._pd_client.close()
            self._pd_client = None

    def __enter__(self) -> LocalCluster:
        return self.start() if not self.procs else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.detach:
            self.stop()

    # ------------------------------------------------------------ faults
    def _select(self, role_or_name: str) -> list[_Proc]:
        if role_or_name in self.procs:
            return [self.procs[role_or_name]]
        if role_or_name == "pd-leader":
            leader = self.pd().members()[1]
            return [p for p in self.procs.values() if p.info.addr == leader.client_addr]
        chosen = [p for p in self.procs.values() if p.info.role == role_or_name]
        if not chosen:
            raise ClusterError(f"no process named or of role {role_or_name!r}")
        return chosen

    def kill(self, role_or_name: str, sig: int = signal.SIGKILL) -> list[str]:
        """Send ``sig`` (SIGKILL by default) to a process by name (``store2``),
        to ``pd-leader``, or to every process of a role; returns the names."""
        procs = self._select(role_or_name)
        for p in procs:
            p.signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                p.wait_stopped(15.0)
        return [p.info.name for p in procs]

    def restart(self, name: str, *, wait: bool = True, env: dict[str, str] | None = None) -> None:
        """Start a stopped process again on its data directory. ``env``:
        extra environment variables for this start only (a fault such as
        ``LD_PRELOAD``); the next restart without it starts normally."""
        p = self.procs[name]
        if p.alive():
            raise ClusterError(f"{name} is running")
        p.start(env)
        if wait:
            self._wait_ready([p])
        self.save()

    def environment(self, name: str) -> dict[str, str]:
        """The extra environment ``name`` was last started with (see
        :meth:`restart`); empty for a normal start."""
        return dict(self.procs[name].env)

    def log_path(self, name: str) -> Path:
        """The log file of process ``name`` (appended to across restarts)."""
        return self.procs[name].log_path

    def store_id(self, name: str) -> int:
        return self.procs[name].info.store_id

    def name_of_store(self, store_id: int) -> str:
        return next(p.info.name for p in self.procs.values() if p.info.store_id == store_id)

    # ------------------------------------------------------------ waits
    def wait_for(self, what: str, fn: Callable[[], T | None], timeout: float | None = None) -> T:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                got = fn()
                if got:
                    return got
            except Exception as e:  # not there yet: PD electing, store starting
                last = e
            time.sleep(POLL_S)
        raise ClusterError(f"timed out waiting for {what} (last error: {last})")

    def _wait_ready(self, procs: list[_Proc]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        for p in procs:
            while not p.ready():
                if not p.alive():
                    raise ClusterError(f"{p.info.name} exited:\n{p.log_tail()}")
                if time.monotonic() > deadline:
                    raise ClusterError(f"{p.info.name} did not start:\n{p.log_tail()}")
                time.sleep(POLL_S)

    def pd(self) -> Any:
        """A PD client for this cluster (kept open until :meth:`stop`)."""
        if self._pd_client is None:
            from kvstore.client.pd_client import PdClient

            self._pd_client = PdClient(self.pd_addrs, tls=self.client_tls)
        return self._pd_client

    def wait_pd_leader(self, timeout: float | None = None) -> str:
        """The PD leader's client address, once there is one."""

        def leader() -> str | None:
            _members, lead = self.pd().members()
            return str(lead.client_addr) if lead is not None and lead.client_addr else None

        return self.wait_for("a PD leader", leader, timeout)

    def fully_replicated(self) -> bool:
        """Every store registered; the Regions cover the key space, each with
        min(3, row stores) voters, a leader, and a learner on every columnar
        node."""
        pd = self.pd()
        stores = [s for s in pd.get_all_stores() if s.state == 0]
        columnar = {
            s.id
            for s in stores
            if any((lb.key, lb.value) == ("engine", "columnar") for lb in s.labels)
        }
        if len(stores) - len(columnar) < self.n_stores or len(columnar) < self.n_columnar:
            return False
        want = min(3, self.n_stores)
        regions = pd.scan_regions(b"", b"", 0)
        expect_start = b""
        for region, leader in regions:
            voters = [p for p in region.peers if not p.is_learner]
            learners = {p.store_id for p in region.peers if p.is_learner}
            if region.start_key != expect_start or len(voters) != want or not leader:
                return False
            if not columnar <= learners:
                return False
            expect_start = region.end_key
            if not expect_start:
                return True
        return False

    def wait_serving(self, timeout: float | None = None) -> None:
        self.wait_for("every Region to be fully replicated", self.fully_replicated, timeout)

    # ------------------------------------------------------------ clients
    def connect(self, **options: Any) -> Any:
        """A :class:`kvstore.Client` on this cluster."""
        from kvstore.client.cluster import connect

        if self.client_tls is not None:
            t = self.client_tls
            options = {"tls_ca": t.ca, "tls_cert": t.cert, "tls_key": t.key, **options}
        return connect(self.pd_addrs, **options)


def stop_detached(data_dir: str | os.PathLike[str], timeout: float = 15.0) -> list[str]:
    """Stop the processes a ``cluster up`` left running in ``data_dir``
    (``htapkv cluster down``); returns the names of those it stopped."""
    path = Path(data_dir) / CLUSTER_FILE
    if not path.exists():
        raise ClusterError(f"no {CLUSTER_FILE} in {data_dir}: is a cluster there?")
    infos = [ProcessInfo(**p) for p in json.loads(path.read_text())["processes"]]
    infos.sort(key=lambda i: i.role == "pd")  # stores first
    alive = [i for i in infos if _is_ours(i)]
    for i in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(i.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for i in alive:
        while _is_ours(i) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if _is_ours(i):
            with contextlib.suppress(ProcessLookupError):
                os.kill(i.pid, signal.SIGKILL)
    return [i.name for i in alive]


def _is_ours(info: ProcessInfo) -> bool:
    """The pid still runs one of our servers on this data directory (a pid
    can be reused by an unrelated process after ours exited)."""
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{info.pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie has exited
        return False
    return info.data_dir.encode() in cmdline


__all__ = ["ClusterError", "LocalCluster", "ProcessInfo", "stop_detached"]
