"""The SQL layer on a real cluster (PD, 3 stores, 1 columnar node).

a. TPC-H SF 0.01 loaded through ``sql.load``; all 22 queries answer as
   DuckDB does, and EXPLAIN routes every table scan to the columnar replica
   (none of them is a key lookup) and pushes the single-table aggregates to
   it, with the replica really answering (the client's fallback counter does
   not move).
b. Row vs columnar through SQL at the same ts, under concurrent writes: in
   one transaction the same aggregate query forced onto each engine (on the
   replica: the pushed-down aggregation) gives the same answer, while
   writers move money and insert rows.
c. OLTP through SQL from several threads: the bank total is conserved.
d. A replica that is down: the query still answers (from the row store) and
   says so in a warning; back up, the replica serves again.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sql
from bench import tpch
from kvstore.client import Client
from kvstore.server.cluster import LocalCluster
from sql.session import Session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("sqlcluster"), stores=3, columnar=1, startup_timeout=120
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.connect(lock_wait_timeout=30.0) as c:
        assert c.columnar is not None
        yield c


def connection(client: Client, autocommit: bool = True) -> sql.Connection:
    return sql.Connection(Session(client, autocommit=autocommit))


@pytest.fixture(scope="module")
def tpch_loaded(client: Client, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tables = tpch.generate(0.01, tmp_path_factory.mktemp("tpchdata"))
    conn = connection(client)
    tpch.create_schema(conn)
    tpch.load_tables(conn, tables, batch=5000, threads=2)
    return tpch.duckdb_tables(tables)


def test_tpch_on_the_columnar_replica_matches_duckdb(client: Client, tpch_loaded: Any) -> None:
    conn = connection(client)
    assert client.columnar is not None
    for n in range(1, 23):
        text = tpch.query_text(n)
        plan = [r[0] for r in conn.cursor().execute("EXPLAIN " + text).fetchall()]
        scans = [line for line in plan if "[" in line and ("columnar" in line or "row" in line)]
        assert scans, plan
        assert all("columnar (scan)" in line for line in scans), (n, scans)
        # Aggregates straight over one filtered scan run on the replica.
        pushed = any("partial aggregation pushed to columnar" in line for line in plan)
        assert pushed == (n in (1, 4, 6, 15, 17, 18, 20, 22)), (n, plan)
        before = client.columnar.fallbacks
        cur = conn.cursor().execute(text)
        got = cur.fetch_arrow_table()
        assert client.columnar.fallbacks == before and not cur.warnings, (n, cur.warnings)
        want = tpch_loaded.sql(text).to_arrow_table()
        assert tpch.compare(got, want) is None, n


def test_row_and_columnar_agree_at_one_ts_under_writes(client: Client) -> None:
    setup = connection(client)
    cur = setup.cursor()
    cur.execute("CREATE TABLE wallet (id INT PRIMARY KEY, owner VARCHAR(8), cents BIGINT NOT NULL)")
    cur.execute(
        "INSERT INTO wallet VALUES " + ", ".join(f"({i}, 'o{i % 4}', 1000)" for i in range(40))
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        conn = connection(client)
        next_id = 1000 * (seed + 1)
        try:
            while not stop.is_set():
                a, b = rng.sample(range(40), 2)
                amt = rng.randint(1, 50)

                def move(c: sql.Cursor, a: int = a, b: int = b, amt: int = amt) -> None:
                    c.execute("UPDATE wallet SET cents = cents - ? WHERE id = ?", (amt, a))
                    c.execute("UPDATE wallet SET cents = cents + ? WHERE id = ?", (amt, b))

                conn.run_transaction(move)
                conn.cursor().execute("INSERT INTO wallet VALUES (?, 'new', 0)", (next_id,))
                next_id += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    query = (
        "SELECT /*+ READ_FROM_STORAGE({engine}[wallet]) */ owner, count(*), sum(cents), "
        "max(id) FROM wallet GROUP BY owner ORDER BY owner"
    )
    reader = connection(client, autocommit=False)
    try:
        assert client.columnar is not None
        compared = 0
        for _ in range(8):
            rc = reader.cursor()
            before = client.columnar.fallbacks
            col = rc.execute(query.format(engine="COLUMNAR")).fetchall()
            assert client.columnar.fallbacks == before  # the replica answered
            row = rc.execute(query.format(engine="ROW")).fetchall()
            assert col == row
            assert sum(r[2] for r in col) == 40 * 1000  # money only moves
            reader.rollback()  # next round: a new snapshot
            compared += 1
        assert compared == 8
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors


def test_ddl_under_dml_leaves_rows_the_replica_decodes(client: Client) -> None:
    """ADD COLUMN and CREATE INDEX while writers insert (old writers with the
    old schema, new ones using the new column): the replica decodes every
    row with the schema it got in-band and agrees with the row store."""
    setup = connection(client)
    setup.cursor().execute("CREATE TABLE evt (id BIGINT PRIMARY KEY, kind INT NOT NULL)")
    stop = threading.Event()
    errors: list[BaseException] = []
    altered = threading.Event()

    def writer(base: int) -> None:
        conn = connection(client)
        i = 0
        try:
            while not stop.is_set() or i < 30:
                if altered.is_set() and i % 2:
                    conn.cursor().execute(
                        "INSERT INTO evt (id, kind, note) VALUES (?, ?, ?)",
                        (base + i, i % 5, f"n{i}"),
                    )
                else:
                    conn.cursor().execute(
                        "INSERT INTO evt (id, kind) VALUES (?, ?)", (base + i, i % 5)
                    )
                i += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k * 10_000,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        setup.cursor().execute("ALTER TABLE evt ADD COLUMN note VARCHAR(8) DEFAULT 'old'")
        altered.set()
        setup.cursor().execute("CREATE INDEX by_kind ON evt (kind)")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert client.columnar is not None
    reader = connection(client, autocommit=False)
    q = (
        "SELECT /*+ READ_FROM_STORAGE({e}[evt]) */ kind, note = 'old', count(*) FROM evt "
        "GROUP BY kind, note = 'old' ORDER BY 1, 2"
    )
    before = client.columnar.fallbacks
    col = reader.cursor().execute(q.format(e="COLUMNAR")).fetchall()
    row = reader.cursor().execute(q.format(e="ROW")).fetchall()
    reader.rollback()
    assert client.columnar.fallbacks == before
    assert col == row
    assert sum(r[2] for r in col) >= 60
    assert {r[1] for r in col} == {True, False}  # rows of both schemas
    by_index = reader.cursor().execute("SELECT count(*) FROM evt WHERE kind = 3").fetchall()
    reader.rollback()
    assert by_index[0][0] == sum(r[2] for r in col if r[0] == 3)


def test_bank_through_sql_on_the_cluster(client: Client) -> None:
    setup = connection(client)
    setup.cursor().execute("CREATE TABLE acct (id INT PRIMARY KEY, bal BIGINT NOT NULL)")
    setup.cursor().execute("INSERT INTO acct VALUES " + ", ".join(f"({i}, 100)" for i in range(6)))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = connection(client)

        def transfer(c: sql.Cursor) -> None:
            a, b = rng.sample(range(6), 2)
            c.execute("SELECT id, bal FROM acct WHERE id IN (?, ?) FOR UPDATE", (a, b))
            bal = dict(c.fetchall())
            amt = rng.randint(1, 20)
            if bal[a] >= amt:
                c.execute("UPDATE acct SET bal = bal - ? WHERE id = ?", (amt, a))
                c.execute("UPDATE acct SET bal = bal + ? WHERE id = ?", (amt, b))

        try:
            for _ in range(15):
                conn.run_transaction(transfer)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    cur = setup.cursor()
    assert cur.execute("SELECT sum(bal), min(bal) >= 0 FROM acct").fetchone() == (600, True)


def test_a_down_replica_falls_back_with_a_warning(cluster: LocalCluster, client: Client) -> None:
    conn = connection(client)
    conn.cursor().execute("CREATE TABLE note (id INT PRIMARY KEY, v BIGINT)")
    conn.cursor().execute("INSERT INTO note VALUES (1, 10), (2, 32)")
    (name,) = cluster.kill("columnar")
    try:
        cur = conn.cursor().execute("SELECT sum(v) FROM note")
        assert cur.fetchall() == [(42,)]
        assert any("row store" in w for w in cur.warnings), cur.warnings
    finally:
        cluster.restart(name)
    assert client.columnar is not None

    def served() -> bool:
        before = client.columnar.fallbacks  # type: ignore[union-attr]
        c = conn.cursor().execute("SELECT sum(v) FROM note")
        return c.fetchall() == [(42,)] and client.columnar.fallbacks == before  # type: ignore[union-attr]

    cluster.wait_for("the columnar replica to serve again", lambda: served() or None, timeout=60)
