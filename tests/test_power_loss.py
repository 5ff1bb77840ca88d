"""Power loss of every replica at once: acknowledged writes must survive.

kill -9 loses nothing a process handed to the kernel; a power loss also loses
whatever was never fsync'd. The replicated store claims (DESIGN.md §4) that
the Raft log is fsync'd in RocksDB before an entry counts toward a commit,
so a write acknowledged by the leader is on the disks of a majority and
survives even if every store loses power at the same moment. These tests
check that claim on :mod:`bench.check.faults.powerloss`, a FUSE filesystem that keeps
unsynced file data in memory and drops it on :meth:`PowerLossFS.power_loss`
(its docstring has the exact model: data durable at fsync/fdatasync of the
file, metadata at once).

* Two control tests show the filesystem really loses what was not synced,
  with plain files and with RocksDB (``sync=False`` writes lost,
  ``sync=True`` writes kept), and that a kill alone loses nothing.
* The cluster test runs three ``python -m kvstore.server.store_server``
  processes with their data directories on the mount, writes through the gRPC
  Kv service to the leader of Region 1 (raw puts from several threads, and
  two-key Percolator transactions), then SIGKILLs all three, calls
  ``power_loss()`` (in that order: nothing may write after the power loss),
  restarts them on the same directories and checks that every acknowledged
  write is there (and nothing never written), that the replicas converge to
  identical data (``Debug.RegionChecksum``) and that they take new writes.
  Several rounds share the cluster, so each round re-checks the earlier ones;
  some rounds cut the power right after the restart. Two variants: the
  server's own configuration, and Raft log compaction every
  :data:`SMALL_SNAPSHOT_ENTRIES` entries, where some rounds first let a
  follower fall so far behind that it catches up by installing the leader's
  snapshot (so the snapshot file, not the log, is then its only record of
  the entries below it: it must be durable before the log is truncated).
  When a round fails, the failure says what each store holds and logged.
* A negative control runs the same stores with the Raft log written without
  fsync and requires acknowledged writes to be lost: the check is not blind.
* The embedded store (``kvstore.open``, no Raft) gets the same treatment with
  ``tests/crash_writer.py``: fsync'd commits and the TSO high-water mark.

Not modelled (see :mod:`bench.check.faults.powerloss`): names (create, rename, unlink)
are durable at once, so a missing *directory* fsync is never caught here.

The whole module needs FUSE; it is skipped only where the kernel offers none.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from bench.check.faults.powerloss import PowerLossFS, fuse_unavailable_reason
from kvstore.client.grpc_backend import GrpcKvBackend
from kvstore.errors import (
    EpochNotMatchError,
    KVError,
    NotLeaderError,
    RegionNotFoundError,
    ServerIsBusyError,
)
from kvstore.proto import debugpb_pb2, debugpb_pb2_grpc
from kvstore.proto.convert import RequestContext, region_from_pb
from kvstore.types import Mutation, Op, compose_ts

pytestmark = pytest.mark.slow

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
STORE_IDS = (1, 2, 3)
REGION_ID = 1
# Acknowledged raw puts per round before the power goes out: rounds 2 and 4
# cut it almost at once after the restart (followers still catching up).
ROUND_TARGETS = (600, 10, 1200, 1, 300)
RAW_WRITERS = 4
NEGATIVE_CONTROL_TARGET = 200
# With small snapshots, these rounds first let a follower fall behind by more
# than a compaction (it catches up by installing the leader's snapshot).
LAGGING_ROUNDS = (2, 4)
LAGGING_WRITES = 600
SMALL_SNAPSHOT_ENTRIES = 100
EMBEDDED_ROUNDS = 3
MAX_LOAD_S = 60.0
START_TIMEOUT_S = 90.0
LEADER_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 10.0
CONVERGE_TIMEOUT_S = 30.0
ERROR_BACKOFF_S = 0.05
SCAN_PAGE = 2000
RAW_PREFIX = b"pl/"
TXN_PREFIX = b"tx/"
# Routing errors: the request was not proposed, a retry cannot apply it twice.
NOT_PROPOSED = (NotLeaderError, EpochNotMatchError, RegionNotFoundError, ServerIsBusyError)


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerLossFS]:
    reason = fuse_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with PowerLossFS(tmp_path / "fs") as mounted:
        yield mounted


def wait_until(cond: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------
# Control: the filesystem loses exactly what was not synced
# ---------------------------------------------------------------------------


def test_unsynced_file_data_is_lost_and_synced_data_survives(fs: PowerLossFS) -> None:
    m = fs.mount

    def write(name: str, data: bytes, *, sync: bool, then: bytes = b"") -> None:
        with open(m / name, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
            f.write(then)

    def before() -> dict[str, bytes]:
        write("unsynced", b"never synced", sync=False)
        write("synced", b"synced", sync=True, then=b" + tail never synced")
        with open(m / "datasync", "wb") as f:
            f.write(b"fdatasync'd")
            f.flush()
            os.fdatasync(f.fileno())
        # A truncation is data too: the old synced contents come back.
        write("truncated", b"old synced contents", sync=True)
        write("truncated", b"new", sync=False)
        # write tmp + rename without an fsync of tmp: the new name survives
        # (metadata is durable at once), the data does not.
        write("renamed", b"v1", sync=True)
        write("renamed.tmp", b"v2 never synced", sync=False)
        os.replace(m / "renamed.tmp", m / "renamed")
        (m / "dir").mkdir()
        write("dir/inner", b"synced in a new directory", sync=True)
        return {p.name: p.read_bytes() for p in m.iterdir() if p.is_file()}

    seen = fs.run(before)
    # Before the power loss every process sees every write (pass-through)...
    assert seen == {
        "unsynced": b"never synced",
        "synced": b"synced + tail never synced",
        "datasync": b"fdatasync'd",
        "truncated": b"new",
        "renamed": b"v2 never synced",
    }
    # ...while the "disk" holds only what was synced.
    assert (fs.backing / "unsynced").read_bytes() == b""
    assert (fs.backing / "synced").read_bytes() == b"synced"
    assert fs.stats()["dirty_files"] == 4

    dropped = fs.power_loss()
    assert dropped["files"] == 4 and dropped["dirty_bytes_dropped"] > 0

    def after() -> dict[str, bytes]:
        out = {p.name: p.read_bytes() for p in m.iterdir() if p.is_file()}
        out["dir/inner"] = (m / "dir" / "inner").read_bytes()
        return out

    assert fs.run(after) == {
        "unsynced": b"",
        "synced": b"synced",
        "datasync": b"fdatasync'd",
        "truncated": b"old synced contents",
        "renamed": b"",
        "dir/inner": b"synced in a new directory",
    }
    assert fs.stats()["dirty_files"] == 0


def test_a_power_loss_under_one_directory_spares_the_others(fs: PowerLossFS) -> None:
    """One machine's disk among several on the mount (the ``disk`` nemesis
    of ``htapkv check`` cuts one store's power this way)."""
    m = fs.mount

    def before() -> None:
        for d in ("a", "b"):
            (m / d / "sub").mkdir(parents=True)
            with open(m / d / "sub" / "f", "wb") as f:
                f.write(b"synced")
                f.flush()
                os.fsync(f.fileno())
                f.write(b" then not")

    fs.run(before)
    assert fs.dirty(m / "a") == {"a/sub/f": 4096}
    assert set(fs.dirty()) == {"a/sub/f", "b/sub/f"}
    lost = fs.power_loss(m / "a")
    assert lost == {"files": 1, "dirty_bytes_dropped": 4096, "dropped": {"a/sub/f": 4096}}
    assert fs.run((m / "a/sub/f").read_bytes) == b"synced"
    assert fs.run((m / "b/sub/f").read_bytes) == b"synced then not"
    assert fs.dirty(m / "a") == {} and set(fs.dirty()) == {"b/sub/f"}
    with pytest.raises(ValueError):
        fs.power_loss(m.parent)  # not on the mount


# A process that writes to RocksDB, reports, and waits to be killed.
ROCKS_WRITER = """
import sys
from rocksdict import Options, Rdict, WriteOptions
path, tag, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
opts = Options(raw_mode=True)
opts.create_if_missing(True)
db = Rdict(path, options=opts)
sync, nosync = WriteOptions(), WriteOptions()
sync.sync = True
for i in range(n):
    db.put(tag + b"/sync/%05d" % i, b"v" * 100, sync)
for i in range(n):
    db.put(tag + b"/nosync/%05d" % i, b"v" * 100, nosync)
print("written", flush=True)
sys.stdin.read()  # until killed
"""

ROCKS_READER = """
import json, sys
from rocksdict import Options, Rdict
opts = Options(raw_mode=True)
db = Rdict(sys.argv[1], options=opts)
counts = {}
it = db.iter()
it.seek_to_first()
while it.valid():
    tag, kind, _ = it.key().split(b"/")
    key = tag.decode() + "/" + kind.decode()
    counts[key] = counts.get(key, 0) + 1
    it.next()
db.close()
print(json.dumps(counts))
"""


def _rocks_write_and_kill(db: Path, tag: str, n: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", ROCKS_WRITER, str(db), tag, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"written\n", proc.stderr.read() if proc.stderr else line
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for s in (proc.stdin, proc.stdout, proc.stderr):
            if s is not None:
                s.close()


def _rocks_counts(db: Path) -> dict[str, int]:
    r = subprocess.run(
        [sys.executable, "-c", ROCKS_READER, str(db)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr.decode()
    counts: dict[str, int] = json.loads(r.stdout)
    return counts


def test_rocksdb_sync_writes_survive_power_loss_and_unsynced_are_lost(fs: PowerLossFS) -> None:
    db = fs.mount / "rocks"
    n = 200
    # kill -9 alone loses nothing: the filesystem holds every write.
    _rocks_write_and_kill(db, "a", n)
    assert _rocks_counts(db) == {"a/sync": n, "a/nosync": n}
    # kill -9 then power loss: what sync=True wrote survives (and the earlier
    # round, made durable by the reopen's flush); the sync=False tail is gone.
    _rocks_write_and_kill(db, "b", n)
    dropped = fs.power_loss()
    assert dropped["dirty_bytes_dropped"] > 0
    counts = _rocks_counts(db)
    assert counts == {"a/sync": n, "a/nosync": n, "b/sync": n}, counts


# ---------------------------------------------------------------------------
# The embedded store: fsync'd commits and the TSO high-water mark
# ---------------------------------------------------------------------------

# Reopens the store after a power loss, reads every transaction of
# tests/crash_writer.py at a fresh timestamp (a TSO that went backwards would
# hide committed ones), checks each is whole, and commits one more.
EMBEDDED_READER = """
import json, sys
sys.path.insert(0, sys.argv[2])
import crash_writer as cw
import kvstore
with kvstore.open(sys.argv[1], lock_ttl_ms=50) as client:
    with client.begin() as txn:
        rows = dict(txn.scan(b"t", b"u"))
    by_id = {}
    for k, v in rows.items():
        i, suffix = cw.parse_txn_key(k)
        by_id.setdefault(i, {})[k] = v
    torn = []
    for i, got in by_id.items():
        want = {k: str(i).encode() for k in cw.txn_keys(i)}
        want[cw.big_key(i)] = cw.big_value(i)
        if got != want:
            torn.append(i)
    def bump(txn):
        n = int(txn.get(b"post/counter") or b"0") + 1
        txn.put(b"post/counter", str(n).encode())
        return n
    post = client.transaction(bump)
print(json.dumps({"ids": sorted(by_id), "torn": torn, "post": post}))
"""


def test_embedded_store_commits_and_tso_survive_power_loss(fs: PowerLossFS) -> None:
    """``kvstore.open`` (one process, no Raft) fsyncs commits and the TSO
    high-water mark: every commit acknowledged by tests/crash_writer.py
    survives a power loss, and the reopened TSO hands out timestamps above
    them (else the fresh read would miss some, or the counter go back)."""
    db = fs.mount / "embedded"
    rng = random.Random(7)
    acked: list[int] = []
    maybe: set[int] = set()  # committed, killed before printing it
    for rnd in range(1, EMBEDDED_ROUNDS + 1):
        first = rnd * 1_000_000
        want = rng.randint(20, 150)
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "crash_writer.py"), str(db), str(first)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=child_env(),
        )
        reported: list[int] = []
        try:
            assert proc.stdout is not None
            while len(reported) < want:
                line = proc.stdout.readline()  # the writer prints a line per commit
                assert line, proc.stderr.read().decode() if proc.stderr else "writer died"
                reported.append(int(line.split()[1]))
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.stdout is not None
        # Lines printed before the kill were acknowledged too.
        reported += [int(line.split()[1]) for line in proc.stdout.read().splitlines()]
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        dropped = fs.power_loss()
        acked += reported
        maybe.add(max(reported) + 1)
        r = subprocess.run(
            [sys.executable, "-c", EMBEDDED_READER, str(db), str(ROOT / "tests")],
            capture_output=True,
            timeout=120,
            cwd=ROOT,
            env=child_env(),
            check=False,
        )
        assert r.returncode == 0, r.stderr.decode()
        out = json.loads(r.stdout)
        visible = set(out["ids"])
        lost = sorted(set(acked) - visible)
        print(
            f"embedded round {rnd}: acked {len(reported)}, power loss dropped "
            f"{dropped['dirty_bytes_dropped']} bytes; lost {len(lost)}, torn {len(out['torn'])}"
        )
        assert not lost, f"round {rnd}: acknowledged commits lost: {lost[:10]}"
        assert not out["torn"], f"round {rnd}: torn transactions: {out['torn'][:10]}"
        assert not visible - set(acked) - maybe, "transactions nobody wrote"
        assert out["post"] == rnd, f"round {rnd}: post-crash counter is {out['post']}"


# ---------------------------------------------------------------------------
# The cluster: three store processes on the power-losing filesystem
# ---------------------------------------------------------------------------


# Runs the real store server with one knob changed: the Raft log compaction
# threshold (to crash inside snapshot/compaction windows every round), or,
# for the negative control only, the Raft log written without fsync.
STORE_LAUNCHER = """
import sys
import kvstore.server.store_server as server
from kvstore.raftstore import store
snapshot_entries, log_sync = sys.argv[1], sys.argv[2] == "sync"
if not log_sync:
    apply = store.EngineLogStorage.apply
    store.EngineLogStorage.apply = lambda self, p, d, *, sync: apply(self, p, d, sync=False)
server.main([*sys.argv[3:], "--snapshot-entries", snapshot_entries])
"""


@dataclass(frozen=True)
class Variant:
    """How the stores run: ``snapshot_entries`` None keeps the server's own
    configuration (``python -m kvstore.server.store_server`` as is)."""

    snapshot_entries: int | None = None
    raft_log_sync: bool = True

    def command(self) -> list[str]:
        if self.snapshot_entries is None and self.raft_log_sync:
            return [sys.executable, "-m", "kvstore.server.store_server"]
        entries = 10_000 if self.snapshot_entries is None else self.snapshot_entries
        sync = "sync" if self.raft_log_sync else "nosync"
        return [sys.executable, "-c", STORE_LAUNCHER, str(entries), sync]


class UnknownOutcomeError(Exception):
    """A write whose outcome is unknown (it may or may not have applied)."""


@dataclass
class RoundResult:
    round: int
    raw_acked: int = 0
    raw_unknown: int = 0
    txn_acked: int = 0
    txn_unknown: int = 0
    dropped: dict[str, Any] = field(default_factory=dict)
    raw_lost: list[bytes] = field(default_factory=list)
    raw_wrong: list[bytes] = field(default_factory=list)
    raw_phantom: list[bytes] = field(default_factory=list)
    txn_lost: list[bytes] = field(default_factory=list)
    replicas: str = ""
    restart_s: float = 0.0
    lagging: str = ""
    no_leader: str = ""  # the Region had no ready leader after the restart

    def line(self) -> str:
        head = f"round {self.round}" + (f" ({self.lagging})" if self.lagging else "")
        return (
            f"{head}: raw acked {self.raw_acked} (unknown {self.raw_unknown}), "
            f"txn acked {self.txn_acked} (unknown {self.txn_unknown}); power loss dropped "
            f"{self.dropped.get('dirty_bytes_dropped', 0)} unsynced bytes in "
            f"{self.dropped.get('files', 0)} files; restart {self.restart_s:.1f} s; "
            f"lost raw {len(self.raw_lost)}, wrong raw {len(self.raw_wrong)}, "
            f"phantom raw {len(self.raw_phantom)}, lost txn keys {len(self.txn_lost)}; "
            f"replicas: {self.replicas}"
        )


def raw_value(key: bytes) -> bytes:
    return b"value-of-" + key + b"-" + b"x" * 64


class Cluster:
    """Three store server processes, data on the mount, logs off it."""

    def __init__(self, fs: PowerLossFS, base: Path, variant: Variant) -> None:
        self.fs = fs
        self.variant = variant
        self.base = base
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cluster_file = base / "cluster.json"  # off the mount: the launcher's copy
        self.dirs = {sid: fs.mount / f"s{sid}" for sid in STORE_IDS}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.log_paths: dict[int, Path] = {}
        self.starts = 0
        self.addrs: dict[int, dict[str, str]] = {}
        self.channels: dict[int, grpc.Channel] = {}
        self.backends: dict[int, GrpcKvBackend] = {}
        self.debug: dict[int, Any] = {}
        self.ctx = RequestContext()
        self.leader_sid = 0
        self._route_lock = threading.Lock()

    # ------------------------------------------------------------ processes
    def start(self, sids: Sequence[int] = STORE_IDS) -> float:
        """Start (or restart) stores ``sids``; return seconds until all serve."""
        t0 = time.monotonic()
        self.starts += 1
        first = not self.addrs
        for sid in sids:
            ready = self.dirs[sid] / "ready"
            self.fs.run(lambda ready=ready: ready.unlink(missing_ok=True))
        for sid in sids:
            args = self.variant.command()
            args += ["--store-id", str(sid), "--data-dir", str(self.dirs[sid])]
            args += ["--cluster-file", str(self.cluster_file)]
            self.log_paths[sid] = self.logs / f"s{sid}.start{self.starts}.log"
            with open(self.log_paths[sid], "wb") as log:
                self.procs[sid] = subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=ROOT,
                    env=child_env(),
                )
        if first:
            for sid in STORE_IDS:
                text = self._wait_file(sid, "addrs.json")
                self.addrs[sid] = json.loads(text)
            tmp = self.cluster_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({str(k): v for k, v in self.addrs.items()}))
            os.replace(tmp, self.cluster_file)
        for sid in sids:
            self._wait_file(sid, "ready")
        # Fresh channels: the old ones back off after the stores died.
        self._disconnect()
        self._connect()
        return time.monotonic() - t0

    def _wait_file(self, sid: int, name: str) -> str:
        path = self.dirs[sid] / name

        def read() -> str | None:
            try:
                text = self.fs.run(path.read_text)
            except FileNotFoundError:
                text = ""
            if text:
                return text
            proc = self.procs[sid]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"store {sid} exited with {proc.returncode} before writing {name}:\n"
                    + self.log_tail(sid)
                )
            return None

        return wait_until(read, START_TIMEOUT_S, f"store {sid} to write {name}")

    def log_tail(self, sid: int, n: int = 3000) -> str:
        try:
            return self.log_paths[sid].read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self, sid: int | None = None) -> None:
        """SIGKILL store ``sid`` (default: every store, at once), then wait
        until it is gone."""
        procs = list(self.procs.values()) if sid is None else [self.procs[sid]]
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=30)

    def region_infos(self) -> dict[int, str]:
        out = {}
        for sid in STORE_IDS:
            try:
                resp = self.debug[sid].GetRegions(
                    debugpb_pb2.GetRegionsRequest(), timeout=RPC_TIMEOUT_S
                )
            except grpc.RpcError as e:
                out[sid] = f"unreachable ({e.code().name})"
                continue
            info = next((i for i in resp.regions if i.region.id == REGION_ID), None)
            out[sid] = (
                "no Region"
                if info is None
                else f"is_leader={info.is_leader} follows={info.leader_store_id} "
                f"applied={info.applied_index}"
            )
        return out

    def followed_store(self) -> int:
        """The store most replicas name as their leader (0 if none)."""
        votes: dict[int, int] = {}
        for sid in STORE_IDS:
            try:
                resp = self.debug[sid].GetRegions(
                    debugpb_pb2.GetRegionsRequest(), timeout=RPC_TIMEOUT_S
                )
            except grpc.RpcError:
                continue
            for i in resp.regions:
                if i.region.id == REGION_ID and i.leader_store_id:
                    votes[i.leader_store_id] = votes.get(i.leader_store_id, 0) + 1
        return max(votes, key=lambda k: votes[k]) if votes else 0

    def diagnose(self) -> str:
        """Each store's view of Region 1, its snapshot files *on the disk*
        (the backing directory: what survived) and the errors it logged."""
        lines = []
        infos = self.region_infos()
        for sid in STORE_IDS:
            snaps = {
                p.name: p.stat().st_size for p in (self.fs.backing / f"s{sid}" / "snap").glob("*")
            }
            lines.append(f"store {sid}: {infos[sid]}; snapshot files on disk {snaps}")
            try:
                log = self.log_paths[sid].read_text(errors="replace").splitlines()
            except OSError:
                log = []
            errs = [ln for ln in log if "failed" in ln or "Error" in ln or "error" in ln]
            lines += [f"  store {sid} logged: {ln.strip()[:200]}" for ln in errs[:4]]
        return "\n".join(lines)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            self._disconnect()

    # ------------------------------------------------------------ routing
    def _disconnect(self) -> None:
        for b in self.backends.values():
            b.close()
        for ch in self.channels.values():
            ch.close()
        self.backends.clear()
        self.channels.clear()
        self.debug.clear()
        self.leader_sid = 0

    def _connect(self) -> None:
        for sid in STORE_IDS:
            ch = grpc.insecure_channel(self.addrs[sid]["kv"])
            self.channels[sid] = ch
            self.debug[sid] = debugpb_pb2_grpc.DebugStub(ch)
            self.backends[sid] = GrpcKvBackend(
                self.addrs[sid]["kv"], lambda: self.ctx, channel=ch, timeout=RPC_TIMEOUT_S
            )

    def find_leader(
        self, timeout: float = LEADER_TIMEOUT_S, stop: threading.Event | None = None
    ) -> int:
        def find() -> int | None:
            if stop is not None and stop.is_set():
                raise UnknownOutcomeError("stopped while looking for the leader")
            for sid in STORE_IDS:
                try:
                    resp = self.debug[sid].GetRegions(
                        debugpb_pb2.GetRegionsRequest(), timeout=RPC_TIMEOUT_S
                    )
                except grpc.RpcError:
                    continue
                for info in resp.regions:
                    if info.region.id == REGION_ID and info.is_leader:
                        region = region_from_pb(info.region)
                        with self._route_lock:
                            self.ctx = RequestContext(REGION_ID, region.epoch)
                            self.leader_sid = sid
                        return sid
            return None

        return wait_until(find, timeout, f"a leader of Region {REGION_ID}")

    def call(
        self,
        fn: Callable[[GrpcKvBackend], T],
        stop: threading.Event | None = None,
        *,
        idempotent: bool = False,
    ) -> T:
        """Send ``fn`` to the leader, retrying while the request surely was
        not proposed (routing errors), or on any failure if ``idempotent``
        (reads, re-puts of the same value). Otherwise a failed call raises
        :class:`UnknownOutcomeError`."""
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        while True:
            sid = self.leader_sid or self.find_leader(stop=stop)
            try:
                return fn(self.backends[sid])
            except (grpc.RpcError, KVError) as e:
                if not (idempotent or isinstance(e, NOT_PROPOSED)):
                    raise UnknownOutcomeError(repr(e)) from e
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    raise UnknownOutcomeError(f"gave up: {e!r}") from None
                with self._route_lock:
                    if self.leader_sid == sid:
                        self.leader_sid = 0
                time.sleep(0.01)  # then ask again who leads

    def checksums(self) -> dict[int, tuple[str, int, int]]:
        out = {}
        for sid in STORE_IDS:
            resp = self.debug[sid].RegionChecksum(
                debugpb_pb2.RegionChecksumRequest(region_id=REGION_ID),
                timeout=RPC_TIMEOUT_S,
                wait_for_ready=True,
            )
            assert not resp.error, f"store {sid}: {resp.error}"
            out[sid] = (resp.checksum, resp.applied_index, resp.keys)
        return out


class Ts:
    """Strictly increasing timestamps from this process's clock (no PD here:
    the stores take whatever timestamps the client sends)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, compose_ts(time.time_ns() // 1_000_000, 0))
            return self._last


@dataclass
class Ledger:
    """What was written: acknowledged or of unknown outcome."""

    raw_acked: dict[bytes, bytes] = field(default_factory=dict)
    raw_unknown: set[bytes] = field(default_factory=set)
    txn_acked: dict[bytes, bytes] = field(default_factory=dict)
    txn_unknown: set[bytes] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def raw_writer(cluster: Cluster, ledger: Ledger, tag: bytes, w: int, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        key = RAW_PREFIX + tag + b"/w%d/%07d" % (w, i)
        value = raw_value(key)
        i += 1
        try:
            cluster.call(lambda b, key=key, value=value: b.raw_put(key, value), stop)
        except UnknownOutcomeError:
            with ledger.lock:
                ledger.raw_unknown.add(key)
            stop.wait(ERROR_BACKOFF_S)  # the stores may be down: don't spin
            continue
        with ledger.lock:
            ledger.raw_acked[key] = value


def txn_writer(cluster: Cluster, ledger: Ledger, tag: bytes, ts: Ts, stop: threading.Event) -> None:
    """Two-key Percolator transactions: prewrite both, commit both (one
    Region: one commit call). Acknowledged once the commit returns."""
    i = 0
    while not stop.is_set():
        keys = [TXN_PREFIX + tag + b"/%07d/%s" % (i, s) for s in (b"a", b"b")]
        value = b"txn-%s-%d" % (tag, i)
        i += 1
        start = ts()
        muts = [Mutation(Op.PUT, k, value) for k in keys]
        try:
            conflicts = cluster.call(
                lambda b, m=muts, k=keys, s=start: b.kv_prewrite(m, k[0], s, 3000), stop
            )
            assert conflicts == [], conflicts
            commit = ts()
            cluster.call(lambda b, k=keys, s=start, c=commit: b.kv_commit(k, s, c), stop)
        except UnknownOutcomeError:
            with ledger.lock:
                ledger.txn_unknown.update(keys)
            stop.wait(ERROR_BACKOFF_S)
            continue
        with ledger.lock:
            for k in keys:
                ledger.txn_acked[k] = value


@dataclass
class Writers:
    wait_acked: Callable[[int], None]  # until n more raw puts are acknowledged
    stop: threading.Event


@contextlib.contextmanager
def load(cluster: Cluster, ledger: Ledger, tag: bytes, ts: Ts) -> Iterator[Writers]:
    """Run the writers (raw puts and transactions, keys tagged ``tag``) for
    the block. They stop when it ends, or earlier on ``Writers.stop``."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def guard(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as e:
            errors.append(e)
            stop.set()

    before = len(ledger.raw_acked)

    def wait_acked(n: int) -> None:
        wait_until(
            lambda: errors or len(ledger.raw_acked) - before >= n,
            MAX_LOAD_S,
            f"{n} acknowledged writes",
        )

    threads = [
        threading.Thread(target=guard, args=(raw_writer, cluster, ledger, tag, w, stop))
        for w in range(RAW_WRITERS)
    ]
    threads.append(
        threading.Thread(target=guard, args=(txn_writer, cluster, ledger, tag, ts, stop))
    )
    for t in threads:
        t.start()
    try:
        yield Writers(wait_acked, stop)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=LEADER_TIMEOUT_S + 2 * RPC_TIMEOUT_S)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a writer did not stop"


def scan_all(cluster: Cluster, prefix: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    start, end = prefix, prefix[:-1] + bytes([prefix[-1] + 1])
    while True:
        page = cluster.call(
            lambda b, start=start: b.raw_scan(start, end, SCAN_PAGE), idempotent=True
        )
        out.update(page)
        if len(page) < SCAN_PAGE:
            return out
        start = page[-1][0] + b"\x00"


def check_round(cluster: Cluster, ledger: Ledger, ts: Ts, result: RoundResult) -> None:
    """Every acknowledged write is there with its value, nothing else is."""
    present = scan_all(cluster, RAW_PREFIX)
    result.raw_lost = sorted(k for k in ledger.raw_acked if k not in present)
    result.raw_wrong = sorted(
        k for k, v in present.items() if k in ledger.raw_acked and v != ledger.raw_acked[k]
    )
    result.raw_phantom = sorted(
        k
        for k, v in present.items()
        if k not in ledger.raw_acked and (k not in ledger.raw_unknown or v != raw_value(k))
    )
    keys = sorted(ledger.txn_acked)
    read_ts = ts()
    got: dict[bytes, bytes] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        got.update(
            cluster.call(lambda b, chunk=chunk: b.kv_batch_get(chunk, read_ts), idempotent=True)
        )
    result.txn_lost = [k for k in keys if got.get(k) != ledger.txn_acked[k]]


def wait_converged(cluster: Cluster) -> str:
    """Wait (no writes running) until the three replicas have applied the
    same log; then compare their data digests."""
    last: dict[int, tuple[str, int, int]] = {}

    def same_index() -> bool:
        nonlocal last
        last = cluster.checksums()
        return len({applied for _, applied, _ in last.values()}) == 1

    try:
        wait_until(same_index, CONVERGE_TIMEOUT_S, "every replica to apply the same log")
    except TimeoutError:
        return f"DID NOT CONVERGE: {last}"
    sums = {c for c, _, _ in last.values()}
    applied, keys = next(iter(last.values()))[1:]
    if len(sums) != 1:
        return f"DIVERGED at applied index {applied}: {last}"
    return f"identical ({keys} keys, applied index {applied})"


def check_replicas(cluster: Cluster, ledger: Ledger, rnd: int) -> str:
    """Write once more (it commits on a majority and moves every replica to
    a new log position), then compare the replicas."""
    key = RAW_PREFIX + b"r%02d/check" % rnd
    cluster.call(lambda b: b.raw_put(key, raw_value(key)), idempotent=True)
    ledger.raw_acked[key] = raw_value(key)
    return wait_converged(cluster)


def run_rounds(
    fs: PowerLossFS,
    base: Path,
    variant: Variant,
    targets: Sequence[int],
    lagging_rounds: Collection[int] = (),
) -> tuple[list[RoundResult], str]:
    """Start the cluster, then per round: load, SIGKILL all + power loss,
    restart, check. ``targets[r - 1]``: acknowledged raw puts of round ``r``
    before the power goes out. In ``lagging_rounds`` a follower is killed
    first, misses :data:`LAGGING_WRITES` writes (more than a compaction's
    worth of entries with small snapshots: it catches up by installing the
    leader's snapshot), is restarted and caught up before the round's load.
    Returns the rounds' results and a printable report."""
    cluster = Cluster(fs, base, variant)
    ledger = Ledger()
    ts = Ts()
    results: list[RoundResult] = []
    t_start = time.monotonic()
    try:
        cluster.start()
        cluster.find_leader()
        for rnd, target in enumerate(targets, 1):
            result = RoundResult(rnd)
            results.append(result)
            tag = b"r%02d" % rnd
            if rnd in lagging_rounds:
                lagging = next(sid for sid in STORE_IDS if sid != cluster.find_leader())
                cluster.kill(lagging)
                with load(cluster, ledger, tag + b"-lag", ts) as writers:
                    writers.wait_acked(LAGGING_WRITES)
                cluster.start([lagging])
                result.lagging = f"store {lagging} rejoined: {wait_converged(cluster)}"
                if "identical" not in result.lagging:
                    result.lagging += "\n" + cluster.diagnose()
                    print(result.line())
                    break
            with load(cluster, ledger, tag, ts) as writers:
                writers.wait_acked(target)
                # The order matters: kill first (nothing writes any more),
                # then the power loss.
                cluster.kill()
                writers.stop.set()
                result.dropped = fs.power_loss()
            result.raw_acked, result.raw_unknown = len(ledger.raw_acked), len(ledger.raw_unknown)
            result.txn_acked, result.txn_unknown = len(ledger.txn_acked), len(ledger.txn_unknown)
            result.restart_s = cluster.start()
            try:
                cluster.find_leader()
            except TimeoutError:
                result.no_leader = cluster.diagnose()
                # Unavailable, but is the data still there? Stop the replica
                # the others follow and check what the other two hold.
                stuck = cluster.followed_store()
                if stuck:
                    cluster.kill(stuck)
                    result.no_leader += f"\nafter stopping store {stuck}: "
                    try:
                        cluster.find_leader()
                    except TimeoutError:
                        result.no_leader += "still no ready leader"
                    else:
                        check_round(cluster, ledger, ts, result)
                        result.no_leader += result.line()
                print(result.line(), result.no_leader)
                break
            check_round(cluster, ledger, ts, result)
            result.replicas = check_replicas(cluster, ledger, rnd)
            print(result.line())
            if not result.replicas.startswith("identical"):
                # A replica is stuck or diverged: later rounds would only
                # repeat it. Say why, and stop.
                result.replicas += "\n" + cluster.diagnose()
                break
    finally:
        cluster.close()
    report = "\n".join(r.line() for r in results)
    report += f"\n{variant}: {time.monotonic() - t_start:.1f} s"
    print(report.rsplit("\n", 1)[-1])
    return results, report


@pytest.mark.parametrize(
    "variant",
    [Variant(), Variant(snapshot_entries=SMALL_SNAPSHOT_ENTRIES)],
    ids=["server-defaults", f"snapshot-every-{SMALL_SNAPSHOT_ENTRIES}-entries"],
)
def test_acknowledged_writes_survive_power_loss_of_every_replica(
    fs: PowerLossFS, tmp_path: Path, variant: Variant
) -> None:
    lagging = LAGGING_ROUNDS if variant.snapshot_entries is not None else ()
    results, report = run_rounds(fs, tmp_path, variant, ROUND_TARGETS, lagging)
    for r in results:
        assert not r.no_leader, (
            f"round {r.round}: Region {REGION_ID} has no ready leader after the power loss:\n"
            f"{r.no_leader}\n{report}"
        )
        assert not r.raw_lost, f"acknowledged raw puts lost, e.g. {r.raw_lost[:5]}\n{report}"
        assert not r.raw_wrong, f"raw values changed: {r.raw_wrong[:5]}\n{report}"
        assert not r.raw_phantom, f"raw keys never written: {r.raw_phantom[:5]}\n{report}"
        assert not r.txn_lost, f"acknowledged txn keys lost: {r.txn_lost[:5]}\n{report}"
        assert r.replicas.startswith("identical"), f"replicas: {r.replicas}\n{report}"
        assert not r.lagging or "identical" in r.lagging, f"{r.lagging}\n{report}"
    if variant.snapshot_entries is not None:
        snaps = fs.run(lambda: sorted(p.name for p in fs.mount.glob("s*/snap/*")))
        assert snaps, "no Raft log compaction happened: the variant tested nothing more"


def test_the_check_catches_a_raft_log_that_is_not_fsynced(fs: PowerLossFS, tmp_path: Path) -> None:
    """Negative control: the same stores with their Raft log written without
    fsync must lose acknowledged writes here, else the test above proves
    nothing."""
    variant = Variant(raft_log_sync=False)
    results, report = run_rounds(fs, tmp_path, variant, [NEGATIVE_CONTROL_TARGET])
    lost = sum(len(r.raw_lost) + len(r.txn_lost) for r in results)
    assert lost > 0, f"an unsynced Raft log lost nothing: the check is blind\n{report}"
