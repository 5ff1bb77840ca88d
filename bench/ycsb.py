"""``htapkv bench ycsb``: YCSB workloads on htapkv, and on etcd beside it.

What runs: YCSB's two phases. The **load** phase inserts ``--records``
records (``user<hash>`` keys, ``--field-count`` x ``--field-length`` byte
values: 1 KB by default); the **run** phase performs ``--ops`` operations of
the chosen workload (``a``: 50% read / 50% update; ``b``: 95/5; ``c``: all
reads; ``e``: 95% short scans / 5% inserts; ``f``: 50% read / 50%
read-modify-write; and ``put``, ``rmw``: all updates, all read-modify-writes)
with keys drawn ``zipfian`` (YCSB's scrambled zipfian, constant 0.99) or
``uniform``; ``bench/ycsb_workload.py`` has the details. ``--concurrency``
operations are in flight: that many threads on htapkv (its client is
synchronous and thread-safe), that many asyncio tasks on etcd.

htapkv's operations: read, update, insert and scan through the raw KV API
(``client.raw``); a read-modify-write is a one-key transaction
(``client.transaction`` of a get then a put). Which htapkv runs is decided in
one place, :func:`open_htapkv`: ``--target embedded`` (``kvstore.open`` on a
temporary folder: one process, no replication, no network), ``--target
cluster`` (``kvstore.LocalCluster`` + ``kvstore.connect``) or ``--pd ADDR``
(``kvstore.connect`` to a running cluster).

``--peer etcd`` runs the same phases, with the very same operations (the plan
is drawn once from the seed and given to both systems), on a 3-member etcd
cluster started for the run (:mod:`bench.etcd_peer`), through the Python
client aetcd; the table puts both side by side with their ratio.

``--suite targets`` measures what the team compares against, in one command:
raw put (``put``) at 1 and at 256 in flight and a one-key transactional
read-modify-write (``rmw``) at 256 in flight, on both systems, and prints the
verdicts (never asserted). Its keys are uniform unless ``--distribution``
says otherwise: the targets are about write paths, and with a zipfian at 256
in flight most read-modify-writes would hit the same few records and measure
conflict retries instead.

* htapkv raw put throughput at 256 in flight >= etcd's;
* htapkv raw put p50 at 1 in flight <= 1.5 x etcd's;
* htapkv 1-key transactional read-modify-write >= 1/3 of its raw put
  throughput (both at 256 in flight).

Output: a live progress line per phase (stderr), the table (stdout), and
``<output>/ycsb-<timestamp>.json`` / ``.md`` / ``.png`` (latency CDF per
phase and system). Latencies are every operation's own, kept whole (no
histogram), percentiles by nearest rank. ops/s of one operation type is its
count over the phase's wall time (YCSB's convention), so a mixed phase's
per-type rates add up to its total.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import (
    add_run_flags,
    busy_warning,
    fmt,
    load_average,
    notes_section,
    positive_float,
    positive_int,
)
from bench.ycsb_workload import (
    DISTRIBUTIONS,
    INSERT,
    KEYS_END,
    OP_NAMES,
    READ,
    RMW,
    SCAN,
    UPDATE,
    WORKLOADS,
    Op,
    Plan,
    load_plan,
    modify,
    run_plan,
    value_pool,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from kvstore import Client, Transaction

DEFAULT_RECORDS = 10_000
DEFAULT_OPS = 20_000
DEFAULT_CONCURRENCY = 16
DEFAULT_LOAD_CONCURRENCY = 64
QUICK_RECORDS = 200
QUICK_OPS = 400
QUICK_CONCURRENCY = 4
VALUE_POOL = 64
CLIENT_SATURATED = 0.85  # cores of the benchmark process beyond which the client is the limit

# --suite targets
TARGET_INFLIGHT = 256
TARGET_P50_FACTOR = 1.5
TARGET_RMW_SHARE = 1 / 3
SUITE_SERIAL_DIVISOR = 10  # the 1-in-flight phase runs --ops / this

ALL = "all"  # the row that sums every operation type of a phase


# ---------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    p = sub.add_parser(
        "ycsb",
        help="YCSB workloads (a, b, c, e, f) on htapkv, optionally beside a 3-member etcd",
        description=(
            "Load --records records, then run --ops operations of a YCSB workload with "
            "--concurrency in flight; print ops/s and p50/p95/p99 per operation type. "
            "--peer etcd runs the same operations on a 3-member etcd and prints both side by "
            "side. --suite targets runs raw put at 1 and 256 in flight and a 1-key "
            "transactional read-modify-write at 256 on both, and judges the targets."
        ),
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        help="a: 50/50 read/update; b: 95/5 read/update; c: read only; e: 95/5 scan/insert; "
        "f: 50/50 read/read-modify-write; put: raw puts; rmw: read-modify-writes (default a)",
    )
    mode.add_argument(
        "--suite",
        choices=["targets"],
        help=f"targets: raw put @1 and @{TARGET_INFLIGHT} and txn read-modify-write "
        f"@{TARGET_INFLIGHT} on each system, with the targets' verdicts",
    )
    p.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        help="how keys are chosen (default zipfian: YCSB's scrambled zipfian, 0.99; uniform "
        "with --suite, whose read-modify-writes would otherwise measure hot-key conflicts)",
    )
    p.add_argument(
        "--records",
        type=positive_int,
        help=f"records loaded first (default {DEFAULT_RECORDS:,}, {QUICK_RECORDS} with --quick)",
    )
    p.add_argument(
        "--ops",
        type=positive_int,
        help=f"operations of the run phase (default {DEFAULT_OPS:,}, {QUICK_OPS} with --quick); "
        f"with --suite, of each phase at {TARGET_INFLIGHT} in flight (the 1-in-flight phase "
        f"runs 1/{SUITE_SERIAL_DIVISOR} of it)",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        help=f"operations in flight in the run phase: threads on htapkv, asyncio tasks on "
        f"etcd (default {DEFAULT_CONCURRENCY}, {QUICK_CONCURRENCY} with --quick)",
    )
    p.add_argument(
        "--load-concurrency",
        type=positive_int,
        default=DEFAULT_LOAD_CONCURRENCY,
        help=f"operations in flight in the load phase (default {DEFAULT_LOAD_CONCURRENCY})",
    )
    p.add_argument(
        "--field-count", type=positive_int, default=10, help="fields per record (default 10)"
    )
    p.add_argument(
        "--field-length", type=positive_int, default=100, help="bytes per field (default 100)"
    )
    p.add_argument(
        "--peer",
        choices=["etcd"],
        help="also run the workload on a 3-member etcd started for the run "
        "(needs the etcd-server package)",
    )
    p.add_argument(
        "--target",
        choices=["embedded", "cluster"],
        default="cluster",
        help="cluster: a local process cluster, 1 PD + 3 stores (kvstore.LocalCluster) "
        "through kvstore.connect (default); embedded: kvstore.open on a temporary folder",
    )
    p.add_argument(
        "--pd",
        metavar="ADDR",
        help="run against an already running cluster: its PD address(es), comma-separated "
        "(uses kvstore.connect; overrides --target)",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        help="stop each phase after this many seconds even if it has operations left",
    )
    add_run_flags(
        p,
        seed_help="seed of keys and values (default 1)",
        data_dir_help="create the databases under this folder (default: a temporary folder); "
        "it decides which disk the fsyncs hit",
        quick_help=f"tiny run ({QUICK_RECORDS} records, {QUICK_OPS} ops, {QUICK_CONCURRENCY} in "
        "flight): a smoke test of a few seconds",
        keep_data_help="do not delete the databases afterwards",
    )
    p.set_defaults(func=run)


# ---------------------------------------------------------------- htapkv target
@contextlib.contextmanager
def open_htapkv(target: str, pd: str | None, base: Path) -> Iterator[tuple[Client, str]]:
    """The one place that decides what "htapkv" is in this benchmark: yields
    a client and a one-line description of what it talks to."""
    import kvstore

    if pd:
        addrs = [a.strip() for a in pd.split(",") if a.strip()]
        client = kvstore.connect(addrs)
        try:
            yield client, f"cluster at PD {', '.join(addrs)} (kvstore.connect)"
        finally:
            client.close()
    elif target == "cluster":
        with kvstore.LocalCluster(str(base / "htapkv-cluster"), pd=1, stores=3) as cluster:
            client = cluster.connect()
            try:
                yield client, "local cluster: 1 PD, 3 stores (kvstore.LocalCluster)"
            finally:
                client.close()
    else:
        client = kvstore.open(base / "htapkv-embedded")
        try:
            yield client, "embedded store (kvstore.open, durable=True): one process, no replication"
        finally:
            client.close()


# ---------------------------------------------------------------- phases
@dataclass
class Phase:
    id: str
    label: str
    workload: str  # a workload name, or "load"
    concurrency: int
    plan: Plan


@dataclass
class RunStats:
    """One phase on one system, as measured."""

    elapsed_ns: int
    latencies_ns: list[list[int]]  # per operation code
    errors: list[int]
    first_error: str | None
    cpu_self_s: float = 0.0  # this process: the client (and the embedded store)
    cpu_peer_s: float | None = None  # the peer's server processes
    retries: int = 0  # read-modify-writes re-run after a conflict

    @property
    def done(self) -> int:
        return sum(len(x) for x in self.latencies_ns) + sum(self.errors)


def _deal_progress(plan: Plan) -> int:
    from bench.progress import chunk_size

    return chunk_size(max((len(w) for w in plan.per_worker), default=1))


def run_threads(
    progress: Progress,
    label: str,
    plan: Plan,
    execute: Callable[[Op], object],
    duration: float | None,
) -> RunStats:
    """Run ``plan`` with one thread per worker, each calling ``execute(op)``
    for its operations in order; a failed operation is counted, the phase goes
    on. Wall time runs from the release of all threads to the last one's end."""
    workers = len(plan.per_worker)
    lats: list[list[list[int]]] = [[[] for _ in OP_NAMES] for _ in range(workers)]
    errors = [[0] * len(OP_NAMES) for _ in range(workers)]
    first_error: list[str] = []
    barrier = threading.Barrier(workers + 1)
    chunk = _deal_progress(plan)
    deadline = [0]
    task = progress.add_task(label, total=plan.total)
    clock = time.perf_counter_ns

    def work(t: int) -> None:
        ops = plan.per_worker[t]
        mine, errs = lats[t], errors[t]
        barrier.wait()
        limit = deadline[0]
        for start in range(0, len(ops), chunk):
            for op in ops[start : start + chunk]:
                t0 = clock()
                try:
                    execute(op)
                except Exception as e:  # counted and reported; the phase goes on
                    errs[op.code] += 1
                    if not first_error:
                        first_error.append(f"{OP_NAMES[op.code]}: {type(e).__name__}: {e}")
                else:
                    mine[op.code].append(clock() - t0)
            progress.advance(task, len(ops[start : start + chunk]))
            if limit and clock() >= limit:
                break

    threads = [
        threading.Thread(target=work, args=(t,), name=f"ycsb-{t}", daemon=True)
        for t in range(workers)
    ]
    gc.collect()
    for th in threads:
        th.start()
    if duration:
        deadline[0] = clock() + int(duration * 1e9)
    cpu0 = time.process_time()
    barrier.wait()
    start = clock()
    for th in threads:
        th.join()
    elapsed = clock() - start
    cpu = time.process_time() - cpu0
    stats = RunStats(
        elapsed,
        [[x for w in lats for x in w[c]] for c in range(len(OP_NAMES))],
        [sum(e[c] for e in errors) for c in range(len(OP_NAMES))],
        first_error[0] if first_error else None,
        cpu_self_s=cpu,
    )
    progress.update(task, total=stats.done, completed=stats.done)
    progress.stop_task(task)
    return stats


async def run_tasks(
    progress: Progress,
    label: str,
    plan: Plan,
    execute: Callable[[Op], Awaitable[object]],
    duration: float | None,
) -> RunStats:
    """:func:`run_threads` for an asyncio client: one task per worker."""
    workers = len(plan.per_worker)
    lats: list[list[int]] = [[] for _ in OP_NAMES]
    errors = [0] * len(OP_NAMES)
    first_error: list[str] = []
    chunk = _deal_progress(plan)
    task = progress.add_task(label, total=plan.total)
    clock = time.perf_counter_ns
    limit = clock() + int(duration * 1e9) if duration else 0

    async def work(t: int) -> None:
        ops = plan.per_worker[t]
        for start in range(0, len(ops), chunk):
            for op in ops[start : start + chunk]:
                t0 = clock()
                try:
                    await execute(op)
                except Exception as e:  # counted and reported; the phase goes on
                    errors[op.code] += 1
                    if not first_error:
                        first_error.append(f"{OP_NAMES[op.code]}: {type(e).__name__}: {e}")
                else:
                    lats[op.code].append(clock() - t0)
            progress.advance(task, len(ops[start : start + chunk]))
            if limit and clock() >= limit:
                break

    gc.collect()
    cpu0 = time.process_time()
    start = clock()
    await asyncio.gather(*(work(t) for t in range(workers)))
    elapsed = clock() - start
    stats = RunStats(
        elapsed,
        lats,
        errors,
        first_error[0] if first_error else None,
        cpu_self_s=time.process_time() - cpu0,
    )
    progress.update(task, total=stats.done, completed=stats.done)
    progress.stop_task(task)
    return stats


def build_phases(args: argparse.Namespace) -> list[Phase]:
    """The phases of this run, each with its plan (drawn once, from the seed,
    and given to every system)."""
    pool = VALUE_POOL
    load = Phase(
        "load",
        "load",
        "load",
        args.load_concurrency,
        load_plan(args.records, args.load_concurrency, pool),
    )
    phases = [load]

    def phase(pid: str, workload: str, concurrency: int, ops: int) -> Phase:
        plan = run_plan(
            WORKLOADS[workload],
            distribution=args.distribution,
            records=args.records,
            ops=ops,
            concurrency=concurrency,
            seed=f"{args.seed}/{pid}",
            value_pool=pool,
        )
        return Phase(pid, f"{workload} @{concurrency}", workload, concurrency, plan)

    if args.suite == "targets":
        serial_ops = max(1, args.ops // SUITE_SERIAL_DIVISOR)
        phases += [
            phase("put.c1", "put", 1, serial_ops),
            phase(f"put.c{TARGET_INFLIGHT}", "put", TARGET_INFLIGHT, args.ops),
            phase(f"rmw.c{TARGET_INFLIGHT}", "rmw", TARGET_INFLIGHT, args.ops),
        ]
    else:
        phases.append(phase("run", args.workload, args.concurrency, args.ops))
    return phases


# ---------------------------------------------------------------- the systems
def htapkv_executor(
    client: Client, values: Sequence[bytes], field_length: int, rmw_calls: Iterator[int]
) -> Callable[[Op], object]:
    raw = client.raw
    get, put, scan, transaction = raw.get, raw.put, raw.scan, client.transaction

    def read(op: Op) -> object:
        return get(op.key)

    def write(op: Op) -> object:
        put(op.key, values[op.arg])
        return None

    def scan_op(op: Op) -> object:
        return scan(op.key, KEYS_END, op.arg)

    def rmw(op: Op) -> object:
        key = op.key

        def body(txn: Transaction) -> None:
            next(rmw_calls)
            txn.put(key, modify(txn.get(key) or values[op.arg], field_length))

        transaction(body)
        return None

    # Indexed by operation code: READ, UPDATE, INSERT, SCAN, RMW are 0..4.
    table = (read, write, write, scan_op, rmw)
    return lambda op: table[op.code](op)


def run_htapkv(
    phases: Sequence[Phase],
    client: Client,
    progress: Progress,
    values: Sequence[bytes],
    field_length: int,
    duration: float | None,
) -> dict[str, RunStats]:
    out: dict[str, RunStats] = {}
    for ph in phases:
        calls = itertools.count()
        execute = htapkv_executor(client, values, field_length, calls)
        stats = run_threads(progress, f"htapkv: {ph.label}", ph.plan, execute, duration)
        rmw_ops = len(stats.latencies_ns[RMW]) + stats.errors[RMW]
        stats.retries = max(0, next(calls) - rmw_ops)
        out[ph.id] = stats
    return out


def etcd_executor(kv: Any, values: Sequence[bytes], field_length: int) -> Any:
    def change(old: bytes, arg: int) -> bytes:
        return modify(old or values[arg], field_length)

    async def execute(op: Op) -> object:
        code = op.code
        if code == READ:
            return await kv.read(op.key)
        if code in (UPDATE, INSERT):
            return await kv.put(op.key, values[op.arg])
        if code == SCAN:
            return await kv.scan(op.key, KEYS_END, op.arg)
        return await kv.read_modify_write(op.key, lambda old: change(old, op.arg))

    return execute


def run_etcd(
    phases: Sequence[Phase],
    base: Path,
    progress: Progress,
    values: Sequence[bytes],
    field_length: int,
    duration: float | None,
    info: dict[str, Any],
) -> dict[str, RunStats]:
    """Start the etcd cluster, run every phase through aetcd, stop it."""
    from bench.etcd_peer import EtcdCluster, EtcdKV
    from bench.raft import _proc_cpu_s

    progress.console.print("starting a 3-member etcd cluster...")
    t0 = time.perf_counter()
    with EtcdCluster(base / "etcd") as cluster:
        info.update(
            version=cluster.version,
            setup_s=round(time.perf_counter() - t0, 3),
            pids=cluster.pids,
            endpoints=[f"{h}:{p}" for h, p in cluster.endpoints],
        )

        def peer_cpu() -> float:
            return sum(_proc_cpu_s(pid) for pid in cluster.pids)

        async def main() -> dict[str, RunStats]:
            kv = EtcdKV(cluster.endpoints)
            await kv.connect()
            info["client_endpoint"] = f"{kv.endpoint[0]}:{kv.endpoint[1]}" if kv.endpoint else None
            execute = etcd_executor(kv, values, field_length)
            out: dict[str, RunStats] = {}
            try:
                for ph in phases:
                    retries0, cpu0 = kv.rmw_retries, peer_cpu()
                    stats = await run_tasks(
                        progress, f"etcd:   {ph.label}", ph.plan, execute, duration
                    )
                    stats.cpu_peer_s = peer_cpu() - cpu0
                    stats.retries = kv.rmw_retries - retries0
                    out[ph.id] = stats
            finally:
                await kv.close()
            return out

        return asyncio.run(main())


# ---------------------------------------------------------------- results
def latency_summary_us(latencies_ns: list[int]) -> dict[str, float]:
    """p50/p95/p99/p99.9/max/mean (nearest rank) of nanosecond latencies, in µs."""
    from bench.report import percentile

    values = sorted(latencies_ns)
    if not values:
        return {}
    return {
        "p50": percentile(values, 50) / 1000,
        "p95": percentile(values, 95) / 1000,
        "p99": percentile(values, 99) / 1000,
        "p999": percentile(values, 99.9) / 1000,
        "max": values[-1] / 1000,
        "mean": sum(values) / len(values) / 1000,
    }


@dataclass
class Result:
    id: str
    system: str
    phase: str
    workload: str
    concurrency: int
    operation: str
    planned_ops: int
    ops: int  # succeeded
    errors: int
    elapsed_s: float
    latency_us: dict[str, float]
    retries: int = 0
    cpu_self_s: float | None = None  # per phase, on the phase's "all" row
    cpu_peer_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def cores(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or self.elapsed_s <= 0 else cpu_s / self.elapsed_s

    def cpu_us_per_op(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not self.ops else cpu_s * 1e6 / self.ops

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "system": self.system,
            "phase": self.phase,
            "workload": self.workload,
            "concurrency": self.concurrency,
            "operation": self.operation,
            "planned_ops": self.planned_ops,
            "ops": self.ops,
            "errors": self.errors,
            "count": self.ops + self.errors,
            "elapsed_s": self.elapsed_s,
            "ops_per_s": self.ops_per_s,
            "latency_us": self.latency_us,
            "retries": self.retries,
            "cpu": {
                "client_process_s": self.cpu_self_s,
                "client_process_cores": self.cores(self.cpu_self_s),
                "client_process_us_per_op": self.cpu_us_per_op(self.cpu_self_s),
                "peer_servers_s": self.cpu_peer_s,
                "peer_servers_cores": self.cores(self.cpu_peer_s),
                "peer_servers_us_per_op": self.cpu_us_per_op(self.cpu_peer_s),
            },
            "notes": self.notes,
        }


def to_results(system: str, phases: Sequence[Phase], stats: dict[str, RunStats]) -> list[Result]:
    out = []
    for ph in phases:
        s = stats.get(ph.id)
        if s is None:
            continue
        elapsed = s.elapsed_ns / 1e9
        rows = []
        for code, planned in enumerate(ph.plan.counts):
            if not planned:
                continue
            rows.append(
                Result(
                    id=f"{system}.{ph.id}.{OP_NAMES[code]}",
                    system=system,
                    phase=ph.id,
                    workload=ph.workload,
                    concurrency=ph.concurrency,
                    operation=OP_NAMES[code],
                    planned_ops=planned,
                    ops=len(s.latencies_ns[code]),
                    errors=s.errors[code],
                    elapsed_s=elapsed,
                    latency_us=latency_summary_us(s.latencies_ns[code]),
                    retries=s.retries if code == RMW else 0,
                )
            )
        every = [x for lat in s.latencies_ns for x in lat]
        total = Result(
            id=f"{system}.{ph.id}.{ALL}",
            system=system,
            phase=ph.id,
            workload=ph.workload,
            concurrency=ph.concurrency,
            operation=ALL,
            planned_ops=ph.plan.total,
            ops=len(every),
            errors=sum(s.errors),
            elapsed_s=elapsed,
            latency_us=latency_summary_us(every),
            retries=s.retries,
            cpu_self_s=s.cpu_self_s,
            cpu_peer_s=s.cpu_peer_s,
        )
        if s.errors and sum(s.errors):
            total.notes.append(f"{sum(s.errors)} operations failed, first: {s.first_error}")
        done = total.ops + total.errors
        if done < total.planned_ops:
            total.notes.append(f"stopped by --duration after {done:,} of {total.planned_ops:,} ops")
        if s.retries:
            total.notes.append(
                f"{s.retries} read-modify-writes re-ran after a conflict (same key, concurrently)"
            )
        out += [*rows, total]
    return out


# ---------------------------------------------------------------- targets
def target_summary(results: Sequence[Result]) -> dict[str, Any]:
    """The three targets of ``--suite targets``; ``met`` is None where a
    number is missing (no etcd run, or not the suite)."""
    by_id = {r.id: r for r in results}

    def row(system: str, phase: str) -> Result | None:
        return by_id.get(f"{system}.{phase}.{ALL}")

    put_many = f"put.c{TARGET_INFLIGHT}"
    rmw_many = f"rmw.c{TARGET_INFLIGHT}"
    h256, e256 = row("htapkv", put_many), row("etcd", put_many)
    h1, e1 = row("htapkv", "put.c1"), row("etcd", "put.c1")
    hrmw, ermw = row("htapkv", rmw_many), row("etcd", rmw_many)

    def rate(r: Result | None) -> float | None:
        return r.ops_per_s if r and r.ops else None

    def p50(r: Result | None) -> float | None:
        return r.latency_us.get("p50") if r else None

    def share(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    thr_h, thr_e = rate(h256), rate(e256)
    lat_h, lat_e = p50(h1), p50(e1)
    rmw_h, rmw_e = share(rate(hrmw), thr_h), share(rate(ermw), thr_e)
    throughput = {
        "statement": f"htapkv raw put ops/s at {TARGET_INFLIGHT} in flight >= etcd's",
        "htapkv": thr_h,
        "etcd": thr_e,
        "ratio": share(thr_h, thr_e),
        "met": None if thr_h is None or thr_e is None else thr_h >= thr_e,
    }
    latency = {
        "statement": f"htapkv raw put p50 at 1 in flight <= {TARGET_P50_FACTOR:g} x etcd's",
        "htapkv_us": lat_h,
        "etcd_us": lat_e,
        "ratio": share(lat_h, lat_e),
        "met": None if lat_h is None or lat_e is None else lat_h <= TARGET_P50_FACTOR * lat_e,
    }
    rmw = {
        "statement": (
            f"htapkv 1-key txn read-modify-write ops/s >= 1/3 of its raw put ops/s "
            f"(both at {TARGET_INFLIGHT} in flight)"
        ),
        "htapkv_rmw_ops_per_s": rate(hrmw),
        "htapkv_share": rmw_h,
        "etcd_rmw_ops_per_s": rate(ermw),
        "etcd_share": rmw_e,
        "met": None if rmw_h is None else rmw_h >= TARGET_RMW_SHARE,
    }
    verdicts = [t["met"] for t in (throughput, latency, rmw)]
    return {
        "throughput": throughput,
        "latency": latency,
        "rmw": rmw,
        "met": None if any(v is None for v in verdicts) else all(verdicts),
    }


def _word(met: bool | None) -> str:
    return "not measured" if met is None else ("MET" if met else "MISSED")


def _us(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def target_lines(t: dict[str, Any]) -> list[str]:
    thr, lat, rmw = t["throughput"], t["latency"], t["rmw"]
    return [
        f"Raw put throughput @{TARGET_INFLIGHT}: htapkv {fmt(thr['htapkv'])}/s vs etcd "
        f"{fmt(thr['etcd'])}/s ({_ratio(thr['ratio'])}; target >= 1x) -> {_word(thr['met'])}",
        f"Raw put p50 @1: htapkv {_us(lat['htapkv_us'])} µs vs etcd {_us(lat['etcd_us'])} µs "
        f"({_ratio(lat['ratio'])}; target <= {TARGET_P50_FACTOR:g}x) -> {_word(lat['met'])}",
        f"Txn read-modify-write @{TARGET_INFLIGHT}: htapkv {fmt(rmw['htapkv_rmw_ops_per_s'])}/s "
        f"= {_ratio(rmw['htapkv_share'])} of its raw put (target >= {TARGET_RMW_SHARE:.2f}x; "
        f"etcd's own: {_ratio(rmw['etcd_share'])}) -> {_word(rmw['met'])}",
    ]


def target_table(t: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The README table: one row per target."""
    thr, lat, rmw = t["throughput"], t["latency"], t["rmw"]
    headers = ["target", "htapkv", "etcd", "htapkv / etcd", "needed", "verdict"]
    rows = [
        [
            f"raw put ops/s @{TARGET_INFLIGHT}",
            fmt(thr["htapkv"]),
            fmt(thr["etcd"]),
            _ratio(thr["ratio"]),
            ">= 1x",
            _word(thr["met"]),
        ],
        [
            "raw put p50 µs @1",
            _us(lat["htapkv_us"]),
            _us(lat["etcd_us"]),
            _ratio(lat["ratio"]),
            f"<= {TARGET_P50_FACTOR:g}x",
            _word(lat["met"]),
        ],
        [
            f"txn RMW ops/s @{TARGET_INFLIGHT} (share of own raw put)",
            f"{fmt(rmw['htapkv_rmw_ops_per_s'])} ({_ratio(rmw['htapkv_share'])})",
            f"{fmt(rmw['etcd_rmw_ops_per_s'])} ({_ratio(rmw['etcd_share'])})",
            "-",
            f">= {TARGET_RMW_SHARE:.2f}x own put",
            _word(rmw["met"]),
        ],
    ]
    return headers, rows


# ---------------------------------------------------------------- reporting
def side_by_side(results: Sequence[Result], with_peer: bool) -> tuple[list[str], list[list[str]]]:
    """Rows of (phase, operation): htapkv's columns, then etcd's and the ratio."""
    headers = ["phase", "op", "ops", "htapkv ops/s", "p50 µs", "p95 µs", "p99 µs"]
    if with_peer:
        headers += ["etcd ops/s", "p50 µs", "p95 µs", "p99 µs", "ops/s ratio", "p50 ratio"]
    by_id = {r.id: r for r in results}
    rows = []
    for h in (r for r in results if r.system == "htapkv"):
        label = "load" if h.phase == "load" else f"{h.workload} @{h.concurrency}"
        row = [
            label,
            h.operation,
            f"{h.ops:,}" + (f" ({h.errors} err)" if h.errors else ""),
            fmt(h.ops_per_s),
            *(_us(h.latency_us.get(q)) for q in ("p50", "p95", "p99")),
        ]
        if with_peer:
            e = by_id.get(h.id.replace("htapkv.", "etcd.", 1))
            if e is None:
                row += ["-"] * 6
            else:
                p50h, p50e = h.latency_us.get("p50"), e.latency_us.get("p50")
                row += [
                    fmt(e.ops_per_s),
                    *(_us(e.latency_us.get(q)) for q in ("p50", "p95", "p99")),
                    _ratio(h.ops_per_s / e.ops_per_s if e.ops_per_s else None),
                    _ratio(p50h / p50e if p50h is not None and p50e else None),
                ]
        rows.append(row)
    return headers, rows


def explanation(data: dict[str, Any]) -> str:
    p = data["parameters"]
    text = (
        f"Records: `user<hash>` keys, {p['field_count']} x {p['field_length']} B values "
        f"({p['record_bytes']:,} B). Keys {p['distribution']}"
        + (" (YCSB's scrambled zipfian, 0.99)" if p["distribution"] == "zipfian" else "")
        + ". Each system gets the same operations, drawn once from the seed. ops/s of an "
        "operation = its count over the phase's wall time, so the rows of a phase add up to "
        "its `all` row; latency is per operation (a whole transaction for read-modify-write), "
        "from every sample (nearest rank). ratio = htapkv / etcd: above 1x htapkv does more "
        "ops/s; for p50, below 1x htapkv is faster. htapkv: reads, updates, inserts and scans "
        "through `client.raw`; read-modify-write = `client.transaction` (get, then put)."
    )
    if p["peer"] == "etcd":
        text += (
            " etcd: 3 members on loopback, each with its own data folder on the same disk, "
            "driven through aetcd (grpc.aio) from one asyncio event loop in this process; "
            "read = linearizable Range, update/insert = Put, scan = Range with a limit, "
            "read-modify-write = Range then a Txn that puts iff mod_revision is unchanged, "
            "retried on conflict."
        )
    return text


def build_notes(data: dict[str, Any], results: Sequence[Result]) -> list[str]:
    """The run's caveats, fairly stated: they belong next to the numbers."""
    p = data["parameters"]
    notes = []
    if p["target"] == "embedded" and not p["pd"]:
        notes.append(
            "htapkv ran embedded: one process, no replication, no network, each write "
            "fsync'd on one disk. etcd replicates every write to 3 members (3 fsyncs, "
            "loopback gRPC). This compares the embedded store with a replicated service, not "
            "like with like: the fair comparison is --target cluster, once it exists."
        )
    if any(r.system == "htapkv" and r.concurrency >= TARGET_INFLIGHT for r in results):
        notes.append(
            "htapkv's client is synchronous, so N in flight is N Python threads taking turns "
            "on one GIL (rocksdict keeps it through a write's fsync): at 256 threads the tail "
            "latency is mostly threads waiting for their turn."
        )
    if p["peer"] == "etcd":
        notes.append(
            "etcd's client is Python too (aetcd over grpc.aio, one event loop): it costs CPU "
            "per request in this process, which shares the 2 cores with etcd. The `cpu` "
            "fields of the JSON give the benchmark process's and etcd's CPU per phase; where "
            "the client was near a full core the etcd numbers are a lower bound on etcd "
            "itself (etcd's own Go benchmark would go faster)."
        )
        for r in results:
            cores = r.cores(r.cpu_self_s)
            if r.system == "etcd" and r.operation == ALL and cores and cores >= CLIENT_SATURATED:
                notes.append(
                    f"{r.phase}: the benchmark process used {cores:.0%} of a core driving "
                    "etcd: the Python client, not etcd, likely set this phase's pace "
                    "(etcd handicapped)."
                )
        notes.append(
            "aetcd talks to one member, the leader (found at start), sparing etcd the "
            "forwarding of writes; a client spreading requests over all members would see "
            "lower etcd numbers."
        )
    return notes


def render_markdown(data: dict[str, Any], results: Sequence[Result]) -> str:
    from bench.report import markdown_table

    m, p = data["machine"], data["parameters"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    load = data["load_average"]
    what = "suite targets" if p["suite"] else f"workload {p['workload']}"
    out = [
        f"# htapkv bench ycsb ({what}) — {data['started_at']}",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}, "
        f"Python {m['python_version']}; {libs}"
        + (f"; etcd {data['peer']['version']}" if data.get("peer") else "")
        + f". Load average at start {load['start']}, at end {load['end']}. Data on "
        f"{p['data_fs'] or 'unknown'} filesystem. htapkv: {data['htapkv_target']}.",
        "",
        f"Records {p['records']:,}, run ops {p['ops']:,}, concurrency {p['concurrency']}, "
        f"load concurrency {p['load_concurrency']}, seed {p['seed']}.",
        "",
    ]
    headers, rows = side_by_side(results, bool(p["peer"]))
    out += [markdown_table(headers, rows), ""]
    if p["suite"]:
        th, tr = target_table(data["target"])
        out += ["## Targets", "", markdown_table(th, tr), ""]
        out += [*(f"- {line}" for line in target_lines(data["target"])), ""]
    out.append(explanation(data))
    if data.get("plot"):
        out += ["", f"![latency CDF]({data['plot']})"]
    out += notes_section(results, [*data["notes"], *data["warnings"]])
    return "\n".join(out) + "\n"


def print_tables(data: dict[str, Any], results: Sequence[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = (
        Console(highlight=False) if sys.stdout.isatty() else Console(width=170, highlight=False)
    )
    p = data["parameters"]
    headers, rows = side_by_side(results, bool(p["peer"]))
    what = "suite targets" if p["suite"] else f"workload {p['workload']}"
    table = Table(title=f"htapkv bench ycsb ({what})", title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row, style="bold" if row[1] == ALL else None)
    console.print(table)
    if p["suite"]:
        th, tr = target_table(data["target"])
        t2 = Table(title="targets", title_justify="left")
        for i, h in enumerate(th):
            t2.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for row in tr:
            style = {"MET": "green", "MISSED": "red"}.get(row[-1])
            t2.add_row(*row, style=style)
        console.print(t2)
    for w in data["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")


def plot_latency(
    path: Path, phases: Sequence[Phase], stats: dict[str, dict[str, RunStats]]
) -> bool:
    """One panel per phase: the latency CDF of each operation type, per
    system (solid htapkv, dashed etcd), on a log scale. False if matplotlib
    could not draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = len(phases)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    styles = {"htapkv": "-", "etcd": "--"}
    for ax, ph in zip(axes.flat, phases, strict=False):
        for system, per_phase in stats.items():
            s = per_phase.get(ph.id)
            if s is None:
                continue
            for code, lat in enumerate(s.latencies_ns):
                if not lat:
                    continue
                xs = sorted(x / 1000 for x in lat)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, styles.get(system, ":"), label=f"{system} {OP_NAMES[code]}")
        ax.set_xscale("log")
        ax.set_title(f"{ph.label} ({ph.plan.total:,} ops)")
        ax.set_xlabel("latency (µs, log)")
        ax.set_ylabel("fraction of operations")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("htapkv bench ycsb: latency CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from bench.etcd_peer import PeerUnavailableError, find_etcd, import_aetcd
    from bench.progress import phase_progress
    from bench.report import (
        filesystem_type,
        machine_info,
        result_header,
        write_results,
    )

    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
    if args.suite is None and args.workload is None:
        args.workload = "a"
    if args.distribution is None:
        # The targets compare write paths, not contention: at 256 in flight a
        # zipfian's hot records make most read-modify-writes conflict and retry.
        args.distribution = "uniform" if args.suite else "zipfian"
    args.records = args.records or (QUICK_RECORDS if args.quick else DEFAULT_RECORDS)
    args.ops = args.ops or (QUICK_OPS if args.quick else DEFAULT_OPS)
    args.concurrency = args.concurrency or (
        QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY
    )
    if args.quick and args.load_concurrency == DEFAULT_LOAD_CONCURRENCY:
        args.load_concurrency = QUICK_CONCURRENCY
    # Everything that can be missing is checked before anything starts.
    try:
        if args.peer == "etcd":
            find_etcd()
            import_aetcd()
    except PeerUnavailableError as e:
        err.print(f"htapkv bench ycsb: error: {e}")
        return 2

    started = datetime.now().astimezone()
    if args.data_dir:
        os.makedirs(args.data_dir, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="htapkv-bench-ycsb-", dir=args.data_dir))
    data_fs = filesystem_type(base)
    warnings: list[str] = []
    if data_fs in ("tmpfs", "ramfs"):
        warnings.append(
            f"the data is on {data_fs}: fsync costs nothing there, so writes do not reflect "
            "a disk (use --data-dir)"
        )
    load_start = load_average()
    if busy := busy_warning(load_start, "the CPUs and the disk"):
        warnings.append(busy)
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")

    phases = build_phases(args)
    values = value_pool(VALUE_POOL, args.field_count, args.field_length, args.seed)
    what = "suite targets" if args.suite else f"workload {args.workload}"
    err.print(
        f"htapkv bench ycsb ({what}): {args.records:,} records, {args.ops:,} ops, "
        f"{args.distribution}, concurrency {args.concurrency}"
        + (", beside etcd" if args.peer else "")
        + f"; data in {base}"
    )
    stats: dict[str, dict[str, RunStats]] = {}
    peer_info: dict[str, Any] = {}
    target_desc = ""
    try:
        with phase_progress(err) as progress:
            with open_htapkv(args.target, args.pd, base) as (client, target_desc):
                stats["htapkv"] = run_htapkv(
                    phases, client, progress, values, args.field_length, args.duration
                )
            if args.peer == "etcd":
                stats["etcd"] = run_etcd(
                    phases, base, progress, values, args.field_length, args.duration, peer_info
                )
    except PeerUnavailableError as e:
        err.print(f"htapkv bench ycsb: error: {e}")
        return 2
    finally:
        if args.keep_data:
            err.print(f"data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    results = [r for system, s in stats.items() for r in to_results(system, phases, s)]
    if any(r.errors for r in results):
        warnings.append("some operations failed (see the notes): rows with errors are suspect")
    target = target_summary(results)
    libraries = ("htapkv", "rocksdict", "grpcio", "protobuf", "aetcd", "rich")
    data: dict[str, Any] = {
        **result_header("ycsb", started),
        "parameters": {
            "workload": args.workload,
            "suite": args.suite,
            "mix": {
                ph.id: {
                    "workload": ph.workload,
                    "concurrency": ph.concurrency,
                    "planned": {OP_NAMES[c]: n for c, n in enumerate(ph.plan.counts) if n},
                }
                for ph in phases
            },
            "distribution": args.distribution,
            "records": args.records,
            "ops": args.ops,
            "concurrency": args.concurrency,
            "load_concurrency": args.load_concurrency,
            "field_count": args.field_count,
            "field_length": args.field_length,
            "record_bytes": args.field_count * args.field_length,
            "duration_s": args.duration,
            "seed": args.seed,
            "quick": args.quick,
            "peer": args.peer,
            "target": args.target,
            "pd": args.pd,
            "data_dir": str(base),
            "data_fs": data_fs,
        },
        "htapkv_target": target_desc,
        "peer": peer_info or None,
        "machine": machine_info(libraries),
        "load_average": {"start": load_start, "end": load_average()},
        "target": target,
        "results": [r.to_json() for r in results],
        "notes": [],
        "warnings": warnings,
    }
    data["notes"] = build_notes(data, results)
    json_path, md_path = write_results(args.output, "ycsb", data, render_markdown(data, results))
    png_path = json_path.with_suffix(".png")
    if plot_latency(png_path, phases, stats):
        data["plot"] = png_path.name
        json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        md_path.write_text(render_markdown(data, results), encoding="utf-8")
    print_tables(data, results)
    print(f"results: {json_path}  {md_path}" + (f"  {png_path}" if data.get("plot") else ""))
    return 0
