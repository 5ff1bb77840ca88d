"""``htapkv bench raft``: replicated single-key writes next to a local fsync'd write.

What runs: a 3-store cluster on this machine. Stores 2 and 3 are real
separate processes (``python -m kvstore.server.store_server``, started with
its usual protocol: ``addrs.json``, ``--cluster-file``, ``ready``); store 1
is a :class:`kvstore.raftstore.Store` inside the benchmark process, and it is
made the leader of every Region, so the numbers are those of the Raft layer
(propose, log fsync, replication to two followers, commit, apply), with no
gRPC in the path.

The load (``--load``): unique 16-byte keys with 100-byte values, one key
per write, round robin over the Regions, ``N`` writes in flight. ``async``
(the default): a few client threads (``--client-threads``) each keep their
share of the ``N`` in flight: a write is encoded as the Region's
:class:`~kvstore.rawkv.RawStore` encodes a ``raw_put`` (``put_batch``) and
proposed with ``Peer.propose_write_async``; its callback (in the Raft driver
thread) hands the result back and the thread starts the next write. No
latches are taken (every key is new: ``raw_put``'s latch would never wait).
``threads``: ``N`` client threads, each calling ``raw_put`` and waiting for
its own commit and apply, the way a server thread per request would.

Every combination of ``--regions`` (a fresh cluster per count; more than one
Region by splitting at evenly spaced keys) and
``--inflight`` runs for ``--duration`` seconds after a short warm-up; per
operation latency is taken with ``perf_counter_ns``.

Baseline, in the same run and on the same disk: a single-key rocksdict put
with ``WriteOptions.sync = True`` (one fsync'd local write), with one thread
and with each ``N`` threads; the one-thread baseline runs again at the end to
show drift.

Also reported per configuration: Raft log entries the writes took (the
applied-index delta of the Regions: *writes per entry* is the group-commit
ratio), the leader's log fsyncs (writes per fsync), and the CPU time of the
benchmark process (the leader) and of the two follower processes.

Targets (from the issue; meant for a 2-core machine with 3 stores): at least
:data:`TARGET_WRITES_PER_S` replicated writes/s at :data:`TARGET_INFLIGHT`
in flight, and p50 at most :data:`TARGET_P50_US` µs at one in flight. They
are reported, never asserted.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import (
    add_run_flags,
    busy_warning,
    does_not_apply,
    fmt,
    load_average,
    notes_section,
    positive_float,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from kvstore.raftstore import Store

TARGET_WRITES_PER_S = 20_000
TARGET_INFLIGHT = 256
TARGET_P50_US = 1_000.0
DEFAULT_DURATION = 7.0
QUICK_DURATION = 1.0
DEFAULT_REGIONS = "1,8"
DEFAULT_INFLIGHT = "1,16,256"
QUICK_REGIONS = "1"
QUICK_INFLIGHT = "1,16"
MAX_INFLIGHT = 4095  # the thread number is 3 hex digits of the key
MAX_REGIONS = 100  # Regions start at two-digit key prefixes
VALUE_SIZE = 100
VALUE_POOL = 256  # distinct values, used round-robin (a power of two: i & mask)
FOLLOWER_IDS = (2, 3)
LOCAL_ID = 1
STARTUP_TIMEOUT = 60.0
LEADER_TIMEOUT = 30.0
DRIFT_WARNING = 1.25
ERROR_PAUSE = 0.01  # a worker whose write failed waits this long before the next
LOADS = ("async", "threads")
DEFAULT_LOAD = "async"
DEFAULT_CLIENT_THREADS = 4
MAX_CLIENT_THREADS = 64


# ---------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    p = sub.add_parser(
        "raft",
        help="replicated single-key writes (3 stores) vs a local fsync'd write",
        description=(
            "Run 3 stores (two follower processes, the leader in this process) and measure "
            "replicated single-key writes per second and their p50/p99 latency for each "
            "number of Regions and of proposals in flight, beside a fsync'd single-key "
            "rocksdict put on the same disk. Targets: at least "
            f"{TARGET_WRITES_PER_S:,} writes/s at {TARGET_INFLIGHT} in flight, p50 at most "
            f"{TARGET_P50_US / 1000:g} ms at 1 in flight."
        ),
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        help=f"measured seconds per configuration (default {DEFAULT_DURATION:g}, "
        f"{QUICK_DURATION:g} with --quick), after a short warm-up",
    )
    p.add_argument(
        "--regions",
        type=_int_list(MAX_REGIONS),
        help=f"comma-separated Region counts, a fresh cluster each (default {DEFAULT_REGIONS})",
    )
    p.add_argument(
        "--inflight",
        "--concurrency",
        dest="inflight",
        type=_int_list(MAX_INFLIGHT),
        help=f"comma-separated proposals in flight (default {DEFAULT_INFLIGHT})",
    )
    p.add_argument(
        "--load",
        choices=LOADS,
        default=DEFAULT_LOAD,
        help="how the proposals in flight are generated: 'async' = a few client threads "
        "(--client-threads) each keeping its share in flight with the asynchronous propose "
        "API; 'threads' = one client thread per proposal in flight, each waiting for its "
        f"write (default {DEFAULT_LOAD})",
    )
    p.add_argument(
        "--client-threads",
        type=_one_int(MAX_CLIENT_THREADS),
        default=DEFAULT_CLIENT_THREADS,
        metavar="N",
        help=f"client threads of the async load (default {DEFAULT_CLIENT_THREADS})",
    )
    add_run_flags(
        p,
        seed_help="seed of the values (default 1)",
        data_dir_help="create the stores and the baseline database under this folder (default: a "
        "temporary folder); it decides which disk the fsyncs hit",
        quick_help=f"tiny run: Regions {QUICK_REGIONS}, in flight {QUICK_INFLIGHT}, "
        f"{QUICK_DURATION:g} s each (a smoke test)",
        keep_data_help="do not delete the data (and the follower logs) afterwards",
    )
    does_not_apply(
        p, "--pd", "it starts its own store processes for each configuration (Regions count)"
    )
    does_not_apply(p, "--ops", "each configuration runs for a time window: use --duration")
    p.set_defaults(func=run)


def _int_list(maximum: int) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
        if not values or any(not 0 < v <= maximum for v in values):
            raise argparse.ArgumentTypeError(f"need integers in 1..{maximum}: {text!r}")
        return sorted(set(values))

    return parse


def _one_int(maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        values = _int_list(maximum)(text)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"need one integer in 1..{maximum}: {text!r}")
        return values[0]

    return parse


# ---------------------------------------------------------------- results
@dataclass
class Snapshot:
    """Counters read at the start and at the end of a measured window."""

    wall_ns: int
    cpu_self_s: float
    cpu_followers_s: float
    applied: int  # sum of the local replicas' applied indexes
    fsyncs: int  # the leader's Raft log flushes


@dataclass
class Result:
    id: str
    system: str
    regions: int | None  # None for the baseline
    inflight: int
    ops: int
    errors: int
    elapsed_s: float
    latency_us: dict[str, float]
    # Counters read at the start and end of the window (by the main thread,
    # so up to a few ms late under load): deltas and the interval between.
    counters_s: float = 0.0
    raft_entries: int | None = None
    leader_fsyncs: int | None = None
    cpu_leader_s: float | None = None
    cpu_followers_s: float | None = None
    baseline: str | None = None
    baseline_ops_per_s: float | None = None
    baseline_p50_us: float | None = None
    notes: list[str] = field(default_factory=list)
    load: str | None = None  # how the writes were generated (see --load)
    client_threads: int | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def rate(self, counter: float | None) -> float | None:
        """A counter delta per second of its own interval."""
        return None if counter is None or self.counters_s <= 0 else counter / self.counters_s

    def per_rate(self, counter: float | None) -> float | None:
        """Writes per unit of ``counter`` (writes/s over counter/s)."""
        r = self.rate(counter)
        return self.ops_per_s / r if r else None

    @property
    def writes_per_entry(self) -> float | None:
        return self.per_rate(self.raft_entries)

    @property
    def writes_per_fsync(self) -> float | None:
        return self.per_rate(self.leader_fsyncs)

    def cpu_us_per_write(self, cpu_s: float | None) -> float | None:
        cores = self.rate(cpu_s)
        return None if cores is None or not self.ops_per_s else cores * 1e6 / self.ops_per_s

    @property
    def throughput_vs_baseline(self) -> float | None:
        if not self.baseline_ops_per_s:
            return None
        return self.ops_per_s / self.baseline_ops_per_s

    @property
    def p50_vs_baseline(self) -> float | None:
        p50 = self.latency_us.get("p50")
        if not self.baseline_p50_us or p50 is None:
            return None
        return p50 / self.baseline_p50_us

    def targets(self) -> dict[str, bool]:
        """The issue's targets that apply to this row, and whether each was met."""
        if self.regions is None:
            return {}
        out = {}
        if self.inflight == TARGET_INFLIGHT:
            out["throughput"] = self.ops_per_s >= TARGET_WRITES_PER_S
        if self.inflight == 1 and "p50" in self.latency_us:
            out["p50"] = self.latency_us["p50"] <= TARGET_P50_US
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "system": self.system,
            "regions": self.regions,
            "inflight": self.inflight,
            "threads": self.client_threads or self.inflight,
            "load": self.load,
            "ops": self.ops,
            "errors": self.errors,
            "elapsed_s": self.elapsed_s,
            "ops_per_s": self.ops_per_s,
            "latency_us": self.latency_us,
            "counters_s": self.counters_s,
            "raft_entries": self.raft_entries,
            "raft_entries_per_s": self.rate(self.raft_entries),
            "writes_per_entry": self.writes_per_entry,
            "leader_fsyncs": self.leader_fsyncs,
            "leader_fsyncs_per_s": self.rate(self.leader_fsyncs),
            "writes_per_fsync": self.writes_per_fsync,
            "cpu": {
                "leader_process_s": self.cpu_leader_s,
                "followers_s": self.cpu_followers_s,
                "leader_cores": self.rate(self.cpu_leader_s),
                "followers_cores": self.rate(self.cpu_followers_s),
                "leader_us_per_write": self.cpu_us_per_write(self.cpu_leader_s),
                "followers_us_per_write": self.cpu_us_per_write(self.cpu_followers_s),
            },
            "baseline": self.baseline,
            "baseline_ops_per_s": self.baseline_ops_per_s,
            "baseline_p50_us": self.baseline_p50_us,
            "throughput_vs_baseline": self.throughput_vs_baseline,
            "p50_vs_baseline": self.p50_vs_baseline,
            "targets": self.targets(),
            "notes": self.notes,
        }


# ---------------------------------------------------------------- CPU time
def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0.0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the load
@dataclass
class _Run:
    ops: int
    errors: int
    elapsed_ns: int
    latencies_ns: list[int]
    first_error: str | None
    before: Snapshot
    after: Snapshot


class Harness:
    """Runs one configuration: ``threads`` workers calling ``op(thread, i)``
    until the window closes. The window opens ``warmup`` seconds after the
    workers are released and lasts ``duration``; operations that start inside
    it are counted and their latencies kept."""

    def __init__(
        self,
        progress: Progress,
        *,
        duration: float,
        warmup: float,
        snapshot: Callable[[], Snapshot],
    ) -> None:
        self.progress = progress
        self.duration = duration
        self.warmup = warmup
        self.snapshot = snapshot

    def run(self, label: str, threads: int, op: Callable[[int, int], object]) -> _Run:
        lats: list[list[int]] = [[] for _ in range(threads)]
        counted = [0] * threads
        done = [0] * threads  # every operation, warm-up included: the live display
        errors = [0] * threads
        first_error: list[str] = []
        window = [0, 0]
        barrier = threading.Barrier(threads + 1)
        clock = time.perf_counter_ns

        def work(t: int) -> None:
            append = lats[t].append
            barrier.wait()
            start, end = window
            i = n = 0
            while True:
                t0 = clock()
                if t0 >= end:
                    break
                try:
                    op(t, i)
                except Exception as e:  # counted, reported; the run goes on
                    errors[t] += 1
                    if not first_error:
                        first_error.append(f"{type(e).__name__}: {e}")
                    time.sleep(ERROR_PAUSE)
                else:
                    if t0 >= start:
                        append(clock() - t0)
                        n += 1
                i += 1
                done[t] = i
            counted[t] = n

        return self._drive(
            label, threads, work, lats, counted, done, errors, first_error, window, barrier
        )

    def run_async(
        self,
        label: str,
        threads: int,
        inflight: int,
        start_op: Callable[[int, int, Callable[[Exception | None], None]], None],
    ) -> _Run:
        """Like :meth:`run`, with ``inflight`` operations kept in flight by
        ``threads`` workers (``inflight`` split evenly): ``start_op(t, i,
        done)`` starts operation ``i`` of worker ``t`` and returns at once;
        ``done(error)`` is called when it ends (any thread). A worker starts
        new operations as its earlier ones end; its latencies run from the
        start to the call of ``done``."""
        threads = max(1, min(threads, inflight))
        lats: list[list[int]] = [[] for _ in range(threads)]
        counted = [0] * threads
        done_n = [0] * threads
        errors = [0] * threads
        first_error: list[str] = []
        window = [0, 0]
        barrier = threading.Barrier(threads + 1)
        clock = time.perf_counter_ns

        def work(t: int) -> None:
            share = inflight // threads + (t < inflight % threads)
            finished: collections.deque[tuple[int, int, Exception | None]] = collections.deque()
            wake = threading.Event()

            def make_done(t0: int) -> Callable[[Exception | None], None]:
                def done(err: Exception | None) -> None:
                    finished.append((t0, clock(), err))
                    wake.set()

                return done

            append = lats[t].append
            barrier.wait()
            start, end = window
            i = n = outstanding = 0
            while True:
                pause = False
                while outstanding < share:
                    t0 = clock()
                    if t0 >= end:
                        break
                    outstanding += 1
                    try:
                        start_op(t, i, make_done(t0))
                    except Exception as e:
                        make_done(t0)(e)
                    i += 1
                if not outstanding:
                    break
                wake.wait()
                wake.clear()
                while finished:
                    t0, t1, err = finished.popleft()
                    outstanding -= 1
                    done_n[t] += 1
                    if err is not None:
                        errors[t] += 1
                        pause = True
                        if not first_error:
                            first_error.append(f"{type(err).__name__}: {err}")
                    elif t0 >= start:
                        append(t1 - t0)
                        n += 1
                if pause:
                    time.sleep(ERROR_PAUSE)
            counted[t] = n

        return self._drive(
            label, threads, work, lats, counted, done_n, errors, first_error, window, barrier
        )

    def _drive(
        self,
        label: str,
        threads: int,
        work: Callable[[int], None],
        lats: list[list[int]],
        counted: list[int],
        done: list[int],
        errors: list[int],
        first_error: list[str],
        window: list[int],
        barrier: threading.Barrier,
    ) -> _Run:
        clock = time.perf_counter_ns
        workers = [
            threading.Thread(target=work, args=(t,), name=f"bench-{t}", daemon=True)
            for t in range(threads)
        ]
        gc.collect()
        task = self.progress.add_task(label, total=None)
        for w in workers:
            w.start()
        now = clock()
        window[0] = now + int(self.warmup * 1e9)
        window[1] = window[0] + int(self.duration * 1e9)
        barrier.wait()

        def wait_until(t: int) -> None:
            while (now := clock()) < t:
                time.sleep(min(0.2, (t - now) / 1e9))
                self.progress.update(task, completed=sum(done))

        wait_until(window[0])
        before = self.snapshot()
        wait_until(window[1])
        after = self.snapshot()
        for w in workers:
            w.join()
        total = sum(done)
        self.progress.update(task, total=total, completed=total)
        self.progress.stop_task(task)
        return _Run(
            ops=sum(counted),
            errors=sum(errors),
            elapsed_ns=window[1] - window[0],
            latencies_ns=[x for lat in lats for x in lat],
            first_error=first_error[0] if first_error else None,
            before=before,
            after=after,
        )


def _keys_prefix(phase: int, thread: int) -> bytes:
    return b"%03x%03x" % (phase % 4096, thread)


# ---------------------------------------------------------------- baseline
def _baseline(
    h: Harness, path: str, threads: int, phase: int, values: list[bytes], *, again: bool = False
) -> Result:
    """Single-key rocksdict puts with ``WriteOptions.sync = True``."""
    from rocksdict import Options, Rdict, WriteOptions

    from bench.report import latency_summary_us

    db = Rdict(path, Options(raw_mode=True))
    try:
        wo = WriteOptions()
        wo.sync = True
        db.set_write_options(wo)
        put = db.put
        mask = VALUE_POOL - 1
        prefixes = [b"bb" + _keys_prefix(phase, t) for t in range(threads)]

        def op(t: int, i: int) -> None:
            put(prefixes[t] + b"%08x" % i, values[i & mask])

        label = f"rocksdict sync=on put: {threads} thread{'s' * (threads > 1)}"
        r = h.run(label + (" (again)" if again else ""), threads, op)
    finally:
        db.close()
    rid = f"baseline.fsync_put.t{threads}" + (".again" if again else "")
    result = Result(
        id=rid,
        system="rocksdict sync=on put",
        regions=None,
        inflight=threads,
        ops=r.ops,
        errors=r.errors,
        elapsed_s=r.elapsed_ns / 1e9,
        latency_us=latency_summary_us(r.latencies_ns),
        counters_s=(r.after.wall_ns - r.before.wall_ns) / 1e9,
        cpu_leader_s=r.after.cpu_self_s - r.before.cpu_self_s,
    )
    if again:
        result.notes.append("second run of the one-thread baseline, at the end (drift check)")
    if r.first_error:
        result.notes.append(f"{r.errors} errors, first: {r.first_error}")
    return result


# ---------------------------------------------------------------- the cluster
class Cluster:
    """Stores 2 and 3 as ``store_server`` processes, store 1 in this process."""

    def __init__(self, base: Path, regions: int) -> None:
        from kvstore.raftstore import Store, StoreConfig

        self.base = base
        self.regions = regions
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Any] = {}
        self.store: Store | None = None
        base.mkdir(parents=True, exist_ok=True)
        cluster_file = base / "cluster.json"
        try:
            for sid in FOLLOWER_IDS:
                d = base / f"store{sid}"
                d.mkdir()
                log = self.logs[sid] = open(d / "server.log", "wb")  # noqa: SIM115
                self.procs[sid] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "kvstore.server.store_server",
                        "--store-id",
                        str(sid),
                        "--data-dir",
                        str(d),
                        "--cluster-file",
                        str(cluster_file),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            addrs = {sid: self._wait_file(sid, "addrs.json") for sid in FOLLOWER_IDS}
            self.store = Store(StoreConfig(store_id=LOCAL_ID, data_dir=str(base / "store1")))
            raft = {LOCAL_ID: self.store.raft_addr}
            raft.update({sid: json.loads(a)["raft"] for sid, a in addrs.items()})
            # The local store starts first: it campaigns until the followers
            # host the group, which makes it likely (not certain) to lead.
            self.store.start(raft)
            published = {LOCAL_ID: {"raft": self.store.raft_addr, "kv": ""}}
            published.update({sid: json.loads(a) for sid, a in addrs.items()})
            tmp = cluster_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({str(k): v for k, v in published.items()}))
            os.replace(tmp, cluster_file)
            for sid in FOLLOWER_IDS:
                self._wait_file(sid, "ready")
            self.ensure_leader()
            self._split()
        except BaseException:
            self.close()
            raise

    @property
    def local(self) -> Store:
        assert self.store is not None
        return self.store

    def _wait_file(self, sid: int, name: str) -> str:
        path = self.base / f"store{sid}" / name
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not path.exists():
            proc = self.procs[sid]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"store {sid} exited with {proc.returncode}: {self.log_tail(sid)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"store {sid} wrote no {name} in time: {self.log_tail(sid)}")
            time.sleep(0.02)
        return path.read_text()

    def log_tail(self, sid: int, n: int = 3000) -> str:
        try:
            return (
                (self.base / f"store{sid}" / "server.log")
                .read_bytes()[-n:]
                .decode(errors="replace")
            )
        except OSError:
            return ""

    # ------------------------------------------------------------ leadership
    def _campaign(self, region_id: int) -> None:
        """Make the local replica start an election now (``transfer_leader``
        must run on the leader, which is another process here)."""
        group = self.local.peers[region_id].group
        if group is not None:
            group.campaign()

    def ensure_leader(self, timeout: float = LEADER_TIMEOUT) -> None:
        """Wait until the local store is the ready leader of every Region,
        campaigning where another store leads."""
        store = self.local
        deadline = time.monotonic() + timeout
        asked: dict[int, float] = {}
        while True:
            peers = list(store.peers.values())
            lagging = [p for p in peers if not p.is_leader()]
            if not lagging:
                return
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    f"store {LOCAL_ID} does not lead Regions "
                    f"{[p.region_id for p in lagging]} after {timeout:g} s"
                )
            for p in lagging:
                g = p.group
                other_leads = g is not None and g.leader() not in (None, store.raft_addr)
                if other_leads and now - asked.get(p.region_id, 0.0) > 1.0:
                    asked[p.region_id] = now
                    self._campaign(p.region_id)
            time.sleep(0.02)

    # ------------------------------------------------------------ Regions
    def split_prefixes(self) -> list[bytes]:
        """The first key prefix of each Region: ``00`` and evenly spaced
        two-digit prefixes (8 Regions: 00, 12, 25, 37, ...)."""
        return [b"%02d" % (100 * i // self.regions) for i in range(self.regions)]

    def _split(self) -> None:
        from kvstore import codec

        store = self.local
        for prefix in self.split_prefixes()[1:]:
            key = codec.raw_key(prefix)
            region = store.region_for_key(key)
            if region is None:
                raise RuntimeError(f"no Region holds {key!r}")
            store.split_region(region.id, key)
            self.ensure_leader()
        if len(store.peers) != self.regions:
            raise RuntimeError(f"expected {self.regions} Regions, have {len(store.peers)}")

    def region_of_prefix(self) -> list[int]:
        """The Region id of each of :meth:`split_prefixes`, in order."""
        from kvstore import codec

        out = []
        for prefix in self.split_prefixes():
            region = self.local.region_for_key(codec.raw_key(prefix))
            assert region is not None
            out.append(region.id)
        return out

    # ------------------------------------------------------------ measuring
    def snapshot(self) -> Snapshot:
        store = self.local
        applied = 0
        for p in list(store.peers.values()):
            if p.group is not None:
                applied += p.group.applied_index()
        return Snapshot(
            wall_ns=time.perf_counter_ns(),
            cpu_self_s=time.process_time(),
            cpu_followers_s=sum(_proc_cpu_s(p.pid) for p in self.procs.values()),
            applied=applied,
            fsyncs=store.driver.log_store.flushes,
        )

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        try:
            if self.store is not None:
                self.store.close()
                self.store = None
        finally:
            for proc in self.procs.values():
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for log in self.logs.values():
                log.close()


def _bench_cluster(
    h: Harness,
    cluster: Cluster,
    inflight: int,
    phase: int,
    values: list[bytes],
    load: str = DEFAULT_LOAD,
    client_threads: int = DEFAULT_CLIENT_THREADS,
) -> Result:
    from bench.report import latency_summary_us

    store = cluster.local
    cluster.ensure_leader()
    region_ids = cluster.region_of_prefix()
    rawstores = [store.rawstores[rid] for rid in region_ids]
    puts = [r.raw_put for r in rawstores]
    n_regions = len(puts)
    threads = inflight if load == "threads" else max(1, min(client_threads, inflight))
    # Thread t, operation i: Region (t + i) mod R, key = that Region's first
    # two digits + phase + thread + counter: 16 bytes, never written before.
    prefixes = [
        [p + _keys_prefix(phase, t) for p in cluster.split_prefixes()] for t in range(threads)
    ]
    mask = VALUE_POOL - 1
    label = f"raft {n_regions} Region{'s' * (n_regions > 1)}: {inflight} in flight"
    if load == "threads":

        def op(t: int, i: int) -> None:
            r = (t + i) % n_regions
            puts[r](prefixes[t][r] + b"%08x" % i, values[i & mask])

        run = h.run(label, inflight, op)
        how = f"{inflight} client thread(s), each a blocking RawStore.raw_put after another"
    else:
        peers = [store.peers[rid] for rid in region_ids]

        def start_op(t: int, i: int, done: Callable[[Exception | None], None]) -> None:
            r = (t + i) % n_regions
            _, batch = rawstores[r].put_batch([(prefixes[t][r] + b"%08x" % i, values[i & mask])])
            peers[r].propose_write_async(batch, lambda _res, err: done(err))

        run = h.run_async(label, threads, inflight, start_op)
        how = (
            f"{inflight} in flight from {threads} client thread(s): each builds the put "
            "with RawStore.put_batch (the raw_put encoding) and proposes it with "
            "Peer.propose_write_async, starting a new write as each one's callback "
            "arrives; no latches are taken (every key is new, raw_put's latch would never "
            "wait); latency = proposal to callback"
        )
    b, a = run.before, run.after
    result = Result(
        id=f"raft.r{n_regions}.inflight{inflight}",
        system="htapkv raft, 3 stores",
        regions=n_regions,
        inflight=inflight,
        ops=run.ops,
        errors=run.errors,
        elapsed_s=run.elapsed_ns / 1e9,
        latency_us=latency_summary_us(run.latencies_ns),
        counters_s=(a.wall_ns - b.wall_ns) / 1e9,
        raft_entries=a.applied - b.applied,
        leader_fsyncs=a.fsyncs - b.fsyncs,
        cpu_leader_s=a.cpu_self_s - b.cpu_self_s,
        cpu_followers_s=a.cpu_followers_s - b.cpu_followers_s,
        baseline=f"baseline.fsync_put.t{inflight}",
    )
    result.load = load
    result.client_threads = threads
    result.notes.append(f"load: {how}")
    if run.errors:
        result.notes.append(f"{run.errors} writes failed, first: {run.first_error}")
    return result


# ---------------------------------------------------------------- reporting
HEADERS = (
    "system",
    "Regions",
    "in flight",
    "ops",
    "ops/s",
    "p50 µs",
    "p99 µs",
    "writes/entry",
    "writes/fsync",
    "CPU leader",
    "CPU followers",
    "ops/s vs base",
    "target",
)


def _verdict(r: Result) -> str:
    t = r.targets()
    parts = []
    if "throughput" in t:
        parts.append(f">={TARGET_WRITES_PER_S // 1000}k/s " + ("yes" if t["throughput"] else "NO"))
    if "p50" in t:
        parts.append(f"p50<={TARGET_P50_US / 1000:g}ms " + ("yes" if t["p50"] else "NO"))
    return ", ".join(parts)


def _cores(cores: float | None) -> str:
    return "-" if cores is None else f"{100 * cores:.0f}%"


def _rows(results: Sequence[Result]) -> list[list[str]]:
    return [
        [
            r.system,
            "-" if r.regions is None else str(r.regions),
            str(r.inflight),
            f"{r.ops:,}",
            fmt(r.ops_per_s),
            fmt(r.latency_us.get("p50"), ",.1f"),
            fmt(r.latency_us.get("p99"), ",.1f"),
            fmt(r.writes_per_entry, ",.1f"),
            fmt(r.writes_per_fsync, ",.1f"),
            _cores(r.rate(r.cpu_leader_s)),
            _cores(r.rate(r.cpu_followers_s)),
            fmt(r.throughput_vs_baseline, ".2f")
            + ("x" if r.throughput_vs_baseline is not None else ""),
            _verdict(r),
        ]
        for r in results
    ]


def _target_summary(results: Sequence[Result], cpus: int | None) -> dict[str, Any]:
    rows = [r for r in results if r.targets()]
    thr = [r for r in rows if "throughput" in r.targets()]
    lat = [r for r in rows if "p50" in r.targets()]
    return {
        "statement": (
            f"at least {TARGET_WRITES_PER_S:,} replicated writes/s at {TARGET_INFLIGHT} in "
            f"flight; p50 at most {TARGET_P50_US / 1000:g} ms at 1 in flight "
            "(2-core machine, 3 stores)"
        ),
        "min_writes_per_s": TARGET_WRITES_PER_S,
        "at_inflight": TARGET_INFLIGHT,
        "max_p50_us": TARGET_P50_US,
        "machine_cpus": cpus,
        "throughput": {
            "judged_rows": [r.id for r in thr],
            "values": {r.id: r.ops_per_s for r in thr},
            "met": (all(r.targets()["throughput"] for r in thr) if thr else None),
        },
        "p50": {
            "judged_rows": [r.id for r in lat],
            "values": {r.id: r.latency_us.get("p50") for r in lat},
            "met": (all(r.targets()["p50"] for r in lat) if lat else None),
        },
        "met": (all(all(r.targets().values()) for r in rows) if rows else None),
    }


def _target_lines(target: dict[str, Any]) -> list[str]:
    def word(met: bool | None) -> str:
        return "not measured" if met is None else ("MET" if met else "MISSED")

    thr, lat = target["throughput"], target["p50"]
    lines = [
        f"Throughput: >= {TARGET_WRITES_PER_S:,} writes/s at {TARGET_INFLIGHT} in flight -> "
        + word(thr["met"])
        + "".join(f"; {k}: {v:,.0f}/s" for k, v in thr["values"].items()),
        f"Latency: p50 <= {TARGET_P50_US / 1000:g} ms at 1 in flight -> "
        + word(lat["met"])
        + "".join(f"; {k}: {v / 1000:,.3f} ms" for k, v in lat["values"].items()),
    ]
    if target["machine_cpus"] != 2:
        lines.append(
            f"(The targets are meant for a 2-core machine; this one has "
            f"{target['machine_cpus']} CPUs.)"
        )
    return lines


EXPLANATION = (
    "Each write is one raw put of a fresh 16-byte key (100-byte value) on the leader, "
    "store 1, which runs in the benchmark process; stores 2 and 3 are separate processes. "
    "It returns once the write is committed by a majority (each replica's Raft log fsync'd "
    "before it counts) and applied on the leader. The Notes say how each row's writes in "
    "flight were generated. "
    "writes/entry = writes per Raft log entry (group commit; from the Regions' applied "
    "index); writes/fsync = writes per fsync of the leader's Raft log. CPU = CPU time over "
    "wall time (100% = one core) of the leader process (client threads included) and of the "
    "two follower processes together. ops/s vs base = over a fsync'd single-key rocksdict "
    "put with the same number of threads, on the same disk. rocksdict holds the GIL during "
    "a write, fsync included, so N baseline threads take turns instead of sharing fsyncs: "
    "that row is what N writer threads of one Python process get from the plain engine."
)


def _markdown(data: dict[str, Any], results: Sequence[Result]) -> str:
    from bench.report import markdown_table

    m, p = data["machine"], data["parameters"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    out = [
        f"# htapkv bench raft — {data['started_at']}",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}, "
        f"Python {m['python_version']}; {libs}. Data on {p['data_fs'] or 'unknown'} "
        f"filesystem. {p['duration_s']:g} s per configuration after {p['warmup_s']:g} s of "
        f"warm-up, seed {p['seed']}.",
        "",
        markdown_table(HEADERS, _rows(results)),
        "",
        "## Targets",
        "",
        *(f"- {line}" for line in _target_lines(data["target"])),
        "",
        EXPLANATION,
    ]
    out += notes_section(results, data.get("warnings", []))
    return "\n".join(out) + "\n"


def _print_table(
    results: Sequence[Result], target: dict[str, Any], warnings: Sequence[str]
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = (
        Console(highlight=False) if sys.stdout.isatty() else Console(width=180, highlight=False)
    )
    table = Table(title="htapkv bench raft", title_justify="left")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i in (0, len(HEADERS) - 1) else "right", no_wrap=True)
    for r, row in zip(results, _rows(results), strict=True):
        t = r.targets()
        style = None if not t else ("green" if all(t.values()) else "red")
        table.add_row(*row, style=style)
    console.print(table)
    for line in _target_lines(target):
        console.print(line)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


# ---------------------------------------------------------------- run
def _self_snapshot() -> Snapshot:
    return Snapshot(time.perf_counter_ns(), time.process_time(), 0.0, 0, 0)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.progress import phase_progress
    from bench.report import (
        filesystem_type,
        machine_info,
        result_header,
        write_results,
    )

    duration: float = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
    warmup = min(1.0, max(0.2, duration / 10))
    default_regions, default_inflight = (
        (QUICK_REGIONS, QUICK_INFLIGHT) if args.quick else (DEFAULT_REGIONS, DEFAULT_INFLIGHT)
    )
    region_counts: list[int] = args.regions or _int_list(MAX_REGIONS)(default_regions)
    inflights: list[int] = args.inflight or _int_list(MAX_INFLIGHT)(default_inflight)
    baseline_threads = sorted({1, *inflights})
    started = datetime.now().astimezone()

    if args.data_dir:
        os.makedirs(args.data_dir, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="htapkv-bench-raft-", dir=args.data_dir))
    data_fs = filesystem_type(base)
    cpus = os.cpu_count()
    warnings: list[str] = []
    if data_fs in ("tmpfs", "ramfs"):
        warnings.append(
            f"the data is on {data_fs}: fsync costs nothing there, so neither the baseline nor "
            "the Raft log flushes reflect a disk (use --data-dir)"
        )
    load_start = load_average()
    if busy := busy_warning(load_start, "the CPUs and the disk"):
        warnings.append(busy)
    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    err.print(
        f"htapkv bench raft: Regions {region_counts}, in flight {inflights}, "
        f"{duration:g} s each (+{warmup:g} s warm-up), data in {base}"
    )

    rng = random.Random(f"{args.seed}/values")
    values = [rng.randbytes(VALUE_SIZE) for _ in range(VALUE_POOL)]
    results: list[Result] = []
    clusters: list[dict[str, Any]] = []
    phase = 0
    try:
        with phase_progress(err) as progress:
            h = Harness(progress, duration=duration, warmup=warmup, snapshot=_self_snapshot)
            for threads in baseline_threads:
                phase += 1
                results.append(
                    _baseline(h, str(base / f"baseline-{phase}"), threads, phase, values)
                )
            for n_regions in region_counts:
                progress.console.print(f"starting 3 stores, {n_regions} Region(s)...")
                t0 = time.perf_counter()
                cluster = Cluster(base / f"cluster-r{n_regions}", n_regions)
                clusters.append(
                    {
                        "regions": n_regions,
                        "setup_s": round(time.perf_counter() - t0, 3),
                        "region_ids": cluster.region_of_prefix(),
                        "follower_pids": [p.pid for p in cluster.procs.values()],
                    }
                )
                try:
                    hc = Harness(
                        progress, duration=duration, warmup=warmup, snapshot=cluster.snapshot
                    )
                    for inflight in inflights:
                        phase += 1
                        results.append(
                            _bench_cluster(
                                hc,
                                cluster,
                                inflight,
                                phase,
                                values,
                                args.load,
                                args.client_threads,
                            )
                        )
                finally:
                    cluster.close()
            phase += 1
            results.append(
                _baseline(h, str(base / f"baseline-{phase}"), 1, phase, values, again=True)
            )
    finally:
        if args.keep_data:
            err.print(f"data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    by_id = {r.id: r for r in results}
    runs = [
        r
        for r in (by_id.get("baseline.fsync_put.t1"), by_id.get("baseline.fsync_put.t1.again"))
        if r
    ]
    rates = [r.ops_per_s for r in runs if r.ops_per_s > 0]
    if len(rates) == 2 and max(rates) > DRIFT_WARNING * min(rates):
        warnings.append(
            f"the two runs of the one-thread fsync baseline differ by "
            f"{max(rates) / min(rates):.2f}x ({rates[0]:,.0f} vs {rates[1]:,.0f} puts/s): "
            "the disk or the machine was not steady; comparisons are uncertain by as much"
        )
    for r in results:
        base_row = by_id.get(r.baseline) if r.baseline else None
        if base_row is not None:
            r.baseline_ops_per_s = base_row.ops_per_s
            r.baseline_p50_us = base_row.latency_us.get("p50")
    if any(r.errors for r in results):
        warnings.append("some writes failed (see the notes): the rows with errors are suspect")

    target = _target_summary(results, cpus)
    data: dict[str, Any] = {
        **result_header("raft", started),
        "parameters": {
            "duration_s": duration,
            "warmup_s": warmup,
            "regions": region_counts,
            "inflight": inflights,
            "baseline_threads": baseline_threads,
            "load": args.load,
            "client_threads": args.client_threads,
            "stores": 1 + len(FOLLOWER_IDS),
            "seed": args.seed,
            "quick": args.quick,
            "key_bytes": 16,
            "value_bytes": VALUE_SIZE,
            "data_dir": str(base),
            "data_fs": data_fs,
        },
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": load_average()},
        "clusters": clusters,
        "target": target,
        "results": [r.to_json() for r in results],
        "warnings": warnings,
    }
    json_path, md_path = write_results(args.output, "raft", data, _markdown(data, results))
    _print_table(results, target, warnings)
    print(f"results: {json_path}  {md_path}")
    return 0
