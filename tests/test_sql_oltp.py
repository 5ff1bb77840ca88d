"""OLTP through SQL on several client threads: the bank workload and a
TPC-C-like New-Order/Payment/Order-Status mix, with their invariants checked
(on an embedded store; tests/test_sql_cluster.py runs them on a cluster)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import sql
from bench import tpcc
from sql.session import Session

THREADS = 4


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sql.Connection]:
    conn = sql.connect(str(tmp_path / "db"), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def run_threads(
    db: sql.Connection, n: int, body: Callable[[sql.Connection, random.Random], None]
) -> None:
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        conn = sql.Connection(Session(db.session.client, autocommit=True))
        try:
            body(conn, random.Random(seed))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def bank_transfer(cur: sql.Cursor, rng: random.Random, accounts: int) -> None:
    a, b = rng.sample(range(accounts), 2)
    amount = rng.randint(1, 30)
    cur.execute("SELECT id, balance FROM bank WHERE id IN (?, ?) FOR UPDATE", (a, b))
    bal = dict(cur.fetchall())
    if bal[a] < amount:
        return  # no overdraft
    cur.execute("UPDATE bank SET balance = balance - ? WHERE id = ?", (amount, a))
    cur.execute("UPDATE bank SET balance = balance + ? WHERE id = ?", (amount, b))


def test_bank_through_sql_conserves_the_total(db: sql.Connection) -> None:
    accounts, total = 8, 8 * 100
    cur = db.cursor()
    cur.execute("CREATE TABLE bank (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
    cur.execute("INSERT INTO bank VALUES " + ", ".join(f"({i}, 100)" for i in range(accounts)))
    totals: list[int] = []

    def client(conn: sql.Connection, rng: random.Random) -> None:
        for i in range(40):
            if i % 5 == 0:  # a whole-bank read, one snapshot
                c = conn.cursor().execute("SELECT sum(balance), min(balance) FROM bank")
                s, lo = c.fetchone()  # type: ignore[misc]
                totals.append(int(s))
                assert lo >= 0
            else:
                conn.run_transaction(lambda c: bank_transfer(c, rng, accounts))

    run_threads(db, THREADS, client)
    assert totals and set(totals) == {total}
    assert db.cursor().execute("SELECT sum(balance) FROM bank").fetchone() == (total,)
    moved = db.cursor().execute("SELECT count(*) FROM bank WHERE balance <> 100").fetchone()
    assert moved is not None and moved[0] > 0  # transfers did happen


def test_tpcc_like_mix_keeps_the_consistency_conditions(db: sql.Connection) -> None:
    scale = tpcc.Scale(districts=3, customers=10, items=40, initial_orders=3)
    tpcc.create(db)
    tpcc.populate(db, warehouses=1, scale=scale)
    assert tpcc.check_consistency(db) == []
    done = {"new_order": 0, "payment": 0, "order_status": 0}
    paid: list[Decimal] = []
    lock = threading.Lock()

    def client(conn: sql.Connection, rng: random.Random) -> None:
        for _ in range(12):
            r = rng.random()
            if r < 0.45:
                conn.run_transaction(lambda c: tpcc.new_order(c, rng, 1, scale))
                kind = "new_order"
            elif r < 0.9:
                amount = conn.run_transaction(lambda c: tpcc.payment(c, rng, 1, scale))
                with lock:
                    paid.append(amount)
                kind = "payment"
            else:
                conn.run_transaction(lambda c: tpcc.order_status(c, rng, 1, scale))
                kind = "order_status"
            with lock:
                done[kind] += 1

    run_threads(db, THREADS, client)
    assert done["new_order"] > 0 and done["payment"] > 0
    assert tpcc.check_consistency(db) == []
    cur = db.cursor()
    (orders,) = cur.execute("SELECT count(*) FROM orders").fetchone()  # type: ignore[misc]
    assert orders == 3 * 3 + done["new_order"]
    (ytd,) = cur.execute("SELECT w_ytd FROM warehouse WHERE w_id = 1").fetchone()  # type: ignore[misc]
    assert ytd == sum(paid)


def test_consistency_check_catches_a_broken_district(db: sql.Connection) -> None:
    scale = tpcc.Scale(districts=2, customers=5, items=10, initial_orders=2)
    tpcc.create(db)
    tpcc.populate(db, warehouses=1, scale=scale)
    db.cursor().execute(
        "UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = 1 AND d_id = 2"
    )
    db.cursor().execute("UPDATE warehouse SET w_ytd = 5 WHERE w_id = 1")
    bad = tpcc.check_consistency(db)
    assert any(b.startswith("condition 1") for b in bad)
    assert any(b.startswith("condition 2") for b in bad)
