"""``htapkv bench tpch``: the 22 TPC-H queries through the SQL layer, beside DuckDB.

What runs, in one command:

1. **Data.** ``tpchgen-cli`` writes the 8 tables as Parquet at ``--sf``.
2. **Load.** A cluster (``kvstore.LocalCluster``: 1 PD, 3 stores, 1 columnar
   node in a temporary folder; or ``--pd ADDR``) gets the schema
   (``bench/tpch_sql/schema.sql``, through SQL) and every row through
   ``sql.load`` (bulk-encoded transactions of ``--batch`` rows, from
   ``--load-threads`` threads). The load rate is rows over wall time.
3. **Queries.** Once the replica has caught up and compacted the load
   (``Columnar.Status``), each query runs through ``sql`` (engine routing
   as a user gets it: scans and pushed-down aggregates on the columnar
   replica) and in DuckDB on its own in-memory tables of the same Parquet
   data: once untimed each, then ``--reps`` timed runs each, taking turns;
   the best run of each is compared, and so are the answers. The row path
   (``SET htapkv_read_engine = 'row'``), once every query is timed, runs
   in a child process killed after ``--row-timeout`` seconds: a query past
   the bound is reported as such, not waited for.

Targets (printed as met/missed, never asserted): geometric mean of the
columnar path within 2x of DuckDB; load at least 50,000 rows/s.

Output: progress on stderr, the table on stdout, and
``<output>/tpch-<timestamp>.json`` / ``.md`` / ``.png`` (bar chart).
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import math
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import add_run_flags, does_not_apply, positive_float, positive_int

if TYPE_CHECKING:
    import pyarrow as pa

    import sql

TABLES = ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")
SQL_DIR = Path(__file__).parent / "tpch_sql"
LOAD_TARGET = 50_000
GEOMEAN_TARGET = 2.0
REL_TOL = 1e-6
CATCH_UP_WAIT_S = 600.0
QUICK_SF = 0.01  # smaller scales make tpchgen-cli repeat partsupp keys


# ---------------------------------------------------------------- shared with tests
def query_text(n: int) -> str:
    return (SQL_DIR / "queries" / f"q{n:02d}.sql").read_text(encoding="utf-8")


def schema_text() -> str:
    return (SQL_DIR / "schema.sql").read_text(encoding="utf-8")


def generate(sf: float, out_dir: Path) -> dict[str, pa.Table]:
    """TPC-H tables at scale ``sf`` (tpchgen-cli, Parquet), read back."""
    import pyarrow.parquet as pq

    exe = shutil.which("tpchgen-cli") or str(Path(sys.executable).parent / "tpchgen-cli")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not all((out_dir / f"{t}.parquet").exists() for t in TABLES):
        subprocess.run(
            [exe, "parquet", "-s", f"{sf:g}", "--output-dir", str(out_dir)],
            check=True,
            capture_output=True,
        )
    return {t: pq.read_table(out_dir / f"{t}.parquet") for t in TABLES}


def create_schema(conn: sql.Connection) -> None:
    cur = conn.cursor()
    for stmt in schema_text().split(";"):
        text = "\n".join(line for line in stmt.splitlines() if not line.strip().startswith("--"))
        if text.strip():
            cur.execute(text)


def load_tables(
    conn: sql.Connection,
    tables: dict[str, pa.Table],
    batch: int,
    threads: int,
    progress: Any = None,
    mode: str = "auto",
) -> tuple[int, float]:
    """Load every table (biggest first, ``threads`` jobs at once: whole
    tables for a physical import, batches of ``batch * 4`` rows for
    ``mode="txn"``); returns ``(rows, seconds)``."""
    from concurrent.futures import ThreadPoolExecutor

    from sql.load import load_arrow

    session = conn.session
    total = sum(t.num_rows for t in tables.values())
    task = progress.add_task("load", total=total) if progress is not None else None
    lock = threading.Lock()

    def advance(n: int) -> None:
        if progress is not None:
            with lock:
                progress.update(task, advance=n)

    def one(name: str, part: pa.Table) -> int:
        from sql.session import Session

        s = Session(session.client)
        return load_arrow(s, name, part, batch, mode=mode, on_rows=advance)

    jobs: list[tuple[str, pa.Table]] = []
    for name in sorted(tables, key=lambda n: -tables[n].num_rows):
        t = tables[name]
        if mode == "txn":
            step = batch * 4
            jobs.extend((name, t.slice(i, step)) for i in range(0, t.num_rows, step))
        else:
            # A physical import takes a whole (empty) table; it keeps several
            # chunks in flight itself.
            jobs.append((name, t))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(lambda job: one(job[0], job[1]), jobs))
    # Every row is committed and readable by SQL when load_arrow returns (an
    # import clears the table's mark only after every chunk was applied);
    # the columnar replica's catch-up is timed separately by the caller.
    return done, time.perf_counter() - t0


def duckdb_tables(tables: dict[str, pa.Table]) -> Any:
    """A DuckDB connection holding the tables with the schema's types."""
    import duckdb

    con = duckdb.connect()
    for stmt in schema_text().split(";"):
        text = "\n".join(line for line in stmt.splitlines() if not line.strip().startswith("--"))
        if text.strip():
            con.execute(text)
    for name, t in tables.items():
        con.register(f"src_{name}", t)
        con.execute(f"INSERT INTO {name} SELECT * FROM src_{name}")
        con.unregister(f"src_{name}")
    return con


def _norm(v: Any) -> Any:
    if isinstance(v, (decimal.Decimal, float)):
        return float(v)
    return v


def _close(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-9)
    return bool(a == b)


def _sort_key(row: Sequence[Any]) -> tuple[Any, ...]:
    out = []
    for raw in row:
        v = _norm(raw)
        if isinstance(v, float):
            v = round(v, 4)
        out.append((v is None, str(type(v)), v))
    return tuple(out)


def compare(got: pa.Table, want: pa.Table) -> str | None:
    """None if the answers agree (same rows in the same order, numbers within
    a relative 1e-6; rows that tie on the sort keys may come in any order),
    else what differs."""
    if got.num_columns != want.num_columns:
        return f"{got.num_columns} columns, expected {want.num_columns}"
    if got.num_rows != want.num_rows:
        return f"{got.num_rows} rows, expected {want.num_rows}"
    g = [tuple(r.values()) for r in got.to_pylist()]
    w = [tuple(r.values()) for r in want.to_pylist()]
    if all(_close(x, y) for rg, rw in zip(g, w, strict=True) for x, y in zip(rg, rw, strict=True)):
        return None
    gs, ws = sorted(g, key=_sort_key), sorted(w, key=_sort_key)
    for rg, rw in zip(gs, ws, strict=True):
        if not all(_close(x, y) for x, y in zip(rg, rw, strict=True)):
            return f"row {rg!r} != expected {rw!r}"
    return "same rows in another order"


# ---------------------------------------------------------------- the run
@dataclass
class QueryResult:
    n: int
    columnar_s: list[float] = field(default_factory=list)
    row_s: float | None = None
    row_note: str = ""
    duckdb_s: list[float] = field(default_factory=list)
    rows: int = 0
    engines: str = ""
    mismatch: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if not self.columnar_s or not self.duckdb_s:
            return None
        return min(self.columnar_s) / max(min(self.duckdb_s), 1e-6)

    def to_json(self) -> dict[str, Any]:
        return {
            "query": f"Q{self.n}",
            "columnar_s": self.columnar_s,
            "row_s": self.row_s,
            "row_note": self.row_note,
            "duckdb_s": self.duckdb_s,
            "rows": self.rows,
            "engines": self.engines,
            "ratio_vs_duckdb": self.ratio,
            "mismatch": self.mismatch,
            "error": self.error,
            "warnings": self.warnings,
        }


def _row_path_child(pd: str, text: str, out: Any) -> None:
    import sql as sqlmod

    conn = sqlmod.connect(pd, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("SET htapkv_read_engine = 'row'")
        t0 = time.perf_counter()
        cur.execute(text)
        out.put(time.perf_counter() - t0)
    finally:
        conn.close()


def row_path_time(pd: str, text: str, timeout: float) -> tuple[float | None, str]:
    """The query on the row store, in a child process killed at ``timeout``."""
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    p = ctx.Process(target=_row_path_child, args=(pd, text, q), daemon=True)
    p.start()
    p.join(timeout + 10)  # + the child's own start-up
    if p.is_alive():
        p.kill()
        p.join()
        return None, f"> {timeout:g} s"
    try:
        took = float(q.get(timeout=1))
    except Exception:
        return None, f"failed (exit {p.exitcode})"
    # The child gets the bound plus its start-up; its own clock decides.
    return (took, "") if took <= timeout else (None, f"> {timeout:g} s")


def engines_of(conn: sql.Connection, text: str) -> str:
    plan = [r[0] for r in conn.cursor().execute("EXPLAIN " + text).fetchall()]
    used = sorted({e for line in plan for e in ("columnar", "row") if f"[{e}" in line})
    return "+".join(used)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tpch",
        help="the 22 TPC-H queries through SQL (columnar and row paths) beside DuckDB",
        description="Generate TPC-H at --sf, load it through the SQL layer, run the 22 queries "
        "on the columnar path, the row path (bounded) and DuckDB; compare the answers.",
    )
    p.add_argument("--sf", type=positive_float, default=1.0, help="scale factor (default 1)")
    p.add_argument("--queries", default="1-22", help="e.g. 1-22 or 1,3,6 (default all)")
    p.add_argument(
        "--reps",
        "--ops",
        dest="reps",
        type=positive_int,
        default=2,
        help="timed runs per query (default 2)",
    )
    p.add_argument(
        "--row-timeout", type=positive_float, default=60.0, help="row-path bound in s (default 60)"
    )
    p.add_argument("--no-row", action="store_true", help="skip the row path")
    p.add_argument("--batch", type=positive_int, default=5000, help="rows per load transaction")
    p.add_argument(
        "--load-threads",
        "--concurrency",
        dest="load_threads",
        type=positive_int,
        default=4,
        help="load jobs in flight (default 4)",
    )
    p.add_argument(
        "--load-mode",
        choices=("auto", "import", "txn"),
        default="auto",
        help="auto/import: physical import into the empty tables; txn: transactions "
        "(the old path, for comparison)",
    )
    p.add_argument("--pd", metavar="ADDR", help="use a running cluster with a columnar node")
    add_run_flags(
        p,
        seed_help="accepted like every workload's; tpchgen-cli's data does not depend on it",
        data_dir_help="create the cluster and data under this folder",
        quick_help=f"a smoke test: SF {QUICK_SF:g}, one rep, no row path",
        keep_data_help="do not delete the data afterwards",
    )
    does_not_apply(p, "--duration", "it runs each query a number of times: use --ops")
    p.set_defaults(func=run)


def parse_queries(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    if not out or any(not 1 <= n <= 22 for n in out):
        raise SystemExit(f"htapkv bench tpch: --queries must name queries 1..22: {spec!r}")
    return out


@contextlib.contextmanager
def open_cluster(pd: str | None, base: Path, info: dict[str, Any]) -> Iterator[str]:
    import kvstore

    if pd:
        info["description"] = f"cluster at PD {pd}"
        yield pd
        return
    with kvstore.LocalCluster(str(base / "htapkv-cluster"), pd=1, stores=3, columnar=1) as cluster:
        info["description"] = (
            "local cluster: 1 PD, 3 stores, 1 columnar node (kvstore.LocalCluster)"
        )
        yield cluster.pd_addr


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    import sql as sqlmod
    from bench.columnar import SETTLE_MAX_WAIT_S, wait_compacted
    from bench.progress import phase_progress
    from bench.report import load_average, machine_info, result_header, write_results

    err = Console(stderr=True, highlight=False)
    queries = parse_queries(args.queries)
    if args.quick:
        args.sf, args.reps, args.no_row = QUICK_SF, 1, True
    started = datetime.now().astimezone()
    if args.data_dir:
        os.makedirs(args.data_dir, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="htapkv-bench-tpch-", dir=args.data_dir))
    info: dict[str, Any] = {}
    results: list[QueryResult] = []
    load_json: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        tables = generate(args.sf, base / "data")
        total_rows = sum(t.num_rows for t in tables.values())
        err.print(
            f"generated TPC-H SF {args.sf:g} ({total_rows:,} rows) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        duck = duckdb_tables(tables)
        with open_cluster(args.pd, base, info) as pd:
            conn = sqlmod.connect(pd, autocommit=True)
            try:
                create_schema(conn)
                with phase_progress(err) as progress:
                    n, secs = load_tables(
                        conn, tables, args.batch, args.load_threads, progress, args.load_mode
                    )
                load_json = {
                    "rows": n,
                    "seconds": secs,
                    "rows_per_s": n / secs,
                    "mode": args.load_mode,
                }
                err.print(f"loaded {n:,} rows in {secs:.1f} s ({n / secs:,.0f} rows/s)")
                # The replica catches up before the timed queries (untimed):
                # a learner read at a fresh ts waits until it has applied
                # everything the load wrote.
                client = conn.session.client
                t0 = time.perf_counter()
                ts = client.tso()
                for name in TABLES:
                    first = tables[name].column_names[0]
                    client.columnar_scan(name, [first], ts=ts, max_wait=CATCH_UP_WAIT_S)
                load_json["replica_caught_up_s"] = time.perf_counter() - t0
                # And has folded the load into its stable base: the queries
                # time the replica as it serves, not while it compacts.
                t0 = time.perf_counter()
                unsettled = [
                    name
                    for name in TABLES
                    if wait_compacted(client, name, SETTLE_MAX_WAIT_S) is None
                ]
                load_json["replica_compacted_s"] = time.perf_counter() - t0
                if unsettled:
                    err.print(f"not compacted within {SETTLE_MAX_WAIT_S:g} s: {unsettled}")
                for qn in queries:
                    results.append(run_query(conn, duck, pd, qn, args, err))
                # The row path last: a child killed at the bound leaves its
                # scan running in the stores for a while, which would weigh
                # on the next query's timed runs.
                if not args.no_row:
                    for r in results:
                        if r.error is None:
                            r.row_s, r.row_note = row_path_time(
                                pd, query_text(r.n), args.row_timeout
                            )
                            err.print(f"Q{r.n:02d} row path: {_row_text(r)}")
            finally:
                conn.close()
    finally:
        if args.keep_data:
            err.print(f"data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    ratios = [r.ratio for r in results if r.ratio is not None and not r.error]
    geomean = statistics.geometric_mean(ratios) if ratios else None
    data: dict[str, Any] = {
        **result_header("tpch", started),
        "parameters": {
            "sf": args.sf,
            "reps": args.reps,
            "row_timeout": args.row_timeout,
            "batch": args.batch,
            "load_threads": args.load_threads,
            "pd": args.pd,
        },
        "htapkv_target": info.get("description"),
        "machine": machine_info(("htapkv", "pyarrow", "duckdb", "sqlglot", "rocksdict", "grpcio")),
        "load_average_end": load_average(),
        "load": load_json,
        "queries": [r.to_json() for r in results],
        "geomean_ratio_vs_duckdb": geomean,
        "target": {
            "geomean_within_2x": None if geomean is None else geomean <= GEOMEAN_TARGET,
            "load_50k_rows_per_s": (load_json.get("rows_per_s") or 0) >= LOAD_TARGET,
        },
        "answers_agree": all(r.mismatch is None and r.error is None for r in results),
    }
    md = render_markdown(data, results)
    json_path, md_path = write_results(args.output, "tpch", data, md)
    png = json_path.with_suffix(".png")
    plot(png, results)
    print(md)
    err.print(f"results: {json_path}, {md_path}, {png}")
    return 0 if data["answers_agree"] else 1


def run_query(
    conn: sql.Connection, duck: Any, pd: str, qn: int, args: argparse.Namespace, err: Any
) -> QueryResult:
    text = query_text(qn)
    r = QueryResult(qn)
    try:
        r.engines = engines_of(conn, text)

        def ours() -> pa.Table:
            cur = conn.cursor().execute(text)
            out = cur.fetch_arrow_table()
            r.warnings.extend(w for w in cur.warnings if w not in r.warnings)
            return out

        # One untimed run each (plans cached, first reads of a new base
        # done, DuckDB's own caches warm), then the two take turns run by
        # run, so whatever else runs on the machine weighs on both alike.
        got, want = ours(), duck.sql(text).to_arrow_table()
        for _ in range(args.reps):
            t0 = time.perf_counter()
            got = ours()
            r.columnar_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            want = duck.sql(text).to_arrow_table()
            r.duckdb_s.append(time.perf_counter() - t0)
        r.rows = got.num_rows
        r.mismatch = compare(got, want)
    except Exception as e:  # recorded and reported: one query must not end the run
        r.error = f"{type(e).__name__}: {e}"
    err.print(
        f"Q{qn:02d}: columnar {min(r.columnar_s, default=float('nan')) * 1000:,.0f} ms, "
        f"duckdb {min(r.duckdb_s, default=float('nan')) * 1000:,.1f} ms"
        + (f" MISMATCH {r.mismatch}" if r.mismatch else "")
        + (f" ERROR {r.error}" if r.error else "")
    )
    return r


def _row_text(r: QueryResult) -> str:
    return f"{'-' if r.row_s is None else f'{r.row_s * 1000:,.0f} ms'} {r.row_note}".strip()


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.1f}"


def render_markdown(data: dict[str, Any], results: Sequence[QueryResult]) -> str:
    from bench.report import markdown_table

    m = data["machine"]
    rows = []
    for r in results:
        rows.append(
            [
                f"Q{r.n}",
                (r.engines or "-") + (" (fell back)" if r.warnings else ""),
                _ms(min(r.columnar_s) if r.columnar_s else None),
                _ms(r.row_s) if r.row_s is not None else (r.row_note or "-"),
                _ms(min(r.duckdb_s) if r.duckdb_s else None),
                "-" if r.ratio is None else f"{r.ratio:.1f}x",
                "ok" if r.mismatch is None and r.error is None else (r.error or r.mismatch or "?"),
            ]
        )
    load = data["load"]
    geo = data["geomean_ratio_vs_duckdb"]
    lines = [
        f"# htapkv bench tpch (SF {data['parameters']['sf']:g})",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {m.get('processor', '?')}, {m.get('usable_cpus', '?')} CPUs, "
        f"Python {m.get('python_version', '?')}, load average at the end "
        f"{(data.get('load_average_end') or ['?'])[0]}; {data['htapkv_target']}",
        "",
        f"Load: {load.get('rows', 0):,} rows in {load.get('seconds', 0):.1f} s = "
        f"**{load.get('rows_per_s', 0):,.0f} rows/s** (target {LOAD_TARGET:,}: "
        f"{'met' if data['target']['load_50k_rows_per_s'] else 'missed'})",
        "",
        markdown_table(
            ["query", "engines", "htapkv ms", "row path ms", "DuckDB ms", "vs DuckDB", "answer"],
            rows,
        ),
        "",
        f"Geometric mean vs DuckDB: **{'-' if geo is None else f'{geo:.1f}x'}** (target "
        f"{GEOMEAN_TARGET:g}x: {'met' if data['target']['geomean_within_2x'] else 'missed'})",
    ]
    return "\n".join(lines) + "\n"


def plot(path: Path, results: Sequence[QueryResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"Q{r.n}" for r in results]
    xs = range(len(results))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    w = 0.27
    ax.bar(
        [x - w for x in xs],
        [min(r.columnar_s) * 1000 if r.columnar_s else 0 for r in results],
        w,
        label="htapkv (SQL)",
    )
    ax.bar(
        list(xs), [r.row_s * 1000 if r.row_s else 0 for r in results], w, label="htapkv row path"
    )
    ax.bar(
        [x + w for x in xs],
        [min(r.duckdb_s) * 1000 if r.duckdb_s else 0 for r in results],
        w,
        label="DuckDB",
    )
    ax.set_yscale("log")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("ms (log)")
    ax.set_title("TPC-H per query (row path bars missing = past the bound)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
