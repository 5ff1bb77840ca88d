"""Shared fixtures for Raft tests: real RocksDB-backed logs, free ports,
replicas in one process (one driver each, as if each were a store)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from raft import ProposalError, RaftConfig, RaftDriver, RaftGroup, RaftLogStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_nodes(tmp: Any, n: int, secret: str | None = None) -> list[Node]:
    """``n`` stores, each bound to a free loopback port of its own choosing
    (asking the kernel for port 0 and keeping it: no reuse race)."""
    return [Node(f"{tmp}/s{i}", "127.0.0.1:0", secret) for i in range(n)]


class RocksLog:
    """A LogStorage over a private rocksdict database (fsync'd)."""

    def __init__(self, path: str) -> None:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(path, options=opts)
        self.sync_opts = WriteOptions()
        self.sync_opts.sync = True
        self.syncs = 0

    def scan_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self.db.iter()
        it.seek(prefix)
        while it.valid() and it.key().startswith(prefix):
            yield it.key(), it.value()
            it.next()

    def apply(
        self, puts: list[tuple[bytes, bytes]], deletes: list[tuple[bytes, bytes]], *, sync: bool
    ) -> None:
        wb = WriteBatch(raw_mode=True)
        for s, e in deletes:
            wb.delete_range(s, e)
        for k, v in puts:
            wb.put(k, v)
        self.db.write(wb, self.sync_opts if sync else WriteOptions())
        self.syncs += sync

    def close(self) -> None:
        self.db.close()


class ListMachine:
    """Records (index, command) in apply order; result = position."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()

    def apply(self, index: int, commands: list[bytes]) -> list[Any]:
        with self.lock:
            out = []
            for c in commands:
                self.applied.append((index, c))
                out.append(len(self.applied))
            return out

    def commands(self) -> list[bytes]:
        with self.lock:
            return [c for _, c in self.applied]


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``cond`` until truthy. Tests wait on conditions, never on time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class Node:
    """One 'store': a driver with its own RocksDB log, hosting groups."""

    def __init__(self, path: str, addr: str, secret: str | None = None) -> None:
        self.path, self.addr, self.secret = path, addr, secret
        self.log = RocksLog(path)
        self.driver = RaftDriver(RaftLogStore(self.log), addr, secret=secret)
        self.addr = self.driver.raft_addr
        self.machines: dict[int, ListMachine] = {}
        self.groups: dict[int, RaftGroup] = {}

    def host(
        self, gid: int, voters: list[str], *, learner: bool = False, cfg: RaftConfig | None = None
    ) -> RaftGroup:
        m = self.machines.setdefault(gid, ListMachine())
        g = self.driver.add_group(gid, voters, m, cfg or RaftConfig(), learner=learner)
        self.groups[gid] = g
        return g

    def stop(self) -> None:
        self.driver.stop()
        self.log.close()


def leader_of(nodes: list[Node], gid: int) -> RaftGroup:
    def find() -> RaftGroup | None:
        for n in nodes:
            g = n.groups.get(gid)
            if g is not None and not g.destroyed and g.is_ready_leader():
                return g
        return None

    group: RaftGroup = wait_for(find, what=f"a ready leader of group {gid}")
    return group


def propose(nodes: list[Node], gid: int, command: bytes) -> Any:
    """Propose on whoever leads, retrying when leadership moved *before* the
    proposal was made (nothing was proposed then, so a retry cannot apply a
    command twice). The machine shares 2 cores with other tests, so a
    spurious election now and then is expected, not a failure."""
    for _ in range(50):
        g = leader_of(nodes, gid)
        try:
            return g.propose(command)
        except ProposalError as e:
            if e.unknown:
                raise
    raise AssertionError("no stable leader")
