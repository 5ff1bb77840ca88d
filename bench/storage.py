"""``htapkv bench storage``: the embedded store next to plain RocksDB.

One run measures, each on a fresh RocksDB directory and with the same keys
(16 bytes, drawn at random from a space of 10^15) and values (100 random
bytes):

==========================  ===============================================
system                      operations
==========================  ===============================================
rocksdict sync=off          single ``put``, ``get`` (the baseline)
rocksdict sync=on           single ``put`` with ``WriteOptions.sync``, ``get``
htapkv durable=False        raw put, raw get, transactions: 1-key put,
                            4-key put, 1-key read-modify-write
htapkv durable=True         the same
==========================  ===============================================

Write-only transactions put fresh keys, so they never conflict; the
read-modify-write transaction reads a key an earlier transaction wrote and
puts it back changed. Transactions go through ``client.transaction`` (the API
applications use); a transaction is one operation, whatever its size.

The figure of merit is the **cost per key written**: wall time divided by keys
written, over the same figure for a plain rocksdict put — ``durable=False``
against ``sync=off`` and ``durable=True`` against ``sync=on``. The target is
that the transactional path costs at most :data:`TARGET_RATIO` times the plain
engine per key written; the report says, per transactional row and overall,
whether that was met. Nothing here asserts it: performance is reported, never
tested.

The baseline puts run twice, first and again last, on fresh directories;
ratios use the faster of the two runs (the one least disturbed by whatever
else the machine was doing, and the one that makes the ratio larger, so the
verdict errs against htapkv). Their drift and the load average are recorded:
on a shared machine they say how far to trust the numbers.

Phase sizes: ``--ops N`` operations per phase; the ``sync=off`` baseline runs
``5·N`` (it is ~30 times faster and is the denominator of every ratio, so it
gets enough operations to be steady); phases that fsync every operation run
``--sync-ops`` (default ``N/10``). ``--duration`` caps every phase in seconds.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bench.report import (
    add_run_flags,
    busy_warning,
    does_not_apply,
    fmt,
    load_average,
    notes_section,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from kvstore import Client, Transaction

TARGET_RATIO = 8.0
DEFAULT_OPS = 30_000
QUICK_OPS = 300
SYNC_DIVISOR = 10
BASELINE_FACTOR = 5
KEY_SPACE = 10**15  # b"k" + 15 digits: 16-byte keys
VALUE_SIZE = 100
VALUE_POOL = 256  # distinct values, used round-robin (a power of two: i & mask)

BASELINE_OFF = "rocksdict.sync_off.put"
BASELINE_ON = "rocksdict.sync_on.put"
AGAIN = ".again"  # id suffix of the baseline puts' second run
DRIFT_WARNING = 1.25  # warn when the two runs of a baseline differ more than this

Op = Callable[[int], object]
Prepare = Callable[[int, int], Op]  # (thread index, ops of that thread) -> op(i)


# ---------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    p = sub.add_parser(
        "storage",
        help="embedded store (raw KV, transactions) vs plain rocksdict",
        description=(
            "Measure single puts/gets of plain rocksdict (sync off and on) and the embedded "
            "htapkv store (durable=False and True): raw put/get and 1-key, 4-key and "
            "read-modify-write transactions; report the cost per key written relative to "
            f"the plain engine (target: at most {TARGET_RATIO:g}x)."
        ),
    )
    p.add_argument(
        "--ops",
        type=positive_int,
        help=f"operations per phase (default {DEFAULT_OPS}, {QUICK_OPS} with --quick); "
        f"the rocksdict sync=off phases run {BASELINE_FACTOR}x this",
    )
    p.add_argument(
        "--sync-ops",
        type=positive_int,
        help=f"operations of phases that fsync every operation (default ops/{SYNC_DIVISOR})",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        help="stop each phase after this many seconds even if it has operations left",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        help="threads issuing operations (default 1); they share one store",
    )
    add_run_flags(
        p,
        seed_help="seed of keys and values (default 1)",
        data_dir_help="create the databases under this folder (default: a temporary folder); "
        "it decides which disk the fsyncs hit",
        quick_help=f"tiny phases ({QUICK_OPS} ops): a smoke run of a few seconds",
        keep_data_help="do not delete the databases afterwards",
    )
    does_not_apply(p, "--pd", "it compares storage engines inside this process, no cluster")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- results
@dataclass
class PhaseResult:
    id: str
    system: str
    operation: str
    planned_ops: int
    ops: int
    keys_written_per_op: int
    elapsed_s: float
    latency_us: dict[str, float]
    baseline: str | None = None  # id of the phase this one's cost is compared to
    baseline_us_per_key: float | None = None  # the faster of its runs (see module doc)
    ratio: float | None = None
    in_target: bool = False  # a transactional row, judged against TARGET_RATIO
    notes: list[str] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def us_per_key(self) -> float | None:
        """Wall time per key written (None for reads)."""
        keys = self.ops * self.keys_written_per_op
        return self.elapsed_s * 1e6 / keys if keys else None

    @property
    def target_met(self) -> bool | None:
        if not self.in_target or self.ratio is None:
            return None
        return self.ratio <= TARGET_RATIO

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "system": self.system,
            "operation": self.operation,
            "planned_ops": self.planned_ops,
            "ops": self.ops,
            "keys_written_per_op": self.keys_written_per_op,
            "elapsed_s": self.elapsed_s,
            "ops_per_s": self.ops_per_s,
            "keys_written_per_s": self.ops_per_s * self.keys_written_per_op,
            "latency_us": self.latency_us,
            "us_per_key_written": self.us_per_key,
            "baseline": self.baseline,
            "baseline_us_per_key": self.baseline_us_per_key,
            "ratio_per_key_vs_baseline": self.ratio,
            "in_target": self.in_target,
            "target_met": self.target_met,
            "notes": self.notes,
        }


@dataclass
class _Run:
    done: list[int]  # operations finished, per thread
    elapsed_ns: int
    latencies_ns: list[int]


def _split(n: int, parts: int) -> list[int]:
    q, r = divmod(n, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


# ---------------------------------------------------------------- the harness
class _Bench:
    def __init__(self, *, seed: int, threads: int, duration: float | None, progress: Progress):
        self.seed = seed
        self.threads = threads
        self.duration = duration
        self.progress = progress
        rng = random.Random(f"{seed}/values")
        self.values = [rng.randbytes(VALUE_SIZE) for _ in range(VALUE_POOL)]
        self.results: dict[str, PhaseResult] = {}

    # ------------------------------------------------------------ data
    def fresh_keys(self, phase: str, thread: int, n: int) -> list[bytes]:
        rand = random.Random(f"{self.seed}/{phase}/{thread}").randrange
        return [b"k%015d" % rand(KEY_SPACE) for _ in range(n)]

    def sample(self, phase: str, thread: int, keys: Sequence[bytes], n: int) -> list[bytes]:
        if not keys:
            raise RuntimeError(f"{phase}: no keys were written to read back")
        return random.Random(f"{self.seed}/{phase}/{thread}").choices(keys, k=n)

    # ------------------------------------------------------------ running
    def measure(self, label: str, n_ops: int, prepare: Prepare) -> _Run:
        """Run ``n_ops`` operations split over the threads; each thread's
        ``op(i)`` is built by ``prepare`` (untimed) and called for i = 0, 1...
        Throughput is timed on the wall clock from the moment all threads are
        released; each operation's latency with ``perf_counter_ns``."""
        from bench.progress import chunk_size

        threads = self.threads
        counts = _split(max(n_ops, threads), threads)
        ops = [prepare(t, counts[t]) for t in range(threads)]
        lats: list[list[int]] = [[] for _ in range(threads)]
        done = [0] * threads
        errors: list[BaseException] = []
        stop = threading.Event()
        barrier = threading.Barrier(threads + 1)
        chunk = chunk_size(max(counts))
        deadline = [0]
        progress = self.progress
        gc.collect()
        task = progress.add_task(label, total=sum(counts))

        def work(t: int) -> None:
            op, n = ops[t], counts[t]
            append = lats[t].append
            clock = time.perf_counter_ns
            barrier.wait()
            limit = deadline[0]
            i = 0
            try:
                while i < n and not stop.is_set():
                    end = min(n, i + chunk)
                    for j in range(i, end):
                        t0 = clock()
                        op(j)
                        append(clock() - t0)
                    progress.advance(task, end - i)
                    done[t] = i = end
                    if limit and clock() >= limit:
                        break
            except BaseException as e:
                errors.append(e)
                stop.set()

        workers = [
            threading.Thread(target=work, args=(t,), name=f"bench-{t}", daemon=True)
            for t in range(threads)
        ]
        for w in workers:
            w.start()
        if self.duration:
            deadline[0] = time.perf_counter_ns() + int(self.duration * 1e9)
        try:
            barrier.wait()
            start = time.perf_counter_ns()
            for w in workers:
                w.join()
            elapsed = time.perf_counter_ns() - start
        finally:
            stop.set()
            for w in workers:
                w.join()
        progress.update(task, total=sum(done), completed=sum(done))
        progress.stop_task(task)
        if errors:
            raise errors[0]
        return _Run(done, elapsed, [x for lat in lats for x in lat])

    def phase(
        self,
        pid: str,
        system: str,
        operation: str,
        n_ops: int,
        prepare: Prepare,
        *,
        keys_per_op: int = 0,
        baseline: str | None = None,
        in_target: bool = False,
    ) -> _Run:
        from bench.report import latency_summary_us

        run = self.measure(f"{system}: {operation}", n_ops, prepare)
        ops = sum(run.done)
        result = PhaseResult(
            id=pid,
            system=system,
            operation=operation,
            planned_ops=max(n_ops, self.threads),
            ops=ops,
            keys_written_per_op=keys_per_op,
            elapsed_s=run.elapsed_ns / 1e9,
            latency_us=latency_summary_us(run.latencies_ns),
            baseline=baseline,
            in_target=in_target,
        )
        if ops < result.planned_ops:
            result.notes.append(f"stopped by --duration after {ops} of {result.planned_ops} ops")
        self.results[pid] = result
        return run

    def apply_ratios(self) -> list[str]:
        """Set every result's ratio against the faster run of its baseline
        (``<id>`` and ``<id>.again``); return warnings about baseline drift."""
        warnings = []
        for bid in (BASELINE_OFF, BASELINE_ON):
            runs = [self.results.get(i) for i in (bid, bid + AGAIN)]
            costs = [c for c in (r.us_per_key for r in runs if r) if c]
            if len(costs) == 2 and max(costs) > DRIFT_WARNING * min(costs):
                warnings.append(
                    f"the two runs of {bid} differ by {max(costs) / min(costs):.2f}x "
                    f"({costs[0]:,.2f} vs {costs[1]:,.2f} µs/put): the machine was not quiet, "
                    "ratios against it are uncertain by about as much"
                )
            for r in self.results.values():
                if r.baseline == bid and costs and r.us_per_key is not None:
                    r.baseline_us_per_key = min(costs)
                    r.ratio = r.us_per_key / min(costs)
        return warnings

    # ------------------------------------------------------------ workloads
    def put_phase(
        self,
        pid: str,
        system: str,
        operation: str,
        n_ops: int,
        put: Callable[[bytes, bytes], object],
        *,
        baseline: str | None = None,
    ) -> list[list[bytes]]:
        """Single puts of fresh keys; returns the keys written, per thread."""
        keys: dict[int, list[bytes]] = {}
        values, mask = self.values, VALUE_POOL - 1

        def prepare(t: int, n: int) -> Op:
            ks = keys[t] = self.fresh_keys(pid, t, n)
            return lambda i: put(ks[i], values[i & mask])

        run = self.phase(pid, system, operation, n_ops, prepare, keys_per_op=1, baseline=baseline)
        return [keys[t][: run.done[t]] for t in range(self.threads)]

    def get_phase(
        self,
        pid: str,
        system: str,
        operation: str,
        n_ops: int,
        get: Callable[[bytes], bytes | None],
        written: list[list[bytes]],
    ) -> None:
        """Single gets of keys drawn (with replacement) from ``written``."""

        def prepare(t: int, n: int) -> Op:
            ks = self.sample(pid, t, written[t] or [k for w in written for k in w], n)
            return lambda i: get(ks[i])

        self.phase(pid, system, operation, n_ops, prepare)
        # Sanity check, untimed: the reads were hits, not misses.
        probe = [k for w in written for k in w[:20]]
        missing = sum(get(k) is None for k in probe)
        if missing:
            raise RuntimeError(f"{pid}: {missing} of {len(probe)} written keys read back as None")

    def txn_put_phase(
        self,
        pid: str,
        system: str,
        operation: str,
        n_ops: int,
        client: Client,
        keys_per_txn: int,
        *,
        baseline: str,
    ) -> list[list[bytes]]:
        """Write-only transactions of ``keys_per_txn`` fresh keys each."""
        keys: dict[int, list[bytes]] = {}
        values, mask = self.values, VALUE_POOL - 1
        transaction = client.transaction

        def prepare(t: int, n: int) -> Op:
            ks = keys[t] = self.fresh_keys(pid, t, n * keys_per_txn)

            def op(i: int) -> None:
                first = i * keys_per_txn
                value = values[i & mask]
                batch = ks[first : first + keys_per_txn]

                def body(txn: Transaction) -> None:
                    for k in batch:
                        txn.put(k, value)

                transaction(body)

            return op

        run = self.phase(
            pid,
            system,
            operation,
            n_ops,
            prepare,
            keys_per_op=keys_per_txn,
            baseline=baseline,
            in_target=True,
        )
        return [keys[t][: run.done[t] * keys_per_txn] for t in range(self.threads)]

    def txn_rmw_phase(
        self,
        pid: str,
        system: str,
        operation: str,
        n_ops: int,
        client: Client,
        written: list[list[bytes]],
        *,
        baseline: str,
    ) -> None:
        """1-key transactions that read a key and write it back changed. Each
        thread draws from the keys its own thread wrote earlier, so threads
        never conflict with one another."""
        transaction = client.transaction

        def body(txn: Transaction, key: bytes) -> None:
            value = txn.get(key)
            if value is None:
                raise RuntimeError(f"{pid}: key {key!r} written earlier is missing")
            txn.put(key, value[1:] + value[:1])

        def prepare(t: int, n: int) -> Op:
            ks = self.sample(pid, t, written[t] or [k for w in written for k in w], n)
            return lambda i: transaction(lambda txn: body(txn, ks[i]))

        self.phase(
            pid, system, operation, n_ops, prepare, keys_per_op=1, baseline=baseline, in_target=True
        )


# ---------------------------------------------------------------- systems
def _bench_rocksdict(b: _Bench, path: str, *, sync: bool, put_ops: int, get_ops: int) -> None:
    """Plain rocksdict puts then gets; ``get_ops=0``: the puts' second run."""
    from rocksdict import Options, Rdict, WriteOptions

    system = f"rocksdict sync={'on' if sync else 'off'}"
    tag = "sync_on" if sync else "sync_off"
    db = Rdict(path, Options(raw_mode=True))
    try:
        wo = WriteOptions()
        wo.sync = sync
        db.set_write_options(wo)
        if not get_ops:
            b.put_phase(f"rocksdict.{tag}.put{AGAIN}", system, "put (again)", put_ops, db.put)
            return
        written = b.put_phase(f"rocksdict.{tag}.put", system, "put", put_ops, db.put)
        b.get_phase(f"rocksdict.{tag}.get", system, "get", get_ops, db.get, written)
    finally:
        db.close()


def _bench_htapkv(b: _Bench, path: str, *, durable: bool, ops: int, write_ops: int) -> None:
    import kvstore

    system = f"htapkv durable={durable}"
    tag = "durable" if durable else "nondurable"
    baseline = BASELINE_ON if durable else BASELINE_OFF
    client = kvstore.open(path, durable=durable)
    try:
        raw = client.raw
        written = b.put_phase(
            f"htapkv.{tag}.raw_put", system, "raw put", write_ops, raw.put, baseline=baseline
        )
        b.get_phase(f"htapkv.{tag}.raw_get", system, "raw get", ops, raw.get, written)
        written = b.txn_put_phase(
            f"htapkv.{tag}.txn_1key",
            system,
            "txn 1-key put",
            write_ops,
            client,
            1,
            baseline=baseline,
        )
        b.txn_put_phase(
            f"htapkv.{tag}.txn_4key",
            system,
            "txn 4-key put",
            write_ops,
            client,
            4,
            baseline=baseline,
        )
        b.txn_rmw_phase(
            f"htapkv.{tag}.txn_rmw",
            system,
            "txn 1-key read-modify-write",
            write_ops,
            client,
            written,
            baseline=baseline,
        )
    finally:
        client.close()


# ---------------------------------------------------------------- reporting
def _verdict(r: PhaseResult) -> str:
    met = r.target_met
    return "" if met is None else ("yes" if met else "NO")


HEADERS = (
    "system",
    "operation",
    "ops",
    "ops/s",
    "p50 µs",
    "p99 µs",
    "keys/op",
    "µs/key written",
    "ratio/key vs base",
    f"<={TARGET_RATIO:g}x?",
)


def _rows(results: Sequence[PhaseResult]) -> list[list[str]]:
    return [
        [
            r.system,
            r.operation,
            f"{r.ops:,}",
            fmt(r.ops_per_s),
            fmt(r.latency_us.get("p50"), ",.1f"),
            fmt(r.latency_us.get("p99"), ",.1f"),
            str(r.keys_written_per_op) if r.keys_written_per_op else "-",
            fmt(r.us_per_key, ",.2f"),
            fmt(r.ratio, ".2f") + ("x" if r.ratio is not None else ""),
            _verdict(r),
        ]
        for r in results
    ]


def _target_summary(results: Sequence[PhaseResult]) -> dict[str, Any]:
    judged = [r for r in results if r.in_target and r.ratio is not None]
    per_mode = {}
    for durable in (False, True):
        rows = [r for r in judged if r.system == f"htapkv durable={durable}"]
        if rows:
            worst = max(rows, key=lambda r: r.ratio or 0.0)
            per_mode[f"durable={durable}"] = {
                "baseline": worst.baseline,
                "baseline_us_per_key": worst.baseline_us_per_key,
                "worst_ratio": worst.ratio,
                "worst_operation": worst.operation,
                "met": all(r.target_met for r in rows),
            }
    return {
        "max_ratio_per_key": TARGET_RATIO,
        "statement": (
            f"the transactional path costs at most {TARGET_RATIO:g}x the plain engine "
            "per key written"
        ),
        "judged_rows": [r.id for r in judged],
        "met": bool(judged) and all(r.target_met for r in judged),
        "per_mode": per_mode,
    }


def _target_lines(target: dict[str, Any]) -> list[str]:
    lines = []
    for mode, s in target["per_mode"].items():
        lines.append(
            f"htapkv {mode} vs {s['baseline']} ({s['baseline_us_per_key']:,.2f} µs/put): "
            f"worst {s['worst_ratio']:.2f}x per key written "
            f"({s['worst_operation']}) -> target <= {TARGET_RATIO:g}x "
            f"{'MET' if s['met'] else 'MISSED'}"
        )
    lines.append(
        f"Overall: the {TARGET_RATIO:g}x per-key target is "
        f"{'MET' if target['met'] else 'MISSED'} "
        f"(judged on every transactional row)."
    )
    return lines


def _markdown(data: dict[str, Any], results: Sequence[PhaseResult]) -> str:
    from bench.report import markdown_table

    m, p = data["machine"], data["parameters"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    out = [
        f"# htapkv bench storage — {data['started_at']}",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}, "
        f"Python {m['python_version']}; {libs}. Data on {p['data_fs'] or 'unknown'} "
        f"filesystem. Concurrency {p['concurrency']}, seed {p['seed']}.",
        "",
        markdown_table(HEADERS, _rows(results)),
        "",
        "## Target",
        "",
        *(f"- {line}" for line in _target_lines(data["target"])),
        "",
        "Cost per key written = wall time / keys written. Ratio = that cost over the cost of "
        "a plain rocksdict single put: `durable=False` against `sync=off`, `durable=True` "
        "against `sync=on`; of the baseline's two runs (first and last), the faster is used. "
        "Latencies are per operation (a whole transaction for txn rows).",
    ]
    out += notes_section(results, data.get("warnings", []))
    return "\n".join(out) + "\n"


def _print_table(
    results: Sequence[PhaseResult], target: dict[str, Any], warnings: Sequence[str]
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = (
        Console(highlight=False) if sys.stdout.isatty() else Console(width=150, highlight=False)
    )
    table = Table(title="htapkv bench storage", title_justify="left")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for r, row in zip(results, _rows(results), strict=True):
        style = "red" if r.target_met is False else ("green" if r.target_met else None)
        table.add_row(*row, style=style)
    console.print(table)
    for line in _target_lines(target):
        console.print(line)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


# ---------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.progress import phase_progress
    from bench.report import (
        filesystem_type,
        machine_info,
        result_header,
        write_results,
    )

    ops: int = args.ops or (QUICK_OPS if args.quick else DEFAULT_OPS)
    sync_ops: int = args.sync_ops or max(1, ops // SYNC_DIVISOR)
    baseline_ops = ops * BASELINE_FACTOR
    started = datetime.now().astimezone()

    if args.data_dir:
        os.makedirs(args.data_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="htapkv-bench-storage-", dir=args.data_dir)
    data_fs = filesystem_type(base)
    warnings: list[str] = []
    if data_fs in ("tmpfs", "ramfs"):
        warnings.append(
            f"the databases are on {data_fs}: fsync costs nothing there, so the sync=on and "
            "durable=True rows do not reflect a disk (use --data-dir)"
        )
    load_start = load_average()
    if busy := busy_warning(load_start, "the CPUs and the disk"):
        warnings.append(busy)
    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    err.print(
        f"htapkv bench storage: ops={ops:,} (baseline {baseline_ops:,}, fsync phases "
        f"{sync_ops:,}), concurrency={args.concurrency}, data in {base}"
    )

    try:
        with phase_progress(err) as progress:
            b = _Bench(
                seed=args.seed, threads=args.concurrency, duration=args.duration, progress=progress
            )
            d = functools.partial(os.path.join, base)
            _bench_rocksdict(
                b, d("rocksdict-sync-off"), sync=False, put_ops=baseline_ops, get_ops=baseline_ops
            )
            _bench_rocksdict(b, d("rocksdict-sync-on"), sync=True, put_ops=sync_ops, get_ops=ops)
            _bench_htapkv(b, d("htapkv-nondurable"), durable=False, ops=ops, write_ops=ops)
            _bench_htapkv(b, d("htapkv-durable"), durable=True, ops=ops, write_ops=sync_ops)
            # The baselines again, in reverse order (see the module docstring).
            _bench_rocksdict(b, d("rocksdict-sync-on-2"), sync=True, put_ops=sync_ops, get_ops=0)
            _bench_rocksdict(
                b, d("rocksdict-sync-off-2"), sync=False, put_ops=baseline_ops, get_ops=0
            )
    finally:
        if args.keep_data:
            err.print(f"databases kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    warnings += b.apply_ratios()
    # Group the rows by system (the baselines' second runs join their first).
    systems = list(dict.fromkeys(r.system for r in b.results.values()))
    results = sorted(b.results.values(), key=lambda r: systems.index(r.system))
    target = _target_summary(results)
    data: dict[str, Any] = {
        **result_header("storage", started),
        "parameters": {
            "ops": ops,
            "sync_ops": sync_ops,
            "baseline_ops": baseline_ops,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "quick": args.quick,
            "key_bytes": 16,
            "value_bytes": VALUE_SIZE,
            "key_space": KEY_SPACE,
            "data_dir": base,
            "data_fs": data_fs,
        },
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": load_average()},
        "target": target,
        "results": [r.to_json() for r in results],
        "warnings": warnings,
    }
    json_path, md_path = write_results(args.output, "storage", data, _markdown(data, results))
    _print_table(results, target, warnings)
    print(f"results: {json_path}  {md_path}")
    return 0
