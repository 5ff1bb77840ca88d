"""A cluster of real store processes on this machine, for tests and demos.

:class:`LocalStoreCluster` starts N ``python -m kvstore.server.store_server``
processes with the start-up protocol of :mod:`kvstore.server.store_server`:

1. every store binds its Raft and Kv ports (port 0: the kernel picks free
   ones) and publishes them in ``DATA_DIR/addrs.json``;
2. once all have, the launcher writes the cluster file (store id ->
   ``{"raft", "kv"}``), which every store is waiting for;
3. each store writes ``DATA_DIR/ready`` once it serves; the launcher then
   waits for Region 1 to have a leader (``Debug.GetRegions``).

Every wait is a condition polled under a deadline; a store that exits or
does not get there in time fails the start with the tail of its log (one log
file per store process in the cluster's directory, appended to across
restarts). Leaving the ``with`` block stops every process — SIGTERM, then
SIGKILL — whatever happened inside it, and so does a failed start.

Faults: :meth:`~LocalStoreCluster.kill` (SIGKILL by default),
:meth:`~LocalStoreCluster.restart` (same data directory: the store binds the
same ports again from its ``addrs.json`` and rejoins on its own),
:meth:`~LocalStoreCluster.pause`/:meth:`~LocalStoreCluster.resume`
(SIGSTOP/SIGCONT), :meth:`~LocalStoreCluster.kill_all`/
:meth:`~LocalStoreCluster.restart_all`. With ``proxies=True`` every store
reaches every other store's Raft port through a userspace TCP proxy of its
own in this process (one per ordered pair ``i -> j``, given to the store with
``--raft-dial-file``), so :meth:`~LocalStoreCluster.isolate` can cut a store
off from the others' Raft traffic (client traffic still reaches it) and
:meth:`~LocalStoreCluster.heal` restores it.

Introspection: :meth:`~LocalStoreCluster.regions` (the merged
``Debug.GetRegions`` views), :meth:`~LocalStoreCluster.leader_of`,
:meth:`~LocalStoreCluster.checksums` (``Debug.RegionChecksum`` from every
live store) and :meth:`~LocalStoreCluster.wait_converged` (until the replicas
of every Region have applied the same log).
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import grpc

from kvstore.client.routing import DEBUG_SERVICE, merge_views, new_channel
from kvstore.proto import debugpb_pb2
from kvstore.server.store_server import write_json_atomic
from kvstore.types import Region

T = TypeVar("T")

POLL_S = 0.02


class ClusterError(RuntimeError):
    """A store did not start, or a condition was not reached in time."""


# --------------------------------------------------------------------------
# A TCP proxy that can be cut
# --------------------------------------------------------------------------
_OPEN, _REFUSE, _BLACKHOLE = "open", "refuse", "blackhole"


class TcpProxy:
    """Forwards every connection made to :attr:`addr` to ``target``, with a
    thread per direction. :meth:`cut` closes the connections and refuses
    (closes at once) or blackholes (accepts, reads and drops) new ones;
    :meth:`restore` forwards again."""

    def __init__(self, target: str, host: str = "127.0.0.1", name: str = "proxy") -> None:
        self.target = target
        self.name = name
        self._listener = socket.create_server((host, 0))
        self.addr = f"{host}:{self._listener.getsockname()[1]}"
        self._mu = threading.Lock()
        self._mode = _OPEN
        self._conns: set[socket.socket] = set()
        self._closed = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            with self._mu:
                mode, closed = self._mode, self._closed
                self.accepted += 1
            if closed:
                _close(client)
                return
            if mode == _REFUSE:
                _close(client)
            elif mode == _BLACKHOLE:
                self._register([client], _BLACKHOLE)
            else:
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        host, port = self.target.rsplit(":", 1)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=2.0)
        except OSError:
            _close(client)  # the target is down: so is the proxied link
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._register([client, upstream], _OPEN):
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst), name=f"{self.name}-pump", daemon=True
                ).start()

    def _register(self, socks: list[socket.socket], mode: str) -> bool:
        with self._mu:
            ok = not self._closed and self._mode == mode
            if ok:
                self._conns.update(socks)
        if not ok:  # cut (or healed) while we were connecting
            for s in socks:
                _close(s)
            return False
        if mode == _BLACKHOLE:
            threading.Thread(
                target=self._drain, args=(socks[0],), name=f"{self.name}-drop", daemon=True
            ).start()
        return True

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src, dst)

    def _drain(self, sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self._drop(sock)

    def _drop(self, *socks: socket.socket) -> None:
        with self._mu:
            for s in socks:
                self._conns.discard(s)
        for s in socks:
            _close(s)

    def _close_all(self) -> None:
        with self._mu:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _close(s)

    @property
    def is_cut(self) -> bool:
        return self._mode != _OPEN

    def cut(self, *, blackhole: bool = True) -> None:
        with self._mu:
            self._mode = _BLACKHOLE if blackhole else _REFUSE
        self._close_all()

    def restore(self) -> None:
        with self._mu:
            self._mode = _OPEN
        # Blackholed connections lost bytes mid-stream: they must not carry on.
        self._close_all()

    def close(self) -> None:
        with self._mu:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._close_all()
        self._thread.join(timeout=2)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------
@dataclass
class RegionStatus:
    """A Region as the live stores see it: the freshest epoch, its leader
    (0: none agreed on), and each store's applied index."""

    region: Region
    leader_store_id: int
    applied_index: dict[int, int] = field(default_factory=dict)


@dataclass
class Checksum:
    checksum: str
    applied_index: int
    keys: int


@dataclass
class _Store:
    store_id: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    raft_addr: str = ""
    kv_addr: str = ""
    paused: bool = False
    starts: int = 0
    channel: grpc.Channel | None = None


class LocalStoreCluster:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        stores: int = 3,
        secret: str | None = None,
        split_keys: int = 0,
        proxies: bool = False,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
    ) -> None:
        if stores < 1:
            raise ValueError("a cluster needs at least one store")
        self.data_dir = Path(data_dir)
        self.secret = secret
        self.split_keys = split_keys
        self.host = host
        self.startup_timeout = startup_timeout
        self.cluster_file = self.data_dir / "cluster.json"
        self.stores: dict[int, _Store] = {
            sid: _Store(sid, self.data_dir / f"store{sid}", self.data_dir / f"store{sid}.log")
            for sid in range(1, stores + 1)
        }
        self.use_proxies = proxies
        self.proxies: dict[tuple[int, int], TcpProxy] = {}  # (from, to) -> proxy
        self._started = False
        self._stopped = False
        self._mu = threading.Lock()

    @property
    def store_ids(self) -> list[int]:
        return sorted(self.stores)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalStoreCluster:
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
        """Start every store, wire them up, wait until Region 1 has a leader.
        A directory that already holds this cluster (every store has its
        ``cluster.json`` copy) is reopened: the stores bind their old ports.
        On failure every process started is stopped before the error leaves."""
        if self._started:
            raise ClusterError("cluster already started")
        self._started = True
        atexit.register(self.stop)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            joined = [(s.data_dir / "cluster.json").exists() for s in self._all()]
            if all(joined):
                self._reopen()
            elif any(joined):
                raise ClusterError(f"{self.data_dir} holds part of another cluster")
            else:
                self._bootstrap()
            deadline = time.monotonic() + self.startup_timeout
            for s in self.stores.values():
                self._wait_store(s, (s.data_dir / "ready").exists, deadline, "serve")
            self.leader_of(1, timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def _bootstrap(self) -> None:
        """First start: every store publishes its ports, then learns all."""
        self.cluster_file.unlink(missing_ok=True)
        for s in self._all():
            (s.data_dir / "addrs.json").unlink(missing_ok=True)
            self._spawn(s)
        deadline = time.monotonic() + self.startup_timeout
        for s in self._all():
            addrs = s.data_dir / "addrs.json"
            self._wait_store(s, addrs.exists, deadline, "publish its addresses")
            self._read_addrs(s)
        if self.use_proxies:
            self._start_proxies()
        write_json_atomic(
            self.cluster_file,
            {str(s.store_id): {"raft": s.raft_addr, "kv": s.kv_addr} for s in self._all()},
        )

    def _reopen(self) -> None:
        for s in self._all():
            self._read_addrs(s)
        if self.use_proxies:
            self._start_proxies()  # before the stores read their dial files
        for s in self._all():
            self._spawn(s)

    @staticmethod
    def _read_addrs(s: _Store) -> None:
        published = json.loads((s.data_dir / "addrs.json").read_text())
        s.raft_addr, s.kv_addr = published["raft"], published["kv"]

    def _all(self) -> list[_Store]:
        return [self.stores[sid] for sid in self.store_ids]

    def _dial_file(self, s: _Store) -> Path:
        return self.data_dir / f"dial{s.store_id}.json"

    def _start_proxies(self) -> None:
        for a in self._all():
            dial = {}
            for b in self._all():
                if a is b:
                    continue
                p = TcpProxy(b.raft_addr, self.host, name=f"proxy{a.store_id}-{b.store_id}")
                self.proxies[(a.store_id, b.store_id)] = p
                dial[b.raft_addr] = p.addr
            # Read by the store once the cluster file appears (written next).
            write_json_atomic(self._dial_file(a), dial)

    def _spawn(self, s: _Store) -> None:
        s.data_dir.mkdir(parents=True, exist_ok=True)
        (s.data_dir / "ready").unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "kvstore.server.store_server",
            "--store-id",
            str(s.store_id),
            "--data-dir",
            str(s.data_dir),
            "--host",
            self.host,
            "--cluster-file",
            str(self.cluster_file),
            "--split-keys",
            str(self.split_keys),
        ]
        if self.use_proxies:
            args += ["--raft-dial-file", str(self._dial_file(s))]
        env = dict(os.environ)
        env.pop("HTAPKV_CLUSTER_SECRET", None)
        if self.secret is not None:
            env["HTAPKV_CLUSTER_SECRET"] = self.secret  # not on the command line
        if s.log is None:
            s.log = open(s.log_path, "ab")  # noqa: SIM115 (closed in stop)
        s.starts += 1
        s.log.write(f"==== start #{s.starts} of store {s.store_id} ====\n".encode())
        s.log.flush()
        s.paused = False
        s.proc = subprocess.Popen(args, stdout=s.log, stderr=subprocess.STDOUT, env=env)

    def _wait_store(self, s: _Store, cond: Callable[[], bool], deadline: float, what: str) -> None:
        while not cond():
            if s.proc is None or s.proc.poll() is not None:
                code = None if s.proc is None else s.proc.returncode
                raise ClusterError(
                    f"store {s.store_id} exited ({code}) before it could {what}:\n"
                    + self.log_tail(s.store_id)
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"store {s.store_id} did not {what} in time:\n" + self.log_tail(s.store_id)
                )
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), the proxies and the
        channels. Idempotent; safe after a failed start."""
        with self._mu:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._terminate([s for s in self._all() if self.alive(s.store_id)])
        finally:
            # Whatever failed above, no child may outlive the cluster.
            for s in self._all():
                if s.proc is not None and s.proc.poll() is None:
                    s.proc.kill()
                    s.proc.wait()
            for p in self.proxies.values():
                p.close()
            for s in self._all():
                if s.channel is not None:
                    s.channel.close()
                    s.channel = None
                if s.log is not None:
                    s.log.close()
                    s.log = None
            atexit.unregister(self.stop)

    # ------------------------------------------------------------ addresses
    def kv_addr(self, store_id: int) -> str:
        return self.stores[store_id].kv_addr

    def kv_addrs(self) -> list[str]:
        return [s.kv_addr for s in self._all()]

    def raft_addr(self, store_id: int) -> str:
        return self.stores[store_id].raft_addr

    def log_tail(self, store_id: int, n: int = 4000) -> str:
        try:
            tail = self.stores[store_id].log_path.read_bytes()[-n:]
        except OSError:
            return "(no log)"
        return tail.decode(errors="replace")

    def alive(self, store_id: int) -> bool:
        p = self.stores[store_id].proc
        return p is not None and p.poll() is None

    def pid(self, store_id: int) -> int | None:
        p = self.stores[store_id].proc
        return None if p is None else p.pid

    # ------------------------------------------------------------ faults
    def kill(self, store_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; for SIGKILL and SIGTERM, wait until the process is
        gone (SIGTERM is repeated, then escalates to SIGKILL after 10 s). A
        paused store is resumed first, except for SIGKILL."""
        self._signal([store_id], sig)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every store at once (then wait for them, as :meth:`kill`)."""
        self._signal(self.store_ids, sig)

    def _signal(self, ids: Iterable[int], sig: int) -> None:
        stores = [self.stores[i] for i in ids if self.alive(i)]
        if sig == signal.SIGTERM:
            self._terminate(stores)
            return
        for s in stores:
            assert s.proc is not None
            if s.paused and sig != signal.SIGKILL:
                self._continue(s)
            with contextlib.suppress(ProcessLookupError):
                s.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            for s in stores:
                assert s.proc is not None
                s.proc.wait()
                s.paused = False

    @staticmethod
    def _terminate(stores: list[_Store], timeout: float = 10.0) -> None:
        """SIGTERM, repeated every 2 s, then SIGKILL at ``timeout``. (Repeated:
        a process-directed signal may be taken by a thread other than the one
        that waits for it — seen after SIGSTOP/SIGCONT — and then be lost.)"""
        for s in stores:
            if s.paused:
                LocalStoreCluster._continue(s)
        deadline = time.monotonic() + timeout
        left = [s for s in stores if s.proc is not None]
        while left:
            for s in left:
                assert s.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    s.proc.terminate()
            resend = min(deadline, time.monotonic() + 2.0)
            for s in left:
                assert s.proc is not None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    s.proc.wait(max(0.0, resend - time.monotonic()))
            left = [s for s in left if s.proc is not None and s.proc.poll() is None]
            if left and time.monotonic() >= deadline:
                for s in left:
                    assert s.proc is not None
                    s.proc.kill()
                    s.proc.wait()
                left = []

    def restart(self, store_id: int, *, timeout: float | None = None) -> None:
        """Start store ``store_id`` again on its data directory (killing it
        first if it still runs) and wait until it serves."""
        self.restart_many([store_id], timeout=timeout)

    def restart_all(self, *, timeout: float | None = None) -> None:
        """Start every store again and wait until each serves and every
        Region has a leader."""
        self.restart_many(self.store_ids, timeout=timeout)
        self.wait_leaders(timeout=timeout or self.startup_timeout)

    def restart_many(self, ids: Iterable[int], *, timeout: float | None = None) -> None:
        stores = [self.stores[i] for i in ids]
        for s in stores:
            if s.proc is not None and s.proc.poll() is None:
                self.kill(s.store_id)
            self._spawn(s)
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        for s in stores:
            self._wait_store(s, (s.data_dir / "ready").exists, deadline, "serve again")

    def pause(self, store_id: int) -> None:
        """SIGSTOP: the process stops answering, its sockets stay open."""
        s = self.stores[store_id]
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGSTOP)
            s.paused = True

    def resume(self, store_id: int) -> None:
        """SIGCONT, and wait until every thread of the process runs again."""
        self._continue(self.stores[store_id])

    @staticmethod
    def _continue(s: _Store) -> None:
        # A signal that arrives while the process is stopped is taken by
        # whichever thread wakes first; the store's main thread, blocked in
        # Event.wait(), then never sees a SIGTERM. So: resume, wait until no
        # thread is stopped, and only then send anything else.
        s.paused = False
        if s.proc is None or s.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            s.proc.send_signal(signal.SIGCONT)
        tasks = Path(f"/proc/{s.proc.pid}/task")

        def running() -> bool:
            try:
                stats = [(t / "stat").read_text() for t in tasks.iterdir()]
            except OSError:
                return True  # gone, or no /proc: nothing to wait for
            return all(st.rsplit(")", 1)[-1].split()[0] not in ("T", "t") for st in stats)

        with contextlib.suppress(ClusterError):
            LocalStoreCluster.wait_for(running, 5.0, f"store {s.store_id} to run again")

    def isolate(self, store_id: int, *, blackhole: bool = True) -> None:
        """Cut every Raft link into and out of ``store_id`` (needs
        ``proxies=True``). ``blackhole``: new connections are accepted and
        their bytes dropped (a silent partition); else they are refused."""
        if not self.use_proxies:
            raise ClusterError("isolate() needs a cluster started with proxies=True")
        for (a, b), p in self.proxies.items():
            if store_id in (a, b):
                p.cut(blackhole=blackhole)

    def heal(self) -> None:
        """Restore every cut Raft link."""
        for p in self.proxies.values():
            if p.is_cut:
                p.restore()

    # ------------------------------------------------------------ Debug service
    def _serving(self) -> list[_Store]:
        return [s for s in self._all() if self.alive(s.store_id) and not s.paused and s.kv_addr]

    def _debug(self, s: _Store, method: str, req: Any, resp_type: Any, timeout: float) -> Any:
        if s.channel is None:
            s.channel = new_channel(s.kv_addr)
        call = s.channel.unary_unary(
            f"/{DEBUG_SERVICE}/{method}",
            request_serializer=type(req).SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        return call(req, timeout=timeout)

    def get_regions(self, store_id: int, timeout: float = 2.0) -> debugpb_pb2.GetRegionsResponse:
        resp: debugpb_pb2.GetRegionsResponse = self._debug(
            self.stores[store_id],
            "GetRegions",
            debugpb_pb2.GetRegionsRequest(),
            debugpb_pb2.GetRegionsResponse,
            timeout,
        )
        return resp

    def regions(self, timeout: float = 2.0) -> list[RegionStatus]:
        """Every Region the live stores host, merged (see
        :func:`kvstore.client.routing.merge_views`), ordered by start key."""
        answers = []
        for s in self._serving():
            with contextlib.suppress(grpc.RpcError):
                answers.append(self.get_regions(s.store_id, timeout))
        out = [RegionStatus(loc.region, loc.leader_store_id) for loc in merge_views(answers)]
        by_id = {st.region.id: st for st in out}
        for a in answers:
            for info in a.regions:
                st = by_id.get(info.region.id)
                if st is not None:
                    st.applied_index[a.store_id] = info.applied_index
        return out

    def leader_of(self, region_id: int, timeout: float = 15.0, exclude: Iterable[int] = ()) -> int:
        """Wait until the live stores agree on a leader of ``region_id`` (not
        in ``exclude``) and return its store id."""
        skip = set(exclude)

        def find() -> int | None:
            for st in self.regions():
                if st.region.id == region_id and st.leader_store_id not in (0, *skip):
                    return st.leader_store_id
            return None

        return self.wait_for(find, timeout, f"a leader of region {region_id}")

    def wait_leaders(self, timeout: float = 15.0) -> dict[int, int]:
        """Wait until every Region has a leader; returns Region id -> store."""

        def all_led() -> dict[int, int] | None:
            regs = self.regions()
            if regs and all(st.leader_store_id for st in regs):
                return {st.region.id: st.leader_store_id for st in regs}
            return None

        return self.wait_for(all_led, timeout, "a leader for every Region")

    def checksums(self, region_id: int, timeout: float = 5.0) -> dict[int, Checksum | str]:
        """``Debug.RegionChecksum`` of ``region_id`` from every live store:
        store id -> checksum, or the error text (Region not there, store
        unreachable)."""
        out: dict[int, Checksum | str] = {}
        for s in self._serving():
            try:
                r: debugpb_pb2.RegionChecksumResponse = self._debug(
                    s,
                    "RegionChecksum",
                    debugpb_pb2.RegionChecksumRequest(region_id=region_id),
                    debugpb_pb2.RegionChecksumResponse,
                    timeout,
                )
            except grpc.RpcError as e:
                out[s.store_id] = f"rpc failed: {e.code()}"
                continue
            out[s.store_id] = r.error or Checksum(r.checksum, r.applied_index, r.keys)
        return out

    def wait_converged(self, timeout: float = 30.0) -> dict[int, dict[int, Checksum]]:
        """Wait until, for every Region, every store of its peers (all must
        be live) reports a checksum at the same applied index; return Region
        id -> store id -> checksum. Equal indexes mean equal logs applied:
        whether the checksums are then equal is for the caller to check."""
        state: dict[str, Any] = {}

        def converged() -> dict[int, dict[int, Checksum]] | None:
            out: dict[int, dict[int, Checksum]] = {}
            for st in self.regions():
                want = {p.store_id for p in st.region.peers}
                sums = self.checksums(st.region.id)
                state["last"] = (st.region.id, sums)
                good = {
                    sid: c for sid, c in sums.items() if sid in want and isinstance(c, Checksum)
                }
                if set(good) != want or len({c.applied_index for c in good.values()}) != 1:
                    return None
                out[st.region.id] = good
            return out or None

        try:
            return self.wait_for(converged, timeout, "replicas at equal applied indexes")
        except ClusterError as e:
            raise ClusterError(f"{e}; last seen: {state.get('last')}") from None

    @staticmethod
    def wait_for(cond: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``cond`` until it returns something truthy (and return it)."""
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.1f} s waiting for {what}")
            time.sleep(POLL_S)


__all__ = ["Checksum", "ClusterError", "LocalStoreCluster", "RegionStatus", "TcpProxy"]
