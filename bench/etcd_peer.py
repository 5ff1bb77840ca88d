"""A 3-member etcd cluster on loopback, and an asyncio client for it: the
peer that ``htapkv bench ycsb --peer etcd`` measures beside htapkv.

Where it sits: only the benchmarks use it; nothing in ``kvstore`` knows etcd.

:class:`EtcdCluster` starts ``etcd`` (Debian's ``etcd-server`` package) as
three member processes with their data in a folder of ours, on client and
peer ports picked free at run time on 127.0.0.1; it returns once every member
answers ``/health`` with ``true`` (a condition, polled, never a fixed sleep)
and stops them all when closed (SIGTERM, then SIGKILL after a grace period),
also when starting failed half-way. A member that exits while starting fails
the start with the tail of its log.

:class:`EtcdKV` is the client side: ``aetcd`` (grpc.aio) with the operations a
YCSB workload needs. Reads are etcd's default linearizable reads; a
read-modify-write is a read then a ``Txn`` that puts only if the key's
``mod_revision`` is unchanged, retried on a conflict (etcd's STM pattern, the
same optimistic scheme as a Percolator transaction). A scan is a ``Range`` with
a limit: aetcd's ``get_range`` takes no limit, so it is built from aetcd's own
request type and sent through its stub. Every operation goes straight to
aetcd's stubs (``client.kvstub``) on the channel aetcd opened: its public
``get``/``put`` add a connection check and wrap each result in Python objects,
per call, and the point is to make the Python client cost etcd as little as
it can (see the ycsb module's notes on what the client still costs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = "sudo apt-get install etcd-server etcd-client"
AETCD_HINT = "pip install aetcd==1.0.0  (it is in htapkv's dependencies: pip install -e .)"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_GRACE = 5.0
POLL = 0.05
RMW_MAX_RETRIES = 100


class PeerUnavailableError(Exception):
    """The peer cannot run here; the message says what to install or fix."""


def find_etcd() -> str:
    """The ``etcd`` binary, or :class:`PeerUnavailableError` saying how to get it."""
    path = shutil.which("etcd")
    if path is None:
        raise PeerUnavailableError(
            "the etcd binary was not found on PATH. Install etcd (Debian/Ubuntu packages "
            f"etcd-server and etcd-client):\n    {INSTALL_HINT}"
        )
    return path


def etcd_version(binary: str) -> str | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return None


def import_aetcd() -> Any:
    """The ``aetcd`` module, or :class:`PeerUnavailableError` saying how to get it."""
    try:
        import aetcd
    except ImportError as e:
        raise PeerUnavailableError(
            f"the Python etcd client aetcd is missing ({e}):\n    {AETCD_HINT}"
        ) from None
    return aetcd


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now (the kernel picks
    them; another process could still take one before etcd binds it, in which
    case that member fails to start and says so)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    """``members`` etcd processes forming one new cluster under ``base``.
    Use as a context manager; :attr:`members` hold ports and processes."""

    def __init__(self, base: str | os.PathLike[str], members: int = 3) -> None:
        self.binary = find_etcd()
        self.version = etcd_version(self.binary)
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * members)
        self.members = [
            Member(
                name=f"m{i + 1}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.base / f"m{i + 1}",
                log_path=self.base / f"m{i + 1}.log",
            )
            for i in range(members)
        ]
        self._logs: list[Any] = []
        try:
            self._start()
            self._wait_healthy(START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            cmd = [
                self.binary,
                "--name", m.name,
                "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url,
                "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url,
                "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial,
                "--initial-cluster-token", f"htapkv-bench-{os.getpid()}",
                "--initial-cluster-state", "new",
                "--logger", "zap",
                "--log-level", "warn",
            ]  # fmt: skip
            log = open(m.log_path, "wb")  # noqa: SIM115  (closed in close())
            self._logs.append(log)
            m.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def _healthy(self, m: Member) -> bool:
        try:
            with urllib.request.urlopen(f"{m.client_url}/health", timeout=1.0) as r:
                body = r.read()
        except (OSError, urllib.error.URLError):
            return False
        return b'"health":"true"' in body.replace(b" ", b"")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.members)
        while pending:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(
                        f"etcd member {m.name} exited with code {m.proc.returncode} while "
                        f"starting; its log ends with:\n{m.log_tail()}"
                    )
            pending = [m for m in pending if not self._healthy(m)]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(m.name for m in pending)
                raise RuntimeError(
                    f"etcd members {names} not healthy after {timeout:g} s; "
                    f"{pending[0].name}'s log ends with:\n{pending[0].log_tail()}"
                )
            time.sleep(POLL)

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(HOST, m.client_port) for m in self.members]

    def close(self) -> None:
        """SIGTERM every member, SIGKILL those still running after the grace
        period; idempotent."""
        procs = [m.proc for m in self.members if m.proc is not None and m.proc.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- client
class EtcdKV:
    """The YCSB operations over one aetcd client (create it inside the event
    loop that will use it; :meth:`connect` picks the leader's endpoint)."""

    def __init__(self, endpoints: list[tuple[str, int]]) -> None:
        self.aetcd = import_aetcd()
        self.endpoints = endpoints
        self.client: Any = None
        self.endpoint: tuple[str, int] | None = None
        self.rmw_retries = 0

    async def connect(self) -> None:
        """Connect to the member that leads: every write goes to the leader
        anyway, so this spares etcd a forwarding hop (the best case for etcd,
        as htapkv's client also talks to each Region's leader)."""
        rpc = self.aetcd.rpc
        chosen = self.endpoints[0]
        for host, port in self.endpoints:
            c = self.aetcd.Client(host=host, port=port, timeout=10)
            try:
                await c.connect()
                st = await c.maintenancestub.Status(rpc.StatusRequest(), timeout=5)
            finally:
                await c.close()
            if st.leader and st.leader == st.header.member_id:
                chosen = (host, port)
                break
        self.endpoint = chosen
        self.client = self.aetcd.Client(host=chosen[0], port=chosen[1], timeout=30)
        await self.client.connect()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def read(self, key: bytes) -> bytes | None:
        r = await self.client.kvstub.Range(self.aetcd.rpc.RangeRequest(key=key), timeout=30)
        return bytes(r.kvs[0].value) if r.kvs else None

    async def put(self, key: bytes, value: bytes) -> None:
        await self.client.kvstub.Put(self.aetcd.rpc.PutRequest(key=key, value=value), timeout=30)

    async def scan(self, start: bytes, end: bytes, limit: int) -> int:
        rpc = self.aetcd.rpc
        req = rpc.RangeRequest(key=start, range_end=end, limit=limit)
        resp = await self.client.kvstub.Range(req, timeout=30)
        return len(resp.kvs)

    async def read_modify_write(self, key: bytes, change: Any) -> None:
        """Read ``key``, then put ``change(value)`` iff nobody wrote the key
        in between (compare on ``mod_revision``); retry otherwise."""
        rpc = self.aetcd.rpc
        kv = self.client.kvstub
        for _ in range(RMW_MAX_RETRIES):
            r = await kv.Range(rpc.RangeRequest(key=key), timeout=30)
            if r.kvs:
                old, rev = r.kvs[0].value, r.kvs[0].mod_revision
            else:
                old, rev = b"", 0
            cmp = rpc.Compare(
                key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=rev
            )
            put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=change(old)))
            t = await kv.Txn(rpc.TxnRequest(compare=[cmp], success=[put]), timeout=30)
            if t.succeeded:
                return
            self.rmw_retries += 1
        raise RuntimeError(f"read-modify-write of {key!r}: {RMW_MAX_RETRIES} conflicts in a row")
