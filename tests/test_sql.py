"""The SQL layer over an embedded store: DDL, DML, transactions, typed errors,
DB-API conformance. (TPC-H and the cluster paths are in test_sql_tpch.py and
test_sql_cluster.py.)"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import kvstore
import sql
from kvstore.tablecodec import index_prefix, row_range
from sql.catalog import SchemaChangedError
from sql.errors import ParseError, TransactionRetryError, UnknownColumnError, UnknownTableError
from sql.load import load_arrow


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sql.Connection]:
    conn = sql.connect(str(tmp_path / "db"), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def rows(conn: sql.Connection, q: str, params: tuple = ()) -> list[tuple]:
    return conn.cursor().execute(q, params).fetchall()


def explain(conn: sql.Connection, q: str) -> str:
    return "\n".join(r[0] for r in rows(conn, "EXPLAIN " + q))


def make_accounts(conn: sql.Connection) -> None:
    c = conn.cursor()
    c.execute(
        "CREATE TABLE acct (id BIGINT PRIMARY KEY, owner VARCHAR(20) NOT NULL, "
        "balance DECIMAL(12,2) NOT NULL DEFAULT 0, opened DATE, UNIQUE KEY u_owner (owner))"
    )
    c.execute(
        "INSERT INTO acct (id, owner, balance, opened) VALUES "
        "(1, 'ann', 100.50, '2024-01-02'), (2, 'bob', 20, DATE '2024-02-03'), (3, 'cy', 0, NULL)"
    )


# ---------------------------------------------------------------- DB-API
def test_module_globals() -> None:
    assert sql.apilevel == "2.0"
    assert sql.paramstyle == "qmark"
    assert sql.threadsafety == 1
    for name in (
        "Warning",
        "Error",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        assert issubclass(getattr(sql, name), Exception)
    assert issubclass(sql.IntegrityError, sql.DatabaseError)
    assert issubclass(sql.DatabaseError, sql.Error)
    assert issubclass(sql.Error, kvstore.KVError)  # one error tree


def test_cursor_fetch_and_description(db: sql.Connection) -> None:
    make_accounts(db)
    cur = db.cursor()
    cur.execute("SELECT id, owner, balance, opened FROM acct WHERE id = ?", (1,))
    assert [d[0] for d in cur.description] == ["id", "owner", "balance", "opened"]
    assert cur.description[2][4:6] == (12, 2)
    assert cur.description[1][1] == sql.STRING
    assert cur.description[0][1] == sql.NUMBER
    assert cur.fetchone() == (1, "ann", decimal.Decimal("100.50"), dt.date(2024, 1, 2))
    assert cur.fetchone() is None
    cur.execute("SELECT id FROM acct WHERE id IN (1, 2, 3)")
    assert cur.rowcount == 3
    cur.arraysize = 2
    assert len(cur.fetchmany()) == 2
    assert cur.fetchall() == [(3,)]
    cur.execute("SELECT * FROM acct WHERE id = 2")
    t = cur.fetch_arrow_table()
    assert isinstance(t, pa.Table) and t.column("owner").to_pylist() == ["bob"]
    cur.execute("UPDATE acct SET balance = balance + 1 WHERE id = 2")
    assert cur.rowcount == 1 and cur.description is None
    with pytest.raises(sql.ProgrammingError):
        cur.fetchall()  # no result set
    cur.close()
    with pytest.raises(sql.InterfaceError):
        cur.execute("SELECT 1")


def test_result_columns_are_named_as_written(db: sql.Connection) -> None:
    make_accounts(db)
    cur = db.cursor().execute(
        "SELECT owner AS who, sum(balance), count(*) FROM acct GROUP BY owner"
    )
    assert [d[0] for d in cur.description] == ["who", "SUM(balance)", "COUNT(*)"]
    cur = db.cursor().execute("SELECT * FROM acct WHERE balance > 50")
    assert [d[0] for d in cur.description] == ["id", "owner", "balance", "opened"]


def test_executemany_and_rowcount(db: sql.Connection) -> None:
    make_accounts(db)
    cur = db.cursor()
    cur.executemany("INSERT INTO acct (id, owner) VALUES (?, ?)", [(10, "d"), (11, "e"), (12, "f")])
    assert cur.rowcount == 3
    got = rows(db, "SELECT owner, balance FROM acct WHERE id = 11")
    assert got == [("e", decimal.Decimal("0.00"))]
    cur.execute("DELETE FROM acct WHERE id IN (10, 11, 99)")
    assert cur.rowcount == 2


def test_autocommit_off_commit_and_rollback(tmp_path: Path) -> None:
    conn = sql.connect(str(tmp_path / "db"))  # PEP 249: autocommit starts off
    try:
        assert conn.autocommit is False
        make_accounts(conn)  # DDL commits; the INSERT opens a transaction
        conn.commit()
        conn.cursor().execute("INSERT INTO acct (id, owner) VALUES (7, 'gus')")
        conn.rollback()
        assert rows(conn, "SELECT id FROM acct WHERE id = 7") == []
        conn.cursor().execute("INSERT INTO acct (id, owner) VALUES (8, 'hal')")
        conn.commit()
        conn.commit()  # nothing open: a no-op
        assert rows(conn, "SELECT owner FROM acct WHERE id = 8") == [("hal",)]
    finally:
        conn.close()


def test_explicit_transaction_reads_its_own_writes(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute("BEGIN")
    c.execute("UPDATE acct SET balance = 5 WHERE owner = 'cy'")
    c.execute("INSERT INTO acct (id, owner) VALUES (4, 'dee')")
    assert c.execute("SELECT count(*) FROM acct").fetchone() == (4,)
    other = sql.Connection(sql.session.Session(db.session.client, autocommit=True))
    assert rows(other, "SELECT count(*) FROM acct") == [(3,)]  # not committed yet
    c.execute("COMMIT")
    assert rows(other, "SELECT balance FROM acct WHERE id = 3") == [(decimal.Decimal("5.00"),)]


# ---------------------------------------------------------------- typed errors
def test_syntax_error_has_line_and_column(db: sql.Connection) -> None:
    with pytest.raises(ParseError) as e:
        db.cursor().execute("SELECT id\nFROM acct WHERE id = = 1")
    assert isinstance(e.value, sql.ProgrammingError)
    assert e.value.line == 2 and e.value.column > 0
    assert "line 2" in str(e.value)


def test_unknown_table_and_column(db: sql.Connection) -> None:
    make_accounts(db)
    with pytest.raises(UnknownTableError):
        db.cursor().execute("SELECT * FROM nope")
    with pytest.raises(UnknownColumnError):
        db.cursor().execute("INSERT INTO acct (id, nope) VALUES (1, 2)")
    with pytest.raises(sql.ProgrammingError):
        db.cursor().execute("SELECT nope FROM acct WHERE balance > 1")
    with pytest.raises(UnknownColumnError):
        db.cursor().execute("UPDATE acct SET nope = 1 WHERE id = 1")


@pytest.mark.parametrize(
    "stmt, error",
    [
        ("INSERT INTO acct (id, owner) VALUES (9, NULL)", sql.DataError),  # NOT NULL
        ("INSERT INTO acct (id, owner) VALUES (9, 'x' )", None),
        ("INSERT INTO acct (id, owner) VALUES ('nine', 'x')", sql.DataError),  # type
        ("INSERT INTO acct (id, owner) VALUES (9, 'a-name-longer-than-twenty')", sql.DataError),
        ("INSERT INTO acct (id, owner, balance) VALUES (9, 'x', 1.234)", sql.DataError),  # scale
        ("INSERT INTO acct (id, owner, opened) VALUES (9, 'x', 'yesterday')", sql.DataError),
        ("INSERT INTO acct (id, owner) VALUES (1, 'dup')", sql.IntegrityError),  # primary key
        ("INSERT INTO acct (id, owner) VALUES (9, 'ann')", sql.IntegrityError),  # unique index
        ("INSERT INTO acct (id) VALUES (9, 'x')", sql.ProgrammingError),  # arity
        ("UPDATE acct SET owner = 'bob' WHERE id = 1", sql.IntegrityError),  # unique index
        ("UPDATE acct SET id = 2 WHERE id = 1", sql.IntegrityError),  # primary key
    ],
)
def test_bad_statements_are_typed_and_write_nothing(
    db: sql.Connection, stmt: str, error: type[Exception] | None
) -> None:
    make_accounts(db)
    before = rows(db, "SELECT * FROM acct ORDER BY id")
    if error is None:
        db.cursor().execute(stmt)
        assert rows(db, "SELECT count(*) FROM acct") == [(4,)]
        return
    with pytest.raises(error):
        db.cursor().execute(stmt)
    assert rows(db, "SELECT * FROM acct ORDER BY id") == before


def test_failed_statement_inside_a_transaction_keeps_the_earlier_ones(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute("BEGIN")
    c.execute("INSERT INTO acct (id, owner) VALUES (20, 'p')")
    with pytest.raises(sql.IntegrityError):
        # The second row collides: the whole statement is taken back.
        c.execute("INSERT INTO acct (id, owner) VALUES (21, 'q'), (1, 'r')")
    c.execute("COMMIT")
    assert rows(db, "SELECT id FROM acct WHERE id IN (20, 21)") == [(20,)]


# ---------------------------------------------------------------- DML semantics
def test_on_duplicate_key_update(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute(
        "INSERT INTO acct (id, owner, balance) VALUES (1, 'ann', 7), (5, 'eve', 1) "
        "ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance)"
    )
    assert c.rowcount == 3  # MySQL: 2 for the updated row, 1 for the new one
    assert rows(db, "SELECT id, balance FROM acct WHERE id IN (1, 5) ORDER BY id") == [
        (1, decimal.Decimal("107.50")),
        (5, decimal.Decimal("1.00")),
    ]


def test_update_of_the_primary_key_and_index_maintenance(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute("UPDATE acct SET id = 30, owner = 'zed' WHERE id = 2")
    assert rows(db, "SELECT id, owner FROM acct WHERE owner = 'zed'") == [(30, "zed")]
    assert rows(db, "SELECT id FROM acct WHERE owner = 'bob'") == []
    assert rows(db, "SELECT id FROM acct WHERE id = 2") == []
    c.execute("DELETE FROM acct WHERE owner = 'zed'")
    assert rows(db, "SELECT count(*) FROM acct") == [(2,)]
    # 'zed' is free again: the unique index entry went with the row.
    c.execute("INSERT INTO acct (id, owner) VALUES (31, 'zed')")
    assert_index_consistent(db, "acct")


def test_update_and_delete_with_general_where(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute("UPDATE acct SET balance = balance * 2 WHERE balance > 10")
    assert c.rowcount == 2
    assert rows(db, "SELECT id, balance FROM acct ORDER BY id") == [
        (1, decimal.Decimal("201.00")),
        (2, decimal.Decimal("40.00")),
        (3, decimal.Decimal("0.00")),
    ]
    c.execute("DELETE FROM acct WHERE opened IS NULL OR balance < 50")
    assert c.rowcount == 2
    assert rows(db, "SELECT id FROM acct") == [(1,)]


def test_insert_select(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute("CREATE TABLE rich (id BIGINT PRIMARY KEY, owner VARCHAR(20))")
    c.execute("INSERT INTO rich (id, owner) SELECT id, owner FROM acct WHERE balance >= 20")
    assert c.rowcount == 2
    assert rows(db, "SELECT owner FROM rich ORDER BY id") == [("ann",), ("bob",)]


# ---------------------------------------------------------------- DDL
def test_ddl_create_alter_drop(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    with pytest.raises(sql.ProgrammingError):
        c.execute("CREATE TABLE acct (id BIGINT PRIMARY KEY)")
    c.execute("CREATE TABLE IF NOT EXISTS acct (id BIGINT PRIMARY KEY)")
    c.execute("ALTER TABLE acct ADD COLUMN tier INT NOT NULL DEFAULT 3")
    assert rows(db, "SELECT tier FROM acct WHERE id = 1") == [(3,)]  # old rows take the default
    c.execute("INSERT INTO acct (id, owner, tier) VALUES (9, 'ivy', 1)")
    assert rows(db, "SELECT id, tier FROM acct WHERE tier < 3") == [(9, 1)]
    assert ("acct",) in rows(db, "SHOW TABLES")
    described = rows(db, "DESCRIBE acct")
    assert described[0][:4] == ("id", "BIGINT", "NO", "PRI")
    c.execute("DROP TABLE acct")
    with pytest.raises(UnknownTableError):
        c.execute("SELECT * FROM acct")
    c.execute("DROP TABLE IF EXISTS acct")
    with pytest.raises(UnknownTableError):
        c.execute("DROP TABLE acct")
    c.execute("CREATE TABLE acct (id BIGINT PRIMARY KEY, v TEXT)")  # a new, empty table
    assert rows(db, "SELECT count(*) FROM acct") == [(0,)]


def test_create_table_needs_a_primary_key_and_known_types(db: sql.Connection) -> None:
    with pytest.raises(sql.ProgrammingError):
        db.cursor().execute("CREATE TABLE t (a INT)")
    with pytest.raises(sql.NotSupportedError):
        db.cursor().execute("CREATE TABLE t (a INT PRIMARY KEY, b JSON)")
    with pytest.raises(sql.ProgrammingError):
        db.cursor().execute("CREATE TABLE t (a INT, PRIMARY KEY (b))")


def test_create_index_backfills_and_unique_duplicates_are_refused(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute("INSERT INTO acct (id, owner, balance) VALUES (4, 'dee', 20)")
    c.execute("CREATE INDEX by_balance ON acct (balance)")
    assert c.rowcount == 4
    assert rows(db, "SELECT id FROM acct WHERE balance = 20 ORDER BY id") == [(2,), (4,)]
    assert "index by_balance" in explain(db, "SELECT id FROM acct WHERE balance = 20")
    with pytest.raises(sql.IntegrityError):
        c.execute("CREATE UNIQUE INDEX u_balance ON acct (balance)")
    # The failed index was withdrawn: inserting a duplicate balance still works.
    c.execute("INSERT INTO acct (id, owner, balance) VALUES (5, 'eli', 20)")
    assert_index_consistent(db, "acct")


def assert_index_consistent(conn: sql.Connection, table: str) -> None:
    """Every row has exactly its index entries and every entry has its row."""
    client = conn.session.client
    txn = client.begin()
    try:
        info = conn.session.catalog.table(txn, table)
        start, end = row_range(info.id)
        row_pairs = txn.scan(start, end)
        from kvstore.tablecodec import decode_rows

        decoded = decode_rows(info, [v for _, v in row_pairs]).to_pylist()
        want = set()
        for (k, _), row in zip(row_pairs, decoded, strict=True):
            for key, value, _ in info.index_entries(k[len(start) :], row):
                want.add((key, value))
        have = set()
        for idx in info.indexes:
            p = index_prefix(info.id, idx.id)
            have |= set(txn.scan(p, p + b"\xff" * 9))
        assert have == want
    finally:
        txn.rollback()


# ---------------------------------------------------------------- isolation
def test_select_for_update_prevents_write_skew(db: sql.Connection) -> None:
    c = db.cursor()
    c.execute("CREATE TABLE oncall (id INT PRIMARY KEY, doctor VARCHAR(10), on_duty BOOLEAN)")
    c.execute("INSERT INTO oncall VALUES (1, 'alice', TRUE), (2, 'bob', TRUE)")
    a = sql.Connection(sql.session.Session(db.session.client, autocommit=False))
    b = sql.Connection(sql.session.Session(db.session.client, autocommit=False))
    ca, cb = a.cursor(), b.cursor()
    for cur in (ca, cb):
        cur.execute("SELECT count(*) FROM oncall WHERE id IN (1, 2) AND on_duty FOR UPDATE")
        assert cur.fetchone() == (2,)
    ca.execute("UPDATE oncall SET on_duty = FALSE WHERE id = 1")
    cb.execute("UPDATE oncall SET on_duty = FALSE WHERE id = 2")
    a.commit()
    with pytest.raises(TransactionRetryError):
        b.commit()
    assert rows(db, "SELECT count(*) FROM oncall WHERE on_duty") == [(1,)]


def test_select_for_update_locks_an_absent_key(db: sql.Connection) -> None:
    c = db.cursor()
    c.execute("CREATE TABLE seat (id INT PRIMARY KEY, who VARCHAR(10))")
    c.execute("CREATE TABLE log (id INT PRIMARY KEY, note VARCHAR(20))")
    a = sql.Connection(sql.session.Session(db.session.client, autocommit=False))
    ca = a.cursor()
    ca.execute("SELECT who FROM seat WHERE id = 7 FOR UPDATE")
    assert ca.fetchall() == []  # free: A decides to note that and take it later
    c.execute("INSERT INTO seat VALUES (7, 'b')")  # B takes it meanwhile (autocommit)
    ca.execute("INSERT INTO log VALUES (1, 'seat 7 was free')")
    with pytest.raises(TransactionRetryError):
        a.commit()


def test_schema_change_aborts_a_concurrent_writer(db: sql.Connection) -> None:
    make_accounts(db)
    w = sql.Connection(sql.session.Session(db.session.client, autocommit=False))
    w.cursor().execute("INSERT INTO acct (id, owner) VALUES (40, 'wes')")
    db.cursor().execute("CREATE INDEX by_opened ON acct (opened)")
    with pytest.raises(SchemaChangedError):
        w.commit()
    assert rows(db, "SELECT id FROM acct WHERE id = 40") == []
    assert_index_consistent(db, "acct")


def test_create_index_under_concurrent_writers_misses_no_row(db: sql.Connection) -> None:
    db.cursor().execute("CREATE TABLE ev (id BIGINT PRIMARY KEY, kind INT NOT NULL)")
    client = db.session.client
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        conn = sql.Connection(sql.session.Session(client, autocommit=True))
        i = 0
        try:
            while not stop.is_set() or i < 20:
                conn.cursor().execute("INSERT INTO ev VALUES (?, ?)", (base + i, i % 7))
                if i % 3 == 0:
                    conn.cursor().execute("UPDATE ev SET kind = kind + 1 WHERE id = ?", (base + i,))
                i += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k * 100_000,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        db.cursor().execute("CREATE INDEX by_kind ON ev (kind)")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert_index_consistent(db, "ev")
    n = rows(db, "SELECT count(*) FROM ev")[0][0]
    by_index = sum(rows(db, "SELECT count(*) FROM ev WHERE kind = ?", (k,))[0][0] for k in range(8))
    assert by_index == n


def test_as_of_timestamp_reads_history(db: sql.Connection) -> None:
    make_accounts(db)
    ts = db.session.client.tso()
    db.cursor().execute("UPDATE acct SET balance = 0 WHERE id = 1")
    db.cursor().execute("DELETE FROM acct WHERE id = 2")
    assert rows(db, f"SELECT id, balance FROM acct AS OF TIMESTAMP {ts} ORDER BY id") == [
        (1, decimal.Decimal("100.50")),
        (2, decimal.Decimal("20.00")),
        (3, decimal.Decimal("0.00")),
    ]
    assert rows(db, "SELECT balance FROM acct WHERE id = 1") == [(decimal.Decimal("0.00"),)]


def test_explain_names_the_engine_per_table(db: sql.Connection) -> None:
    make_accounts(db)
    plan = explain(db, "SELECT owner FROM acct WHERE id = 1")
    assert "acct" in plan and "point get" in plan
    plan = explain(db, "SELECT sum(balance) FROM acct")
    assert "row (no columnar replica)" in plan  # embedded: no replica to route to
    hinted = explain(db, "SELECT /*+ READ_FROM_STORAGE(COLUMNAR[acct]) */ sum(balance) FROM acct")
    assert "columnar (hint)" in hinted
    # Forced onto an absent replica: it falls back, with a warning, same answer.
    cur = db.cursor()
    cur.execute("SELECT /*+ READ_FROM_STORAGE(COLUMNAR[acct]) */ sum(balance) FROM acct")
    assert cur.fetchall() == [(decimal.Decimal("120.50"),)]
    assert any("row store" in w for w in cur.warnings)


def test_session_engine_setting(db: sql.Connection) -> None:
    make_accounts(db)
    c = db.cursor()
    c.execute("SET htapkv_read_engine = 'columnar'")
    assert "columnar (session setting)" in explain(db, "SELECT * FROM acct")
    with pytest.raises(sql.ProgrammingError):
        c.execute("SET htapkv_read_engine = 'tape'")
    with pytest.raises(sql.NotSupportedError):
        c.execute("SET no_such_thing = 1")


# ---------------------------------------------------------------- bulk load
def test_load_arrow_and_typed_refusal(db: sql.Connection) -> None:
    make_accounts(db)
    data = pa.table({"id": [100, 101], "owner": ["x1", "x2"], "balance": [1.5, 2.25]})
    assert load_arrow(db.session, "acct", data) == 2
    assert rows(db, "SELECT balance FROM acct WHERE id = 101") == [(decimal.Decimal("2.25"),)]
    with pytest.raises(sql.DataError):
        load_arrow(db.session, "acct", pa.table({"id": [102], "owner": [None]}))
    with pytest.raises(sql.IntegrityError):
        load_arrow(db.session, "acct", pa.table({"id": [100], "owner": ["again"]}))
    with pytest.raises(sql.ProgrammingError):
        load_arrow(db.session, "acct", pa.table({"id": [103], "nope": [1]}))
    assert rows(db, "SELECT count(*) FROM acct") == [(5,)]
    assert_index_consistent(db, "acct")


def test_scans_alike_share_one_read(db: sql.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two scans of one table with the same filters (a self-join) are one
    read of the columns both need; different filters are separate reads."""
    from sql import session as session_mod

    cur = db.cursor()
    cur.execute("CREATE TABLE emp (id INT PRIMARY KEY, boss INT, name VARCHAR(10), pay INT)")
    cur.execute("INSERT INTO emp VALUES (1, NULL, 'ann', 30), (2, 1, 'bob', 20), (3, 1, 'cy', 25)")
    reads: list[list[str]] = []
    real = session_mod._Router._scan

    def counted(self: Any, node: Any) -> Any:
        reads.append(list(node.columns))
        return real(self, node)

    monkeypatch.setattr(session_mod._Router, "_scan", counted)
    rows = cur.execute(
        "SELECT e.name, b.name FROM emp e JOIN emp b ON e.boss = b.id ORDER BY e.name"
    ).fetchall()
    assert rows == [("bob", "ann"), ("cy", "ann")]
    assert reads == [["id", "boss", "name"]]  # one read, the union of both scans' columns
    reads.clear()
    rows = cur.execute(
        "SELECT e.name, b.name FROM emp e JOIN emp b ON e.boss = b.id"
        " WHERE e.pay < 30 AND b.pay >= 30 ORDER BY e.name"
    ).fetchall()
    assert rows == [("bob", "ann"), ("cy", "ann")]
    assert len(reads) == 2  # different filters: two reads


def test_storage_compares_two_columns_only_of_one_type() -> None:
    """A pushed filter comparing two columns reaches storage only when both
    have the same SQL type (storage compares them as Arrow does; sql.expr
    would first bring, say, an INT and a DECIMAL to a common type)."""
    from kvstore.tablecodec import make_table
    from kvstore.types import ColumnRef
    from sql.session import _equalities, _pushable

    info = make_table(
        1,
        "li",
        [("id", "BIGINT"), ("ship", "DATE"), ("commit", "DATE"), ("price", "DECIMAL(15,2)")],
        "id",
    )
    assert _pushable(info, ("ship", "<", ColumnRef("commit")))
    assert not _pushable(info, ("id", "<", ColumnRef("price")))  # BIGINT vs DECIMAL
    assert not _pushable(info, ("ship", "<", ColumnRef("nope")))
    # Never mistaken for a key lookup's value.
    assert _equalities([("id", "=", ColumnRef("price")), ("ship", "=", dt.date(2024, 1, 1))]) == {
        "ship": dt.date(2024, 1, 1)
    }
