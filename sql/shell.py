"""``htapkv sql`` (an interactive shell) and ``htapkv load`` (bulk load).

The shell keeps its history in ``~/.htapkv_history`` (readline), prints
results as tables with their timing, and runs scripts with ``-e "..."`` or
``-f file.sql``. A failed statement prints its error in one line (no stack
trace) and the shell goes on; scripts stop at the first error with exit 1.

``htapkv load --table T FILE`` reads Parquet or CSV with pyarrow and inserts
the rows through large transactions (one per batch of ``--batch`` rows),
with a progress bar. Each batch is atomic; a failed batch stops the load and
says how many rows were committed before it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sql.errors import Error
from sql.session import Result, Session

HISTORY = os.path.expanduser("~/.htapkv_history")
MAX_PRINTED_ROWS = 1000


def _target(args: argparse.Namespace) -> str:
    if args.pd:
        return str(args.pd)
    if args.data_dir:
        return str(args.data_dir)
    raise SystemExit(
        "htapkv: error: give --pd ADDR (a cluster) or --data-dir D (an embedded store)"
    )


def _connect(args: argparse.Namespace) -> Session:
    from sql.dbapi import connect

    conn = connect(
        _target(args),
        autocommit=True,
        tls_ca=getattr(args, "tls_ca", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
    )
    return conn.session


def print_result(console: Console, result: Result, seconds: float) -> None:
    t = result.table
    if t is None:
        n = "" if result.rowcount < 0 else f", {result.rowcount} row(s)"
        console.print(f"{result.message}{n} ({seconds * 1000:.1f} ms)")
    else:
        shown = t.slice(0, MAX_PRINTED_ROWS)
        table = Table(*[f.name for f in t.schema], show_lines=False)
        for row in shown.to_pylist():
            # Text, not str: a value like "[columnar (scan)]" is data, not markup.
            table.add_row(*[Text("NULL" if v is None else str(v)) for v in row.values()])
        console.print(table)
        more = f" (first {MAX_PRINTED_ROWS} shown)" if t.num_rows > MAX_PRINTED_ROWS else ""
        console.print(f"{t.num_rows} row(s){more} ({seconds * 1000:.1f} ms)")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")


def run_script(session: Session, text: str, console: Console) -> int:
    try:
        for _stmt, result, seconds in _timed(session, text):
            print_result(console, result, seconds)
    except Error as e:
        console.print(f"[red]ERROR[/red] {type(e).__name__}: {escape(str(e))}")
        return 1
    return 0


def _timed(session: Session, text: str) -> Any:
    it = session.execute_script(text)
    while True:
        t0 = time.perf_counter()
        try:
            stmt, result = next(it)
        except StopIteration:
            return
        yield stmt, result, time.perf_counter() - t0


def interactive(session: Session, console: Console) -> int:
    try:
        import readline

        if os.path.exists(HISTORY):
            readline.read_history_file(HISTORY)
    except (ImportError, OSError):
        readline = None  # type: ignore[assignment]
    console.print("htapkv SQL shell. End statements with ';'. Ctrl-D quits.")
    buf: list[str] = []
    try:
        while True:
            try:
                line = input("htapkv> " if not buf else "     -> ")
            except EOFError:
                break
            except KeyboardInterrupt:
                buf = []
                console.print()
                continue
            buf.append(line)
            text = "\n".join(buf).strip()
            if not text:
                buf = []
                continue
            if text.lower() in ("quit", "exit", "\\q"):
                break
            if not text.endswith(";"):
                continue
            buf = []
            run_script(session, text, console)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(HISTORY)
    return 0


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pd", help="PD address(es) of a cluster, comma-separated")
    p.add_argument("--data-dir", help="an embedded store's directory (instead of --pd)")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")


def register_sql(sub: Any) -> None:
    p = sub.add_parser("sql", help="SQL shell (interactive, -e or -f)")
    _add_target(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-e", "--execute", help="run these statements and exit")
    g.add_argument("-f", "--file", help="run the statements of this file and exit")

    def run(args: argparse.Namespace) -> int:
        # sqlglot logs "falling back to parsing as a Command" for statements
        # it cannot parse; the shell reports those itself, as errors.
        logging.getLogger("sqlglot").setLevel(logging.ERROR)
        session = _connect(args)
        console = Console()
        try:
            if args.execute is not None:
                return run_script(session, args.execute, console)
            if args.file is not None:
                with open(args.file, encoding="utf-8") as f:
                    return run_script(session, f.read(), console)
            return interactive(session, console)
        finally:
            session.rollback()
            session.client.close()

    p.set_defaults(func=run)


def register_load(sub: Any) -> None:
    p = sub.add_parser("load", help="bulk-load a Parquet or CSV file into a table")
    _add_target(p)
    p.add_argument("--table", required=True)
    p.add_argument("--batch", type=int, default=5000, help="rows per transaction (--mode txn)")
    p.add_argument("--format", choices=("auto", "parquet", "csv"), default="auto")
    p.add_argument(
        "--mode",
        choices=("auto", "import", "txn"),
        default="auto",
        help="import: physical import (the table must be empty); txn: transactions; "
        "auto (default): import into an empty table, else transactions",
    )
    p.add_argument("file")

    def run(args: argparse.Namespace) -> int:
        from sql.load import load_file

        session = _connect(args)
        try:
            n, seconds = load_file(
                session, args.table, args.file, args.batch, args.format, args.mode
            )
        finally:
            session.client.close()
        rate = n / seconds if seconds > 0 else float("inf")
        print(f"loaded {n} rows into {args.table} in {seconds:.1f} s ({rate:,.0f} rows/s)")
        return 0

    p.set_defaults(func=run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
