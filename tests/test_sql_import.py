"""Physical bulk import (``sql.load``, ``KvImport``) on a real cluster: PD,
3 stores with a small split threshold (1000 keys), 1 columnar node.

a. An import into an empty table: SQL reads on the row store and on the
   columnar replica at a later ts return exactly the source data (long
   values, NULLs, both index kinds usable); a read at a ts before the
   import's commit sees no row.
b. An import whose chunks land while the Regions split: nothing lost,
   nothing doubled, on either engine.
c. A non-empty table: ``mode="import"`` is refused with a typed error and
   writes nothing; ``mode="auto"`` falls back to transactions.
d. During an import, statements on the table get ``TableImportingError``,
   and a transaction that read the schema before the import began fails its
   commit; after it, the table is usable again.
e. Bad input (wrong types, oversized values, duplicate keys) fails with
   typed errors before anything is written. An import that fails midway
   leaves the table marked, with the way out in the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

import sql
from kvstore.client import Client
from kvstore.client.columnar import row_store_scan
from kvstore.errors import StorageError
from kvstore.server.cluster import LocalCluster
from kvstore.types import MAX_VALUE_SIZE
from sql import load
from sql.errors import DataError, IntegrityError, TableImportingError, TransactionRetryError
from sql.session import Session

pytestmark = pytest.mark.slow

SCHEMA = (
    "CREATE TABLE {name} (id BIGINT PRIMARY KEY, k INT NOT NULL, tag VARCHAR(12), "
    "note TEXT, amount DOUBLE, INDEX ik (k), UNIQUE KEY ut (tag))"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("importcluster"),
        stores=3,
        columnar=1,
        store_args=["--split-keys", "1000"],
        startup_timeout=120,
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


def source(n: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table(
        {
            "id": ids,
            "k": [i % 17 for i in ids],
            "tag": [None if i % 5 == 0 else f"t{i}" for i in ids],
            # Every 50th value is long: stored in the default CF, not inlined.
            "note": [("x" * 400 + str(i)) if i % 50 == 0 else f"n{i}" for i in ids],
            "amount": [None if i % 7 == 0 else i * 0.25 for i in ids],
        }
    )


def rows_of(t: pa.Table) -> list[dict[str, Any]]:
    return sorted(t.to_pylist(), key=lambda r: r["id"])


def select_all(conn: sql.Connection, table: str, engine: str, ts: int | None = None) -> pa.Table:
    as_of = f" AS OF TIMESTAMP {ts}" if ts is not None else ""
    cur = conn.cursor().execute(
        f"SELECT /*+ READ_FROM_STORAGE({engine}[{table}]) */ id, k, tag, note, amount "
        f"FROM {table}{as_of}"
    )
    return cur.fetch_arrow_table()


def assert_both_engines(client: Client, conn: sql.Connection, table: str, want: pa.Table) -> None:
    # Let the learner catch up first (Regions split a moment ago are still
    # being created there), so that the SQL read below is not the first to
    # wait, past its deadline on a loaded machine, and fall back.
    client.columnar_scan(table, ["id"], ts=client.tso(), max_wait=60.0)
    before = client.columnar.fallbacks if client.columnar else 0
    for engine in ("ROW", "COLUMNAR"):
        assert rows_of(select_all(conn, table, engine)) == rows_of(want), engine
    assert client.columnar is not None and client.columnar.fallbacks == before, (
        "the columnar node did not answer: the check compared the row store with itself"
    )


def importing_mark(conn: sql.Connection, table: str) -> int:
    s = conn.session
    txn = s.client.begin()
    try:
        return s.catalog.table(txn, table, importing_ok=True).importing
    finally:
        txn.rollback()


# --------------------------------------------------------------------------- a
def test_import_matches_the_source_on_both_engines(client: Client) -> None:
    conn = connection(client)
    conn.cursor().execute(SCHEMA.format(name="imp_a"))
    data = source(1500)
    before = client.tso()
    assert load.load_arrow(conn.session, "imp_a", data, mode="import") == 1500
    assert importing_mark(conn, "imp_a") == 0
    assert_both_engines(client, conn, "imp_a", data)
    # Before the import's commit_ts: the table existed, but held nothing.
    assert select_all(conn, "imp_a", "ROW", before).num_rows == 0
    assert client.columnar_scan("imp_a", ["id"], ts=before, max_wait=30.0).num_rows == 0
    assert row_store_scan(client, "imp_a", None, (), before).num_rows == 0
    # Both indexes were written: lookups through them find the rows.
    cur = conn.cursor()
    plan = " ".join(r[0] for r in cur.execute("EXPLAIN SELECT id FROM imp_a WHERE k = 3"))
    assert "index ik" in plan, plan
    got = sorted(r[0] for r in cur.execute("SELECT id FROM imp_a WHERE k = 3").fetchall())
    assert got == [i for i in range(1500) if i % 17 == 3]
    plan = " ".join(r[0] for r in cur.execute("EXPLAIN SELECT id FROM imp_a WHERE tag = 't42'"))
    assert "ut" in plan, plan
    assert cur.execute("SELECT id FROM imp_a WHERE tag = 't42'").fetchall() == [(42,)]
    # The unique index holds: a duplicate tag is refused by an ordinary insert.
    with pytest.raises(IntegrityError):
        cur.execute("INSERT INTO imp_a (id, k, tag) VALUES (99999, 1, 't42')")


# --------------------------------------------------------------------------- b
def test_import_across_region_splits(
    cluster: LocalCluster, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection(client)
    conn.cursor().execute(SCHEMA.format(name="imp_b"))
    # One chunk at a time; after the second, wait until the Regions holding
    # what was written split (1000 keys each), so the later chunks are routed
    # with a stale Region cache and meet EpochNotMatch.
    monkeypatch.setattr(load, "IMPORT_CHUNK_ROWS", 400)
    monkeypatch.setattr(load, "IMPORT_THREADS", 1)
    pd = cluster.pd()
    regions_before = len(pd.scan_regions(b"", b"", 0))
    stale_before = sum(
        client.backend.stats[k] for k in ("EpochNotMatchError", "KeyNotInRegionError")
    )
    real = client.backend.kv_import
    calls = [0]

    def import_then_wait_for_split(pairs: Any, commit_ts: int, table_id: int) -> int:
        n = real(pairs, commit_ts, table_id)
        calls[0] += 1
        if calls[0] == 2:
            cluster.wait_for(
                "a split", lambda: len(pd.scan_regions(b"", b"", 0)) > regions_before, 60
            )
        return n

    monkeypatch.setattr(client.backend, "kv_import", import_then_wait_for_split)
    data = source(4000, start=10_000)
    assert load.load_arrow(conn.session, "imp_b", data, mode="import") == 4000
    monkeypatch.undo()
    stale = sum(client.backend.stats[k] for k in ("EpochNotMatchError", "KeyNotInRegionError"))
    assert stale > stale_before, "no chunk met a split: the test did not test it"
    cluster.wait_for("each Region with a learner", cluster.fully_replicated, 120)
    assert_both_engines(client, conn, "imp_b", data)
    n = conn.cursor().execute("SELECT count(*), count(DISTINCT id) FROM imp_b").fetchall()
    assert n == [(4000, 4000)]


# --------------------------------------------------------------------------- c
def test_non_empty_table_is_refused_or_loaded_by_transactions(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection(client)
    cur = conn.cursor()
    cur.execute(SCHEMA.format(name="imp_c"))
    cur.execute("INSERT INTO imp_c (id, k, tag) VALUES (-1, 0, 'first')")
    with pytest.raises(load.TableNotEmptyError):
        load.load_arrow(conn.session, "imp_c", source(100), mode="import")
    assert cur.execute("SELECT count(*) FROM imp_c").fetchall() == [(1,)]
    assert importing_mark(conn, "imp_c") == 0
    assert load.load_arrow(conn.session, "imp_c", source(100), mode="auto") == 100
    assert cur.execute("SELECT count(*) FROM imp_c").fetchall() == [(101,)]
    # Rows that arrive between the first look and the mark: found by the
    # check under the mark, which is lifted again; transactions load the data.
    real_is_empty = load._is_empty
    looks = [0]

    def first_look_misses_the_rows(c: Client, info: Any) -> bool:
        looks[0] += 1
        return True if looks[0] == 1 else real_is_empty(c, info)

    monkeypatch.setattr(load, "_is_empty", first_look_misses_the_rows)
    assert load.load_arrow(conn.session, "imp_c", source(50, start=500), mode="auto") == 50
    assert looks[0] == 2
    assert cur.execute("SELECT count(*) FROM imp_c").fetchall() == [(151,)]
    assert importing_mark(conn, "imp_c") == 0


# --------------------------------------------------------------------------- d
def test_statements_during_an_import_get_a_typed_error(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection(client)
    conn.cursor().execute(SCHEMA.format(name="imp_d"))
    # A transaction that read the schema (and buffered a row) before the import.
    early = connection(client, autocommit=False)
    early.cursor().execute("INSERT INTO imp_d (id, k) VALUES (-5, 1)")
    seen: list[str] = []
    real_send = load._send

    def send(*args: Any) -> int:
        # The table is marked and checked empty; no record is written yet.
        other = connection(client)
        with pytest.raises(TableImportingError):
            other.cursor().execute("INSERT INTO imp_d (id, k) VALUES (-6, 1)")
        with pytest.raises(TableImportingError):
            other.cursor().execute("SELECT count(*) FROM imp_d")
        with pytest.raises(TransactionRetryError):
            early.commit()
        seen.append("checked")
        return real_send(*args)

    monkeypatch.setattr(load, "_send", send)
    assert load.load_arrow(conn.session, "imp_d", source(200), mode="import") == 200
    assert seen == ["checked"]
    cur = conn.cursor()
    assert cur.execute("SELECT count(*), min(id) FROM imp_d").fetchall() == [(200, 0)]
    cur.execute("INSERT INTO imp_d (id, k) VALUES (-6, 1)")
    assert cur.execute("SELECT count(*) FROM imp_d").fetchall() == [(201,)]


# --------------------------------------------------------------------------- e
def test_bad_input_fails_before_anything_is_written(client: Client) -> None:
    conn = connection(client)
    conn.cursor().execute(SCHEMA.format(name="imp_e"))
    bad_type = source(50).set_column(1, "k", pa.array(["x"] * 50))
    with pytest.raises(DataError):
        load.load_arrow(conn.session, "imp_e", bad_type, mode="import")
    out_of_range = source(50).set_column(1, "k", pa.array([2**40] * 50, pa.int64()))
    with pytest.raises(DataError):
        load.load_arrow(conn.session, "imp_e", out_of_range, mode="import")
    huge = source(3).set_column(3, "note", pa.array(["y" * (MAX_VALUE_SIZE + 1), "a", "b"]))
    with pytest.raises(DataError, match="too large"):
        load.load_arrow(conn.session, "imp_e", huge, mode="import")
    dup_pk = pa.concat_tables([source(20), source(20).slice(7, 1)])
    with pytest.raises(IntegrityError, match="primary key"):
        load.load_arrow(conn.session, "imp_e", dup_pk, mode="import")
    dup_tag = source(20).set_column(2, "tag", pa.array(["same"] * 20))
    with pytest.raises(IntegrityError, match="unique index 'ut'"):
        load.load_arrow(conn.session, "imp_e", dup_tag, mode="import")
    assert conn.cursor().execute("SELECT count(*) FROM imp_e").fetchall() == [(0,)]
    assert importing_mark(conn, "imp_e") == 0


def test_a_failed_import_leaves_the_table_marked(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection(client)
    cur = conn.cursor()
    cur.execute(SCHEMA.format(name="imp_f"))
    monkeypatch.setattr(load, "IMPORT_CHUNK_ROWS", 100)
    real = client.backend.kv_import
    calls = [0]

    def failing(pairs: Any, commit_ts: int, table_id: int) -> int:
        calls[0] += 1
        if calls[0] > 2:
            raise StorageError("injected: disk full")
        return real(pairs, commit_ts, table_id)

    monkeypatch.setattr(client.backend, "kv_import", failing)
    with pytest.raises(sql.Error, match="DROP TABLE imp_f"):
        load.load_arrow(conn.session, "imp_f", source(1000), mode="import")
    monkeypatch.undo()
    assert importing_mark(conn, "imp_f") != 0
    with pytest.raises(TableImportingError, match="DROP TABLE imp_f"):
        cur.execute("SELECT count(*) FROM imp_f")
    cur.execute("DROP TABLE imp_f")
    cur.execute(SCHEMA.format(name="imp_f"))
    assert load.load_arrow(conn.session, "imp_f", source(1000)) == 1000
    assert cur.execute("SELECT count(*) FROM imp_f").fetchall() == [(1000,)]
