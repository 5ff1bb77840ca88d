"""A TPC-C-like transaction mix over the SQL layer (the OLTP half of CH-benCHmark).

Small and honest rather than certified: the tables, keys and the three
transactions that matter for contention (New-Order, Payment, Order-Status)
follow TPC-C's shape; think times, terminals, the 1% rollback of New-Order
and the remote-warehouse rules are left out. Sizes scale with ``warehouses``
and :class:`Scale`.

Each transaction is a function ``fn(cursor, rng, ...)`` run by
``Connection.run_transaction`` (re-run whole on a conflict, never replayed).
:func:`check_consistency` checks TPC-C's consistency conditions 1-4 after a
run (clause 3.3.2): ``w_ytd = sum(d_ytd)``; ``d_next_o_id - 1 = max(o_id) =
max(no_o_id)`` per district; ``max(no_o_id) - min(no_o_id) + 1`` = new-order
rows per district; ``sum(o_ol_cnt)`` = order lines per district.

The functions speak DB-API with ``?`` parameters, so they also run on
SQLite through ``bench.htap``'s cursor adapter (which drops ``FOR UPDATE``).

Used by ``tests/test_sql_oltp.py`` and the ``htap`` benchmark.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol


class Cursor(Protocol):
    """What the transactions need of a DB-API cursor: ``sql.Cursor``, or
    ``bench.htap.SqliteCursor`` for the SQLite peer."""

    def execute(self, operation: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...


class Connection(Protocol):
    def cursor(self) -> Cursor: ...


SCHEMA = [
    """CREATE TABLE warehouse (w_id INT PRIMARY KEY, w_name VARCHAR(10) NOT NULL,
        w_tax DECIMAL(4,4) NOT NULL, w_ytd DECIMAL(12,2) NOT NULL)""",
    """CREATE TABLE district (d_w_id INT NOT NULL, d_id INT NOT NULL, d_name VARCHAR(10) NOT NULL,
        d_tax DECIMAL(4,4) NOT NULL, d_ytd DECIMAL(12,2) NOT NULL, d_next_o_id INT NOT NULL,
        PRIMARY KEY (d_w_id, d_id))""",
    """CREATE TABLE customer (c_w_id INT NOT NULL, c_d_id INT NOT NULL, c_id INT NOT NULL,
        c_last VARCHAR(16) NOT NULL, c_discount DECIMAL(4,4) NOT NULL,
        c_balance DECIMAL(12,2) NOT NULL, c_ytd_payment DECIMAL(12,2) NOT NULL,
        c_payment_cnt INT NOT NULL, PRIMARY KEY (c_w_id, c_d_id, c_id))""",
    "CREATE INDEX c_last_idx ON customer (c_w_id, c_d_id, c_last)",
    """CREATE TABLE item (i_id INT PRIMARY KEY, i_name VARCHAR(24) NOT NULL,
        i_price DECIMAL(5,2) NOT NULL)""",
    """CREATE TABLE stock (s_w_id INT NOT NULL, s_i_id INT NOT NULL, s_quantity INT NOT NULL,
        s_ytd INT NOT NULL, s_order_cnt INT NOT NULL, PRIMARY KEY (s_w_id, s_i_id))""",
    """CREATE TABLE orders (o_w_id INT NOT NULL, o_d_id INT NOT NULL, o_id INT NOT NULL,
        o_c_id INT NOT NULL, o_entry_d TIMESTAMP NOT NULL, o_ol_cnt INT NOT NULL,
        PRIMARY KEY (o_w_id, o_d_id, o_id))""",
    "CREATE INDEX o_cust ON orders (o_w_id, o_d_id, o_c_id)",
    """CREATE TABLE new_order (no_w_id INT NOT NULL, no_d_id INT NOT NULL, no_o_id INT NOT NULL,
        PRIMARY KEY (no_w_id, no_d_id, no_o_id))""",
    """CREATE TABLE order_line (ol_w_id INT NOT NULL, ol_d_id INT NOT NULL, ol_o_id INT NOT NULL,
        ol_number INT NOT NULL, ol_i_id INT NOT NULL, ol_quantity INT NOT NULL,
        ol_amount DECIMAL(8,2) NOT NULL, PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number))""",
]
LAST_NAMES = ["BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING"]


@dataclass(frozen=True)
class Scale:
    districts: int = 10
    customers: int = 30  # per district (TPC-C: 3000)
    items: int = 200  # TPC-C: 100,000
    initial_orders: int = 10  # per district, all still "new"


def create(conn: Connection) -> None:
    cur = conn.cursor()
    for stmt in SCHEMA:
        cur.execute(stmt)


def populate(conn: Connection, warehouses: int, scale: Scale, seed: int = 1) -> None:
    """Initial data, through SQL in a few transactions."""
    rng = random.Random(seed)
    cur = conn.cursor()

    def many(stmt: str, rows: list[tuple[Any, ...]]) -> None:
        for i in range(0, len(rows), 500):
            part = rows[i : i + 500]
            width = len(part[0])
            holes = ", ".join("(" + ", ".join("?" * width) + ")" for _ in part)
            cur.execute(stmt + " VALUES " + holes, [v for r in part for v in r])

    many(
        "INSERT INTO item",
        [
            (i, f"item-{i}", Decimal(rng.randint(100, 10000)) / 100)
            for i in range(1, scale.items + 1)
        ],
    )
    now = dt.datetime(2026, 1, 1)
    for w in range(1, warehouses + 1):
        many("INSERT INTO warehouse", [(w, f"w{w}", Decimal("0.0500"), Decimal("0.00"))])
        many(
            "INSERT INTO stock",
            [(w, i, rng.randint(10, 100), 0, 0) for i in range(1, scale.items + 1)],
        )
        for d in range(1, scale.districts + 1):
            many(
                "INSERT INTO district",
                [(w, d, f"d{d}", Decimal("0.0700"), Decimal("0.00"), scale.initial_orders + 1)],
            )
            many(
                "INSERT INTO customer",
                [
                    (
                        w,
                        d,
                        c,
                        LAST_NAMES[c % len(LAST_NAMES)],
                        Decimal("0.0100"),
                        Decimal("0.00"),
                        Decimal("0.00"),
                        0,
                    )
                    for c in range(1, scale.customers + 1)
                ],
            )
            orders, lines, news = [], [], []
            for o in range(1, scale.initial_orders + 1):
                n = rng.randint(5, 10)
                orders.append((w, d, o, rng.randint(1, scale.customers), now, n))
                news.append((w, d, o))
                for ln in range(1, n + 1):
                    lines.append((w, d, o, ln, rng.randint(1, scale.items), 5, Decimal("1.00")))
            many("INSERT INTO orders", orders)
            many("INSERT INTO new_order", news)
            many("INSERT INTO order_line", lines)


def new_order(cur: Cursor, rng: random.Random, warehouses: int, scale: Scale) -> int:
    """TPC-C 2.4: take the district's next order id, write the order, its
    new-order row and 5-15 lines, updating stock. Returns the order id."""
    w = rng.randint(1, warehouses)
    d = rng.randint(1, scale.districts)
    c = rng.randint(1, scale.customers)
    cur.execute(
        "SELECT d_next_o_id, d_tax FROM district WHERE d_w_id = ? AND d_id = ? FOR UPDATE", (w, d)
    )
    (o_id, _tax) = cur.fetchone()  # type: ignore[misc]
    cur.execute(
        "UPDATE district SET d_next_o_id = ? WHERE d_w_id = ? AND d_id = ?", (o_id + 1, w, d)
    )
    cur.execute(
        "SELECT c_discount FROM customer WHERE c_w_id = ? AND c_d_id = ? AND c_id = ?", (w, d, c)
    )
    cur.fetchone()
    items = rng.sample(range(1, scale.items + 1), rng.randint(5, min(15, scale.items)))
    cur.execute(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
        (w, d, o_id, c, dt.datetime(2026, 1, 2), len(items)),
    )
    cur.execute("INSERT INTO new_order VALUES (?, ?, ?)", (w, d, o_id))
    for n, i in enumerate(items, 1):
        cur.execute("SELECT i_price FROM item WHERE i_id = ?", (i,))
        (price,) = cur.fetchone()  # type: ignore[misc]
        qty = rng.randint(1, 10)
        cur.execute("SELECT s_quantity FROM stock WHERE s_w_id = ? AND s_i_id = ?", (w, i))
        (s_qty,) = cur.fetchone()  # type: ignore[misc]
        s_qty = s_qty - qty if s_qty - qty >= 10 else s_qty - qty + 91
        cur.execute(
            "UPDATE stock SET s_quantity = ?, s_ytd = s_ytd + ?, s_order_cnt = s_order_cnt + 1 "
            "WHERE s_w_id = ? AND s_i_id = ?",
            (s_qty, qty, w, i),
        )
        cur.execute(
            "INSERT INTO order_line VALUES (?, ?, ?, ?, ?, ?, ?)",
            (w, d, o_id, n, i, qty, price * qty),
        )
    return int(o_id)


def payment(cur: Cursor, rng: random.Random, warehouses: int, scale: Scale) -> Decimal:
    """TPC-C 2.5: add the amount to the warehouse's and the district's
    year-to-date and take it from a customer's balance."""
    w = rng.randint(1, warehouses)
    d = rng.randint(1, scale.districts)
    amount = Decimal(rng.randint(100, 500000)) / 100
    cur.execute("UPDATE warehouse SET w_ytd = w_ytd + ? WHERE w_id = ?", (amount, w))
    cur.execute(
        "UPDATE district SET d_ytd = d_ytd + ? WHERE d_w_id = ? AND d_id = ?", (amount, w, d)
    )
    if rng.random() < 0.6:  # by last name, through the secondary index
        last = LAST_NAMES[rng.randrange(len(LAST_NAMES))]
        cur.execute(
            "SELECT c_id FROM customer WHERE c_w_id = ? AND c_d_id = ? AND c_last = ? "
            "ORDER BY c_id",
            (w, d, last),
        )
        ids = [r[0] for r in cur.fetchall()]
        c = ids[(len(ids) - 1) // 2] if ids else 1
    else:
        c = rng.randint(1, scale.customers)
    cur.execute(
        "UPDATE customer SET c_balance = c_balance - ?, c_ytd_payment = c_ytd_payment + ?, "
        "c_payment_cnt = c_payment_cnt + 1 WHERE c_w_id = ? AND c_d_id = ? AND c_id = ?",
        (amount, amount, w, d, c),
    )
    return amount


def order_status(cur: Cursor, rng: random.Random, warehouses: int, scale: Scale) -> int:
    """TPC-C 2.6 (read-only): a customer's newest order and its lines."""
    w = rng.randint(1, warehouses)
    d = rng.randint(1, scale.districts)
    c = rng.randint(1, scale.customers)
    cur.execute(
        "SELECT c_balance FROM customer WHERE c_w_id = ? AND c_d_id = ? AND c_id = ?", (w, d, c)
    )
    cur.fetchone()
    cur.execute(
        "SELECT max(o_id) FROM orders WHERE o_w_id = ? AND o_d_id = ? AND o_c_id = ?", (w, d, c)
    )
    row = cur.fetchone()
    if row is None or row[0] is None:
        return 0
    cur.execute(
        "SELECT ol_i_id, ol_quantity, ol_amount FROM order_line "
        "WHERE ol_w_id = ? AND ol_d_id = ? AND ol_o_id = ?",
        (w, d, row[0]),
    )
    return len(cur.fetchall())


def cents(x: Any) -> Decimal | None:
    """A money value rounded to cents. htapkv's DECIMAL columns are exact; a
    peer without decimals (SQLite stores them as REAL) sums in binary
    floating point, so ``w_ytd`` and ``sum(d_ytd)`` agree only to the cent."""
    return None if x is None else Decimal(x).quantize(Decimal("0.01"))


def check_consistency(conn: Connection) -> list[str]:
    """TPC-C consistency conditions 1-4; the list of violations (empty: ok)."""
    cur = conn.cursor()
    bad: list[str] = []

    def q(text: str) -> list[tuple[Any, ...]]:
        return cur.execute(text).fetchall()

    cur.execute("BEGIN")  # one snapshot for all the checks
    try:
        ytd = dict(q("SELECT w_id, w_ytd FROM warehouse"))
        dsum = dict(q("SELECT d_w_id, sum(d_ytd) FROM district GROUP BY d_w_id"))
        for w, v in ytd.items():
            if cents(v) != cents(dsum.get(w)):
                bad.append(f"condition 1: warehouse {w} w_ytd {v} != sum(d_ytd) {dsum.get(w)}")
        nxt = {(w, d): n for w, d, n in q("SELECT d_w_id, d_id, d_next_o_id FROM district")}
        omax = {
            (w, d): m
            for w, d, m in q("SELECT o_w_id, o_d_id, max(o_id) FROM orders GROUP BY o_w_id, o_d_id")
        }
        nos = {
            (w, d): (lo, hi, n)
            for w, d, lo, hi, n in q(
                "SELECT no_w_id, no_d_id, min(no_o_id), max(no_o_id), count(*) FROM new_order "
                "GROUP BY no_w_id, no_d_id"
            )
        }
        for key, n in nxt.items():
            if omax.get(key) != n - 1:
                bad.append(
                    f"condition 2: district {key} d_next_o_id - 1 = {n - 1}, "
                    f"max(o_id) = {omax.get(key)}"
                )
            if key in nos and nos[key][1] != n - 1:
                bad.append(f"condition 2: district {key} max(no_o_id) {nos[key][1]} != {n - 1}")
            if key in nos and nos[key][1] - nos[key][0] + 1 != nos[key][2]:
                bad.append(f"condition 3: district {key} new_order ids are not contiguous")
        olcnt = {
            (w, d): s
            for w, d, s in q(
                "SELECT o_w_id, o_d_id, sum(o_ol_cnt) FROM orders GROUP BY o_w_id, o_d_id"
            )
        }
        lines = {
            (w, d): n
            for w, d, n in q(
                "SELECT ol_w_id, ol_d_id, count(*) FROM order_line GROUP BY ol_w_id, ol_d_id"
            )
        }
        for key, s in olcnt.items():
            if lines.get(key) != s:
                bad.append(
                    f"condition 4: district {key} sum(o_ol_cnt) {s} != order lines {lines.get(key)}"
                )
    finally:
        cur.execute("ROLLBACK")
    return bad
