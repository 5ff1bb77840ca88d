"""``htapkv bench htap``: a CH-benCHmark-like mix, transactions and analytics
on the same tables at the same time, with SQLite beside it.

What runs, in one command, against one cluster (``kvstore.LocalCluster``:
1 PD, 3 stores, 1 columnar node in a temporary folder; or ``--pd ADDR``):

a. **Load.** ``bench.tpcc`` creates the TPC-C-like tables through SQL and
   fills ``--warehouses`` warehouses (timed).
b. **OLTP alone** for ``--duration`` seconds (or ``--ops`` transactions):
   ``--concurrency`` client threads, each with its own ``sql.Connection``
   over one shared cluster client, run the mix (45% New-Order, 45% Payment,
   10% Order-Status) through ``Connection.run_transaction`` (a conflict
   re-runs the whole function, with the same inputs, at a new start_ts).
   Per transaction: latency (retries included: what the client waits),
   attempts, and the outcome: committed, committed after retries, failed.
c. **OLTP + analytics**: the same load while ``--analytic-threads`` threads
   of a separate client process (as CH-benCHmark's analytic clients are
   separate from its terminals) run CH-benCHmark-style queries
   (:data:`QUERIES`) over the same tables, in a loop, routed to the
   columnar replica (checked once with ``EXPLAIN``; a query the row store
   answered instead is counted from
   ``cursor.warnings``). The columnar node's ``Columnar.Status`` is sampled
   every 0.25 s through both phases (the replica lag over time).
d. **Verify**: TPC-C's consistency conditions 1-4 (``tpcc.check_consistency``)
   and two ledger checks (orders = initial + committed New-Orders; sum of
   ``w_ytd`` = sum of committed Payment amounts). A violation is printed in
   red and the command exits with status 1.
e. **SQLite peer**: the same mix, threads and duration on a SQLite file (WAL,
   ``synchronous=FULL``: every commit is fsync'd, as a Raft commit is on a
   majority) through :class:`SqliteConnection`, then the same checks.

What "freshness" means here (the report says it too): an analytic read at
a fresh timestamp asks each Region's leader for its read index and waits
until the learner has applied up to it, so the snapshot a query sees is
never stale; being behind costs *time*, not correctness. We report that cost
two ways: the replica's lag as ``Columnar.Status`` shows it (how long the
learner has been behind the leader's commit index, max over Regions,
sampled every 0.25 s), and the analytic queries' latency (which includes the
wait).

Targets (the issue's, printed as met/missed, never asserted): OLTP
throughput loss at most 20% while analytics run; freshness p99 at most
200 ms; the mix at least half of SQLite's throughput at the same concurrency.

Output: a live line per phase (elapsed, transactions, rate, p50/p99) on
stderr, tables on stdout, and ``<output>/htap-<timestamp>.json`` / ``.md``
plus three PNGs (throughput over time, latency percentiles per transaction
type, replica lag over time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import tpcc
from bench.report import (
    add_run_flags,
    busy_warning,
    fmt,
    load_average,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    import sqlite3

    from rich.console import Console
    from rich.progress import Progress

    from kvstore import Client

DEFAULT_DURATION_S = 30.0
DEFAULT_CONCURRENCY = 4
DEFAULT_ANALYTIC_THREADS = 1
DEFAULT_WAREHOUSES = 2
QUICK_DURATION_S = 4.0
QUICK_WAREHOUSES = 1
# Sizes of the "moderate for 2 cores" load: 2 warehouses take ~6 s to fill.
DEFAULT_SCALE = tpcc.Scale()
QUICK_SCALE = tpcc.Scale(districts=4, customers=10, items=50, initial_orders=3)
STATUS_EVERY_S = 0.25
# How long the analytic process may take to finish its queries in flight.
ANALYTICS_STOP_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 0.5
SQLITE_BUSY_TIMEOUT_S = 30.0
MAX_RETRIES = 50

# The issue's targets.
TARGET_INTERFERENCE_PCT = 20.0
TARGET_FRESHNESS_P99_MS = 200.0
TARGET_VS_SQLITE = 0.5

# The mix (TPC-C's minimums for the three transactions we have, rescaled).
MIX: list[tuple[str, float]] = [("new_order", 0.45), ("payment", 0.45), ("order_status", 0.10)]
KINDS = [k for k, _ in MIX]
TX_FUNCS: dict[str, Callable[..., Any]] = {
    "new_order": tpcc.new_order,
    "payment": tpcc.payment,
    "order_status": tpcc.order_status,
}
LABELS = {"new_order": "New-Order", "payment": "Payment", "order_status": "Order-Status"}
SHORT = {"oltp": "htapkv", "oltp_analytics": "htapkv + analytics", "sqlite": "SQLite"}


@dataclass(frozen=True)
class Query:
    id: str
    label: str
    sql: str
    after: str  # what CH-benCHmark query it follows and what it leaves out


# CH-benCHmark's queries read columns our TPC-C-like schema does not have
# (delivery dates, carriers, the supplier/nation tables); each keeps the
# shape (tables, joins, grouping) and says what it drops.
QUERIES: list[Query] = [
    Query(
        "ch1",
        "CH-Q1",
        "SELECT ol_number, sum(ol_quantity) AS sum_qty, sum(ol_amount) AS sum_amount, "
        "avg(ol_quantity) AS avg_qty, avg(ol_amount) AS avg_amount, count(*) AS count_order "
        "FROM order_line GROUP BY ol_number ORDER BY ol_number",
        "CH-Q1: order lines grouped by ol_number; no ol_delivery_d filter (no such column)",
    ),
    Query(
        "ch4",
        "CH-Q4",
        "SELECT o_ol_cnt, count(*) AS order_count FROM orders "
        "JOIN new_order ON no_w_id = o_w_id AND no_d_id = o_d_id AND no_o_id = o_id "
        "JOIN district ON d_w_id = o_w_id AND d_id = o_d_id "
        "WHERE o_id >= d_next_o_id - 1000 GROUP BY o_ol_cnt ORDER BY o_ol_cnt",
        "CH-Q4: undelivered orders (orders x new_order x district) counted by o_ol_cnt; "
        "the recent-orders window is the last 1000 order ids per district instead of a "
        "date range, and EXISTS over order_line is a join with new_order",
    ),
    Query(
        "ch6",
        "CH-Q6",
        "SELECT sum(ol_amount) AS revenue, count(*) AS lines FROM order_line "
        "WHERE ol_quantity BETWEEN 1 AND 5",
        "CH-Q6: revenue of small-quantity lines; no delivery-date range",
    ),
    Query(
        "ch12",
        "CH-Q12",
        "SELECT o_ol_cnt, count(*) AS line_count, sum(ol_amount) AS amount FROM orders "
        "JOIN order_line ON ol_w_id = o_w_id AND ol_d_id = o_d_id AND ol_o_id = o_id "
        "GROUP BY o_ol_cnt ORDER BY o_ol_cnt",
        "CH-Q12: orders x order_line grouped by o_ol_cnt; no carrier split (no "
        "o_carrier_id), counts and sums the lines instead",
    ),
    Query(
        "ch_stock",
        "stock x item",
        "SELECT i_id, i_name, sum(s_order_cnt) AS ordered, sum(s_quantity) AS on_hand "
        "FROM stock JOIN item ON s_i_id = i_id WHERE i_price > 50 "
        "GROUP BY i_id, i_name ORDER BY ordered DESC, i_id LIMIT 10",
        "in the spirit of CH-Q11/Q20 (stock by item across warehouses, most ordered items); "
        "no supplier or nation",
    ),
]


# ---------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    p = sub.add_parser(
        "htap",
        help="CH-benCHmark-like: TPC-C-like transactions with and without analytics on the "
        "columnar replica, freshness, consistency; SQLite beside it",
        description=(
            "Load TPC-C-like tables, run New-Order/Payment/Order-Status from --concurrency "
            "threads alone, then again while CH-benCHmark-style queries run on the columnar "
            "replica; check TPC-C's consistency conditions; run the same mix on SQLite."
        ),
    )
    p.add_argument("--pd", metavar="ADDR", help="use a running cluster with a columnar node")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help=f"length of each OLTP phase (default {DEFAULT_DURATION_S:g}, "
        f"{QUICK_DURATION_S:g} with --quick)",
    )
    amount.add_argument(
        "--ops", type=positive_int, metavar="N", help="transactions per OLTP phase instead"
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"OLTP client threads (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument(
        "--analytic-threads",
        type=positive_int,
        default=DEFAULT_ANALYTIC_THREADS,
        help=f"threads running analytic queries in the mixed phase "
        f"(default {DEFAULT_ANALYTIC_THREADS})",
    )
    p.add_argument(
        "--warehouses",
        type=positive_int,
        help=f"TPC-C warehouses (default {DEFAULT_WAREHOUSES}, {QUICK_WAREHOUSES} with --quick)",
    )
    add_run_flags(
        p,
        seed_help="seed of the data and the mix (default 1)",
        data_dir_help="create the cluster and SQLite file under this folder (default: tmp)",
        quick_help=f"tiny run ({QUICK_WAREHOUSES} warehouse, small tables, {QUICK_DURATION_S:g} s "
        "phases): a smoke test",
        keep_data_help="do not delete the data afterwards",
    )
    p.set_defaults(func=run)


# ---------------------------------------------------------------- recording
@dataclass
class TxRecord:
    kind: str
    done_s: float  # when it ended, seconds since the phase started
    latency_ns: int
    attempts: int
    ok: bool
    amount: Decimal | float | None = None  # Payment: what it added to w_ytd


@dataclass
class PhaseResult:
    name: str
    label: str
    system: str
    seconds: float
    records: list[TxRecord]
    errors: list[str] = field(default_factory=list)

    def committed(self, kind: str | None = None) -> list[TxRecord]:
        return [r for r in self.records if r.ok and (kind is None or r.kind == kind)]

    @property
    def tps(self) -> float:
        return len(self.committed()) / self.seconds if self.seconds > 0 else 0.0

    def series(self) -> list[int]:
        """Committed transactions per whole second of the phase."""
        n = max(1, int(self.seconds + 0.999))
        out = [0] * n
        for r in self.committed():
            out[min(n - 1, int(r.done_s))] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        by_type = {}
        for kind in KINDS:
            rs = [r for r in self.records if r.kind == kind]
            ok = [r for r in rs if r.ok]
            by_type[kind] = {
                "label": LABELS[kind],
                "committed": len(ok),
                "committed_first_try": sum(1 for r in ok if r.attempts == 1),
                "committed_after_retries": sum(1 for r in ok if r.attempts > 1),
                "retries": sum(r.attempts - 1 for r in rs),
                "failed": len(rs) - len(ok),
                "tps": len(ok) / self.seconds if self.seconds > 0 else 0.0,
                "latency_ms": latency_ms([r.latency_ns for r in ok]),
            }
        ok = self.committed()
        return {
            "name": self.name,
            "label": self.label,
            "system": self.system,
            "seconds": self.seconds,
            "transactions": len(ok),
            "tps": self.tps,
            "committed_first_try": sum(1 for r in ok if r.attempts == 1),
            "committed_after_retries": sum(1 for r in ok if r.attempts > 1),
            "retries": sum(r.attempts - 1 for r in self.records),
            "failed": sum(1 for r in self.records if not r.ok),
            "first_errors": self.errors[:5],
            "latency_ms": latency_ms([r.latency_ns for r in ok]),
            "by_type": by_type,
            "tps_series": self.series(),
        }


def latency_ms(values_ns: Sequence[int] | Sequence[float], scale: float = 1e-6) -> dict[str, Any]:
    """p50/p90/p99/max/mean (nearest rank) in ms, plus the count."""
    from bench.report import percentile

    v = sorted(values_ns)
    if not v:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(v),
        "p50": percentile(v, 50) * scale,  # type: ignore[arg-type]
        "p90": percentile(v, 90) * scale,  # type: ignore[arg-type]
        "p99": percentile(v, 99) * scale,  # type: ignore[arg-type]
        "max": v[-1] * scale,
        "mean": statistics.fmean(v) * scale,
    }


# ---------------------------------------------------------------- the two systems
TxRunner = Callable[[Callable[[Any], Any]], tuple[Any, int]]
"""Runs ``fn(cursor)`` in a transaction until it commits; returns its result
and the number of attempts. Raises when it gives up."""


def htapkv_runner(client: Client) -> TxRunner:
    """A runner on its own ``sql.Connection`` over the shared ``client``."""
    import sql
    from sql.session import Session

    conn = sql.Connection(Session(client, autocommit=True))

    def run_tx(fn: Callable[[Any], Any]) -> tuple[Any, int]:
        calls = [0]

        def body(cur: Any) -> Any:
            calls[0] += 1
            return fn(cur)

        return conn.run_transaction(body, max_retries=MAX_RETRIES), calls[0]

    return run_tx


_FOR_UPDATE = re.compile(r"\s+FOR\s+UPDATE\s*$", re.IGNORECASE)


class SqliteCursor:
    """The DB-API subset ``bench.tpcc`` uses, on a ``sqlite3`` cursor: SQLite
    has no ``SELECT ... FOR UPDATE`` (``BEGIN IMMEDIATE`` already holds the
    one write lock, so dropping it loses nothing), no DECIMAL (values go in
    as text, the NUMERIC column affinity stores them as REAL), and Python
    3.12 deprecates its default datetime adapter (ISO text instead)."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, text: str, params: Sequence[Any] = ()) -> SqliteCursor:
        args = [
            str(v) if isinstance(v, Decimal) else v.isoformat(" ") if isinstance(v, datetime) else v
            for v in params
        ]
        self._cur.execute(_FOR_UPDATE.sub("", text), args)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cur.fetchone()
        return None if row is None else tuple(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._cur.fetchall()]


class SqliteConnection:
    """One SQLite connection per thread, in autocommit mode (we issue
    ``BEGIN IMMEDIATE`` / ``COMMIT`` ourselves), WAL, ``synchronous=FULL``."""

    def __init__(self, path: Path) -> None:
        import sqlite3

        self.db = sqlite3.connect(
            str(path),
            timeout=SQLITE_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")

    def cursor(self) -> SqliteCursor:
        return SqliteCursor(self.db.cursor())

    def settings(self) -> dict[str, Any]:
        return {
            "journal_mode": self.db.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                self.db.execute("PRAGMA synchronous").fetchone()[0]
            ),
        }

    def run_transaction(self, fn: Callable[[Any], Any]) -> tuple[Any, int]:
        """``BEGIN IMMEDIATE`` takes the write lock up front (waiting up to
        the busy timeout), so a transaction never fails half-way on a lock;
        "database is locked" past the timeout re-runs it."""
        import sqlite3

        for attempt in range(1, MAX_RETRIES + 2):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                out = fn(self.cursor())
                self.db.execute("COMMIT")
                return out, attempt
            except sqlite3.OperationalError as e:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        raise RuntimeError(f"SQLite: still locked after {MAX_RETRIES + 1} attempts")

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------- live display
def live_progress(console: Console) -> Progress:
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        refresh_per_second=4,
    )


def live_stats(records: Sequence[list[TxRecord]], elapsed: float) -> str:
    done = [r for rs in records for r in list(rs) if r.ok]
    lat = sorted(r.latency_ns for r in done)
    rate = len(done) / elapsed if elapsed > 0 else 0.0
    text = f"{len(done):>7,} tx  {rate:>8,.1f} tx/s"
    if lat:
        from bench.report import percentile

        text += (
            f"  p50 {percentile(lat, 50) / 1e6:,.1f} ms  p99 {percentile(lat, 99) / 1e6:,.1f} ms"
        )
    return text


# ---------------------------------------------------------------- one OLTP phase
@dataclass
class Budget:
    """When a phase ends: after ``seconds``, or after ``ops`` transactions."""

    seconds: float | None
    ops: int | None
    _taken: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        if self.ops is None:
            return True
        with self._lock:
            if self._taken >= self.ops:
                return False
            self._taken += 1
            return True


def run_oltp(
    name: str,
    label: str,
    system: str,
    runners: Sequence[TxRunner],
    budget: Budget,
    warehouses: int,
    scale: tpcc.Scale,
    seed: int,
    progress: Progress,
    on_start: Callable[[], None] | None = None,
) -> PhaseResult:
    """The mix from one thread per runner until the budget is spent."""
    stop = threading.Event()
    records: list[list[TxRecord]] = [[] for _ in runners]
    errors: list[str] = []
    start = time.perf_counter()
    weights = [w for _, w in MIX]

    def worker(i: int, run_tx: TxRunner) -> None:
        rng = random.Random(f"{seed}/{name}/{i}")
        mine = records[i]
        clock = time.perf_counter_ns
        while not stop.is_set() and budget.take():
            kind = rng.choices(KINDS, weights)[0]
            # One seed per logical transaction: a retry re-runs the same
            # district, customer and items (TPC-C's inputs), not new ones.
            tx_seed = rng.getrandbits(64)
            fn = TX_FUNCS[kind]

            def body(cur: Any, fn: Callable[..., Any] = fn, tx_seed: int = tx_seed) -> Any:
                return fn(cur, random.Random(tx_seed), warehouses, scale)

            t0 = clock()
            try:
                out, attempts = run_tx(body)
                ok = True
            except Exception as e:  # counted as failed (outcome unknown), reported
                out, attempts, ok = None, MAX_RETRIES + 1, False
                if len(errors) < 20:
                    errors.append(f"{LABELS[kind]}: {type(e).__name__}: {e}")
            t1 = clock()
            mine.append(
                TxRecord(
                    kind,
                    (t1 / 1e9) - start,
                    t1 - t0,
                    attempts,
                    ok,
                    out if kind == "payment" and ok else None,
                )
            )

    # The phase ends when the last worker does: transactions in flight at
    # the deadline finish and count, and so does the time they took.
    running = [len(runners)]
    finished = threading.Event()
    ended = [start]
    mu = threading.Lock()

    def thread_main(i: int, run_tx: TxRunner) -> None:
        try:
            worker(i, run_tx)
        finally:
            with mu:
                running[0] -= 1
                ended[0] = max(ended[0], time.perf_counter())
                if running[0] == 0:
                    finished.set()

    threads = [
        threading.Thread(target=thread_main, args=(i, r), name=f"{name}-{i}", daemon=True)
        for i, r in enumerate(runners)
    ]
    task = progress.add_task(label, stats="")
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    for t in threads:
        t.start()
    deadline = start + budget.seconds if budget.seconds is not None else None
    while True:
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            stop.set()
        progress.update(task, stats=live_stats(records, now - start))
        wait = PROGRESS_EVERY_S
        if deadline is not None and not stop.is_set():
            wait = min(wait, deadline - now)
        if finished.wait(max(0.01, wait)):
            break
    for t in threads:
        t.join()
    seconds = ended[0] - start
    progress.update(task, stats=live_stats(records, seconds))
    progress.stop_task(task)
    return PhaseResult(name, label, system, seconds, [r for rs in records for r in rs], errors)


# ---------------------------------------------------------------- analytics
@dataclass
class QueryStats:
    query: Query
    engines: str = ""
    latencies_ns: list[int] = field(default_factory=list)
    fallbacks: int = 0  # runs a scan of which the row store answered
    errors: int = 0
    first_error: str | None = None
    rows: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.query.id,
            "label": self.query.label,
            "sql": self.query.sql,
            "after": self.query.after,
            "engines": self.engines,
            "routed_columnar": self.engines == "columnar",
            "runs": len(self.latencies_ns),
            "fallbacks": self.fallbacks,
            "errors": self.errors,
            "first_error": self.first_error,
            "rows": self.rows,
            "latency_ms": latency_ms(self.latencies_ns),
        }


def plan_engines(conn: Any, text: str) -> str:
    """The engines ``EXPLAIN`` routes the query's table scans to
    (``columnar``, ``row`` or ``columnar+row``)."""
    plan = [r[0] for r in conn.cursor().execute("EXPLAIN " + text).fetchall()]
    used = sorted({e for line in plan for e in ("columnar", "row") if f"[{e}" in line})
    return "+".join(used) or "?"


class Analytics:
    """``threads`` loops over :data:`QUERIES` (each thread starting at a
    different query), each query its own autocommit statement: a fresh
    start_ts, so each run reads the newest snapshot.

    They run in a client process of their own (:func:`analytics_child`), as
    CH-benCHmark's analytic clients are separate from its terminals: in the
    OLTP process they would share its interpreter lock, and the
    interference measured would be the benchmark's, not the database's."""

    def __init__(self, pd: str, threads: int, stats: dict[str, QueryStats], log: Path) -> None:
        self.pd, self.n, self.stats, self.log = pd, threads, stats, log
        self.proc: subprocess.Popen[str] | None = None
        self.pid: int | None = None  # of the last process started

    def start(self) -> None:
        """Start the analytic process; return once it runs queries."""
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.htap", "--analytics-child", self.pd, str(self.n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready", once connected
        if line.strip() != "ready":
            self.finish(collect=False)
            raise RuntimeError(f"the analytic client process did not start: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return " | ".join(lines[-3:]) or "no output"

    def finish(self, collect: bool = True) -> None:
        """Stop after the queries in flight (their times count) and collect
        what the process measured."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            out, _ = proc.communicate(input="", timeout=ANALYTICS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"the analytic client process did not stop in {ANALYTICS_STOP_TIMEOUT_S} s"
            ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not collect:
            return
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"the analytic client process failed: {self._log_tail()}")
        for qid, got in json.loads(out).items():
            s = self.stats[qid]
            s.latencies_ns.extend(got["latencies_ns"])
            s.fallbacks += got["fallbacks"]
            s.errors += got["errors"]
            s.first_error = s.first_error or got["first_error"]
            s.rows = got["rows"] if got["rows"] is not None else s.rows


def analytics_child(pd: str, threads: int) -> None:
    """The analytic client process: prints ``ready``, runs the queries on
    ``threads`` threads until its stdin closes, then prints what it
    measured as JSON (query id -> latencies, fallbacks, errors, rows)."""
    import kvstore
    import sql
    from sql.session import Session

    client = kvstore.connect(pd, lock_wait_timeout=30.0)
    stop = threading.Event()
    lock = threading.Lock()
    got: dict[str, dict[str, Any]] = {
        q.id: {"latencies_ns": [], "fallbacks": 0, "errors": 0, "first_error": None, "rows": None}
        for q in QUERIES
    }

    def loop(i: int) -> None:
        conn = sql.Connection(Session(client, autocommit=True))
        k = i
        while not stop.is_set():
            q = QUERIES[k % len(QUERIES)]
            k += 1
            s = got[q.id]
            t0 = time.perf_counter_ns()
            try:
                cur = conn.cursor().execute(q.sql)
                rows = len(cur.fetchall())
            except Exception as e:  # counted and reported; the others go on
                with lock:
                    s["errors"] += 1
                    s["first_error"] = s["first_error"] or f"{type(e).__name__}: {e}"
                continue
            dt = time.perf_counter_ns() - t0
            with lock:
                s["latencies_ns"].append(dt)
                s["rows"] = rows
                if any("row store" in w for w in cur.warnings):
                    s["fallbacks"] += 1

    workers = [
        threading.Thread(target=loop, args=(i,), name=f"analytic-{i}", daemon=True)
        for i in range(threads)
    ]
    try:
        for t in workers:
            t.start()
        print("ready", flush=True)
        sys.stdin.read()  # until the parent closes it
        stop.set()
        for t in workers:
            t.join()
        print(json.dumps(got), flush=True)
    finally:
        client.close()


class LagSampler:
    """``Columnar.Status`` every :data:`STATUS_EVERY_S` s, labelled with the
    phase it falls in."""

    def __init__(self, client: Client) -> None:
        from bench.columnar import columnar_status

        self.sample = columnar_status(client)
        self.samples: list[dict[str, Any]] = []
        self.phase = "load"
        self.t0 = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="columnar-status", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(STATUS_EVERY_S):
            s = self.sample()
            if s is not None:
                self.samples.append(
                    {"phase": self.phase, "t_s": round(time.perf_counter() - self.t0, 3), **s}
                )

    def __enter__(self) -> LagSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for ch in getattr(self.sample, "channels", []):
            ch.close()

    def summary(self, phase: str) -> dict[str, Any]:
        ss = [s for s in self.samples if s["phase"] == phase]
        ms = sorted(s["lag_ms"] for s in ss)
        from bench.report import percentile

        return {
            "samples": len(ss),
            "lag_ms_p50": percentile(ms, 50) if ms else None,
            "lag_ms_p99": percentile(ms, 99) if ms else None,
            "lag_ms_max": ms[-1] if ms else None,
            "lag_entries_max": max((s["lag_entries"] for s in ss), default=None),
            "behind_share": (sum(1 for s in ss if s["lag_entries"] > 0) / len(ss)) if ss else None,
        }


# ---------------------------------------------------------------- verify
def ledger_checks(
    cur: Any,
    phases: Sequence[PhaseResult],
    warehouses: int,
    scale: tpcc.Scale,
) -> dict[str, Any]:
    """What the committed transactions say the tables must hold: no
    New-Order lost or doubled, every committed Payment counted once. Only
    conclusive when no transaction failed (a failed commit's outcome is
    unknown: it may have been applied)."""
    failed = sum(1 for p in phases for r in p.records if not r.ok)
    new_orders = sum(len(p.committed("new_order")) for p in phases)
    paid = sum(
        (Decimal(str(r.amount)) for p in phases for r in p.committed("payment") if r.amount),
        Decimal(0),
    )
    want_orders = warehouses * scale.districts * scale.initial_orders + new_orders
    (orders,) = cur.execute("SELECT count(*) FROM orders").fetchone()
    (ytd,) = cur.execute("SELECT sum(w_ytd) FROM warehouse").fetchone()
    violations = []
    if failed == 0:
        if orders != want_orders:
            violations.append(
                f"ledger: {orders} orders, expected {want_orders} "
                f"(initial + {new_orders} committed New-Orders)"
            )
        if tpcc.cents(ytd) != tpcc.cents(paid):
            violations.append(f"ledger: sum(w_ytd) {ytd} != committed payments {paid}")
    return {
        "orders": int(orders),
        "expected_orders": want_orders,
        "w_ytd_sum": str(ytd),
        "committed_payments": str(paid),
        "conclusive": failed == 0,
        "violations": violations,
    }


def verify(
    conn: Any,
    phases: Sequence[PhaseResult],
    warehouses: int,
    scale: tpcc.Scale,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        tpcc_bad = tpcc.check_consistency(conn)
        ledger = ledger_checks(conn.cursor(), phases, warehouses, scale)
    except Exception as e:  # a check that cannot run is a failed check
        return {
            "ok": False,
            "violations": [f"the check itself failed: {type(e).__name__}: {e}"],
            "seconds": time.perf_counter() - t0,
        }
    bad = tpcc_bad + ledger["violations"]
    return {
        "ok": not bad,
        "violations": bad,
        "tpcc_conditions": "1-4",
        "ledger": ledger,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------- clusters
@contextlib.contextmanager
def open_cluster(pd: str | None, base: Path, info: dict[str, Any]) -> Iterator[Client]:
    import kvstore

    if pd:
        addrs = [a.strip() for a in pd.split(",") if a.strip()]
        client = kvstore.connect(addrs, lock_wait_timeout=30.0)
        info["description"] = f"cluster at PD {', '.join(addrs)} (kvstore.connect)"
        info["pd"] = ",".join(addrs)
        try:
            yield client
        finally:
            client.close()
        return
    with kvstore.LocalCluster(
        str(base / "htapkv-cluster"), pd=1, stores=3, columnar=1, startup_timeout=120
    ) as cluster:
        info["description"] = (
            "local cluster: 1 PD, 3 stores (3-way Raft replication, fsync'd log), "
            "1 columnar node (kvstore.LocalCluster)"
        )
        info["processes"] = [
            {"name": p.name, "role": p.role, "pid": p.pid} for p in cluster.processes()
        ]
        info["pd"] = ",".join(cluster.pd_addrs)
        client = cluster.connect(lock_wait_timeout=30.0)
        try:
            yield client
        finally:
            client.close()


# ---------------------------------------------------------------- the htapkv part
def run_htapkv(
    args: argparse.Namespace,
    base: Path,
    budget_for: Callable[[], Budget],
    warehouses: int,
    scale: tpcc.Scale,
    progress: Progress,
    out: dict[str, Any],
) -> list[PhaseResult]:
    """Phases a-d; fills ``out`` as it goes (so a failure keeps what ran)."""
    import sql
    from sql.session import Session

    info: dict[str, Any] = {}
    phases: list[PhaseResult] = []
    say = progress.console.print
    with open_cluster(args.pd, base, info) as client:
        out["cluster"] = info
        if client.columnar is None:
            raise SystemExit("htapkv bench htap: the cluster has no columnar node")
        conn = sql.Connection(Session(client, autocommit=True))
        try:
            conn.cursor().execute("SELECT count(*) FROM warehouse")
        except sql.ProgrammingError:
            pass  # no such table: a fresh cluster, as wanted
        else:
            raise SystemExit(
                "htapkv bench htap: the cluster already has TPC-C tables (a previous run): "
                "use a fresh cluster"
            )
        t0 = time.perf_counter()
        tpcc.create(conn)
        tpcc.populate(conn, warehouses, scale, seed=args.seed)
        load_s = time.perf_counter() - t0
        # The replica catches up before the clock starts (untimed).
        t0 = time.perf_counter()
        for q in QUERIES:
            conn.cursor().execute(q.sql).fetchall()
        out["load"] = {"seconds": load_s, "replica_caught_up_s": time.perf_counter() - t0}
        say(f"loaded {warehouses} warehouse(s) through SQL in {load_s:.1f} s")
        out["load_average"]["after_load"] = load_average()
        stats = {q.id: QueryStats(q) for q in QUERIES}
        for q in QUERIES:
            stats[q.id].engines = plan_engines(conn, q.sql)

        def runners() -> list[TxRunner]:
            return [htapkv_runner(client) for _ in range(args.concurrency)]

        with LagSampler(client) as lag:
            lag.phase = "oltp"
            phases.append(
                run_oltp(
                    "oltp",
                    "htapkv OLTP alone",
                    "htapkv",
                    runners(),
                    budget_for(),
                    warehouses,
                    scale,
                    args.seed,
                    progress,
                )
            )
            lag.phase = "oltp_analytics"
            analytics = Analytics(
                info["pd"], args.analytic_threads, stats, base / "analytics-client.log"
            )
            try:
                phases.append(
                    run_oltp(
                        "oltp_analytics",
                        f"htapkv OLTP + {args.analytic_threads} analytic",
                        "htapkv",
                        runners(),
                        budget_for(),
                        warehouses,
                        scale,
                        args.seed,
                        progress,
                        on_start=analytics.start,
                    )
                )
            finally:
                analytics.finish()
                out["analytics_pid"] = analytics.pid
            lag.phase = "verify"
        out["analytics"] = [s.to_json() for s in stats.values()]
        out["lag_samples"] = lag.samples
        out["freshness"] = {
            "oltp": lag.summary("oltp"),
            "oltp_analytics": lag.summary("oltp_analytics"),
        }
        out["load_average"]["after_htapkv"] = load_average()
        say("verifying the TPC-C consistency conditions on htapkv")
        out["verify"]["htapkv"] = verify(conn, phases, warehouses, scale)
        conn.close()
    return phases


# ---------------------------------------------------------------- the SQLite peer
SQLITE_HINT = (
    "SQLite comes with Python (the sqlite3 module); on a Python built without it: "
    "`sudo apt-get install libsqlite3-dev` and rebuild Python, or use the distribution's python3"
)


def run_sqlite(
    args: argparse.Namespace,
    base: Path,
    budget_for: Callable[[], Budget],
    warehouses: int,
    scale: tpcc.Scale,
    progress: Progress,
    out: dict[str, Any],
) -> PhaseResult | None:
    say = progress.console.print
    try:
        import sqlite3
    except ImportError as e:
        out["sqlite"] = {"available": False, "error": str(e), "hint": SQLITE_HINT}
        say(f"[yellow]SQLite peer skipped:[/yellow] {e}. {SQLITE_HINT}")
        return None
    path = base / "sqlite" / "tpcc.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    conns: list[SqliteConnection] = []
    try:
        setup = SqliteConnection(path)
        conns.append(setup)
        t0 = time.perf_counter()
        # The same DDL and rows as htapkv's (SQLite takes the types by affinity).
        setup.run_transaction(lambda cur: [cur.execute(s) for s in tpcc.SCHEMA])
        setup.run_transaction(
            lambda cur: tpcc.populate(_CursorConn(cur), warehouses, scale, seed=args.seed)
        )
        load_s = time.perf_counter() - t0
        say(f"SQLite {sqlite3.sqlite_version}: loaded in {load_s:.1f} s ({path})")
        workers = [SqliteConnection(path) for _ in range(args.concurrency)]
        conns.extend(workers)
        phase = run_oltp(
            "sqlite",
            "SQLite OLTP alone",
            "sqlite",
            [w.run_transaction for w in workers],
            budget_for(),
            warehouses,
            scale,
            args.seed,
            progress,
        )
        out["sqlite"] = {
            "available": True,
            "version": sqlite3.sqlite_version,
            "file": str(path),
            "settings": setup.settings(),
            "load_seconds": load_s,
        }
        out["verify"]["sqlite"] = verify(setup, [phase], warehouses, scale)
        return phase
    except Exception as e:  # the peer failing must not lose htapkv's results
        out["sqlite"] = {"available": False, "error": f"{type(e).__name__}: {e}", "hint": None}
        say(f"[yellow]SQLite peer failed:[/yellow] {type(e).__name__}: {e}")
        return None
    finally:
        for c in conns:
            c.close()


class _CursorConn:
    """A connection-like wrapper around one cursor, for ``tpcc.populate``
    (which asks its connection for a cursor) inside one SQLite transaction."""

    def __init__(self, cur: SqliteCursor) -> None:
        self._cur = cur

    def cursor(self) -> SqliteCursor:
        return self._cur


# ---------------------------------------------------------------- summary
def summarize(data: dict[str, Any]) -> dict[str, Any]:
    ph = data["phases"]
    alone = ph.get("oltp", {}).get("tps")
    mixed = ph.get("oltp_analytics", {}).get("tps")
    sqlite_tps = ph.get("sqlite", {}).get("tps")
    loss = (1 - mixed / alone) * 100 if alone and mixed is not None else None
    fresh = (data.get("freshness") or {}).get("oltp_analytics") or {}
    p99 = fresh.get("lag_ms_p99")
    ratio = alone / sqlite_tps if alone is not None and sqlite_tps else None
    queries = data.get("analytics") or []
    return {
        "tps_alone": alone,
        "tps_with_analytics": mixed,
        "interference_pct": loss,
        "freshness_p99_ms": p99,
        "freshness_p50_ms": fresh.get("lag_ms_p50"),
        "analytic_runs": sum(q["runs"] for q in queries),
        "analytic_fallbacks": sum(q["fallbacks"] for q in queries),
        "sqlite_tps": sqlite_tps,
        "ratio_vs_sqlite": ratio,
        "consistent": all(v.get("ok") for v in data["verify"].values()) and bool(data["verify"]),
    }


def targets(s: dict[str, Any]) -> dict[str, Any]:
    def verdict(value: float | None, ok: Callable[[float], bool]) -> bool | None:
        return None if value is None else ok(value)

    t = {
        "interference": {
            "statement": "OLTP throughput loss while analytics run <= 20%",
            "value": s["interference_pct"],
            "needed": f"<= {TARGET_INTERFERENCE_PCT:g}%",
            "met": verdict(s["interference_pct"], lambda v: v <= TARGET_INTERFERENCE_PCT),
        },
        "freshness": {
            "statement": "replica lag p99 (Columnar.Status, while analytics run) <= 200 ms",
            "value": s["freshness_p99_ms"],
            "needed": f"<= {TARGET_FRESHNESS_P99_MS:g} ms",
            "met": verdict(s["freshness_p99_ms"], lambda v: v <= TARGET_FRESHNESS_P99_MS),
        },
        "vs_sqlite": {
            "statement": "TPC-C-like mix >= 0.5x SQLite's tx/s (same concurrency, 3-way "
            "replication on)",
            "value": s["ratio_vs_sqlite"],
            "needed": f">= {TARGET_VS_SQLITE:g}x",
            "met": verdict(s["ratio_vs_sqlite"], lambda v: v >= TARGET_VS_SQLITE),
        },
    }
    mets = [v["met"] for v in t.values()]
    t["met"] = None if None in mets else all(mets)  # type: ignore[assignment]
    return t


def _ms(x: float | None, spec: str = ",.1f") -> str:
    return fmt(x, spec)


def _verdict(met: bool | None) -> str:
    return {True: "MET", False: "MISSED", None: "-"}[met]


def throughput_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["phase", "tx/s", "tx", "retried", "retries", "failed", "p50 ms", "p99 ms"]
    rows = []
    for p in data["phases"].values():
        rows.append(
            [
                p["label"],
                fmt(p["tps"], ",.1f"),
                fmt(p["transactions"], ",d"),
                fmt(p["committed_after_retries"], ",d"),
                fmt(p["retries"], ",d"),
                fmt(p["failed"], ",d"),
                _ms(p["latency_ms"]["p50"]),
                _ms(p["latency_ms"]["p99"]),
            ]
        )
    return headers, rows


def per_type_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["phase", "transaction", "tx/s", "committed", "retried", "failed", "p50 ms", "p99 ms"]
    rows = []
    for p in data["phases"].values():
        for t in p["by_type"].values():
            rows.append(
                [
                    p["label"],
                    t["label"],
                    fmt(t["tps"], ",.1f"),
                    fmt(t["committed"], ",d"),
                    fmt(t["committed_after_retries"], ",d"),
                    fmt(t["failed"], ",d"),
                    _ms(t["latency_ms"]["p50"]),
                    _ms(t["latency_ms"]["p99"]),
                ]
            )
    return headers, rows


def analytics_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["query", "engines (EXPLAIN)", "runs", "fallbacks", "errors", "p50 ms", "p99 ms"]
    rows = []
    for q in data.get("analytics") or []:
        rows.append(
            [
                q["label"],
                q["engines"],
                fmt(q["runs"], ",d"),
                fmt(q["fallbacks"], ",d"),
                fmt(q["errors"], ",d"),
                _ms(q["latency_ms"]["p50"]),
                _ms(q["latency_ms"]["p99"]),
            ]
        )
    return headers, rows


def freshness_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["phase", "samples", "lag p50 ms", "lag p99 ms", "max ms", "max entries", "behind"]
    rows = []
    for name, f in (data.get("freshness") or {}).items():
        rows.append(
            [
                data["phases"].get(name, {}).get("label", name),
                fmt(f["samples"], ",d"),
                _ms(f["lag_ms_p50"]),
                _ms(f["lag_ms_p99"]),
                _ms(f["lag_ms_max"]),
                fmt(f["lag_entries_max"], ",.0f"),
                fmt(None if f["behind_share"] is None else f["behind_share"] * 100, ".0f") + "%",
            ]
        )
    return headers, rows


def target_table(t: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for key, unit in (("interference", "%"), ("freshness", " ms"), ("vs_sqlite", "x")):
        v = t[key]
        spec = ".3g" if key == "vs_sqlite" else ".1f"
        value = "-" if v["value"] is None else f"{v['value']:{spec}}{unit}"
        rows.append([v["statement"], value, v["needed"], _verdict(v["met"])])
    return ["target", "value", "needed", "verdict"], rows


FRESHNESS_TEXT = (
    "Freshness: an analytic query reads at a fresh TSO timestamp; for each Region the "
    "columnar node asks the leader for its read index and waits until the learner has "
    "applied up to it, so the snapshot a query sees is never stale (0 ms old at its "
    "timestamp). Falling behind costs time instead: it shows as the replica lag below "
    "(`Columnar.Status`: how long the learner has been behind the leader's commit index as "
    "it last heard it, max over Regions, sampled every 0.25 s; a lag shorter than the "
    "sampling period can be missed or under-counted) and inside the analytic queries' "
    "latency, which includes the wait."
)


def build_notes(data: dict[str, Any]) -> list[str]:
    p = data["parameters"]
    notes = [
        f"Mix: {', '.join(f'{LABELS[k]} {w:.0%}' for k, w in MIX)}, chosen per transaction "
        f"from --seed; {p['concurrency']} client threads, each with its own sql.Connection "
        "over one shared cluster client (no think time). Latency is what the client waits for "
        "one transaction, retries included; 'retried' counts transactions that committed after "
        "re-running (a write conflict re-runs the whole function with the same inputs at a new "
        "start_ts); 'failed' ones gave up or hit an error (outcome unknown).",
        f"Data: {p['warehouses']} warehouse(s), {p['scale']['districts']} districts each, "
        f"{p['scale']['customers']} customers per district, {p['scale']['items']} items, "
        f"{p['scale']['initial_orders']} initial orders per district (TPC-C: 3,000 customers, "
        "100,000 items). The tables grow during the run (New-Orders), so the second phase "
        "starts with more rows than the first.",
        FRESHNESS_TEXT,
        "Analytic queries: CH-benCHmark-shaped over the TPC-C-like schema (what each one "
        "drops is in the JSON, key `after`); each run is one autocommit statement at a fresh "
        "timestamp; 'fallbacks' counts runs where a scan was answered by the row store "
        "(`cursor.warnings`).",
        "SQLite: the same schema, rows, mix, threads and duration, one connection per thread, "
        "WAL journal with synchronous=FULL (each commit fsync'd, as htapkv fsyncs its Raft log "
        "on a majority), BEGIN IMMEDIATE (SQLite has one writer; FOR UPDATE is dropped, "
        "DECIMAL values are stored as REAL, money compared to the cent). One process, no "
        "replication, no network: the single-node baseline the issue asks for.",
        "Order of phases: htapkv OLTP alone, then htapkv OLTP + analytics, then SQLite (after "
        "the cluster stopped, so it had the machine to itself).",
    ]
    for q in data.get("analytics") or []:
        if q["engines"] != "columnar":
            notes.append(
                f"WARNING: {q['label']} is routed to '{q['engines']}' by EXPLAIN, not only "
                "the columnar replica"
            )
        if q["fallbacks"]:
            notes.append(
                f"WARNING: {q['label']}: {q['fallbacks']} of {q['runs']} runs were answered "
                "(at least partly) by the row store: the replica was not ready"
            )
        if q["errors"]:
            notes.append(f"{q['label']}: {q['errors']} errors, first: {q['first_error']}")
    for ph in data["phases"].values():
        for e in ph["first_errors"]:
            notes.append(f"{ph['label']}: {e}")
    ledger = (data["verify"].get("htapkv") or {}).get("ledger") or {}
    if ledger and not ledger.get("conclusive"):
        notes.append(
            "The ledger checks (orders, payments) were skipped: some transactions failed with "
            "an unknown outcome."
        )
    return notes


def render_markdown(data: dict[str, Any]) -> str:
    from bench.report import markdown_table

    m, p, s = data["machine"], data["parameters"], data["summary"]
    la = data["load_average"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    sq = data.get("sqlite") or {}
    out = [
        f"# htapkv bench htap — {data['started_at']}",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}, Python "
        f"{m['python_version']}; {libs}. Load average at start {la.get('start')}, after the "
        f"load {la.get('after_load')}, at end {la.get('end')}. htapkv: "
        f"{data.get('htapkv_target')}. SQLite: "
        + (
            f"{sq.get('version')} ({sq.get('settings')})"
            if sq.get("available")
            else f"not run ({sq.get('error')})"
        ),
        "",
        f"Load: {p['warehouses']} warehouse(s) in {fmt(data['load'].get('seconds'), '.1f')} s. "
        f"Each OLTP phase: "
        + (f"{p['duration_s']:g} s" if p["duration_s"] else f"{p['ops']:,} transactions")
        + f", {p['concurrency']} threads; {p['analytic_threads']} analytic thread(s).",
        "",
        f"**OLTP alone {fmt(s['tps_alone'], ',.1f')} tx/s; with analytics "
        f"{fmt(s['tps_with_analytics'], ',.1f')} tx/s (loss {fmt(s['interference_pct'], '.1f')}%); "
        f"SQLite {fmt(s['sqlite_tps'], ',.1f')} tx/s (htapkv/SQLite "
        f"{fmt(s['ratio_vs_sqlite'], '.3g')}x); freshness p99 "
        f"{fmt(s['freshness_p99_ms'], ',.1f')} ms; consistency: "
        f"{'ok' if s['consistent'] else 'VIOLATED'}.**",
        "",
        "## Transactions",
        "",
        markdown_table(*throughput_table(data)),
        "",
        markdown_table(*per_type_table(data)),
        "",
        "## Analytic queries (during the mixed phase)",
        "",
        markdown_table(*analytics_table(data)),
        "",
        "## Freshness",
        "",
        markdown_table(*freshness_table(data)),
        "",
        "## Consistency",
        "",
    ]
    for system, v in data["verify"].items():
        verdict = "ok" if v.get("ok") else "**VIOLATED**"
        out.append(f"- {system}: TPC-C conditions 1-4 and the ledger checks: {verdict}")
        out.extend(f"  - {b}" for b in v.get("violations", []))
    out += ["", "## Targets", "", markdown_table(*target_table(data["target"])), ""]
    for key, title in (
        ("throughput", "throughput over time"),
        ("latency", "latency per transaction type"),
        ("lag", "replica lag over time"),
    ):
        if data.get("plots", {}).get(key):
            out += [f"![{title}]({data['plots'][key]})", ""]
    notes = [*data["notes"], *data["warnings"]]
    if notes:
        out += ["## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n"


def print_tables(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = (
        Console(highlight=False) if sys.stdout.isatty() else Console(width=200, highlight=False)
    )

    def show(title: str, headers: list[str], rows: list[list[str]]) -> None:
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(headers):
            t.add_column(h, justify="left" if i < 2 else "right")
        for row in rows:
            t.add_row(*row, style={"MET": "green", "MISSED": "red"}.get(row[-1]))
        console.print(t)

    show("htapkv bench htap: transactions", *throughput_table(data))
    show("per transaction type", *per_type_table(data))
    show("analytic queries (mixed phase)", *analytics_table(data))
    show("replica lag (Columnar.Status)", *freshness_table(data))
    show("targets", *target_table(data["target"]))
    for system, v in data["verify"].items():
        if v.get("ok"):
            console.print(f"[green]consistency ({system}): ok[/green]")
        else:
            console.print(f"[bold red]CONSISTENCY VIOLATED ({system}):[/bold red]")
            for b in v.get("violations", []):
                console.print(f"[red]  {b}[/red]")
    for n in data["notes"]:
        if n.startswith("WARNING"):
            console.print(f"[yellow]{n}[/yellow]")
    for w in data["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")


# ---------------------------------------------------------------- plots
def plot_all(stem: Path, data: dict[str, Any]) -> dict[str, str]:
    """Three PNGs next to the JSON; their file names (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out: dict[str, str] = {}
    phases = data["phases"]

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for p in phases.values():
        series = p["tps_series"]
        ax.step(range(len(series)), series, where="post", label=f"{p['label']} ({p['tps']:.1f}/s)")
    ax.set_xlabel("seconds into the phase")
    ax.set_ylabel("committed tx/s (1 s buckets)")
    ax.set_yscale("symlog")
    ax.set_title("TPC-C-like mix: throughput over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = stem.with_name(stem.name + "-throughput.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out["throughput"] = path.name

    fig, ax = plt.subplots(figsize=(12, 4.5))
    labels, p50s, p99s = [], [], []
    for p in phases.values():
        for t in p["by_type"].values():
            if t["latency_ms"]["p50"] is None:
                continue
            labels.append(f"{t['label']}\n{SHORT.get(p['name'], p['name'])}")
            p50s.append(t["latency_ms"]["p50"])
            p99s.append(t["latency_ms"]["p99"])
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50s, 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99s, 0.4, label="p99")
    ax.set_xticks(list(xs), labels, fontsize="x-small")
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("latency per transaction type (retries included)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = stem.with_name(stem.name + "-latency.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out["latency"] = path.name

    samples = data.get("lag_samples") or []
    if samples:
        fig, ax = plt.subplots(figsize=(9, 4))
        for phase, label in (("oltp", "OLTP alone"), ("oltp_analytics", "OLTP + analytics")):
            ss = [s for s in samples if s["phase"] == phase]
            ax.plot([s["t_s"] for s in ss], [s["lag_ms"] for s in ss], ".", ms=3, label=label)
        ax.axhline(TARGET_FRESHNESS_P99_MS, color="red", ls="--", lw=1, label="target p99")
        ax.set_xlabel("seconds since the load ended")
        ax.set_ylabel("ms behind (max over Regions)")
        ax.set_title("columnar replica lag (Columnar.Status, every 0.25 s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = stem.with_name(stem.name + "-lag.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out["lag"] = path.name
    return out


# ---------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.report import (
        filesystem_type,
        machine_info,
        result_header,
        write_results,
    )

    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
    warehouses = args.warehouses or (QUICK_WAREHOUSES if args.quick else DEFAULT_WAREHOUSES)
    scale = QUICK_SCALE if args.quick else DEFAULT_SCALE
    duration = None if args.ops else (args.duration or (QUICK_DURATION_S if args.quick else None))
    duration = duration or (None if args.ops else DEFAULT_DURATION_S)

    def budget_for() -> Budget:
        return Budget(duration, args.ops)

    started = datetime.now().astimezone()
    if args.data_dir:
        os.makedirs(args.data_dir, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="htapkv-bench-htap-", dir=args.data_dir))
    warnings: list[str] = []
    start_load = load_average()
    if busy := busy_warning(start_load):
        warnings.append(busy)
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    err.print(
        f"htapkv bench htap: {warehouses} warehouse(s), {args.concurrency} OLTP threads, "
        f"{args.analytic_threads} analytic, "
        + (f"{duration:g} s per phase" if duration else f"{args.ops:,} transactions per phase")
        + f"; data in {base}"
    )
    out: dict[str, Any] = {"load_average": {"start": start_load}, "verify": {}, "load": {}}
    phases: list[PhaseResult] = []
    failure: str | None = None
    try:
        with live_progress(err) as progress:
            try:
                phases += run_htapkv(args, base, budget_for, warehouses, scale, progress, out)
            except SystemExit:
                raise
            except Exception as e:  # reported with what ran; the peer still runs
                failure = f"htapkv run failed: {type(e).__name__}: {e}"
                err.print(f"[bold red]{failure}[/bold red]")
            sq = run_sqlite(args, base, budget_for, warehouses, scale, progress, out)
            if sq is not None:
                phases.append(sq)
    finally:
        if args.keep_data:
            err.print(f"data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    out["load_average"]["end"] = load_average()
    if failure:
        warnings.append(failure)
    cluster = out.get("cluster", {})
    data: dict[str, Any] = {
        **result_header("htap", started),
        "parameters": {
            "warehouses": warehouses,
            "scale": scale.__dict__,
            "concurrency": args.concurrency,
            "analytic_threads": args.analytic_threads,
            "duration_s": duration,
            "ops": args.ops,
            "mix": dict(MIX),
            "seed": args.seed,
            "quick": args.quick,
            "pd": args.pd,
            "data_dir": str(base),
            "data_fs": filesystem_type(base.parent),
        },
        "htapkv_target": cluster.get("description"),
        "processes": cluster.get("processes", []),
        "machine": machine_info(("htapkv", "pyarrow", "sqlglot", "rocksdict", "grpcio", "rich")),
        "load_average": out["load_average"],
        "load": out["load"],
        "phases": {p.name: p.to_json() for p in phases},
        "analytics": out.get("analytics", []),
        "analytics_pid": out.get("analytics_pid"),
        "freshness": out.get("freshness", {}),
        "freshness_means": FRESHNESS_TEXT,
        "lag_samples": out.get("lag_samples", []),
        "verify": out["verify"],
        "sqlite": out.get("sqlite"),
        "notes": [],
        "warnings": warnings,
        "plots": {},
    }
    data["summary"] = summarize(data)
    data["target"] = targets(data["summary"])
    data["notes"] = build_notes(data)
    json_path, md_path = write_results(args.output, "htap", data, render_markdown(data))
    data["plots"] = plot_all(json_path.with_suffix(""), data)
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(data), encoding="utf-8")
    print_tables(data)
    pngs = "  ".join(str(json_path.with_name(n)) for n in data["plots"].values())
    print(f"results: {json_path}  {md_path}  {pngs}")
    if failure or not data["summary"]["consistent"]:
        return 1
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--analytics-child"]:
    analytics_child(sys.argv[2], int(sys.argv[3]))
