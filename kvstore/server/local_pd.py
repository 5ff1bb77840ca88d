"""A PD cluster of real processes on this machine, for tests and demos.

:class:`LocalPdCluster` starts 1 or 3 ``python -m kvstore.server.pd_server``
processes on loopback. The Raft addresses of a multi-member PD must be known
to every member before it starts (``--initial-cluster``), so they are free
ports picked by asking the kernel (bind to port 0, read the port, release it);
gRPC ports are chosen by the servers themselves (port 0) and read from each
member's ``addrs.json``. A single member binds both to port 0.

Every wait is a condition polled under a deadline (a member that exits or
does not get there in time fails the start with the tail of its log);
leaving the ``with`` block stops every process (SIGTERM, then SIGKILL),
whatever happened inside it, and so does a failed start.

Faults: :meth:`~LocalPdCluster.kill` (SIGKILL by default) and
:meth:`~LocalPdCluster.restart` (same data directory and ports).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import grpc

from kvstore.client.routing import new_channel
from kvstore.proto import pdpb_pb2
from kvstore.proto.rpc import PD_SERVICE

T = TypeVar("T")
POLL_S = 0.02


class PdClusterError(RuntimeError):
    """A PD member did not start, or a condition was not reached in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class _Member:
    name: str
    data_dir: Path
    log_path: Path
    peer_addr: str
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    client_addr: str = ""
    starts: int = 0


class LocalPdCluster:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        members: int = 1,
        *,
        secret: str | None = None,
        extra_args: list[str] | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
    ) -> None:
        if members < 1:
            raise ValueError("PD needs at least one member")
        self.data_dir = Path(data_dir)
        self.secret = secret
        self.extra_args = list(extra_args or [])
        self.host = host
        self.startup_timeout = startup_timeout
        self.members: dict[str, _Member] = {}
        for i in range(1, members + 1):
            name = f"pd{i}"
            peer = f"{host}:0" if members == 1 else f"{host}:{free_port(host)}"
            self.members[name] = _Member(
                name, self.data_dir / name, self.data_dir / f"{name}.log", peer
            )
        self._stopped = False
        self._mu = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self.members)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalPdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every member and wait until they serve and one leads."""
        atexit.register(self.stop)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for m in self.members.values():
                self._spawn(m)
            deadline = time.monotonic() + self.startup_timeout
            for m in self.members.values():
                self._wait_ready(m, deadline)
            self.wait_leader(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def _spawn(self, m: _Member) -> None:
        m.data_dir.mkdir(parents=True, exist_ok=True)
        (m.data_dir / "ready").unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "kvstore.server.pd_server",
            "--data-dir",
            str(m.data_dir),
            "--name",
            m.name,
            "--addr",
            f"{self.host}:0",
            "--peer-addr",
            m.peer_addr,
        ]
        if len(self.members) > 1:
            cluster = ",".join(f"{x.name}={x.peer_addr}" for x in self.members.values())
            args += ["--initial-cluster", cluster]
        args += self.extra_args
        env = dict(os.environ)
        env.pop("HTAPKV_CLUSTER_SECRET", None)
        if self.secret is not None:
            env["HTAPKV_CLUSTER_SECRET"] = self.secret  # not on the command line
        if m.log is None:
            m.log = open(m.log_path, "ab")  # noqa: SIM115 (closed in stop)
        m.starts += 1
        m.log.write(f"==== start #{m.starts} of {m.name} ====\n".encode())
        m.log.flush()
        m.proc = subprocess.Popen(args, stdout=m.log, stderr=subprocess.STDOUT, env=env)

    def _wait_ready(self, m: _Member, deadline: float) -> None:
        ready = m.data_dir / "ready"
        while not ready.exists():
            if m.proc is None or m.proc.poll() is not None:
                code = None if m.proc is None else m.proc.returncode
                raise PdClusterError(f"{m.name} exited ({code}):\n{self.log_tail(m.name)}")
            if time.monotonic() > deadline:
                raise PdClusterError(f"{m.name} did not serve in time:\n{self.log_tail(m.name)}")
            time.sleep(POLL_S)
        m.client_addr = json.loads((m.data_dir / "addrs.json").read_text())["client"]

    def stop(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL after 10 s). Idempotent."""
        with self._mu:
            if self._stopped:
                return
            self._stopped = True
        try:
            for m in self.members.values():
                if m.proc is not None and m.proc.poll() is None:
                    m.proc.terminate()
            deadline = time.monotonic() + 10.0
            for m in self.members.values():
                if m.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        m.proc.wait(max(0.0, deadline - time.monotonic()))
        finally:
            for m in self.members.values():
                if m.proc is not None and m.proc.poll() is None:
                    m.proc.kill()
                    m.proc.wait()
                if m.log is not None:
                    m.log.close()
                    m.log = None
            atexit.unregister(self.stop)

    # ------------------------------------------------------------ faults
    def alive(self, name: str) -> bool:
        p = self.members[name].proc
        return p is not None and p.poll() is None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the member and wait until it is gone."""
        m = self.members[name]
        if m.proc is None or m.proc.poll() is not None:
            return
        m.proc.send_signal(sig)
        try:
            m.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait()

    def restart(self, name: str, *, timeout: float | None = None) -> None:
        """Start the member again on its data directory (killing it first if
        it runs) and wait until it serves."""
        m = self.members[name]
        self.kill(name)
        self._spawn(m)
        self._wait_ready(m, time.monotonic() + (timeout or self.startup_timeout))

    # ------------------------------------------------------------ introspection
    def client_addrs(self) -> list[str]:
        return [self.members[n].client_addr for n in self.names]

    def client_addr(self, name: str) -> str:
        return self.members[name].client_addr

    def log_tail(self, name: str, n: int = 4000) -> str:
        try:
            return self.members[name].log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def leader(self, timeout: float = 2.0) -> str | None:
        """The member that answers GetMembers as leader now, if any."""
        for name in self.names:
            if not self.alive(name):
                continue
            ch = new_channel(self.members[name].client_addr)
            try:
                call = ch.unary_unary(
                    f"/{PD_SERVICE}/GetMembers",
                    request_serializer=pdpb_pb2.GetMembersRequest.SerializeToString,
                    response_deserializer=pdpb_pb2.GetMembersResponse.FromString,
                )
                resp = call(pdpb_pb2.GetMembersRequest(), timeout=timeout)
                if resp.header.error.type == pdpb_pb2.OK:
                    return name
            except grpc.RpcError:
                pass
            finally:
                ch.close()
        return None

    def wait_leader(self, timeout: float = 30.0, exclude: tuple[str, ...] = ()) -> str:
        def find() -> str | None:
            name = self.leader()
            return name if name is not None and name not in exclude else None

        return self.wait_for(find, timeout, "a PD leader")

    def wait_for(self, cond: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}\n{self.log_tail(n, 1500)}" for n in self.names)
                raise PdClusterError(f"timed out waiting for {what}\n{tails}")
            time.sleep(POLL_S)


__all__ = ["LocalPdCluster", "PdClusterError", "free_port"]
