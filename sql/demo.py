"""``htapkv demo``'s SQL section, and the command itself.

The demo lives in :mod:`kvstore.demo` (kvstore never imports the layers above
it); this module registers the command and adds the SQL section: a table
created with DDL, rows written in a transaction, a point query that goes to
the row store and an analytic join that goes to the columnar replica, with
EXPLAIN showing which engine read each table and why.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kvstore.client import Client
from sql.dbapi import Connection
from sql.session import Session

STATEMENTS = [
    "CREATE TABLE customer (id BIGINT PRIMARY KEY, name VARCHAR(20) NOT NULL, "
    "city VARCHAR(20) NOT NULL, UNIQUE KEY by_name (name))",
    "CREATE TABLE sale (id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, "
    "amount DECIMAL(10,2) NOT NULL, day DATE NOT NULL)",
]
CITIES = ("Lisbon", "Oslo", "Quito", "Hanoi")


def sql_section(console: Console, cluster: Any, client: Client) -> None:
    console.rule("7. SQL: the same data through a small TiDB (DDL, DML, routing, EXPLAIN)")
    conn = Connection(Session(client, autocommit=True))
    cur = conn.cursor()
    for stmt in STATEMENTS:
        cur.execute(stmt)
        console.print(f"[dim]>[/] {stmt[:90]}...")
    cur.execute("BEGIN")
    cur.execute(
        "INSERT INTO customer VALUES "
        + ", ".join(f"({i}, 'cust{i}', '{CITIES[i % 4]}')" for i in range(40))
    )
    for lo in range(0, 2000, 500):
        rows = ", ".join(
            f"({i}, {i % 40}, {(i % 97) + 0.5}, DATE '2026-01-{i % 30 + 1:02d}')"
            for i in range(lo, lo + 500)
        )
        cur.execute("INSERT INTO sale VALUES " + rows)
    cur.execute("COMMIT")
    console.print("[dim]>[/] BEGIN; INSERT 40 customers and 2,000 sales; COMMIT")
    queries = [
        "SELECT name, city FROM customer WHERE name = 'cust7'",
        "SELECT c.city, count(*) AS sales, sum(s.amount) AS total FROM sale s "
        "JOIN customer c ON s.customer_id = c.id WHERE s.day >= DATE '2026-01-15' "
        "GROUP BY c.city ORDER BY total DESC",
    ]
    for q in queries:
        console.print(f"\n[bold]{q}[/]")
        plan = [r[0] for r in cur.execute("EXPLAIN " + q).fetchall()]
        for line in plan:
            if "TableScan" in line:
                console.print(f"  {line.strip()[:160]}", style="cyan", markup=False)
        t0 = time.monotonic()
        cur.execute(q)
        result = cur.fetch_arrow_table()
        ms = (time.monotonic() - t0) * 1000
        table = Table(*result.column_names)
        for row in result.to_pylist():
            table.add_row(*[Text(str(v)) for v in row.values()])
        console.print(table)
        note = f" (warnings: {'; '.join(cur.warnings)})" if cur.warnings else ""
        console.print(f"{result.num_rows} row(s) in {ms:.0f} ms{note}")
    console.print(
        "the point query used the unique index on the row store (Region leaders); the join "
        "read both tables from the columnar replica at the same timestamp and joined them in "
        "Arrow on this client"
    )


def register_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the guided demo on a temporary local cluster")
    p.add_argument("--data-dir", help="keep the data here instead of a temporary folder")
    p.add_argument(
        "--embedded", action="store_true", help="use the single-process embedded store instead"
    )

    def run(args: argparse.Namespace) -> int:
        from kvstore.demo import run_demo

        return run_demo(args.data_dir, embedded=args.embedded, sections=[sql_section])

    p.set_defaults(func=run)
