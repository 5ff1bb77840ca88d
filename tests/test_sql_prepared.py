"""Prepared statements (sql/prepared.py): the same answers and the same
errors as the general path (bind into a copy of the statement, then run it).

Every statement here runs on two embedded stores with the same history: one
session prepares, the other never does; results and errors must be equal,
and the prepared session must really have answered through its prepared form.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import sql
from sql import prepared
from sql.session import Session
from sql.values import literal, param_value, to_sql_literal

D = decimal.Decimal

SCHEMA = [
    "CREATE TABLE acct (id BIGINT PRIMARY KEY, owner VARCHAR(20) NOT NULL, "
    "balance DECIMAL(12,2) NOT NULL DEFAULT 0, rate DOUBLE, n INT, opened DATE, "
    "seen TIMESTAMP, UNIQUE KEY u_owner (owner))",
    "CREATE TABLE line (w INT NOT NULL, d INT NOT NULL, k INT NOT NULL, qty INT NOT NULL, "
    "amount DECIMAL(8,2), PRIMARY KEY (w, d, k))",
    "INSERT INTO acct (id, owner, balance, rate, n, opened, seen) VALUES "
    "(1, 'ann', 100.50, 0.5, 3, '2024-01-02', '2024-01-02 03:04:05'), "
    "(2, 'bob', 20, NULL, NULL, NULL, NULL), (3, 'cy', 0, 2.25, -4, '2025-05-06', NULL)",
    "INSERT INTO line VALUES (1, 1, 1, 5, 1.25), (1, 1, 2, 6, NULL), (1, 2, 1, 7, 3.00)",
]


class Pair:
    """Two stores, one session each: ``fast`` prepares, ``slow`` does not."""

    def __init__(self, tmp: Path) -> None:
        self.fast = sql.connect(str(tmp / "fast"), autocommit=True)
        self.slow = sql.connect(str(tmp / "slow"), autocommit=True)
        self.prepared_runs = 0
        for s in SCHEMA:
            self.run(s)

    def _one(self, conn: sql.Connection, text: str, params: Sequence[Any]) -> Any:
        cur = conn.cursor()
        try:
            cur.execute(text, params)
        except sql.Error as e:
            return type(e), str(e)
        if cur.description is None:
            return None, cur.rowcount
        return cur.fetchall(), cur.rowcount, cur.description, cur.warnings

    def run(self, text: str, params: Sequence[Any] = (), *, expect_prepared: bool = False) -> Any:
        session = self.fast.session
        real = Session._run_prepared
        hits: list[int] = []

        def counting(s: Session, *a: Any, **k: Any) -> Any:
            out = real(s, *a, **k)
            hits.append(1)
            return out

        with mock.patch.object(Session, "_run_prepared", counting):
            fast = self._one(self.fast, text, params)
        with mock.patch("sql.session.prepare", return_value=None):
            slow = self._one(self.slow, text, params)
        assert fast == slow, (text, params)
        if expect_prepared:
            assert hits, f"not answered by the prepared form: {text} {params}"
            assert session.parse(text)[0].prepared is not None
        return fast

    def close(self) -> None:
        self.fast.close()
        self.slow.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        p.close()


ALL = "SELECT * FROM acct WHERE id IN (1, 2, 3, 4, 5, 6, 7)"


def test_point_selects_match_the_general_path(pair: Pair) -> None:
    for i in (1, 2, 3, 4, True):
        pair.run("SELECT owner, balance FROM acct WHERE id = ?", (i,), expect_prepared=True)
        pair.run("SELECT * FROM acct WHERE ? = id", (i,), expect_prepared=True)
    pair.run("SELECT ID, Owner FROM acct WHERE id = ?", (1,))
    pair.run("SELECT id FROM acct WHERE owner = ?", ("bob",), expect_prepared=True)
    pair.run("SELECT id FROM acct WHERE owner = ?", ("nobody",), expect_prepared=True)
    pair.run("SELECT * FROM acct WHERE id IN (?, ?, 3)", (2, 1), expect_prepared=True)
    pair.run("SELECT * FROM acct WHERE id = ? FOR UPDATE", (3,), expect_prepared=True)
    pair.run("SELECT qty FROM line WHERE w = ? AND d = ? AND k = ?", (1, 1, 2))
    pair.run("SELECT qty FROM line WHERE k = 1 AND d = ? AND w = ?", (1, 1))
    # Not a key: the prepared form gives way to the planner, same answer.
    pair.run("SELECT k, qty FROM line WHERE w = ? AND d = ?", (1, 1))
    pair.run("SELECT id FROM acct WHERE n = ?", (3,))
    pair.run("SELECT id FROM acct WHERE id = ? AND n = ?", (1, 3))
    pair.run("SELECT nope FROM acct WHERE id = ?", (1,))
    pair.run("SELECT * FROM nope WHERE id = ?", (1,))
    # Values converted as the general path converts them.
    pair.run("SELECT id FROM acct WHERE id = ?", (1.0,))
    pair.run("SELECT id FROM acct WHERE id = ?", (D("1"),))
    pair.run("SELECT id FROM acct WHERE id = ?", ("1",))
    pair.run("SELECT id FROM acct WHERE id = ?", (2**70,))


def test_index_and_key_prefix_selects_match_the_planner(pair: Pair) -> None:
    pair.run("CREATE INDEX by_n ON acct (n)")
    pair.run("CREATE INDEX by_qty ON line (qty)")
    pair.run(
        "INSERT INTO line VALUES (1, 1, 3, 6, 2.00), (1, 1, 4, 5, NULL), (2, 1, 1, 6, 1.00), "
        "(1, 2, 2, 6, 4.00)"
    )
    pair.run("INSERT INTO acct (id, owner, n) VALUES (7, 'g', 3), (8, 'h', 3)")
    for text, params in [
        ("SELECT k, qty, amount FROM line WHERE w = ? AND d = ?", (1, 1)),
        ("SELECT * FROM line WHERE d = ? AND w = ? ORDER BY k DESC", (1, 1)),
        ("SELECT k FROM line WHERE w = ? ORDER BY qty, d DESC", (1,)),  # ties on qty
        ("SELECT w, d, k FROM line WHERE qty = ? ORDER BY k", (6,)),  # the index
        ("SELECT w, d, k FROM line WHERE qty = ?", (6,)),
        ("SELECT id, owner FROM acct WHERE n = ? ORDER BY owner DESC", (3,)),
        ("SELECT id FROM acct WHERE n = ?", (99,)),
        ("SELECT max(k) FROM line WHERE w = ? AND d = ?", (1, 1)),
        ("SELECT MIN(amount) AS low FROM line WHERE w = ? AND d = ?", (1, 1)),
        ("SELECT max(amount) FROM line WHERE w = ?", (2,)),
        ("SELECT max(line.k) FROM line WHERE w = ? AND d = ?", (9, 9)),  # no rows: NULL
        ("SELECT min(d) FROM line WHERE qty = ?", (6,)),
        ("SELECT max(owner) FROM acct WHERE n = ?", (3,)),
        ("SELECT min(opened) FROM acct WHERE n = ?", (3,)),
        ("SELECT max(seen) FROM acct WHERE n = ?", (3,)),
    ]:
        pair.run(text, params, expect_prepared=True)
    for text, params in [
        ("SELECT k FROM line WHERE w = ? AND d = ? ORDER BY amount", (1, 1)),  # nullable key
        ("SELECT k FROM line WHERE w = ? AND qty = ?", (1, 6)),  # neither path exactly
        ("SELECT k FROM line WHERE d = ?", (1,)),  # not a prefix
        ("SELECT k, k FROM line WHERE w = ? AND d = ?", (1, 1)),
        ("SELECT k FROM line WHERE w = ? AND d = ? ORDER BY nope", (1, 1)),
        ("SELECT k FROM line WHERE w = ? AND d = ?", (D("1"), 1.0)),
        ("SELECT k FROM line WHERE w = ? AND d = ?", ("1", True)),
        ("SELECT /*+ READ_FROM_STORAGE(ROW[line]) */ k FROM line WHERE w = ? AND d = ?", (1, 1)),
        ("SELECT k FROM line WHERE w = ? AND d = ? FOR UPDATE", (1, 1)),
        ("SELECT v FROM line WHERE w = ? AND w = ?", (1, 2)),
        ("SELECT k FROM line WHERE w = ? AND w = ?", (1, 2)),
        ("SELECT id FROM acct WHERE id = ? AND id = ?", (1, 2)),
        ("UPDATE acct SET n = 0 WHERE id = ? AND id = ?", (1, 2)),
        ("SELECT max(rate) FROM acct WHERE n = ?", (3,)),  # a DOUBLE
        ("SELECT max(k), min(k) FROM line WHERE w = ?", (1,)),
        ("SELECT max(k) FROM line WHERE w = ? ORDER BY k", (1,)),
        ("SELECT max(k) FROM line WHERE w = ? AND d = ? AND k = ?", (1, 1, 1)),
        ("SELECT max(k) + 1 FROM line WHERE w = ?", (1,)),
        ("SELECT count(*) FROM line WHERE w = ?", (1,)),
    ]:
        pair.run(text, params)
    pair.run("SET htapkv_read_engine = 'row'")
    pair.run("SELECT k FROM line WHERE w = ? AND d = ?", (1, 1))
    pair.run(ALL)


def test_null_parameters_match_nothing(pair: Pair) -> None:
    assert pair.run("SELECT * FROM acct WHERE id = ?", (None,), expect_prepared=True)[:2] == (
        [],
        0,
    )
    assert pair.run("SELECT qty FROM line WHERE w = ? AND d = ? AND k = ?", (1, 1, None))[:2] == (
        [],
        0,
    )
    assert pair.run("SELECT qty FROM line WHERE w = ? AND d = ?", (1, None))[:2] == ([], 0)
    # A NULL in one key column once turned the lookup into a prefix scan.
    assert pair.run("UPDATE line SET qty = 0 WHERE w = ? AND d = ? AND k = ?", (1, 1, None))[
        :2
    ] == (
        None,
        0,
    )
    assert pair.run("DELETE FROM line WHERE w = 1 AND d = 1 AND k = NULL") == (None, 0)
    assert pair.run("DELETE FROM line WHERE w = ? AND d = ? AND k = ?", (1, None, 1)) == (None, 0)
    pair.run("SELECT * FROM acct WHERE id IN (?, ?)", (None, 1), expect_prepared=True)
    pair.run("UPDATE acct SET n = ?, rate = ? WHERE id = ?", (None, None, 1), expect_prepared=True)
    pair.run("INSERT INTO acct (id, owner, n) VALUES (?, ?, ?)", (9, "z", None))
    pair.run("INSERT INTO acct (id, owner) VALUES (?, ?)", (None, "y"))
    pair.run("INSERT INTO acct (id, owner) VALUES (?, ?)", (10, None))
    # NULL arithmetic: the general path refuses it; so must the prepared one.
    pair.run("UPDATE acct SET n = n + ? WHERE id = ?", (1, 2))
    pair.run("UPDATE acct SET n = n + ? WHERE id = ?", (None, 3))
    pair.run(ALL)


def test_parameter_count_and_type_errors(pair: Pair) -> None:
    for text, params in [
        ("SELECT * FROM acct WHERE id = ?", ()),
        ("SELECT * FROM acct WHERE id = ?", (1, 2)),
        ("SELECT * FROM acct WHERE id = 1", (1,)),
        ("INSERT INTO line VALUES (?, ?, ?, ?, ?)", (1, 2, 3, 4)),
        ("UPDATE acct SET n = ? WHERE id = ?", (1,)),
        ("DELETE FROM acct WHERE id = ?", ()),
        ("SELECT * FROM acct WHERE id = ?", (b"1",)),
        ("SELECT * FROM acct WHERE id = ?", (float("nan"),)),
        ("UPDATE acct SET rate = ? WHERE id = ?", (float("nan"), 1)),
        ("INSERT INTO acct (id, owner) VALUES (?, ?)", (11, object())),
        ("INSERT INTO acct (id, owner) VALUES (?, ?)", ("x", "xx")),
        ("INSERT INTO acct (id, owner) VALUES (?, ?)", (12, 5)),
        ("INSERT INTO acct (id, owner, opened) VALUES (?, ?, ?)", (13, "d", "not a date")),
        ("INSERT INTO acct (id, owner, n) VALUES (?, ?, ?)", (14, "e", 2.5)),
        ("INSERT INTO acct (id, owner, n) VALUES (?, ?, ?)", (15, "f", 2**64)),
        ("INSERT INTO acct (id, owner) VALUES (?, ?, ?)", (16, "g", 1)),
        ("INSERT INTO acct (id, nope) VALUES (?, ?)", (17, "h")),
        ("INSERT INTO acct VALUES (?, ?)", (18, "i")),
        ("UPDATE acct SET nope = ? WHERE id = ?", (1, 1)),
        ("UPDATE acct SET owner = owner + ? WHERE id = ?", (1, 1)),
        ("UPDATE acct SET n = -owner WHERE id = ?", (1,)),
        ("UPDATE acct SET n = ? WHERE id = ?", ("many", 1)),
        ("UPDATE acct SET owner = ? WHERE id = ?", ("bob", 1)),
        ("INSERT INTO acct (id, owner) VALUES (?, ?)", (1, "dup")),
        ("INSERT INTO acct (id, owner) VALUES (?, ?)", (19, "ann")),
    ]:
        out = pair.run(text, params)
        assert isinstance(out[0], type) and issubclass(out[0], sql.Error), (text, params, out)
    pair.run(ALL)


def test_dml_matches_the_general_path(pair: Pair) -> None:
    ins = (
        "INSERT INTO acct (id, owner, balance, rate, n, opened, seen) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    pair.run(
        ins,
        (20, "dee", D("12.34"), 1.5, 7, dt.date(2026, 1, 2), dt.datetime(2026, 1, 2, 3, 4)),
        expect_prepared=True,
    )
    pair.run(ins, (21, "eve", 0.1, D("2.5"), True, "2026-02-03", "2026-02-03 04:05:06"))
    pair.run(ins, (22, "fay", -3, -0.25, -1, dt.datetime(2026, 3, 4, 5), dt.date(2026, 3, 4)))
    pair.run(
        "INSERT INTO line VALUES (?, ?, ?, ?, ?), (2, 1, ?, 1, 9.99)",
        (2, 1, 1, 3, D("1.1"), 2),
        expect_prepared=True,
    )
    pair.run("INSERT IGNORE INTO line VALUES (?, ?, ?, ?, ?)", (2, 1, 1, 4, None))
    pair.run("INSERT INTO line (w, d, k, qty) VALUES (?, ?, ?, ?)", (3, 1, 1, 1))
    for params in [(5, 2, 1, 20), (D("1.5"), 0.5, 2, 21), (-1, True, 3, 22), (0, 0, 1, 1)]:
        pair.run(
            "UPDATE acct SET balance = balance + ?, rate = rate * ?, n = n - ? WHERE id = ?",
            params,
            expect_prepared=True,
        )
    pair.run("UPDATE acct SET n = (n + 1) * 2, rate = -rate / ? WHERE id = ?", (4, 1))
    pair.run("UPDATE acct SET rate = rate / ? WHERE id = ?", (0, 3))
    # A row's value takes the general path's detour through SQL text: 0.1 +
    # 0.2 is exactly 0.3 there (decimals), not 0.30000000000000004.
    pair.run("UPDATE acct SET rate = ? WHERE id = ?", (0.1, 3), expect_prepared=True)
    pair.run("UPDATE acct SET rate = rate + 0.2 WHERE id = ?", (3,), expect_prepared=True)
    pair.run("SELECT rate FROM acct WHERE id = 3")
    pair.run("UPDATE acct SET balance = balance - 1.005 WHERE owner = ?", ("bob",))
    pair.run("UPDATE acct SET owner = ?, n = n + 1 WHERE id IN (?, ?)", ("zed", 22, 21))
    pair.run("UPDATE acct SET id = ? WHERE id = ?", (30, 22))
    pair.run("UPDATE acct SET id = ? WHERE id = ?", (1, 30))
    pair.run(
        "UPDATE line SET qty = qty + ?, amount = ? WHERE w = ? AND d = ? AND k = ?",
        (1, 0.1, 1, 1, 1),
    )
    pair.run("UPDATE line SET qty = qty + ? WHERE w = ? AND d = ?", (1, 1, 1))
    pair.run("DELETE FROM line WHERE w = ? AND d = ? AND k = ?", (1, 2, 1), expect_prepared=True)
    pair.run("DELETE FROM acct WHERE owner = ?", ("dee",), expect_prepared=True)
    pair.run("DELETE FROM acct WHERE id IN (?, ?, ?)", (1, 2, 99), expect_prepared=True)
    pair.run(ALL)
    pair.run("SELECT * FROM line WHERE w IN (1, 2, 3)")
    pair.run("SELECT * FROM line WHERE w > 0")


def test_statements_in_a_transaction_roll_back_alike(pair: Pair) -> None:
    for conn in (pair.fast, pair.slow):
        conn.autocommit = False
    pair.run("UPDATE acct SET n = ? WHERE id = ?", (42, 1), expect_prepared=True)
    pair.run("INSERT INTO acct (id, owner) VALUES (?, ?)", (2, "dup"))  # fails, keeps the rest
    pair.run("SELECT n FROM acct WHERE id = ? FOR UPDATE", (1,), expect_prepared=True)
    pair.fast.rollback()
    pair.slow.rollback()
    pair.run("SELECT n FROM acct WHERE id = ?", (1,))
    pair.run("UPDATE acct SET n = ? WHERE id = ?", (43, 1))
    pair.fast.commit()
    pair.slow.commit()
    pair.run(ALL)


def test_schema_changes_between_executions(pair: Pair) -> None:
    sel = "SELECT * FROM acct WHERE id = ?"
    ins = "INSERT INTO line VALUES (?, ?, ?, ?, ?)"
    by_qty = "SELECT w, d, k FROM line WHERE qty = ?"
    upd = "UPDATE line SET qty = ? WHERE qty = ?"
    pair.run(sel, (1,), expect_prepared=True)
    pair.run(ins, (5, 5, 5, 50, None), expect_prepared=True)
    pair.run(by_qty, (50,))
    pair.run(upd, (51, 50))
    pair.run("ALTER TABLE acct ADD COLUMN note VARCHAR(10) DEFAULT 'hi'")
    pair.run("ALTER TABLE line ADD COLUMN tag INT")
    assert len(pair.run(sel, (1,), expect_prepared=True)[0][0]) == 8  # sees the new column
    pair.run(ins, (5, 5, 6, 60, None))  # now one value short
    pair.run(ins[:-1] + ", ?)", (5, 5, 6, 60, None, 7), expect_prepared=True)
    pair.run("CREATE UNIQUE INDEX u_qty ON line (qty)")
    # Now a unique key: the same texts take the prepared form, and an insert
    # prepared before the index must maintain and check it.
    pair.run(by_qty, (60,), expect_prepared=True)
    pair.run(upd, (61, 60), expect_prepared=True)
    pair.run(ins[:-1] + ", ?)", (5, 5, 7, 61, None, 8))  # duplicate qty
    pair.run(ins[:-1] + ", ?)", (5, 5, 8, 62, None, 9), expect_prepared=True)
    pair.run(by_qty, (62,), expect_prepared=True)
    pair.run("DROP TABLE acct")
    pair.run(sel, (1,))
    # The session read acct's schema along with line's before; now it is gone.
    pair.run("SELECT * FROM line WHERE w = ? AND d = ? AND k = ?", (5, 5, 8))
    pair.run(SCHEMA[0])
    pair.run(sel, (1,), expect_prepared=True)


@pytest.mark.parametrize(
    "v",
    [
        None,
        True,
        False,
        0,
        -7,
        2**70,
        -(2**70),
        "",
        "x'y",
        0.1,
        -2.5,
        1e20,
        1e-8,
        3.0,
        float("inf"),
        D("0.00"),
        D("-1.50"),
        D("1E+2"),
        D("1E-8"),
        D(5),
        dt.date(2024, 2, 29),
        dt.datetime(2024, 2, 29, 1, 2, 3, 456789),
        dt.datetime(2024, 2, 29, 1, 2, tzinfo=dt.UTC),
    ],
)
def test_param_value_is_what_the_bound_statement_reads_back(v: Any) -> None:
    try:
        want: Any = literal(to_sql_literal(v))
    except sql.Error as e:
        with pytest.raises(type(e)):
            param_value(v)
        return
    got = param_value(v)
    assert type(got) is type(want) and got == want


def test_shapes_left_to_the_general_path() -> None:
    import sqlglot

    for text in [
        "SELECT a + 1 FROM t WHERE k = ?",
        "SELECT a FROM t WHERE k = ? ORDER BY a + 1",
        "SELECT a FROM t WHERE k = ? ORDER BY a LIMIT 1",
        "SELECT a FROM t WHERE k = ? ORDER BY a FOR UPDATE",
        "SELECT a FROM t WHERE k = ? AND k = ?",
        "SELECT a FROM t WHERE k = ? + 1",
        "SELECT a FROM t WHERE k > ?",
        "SELECT a FROM t, u WHERE k = ?",
        "SELECT a FROM t WHERE k = (SELECT 1)",
        "SELECT ? FROM t WHERE k = 1",
        "INSERT INTO t VALUES (?) ON DUPLICATE KEY UPDATE a = ?",
        "INSERT INTO t SELECT * FROM u WHERE k = ?",
        "INSERT INTO t VALUES (? + 1)",
        "UPDATE t SET a = ? WHERE k = ? LIMIT 1",
        "UPDATE t SET a = CAST(? AS INT) WHERE k = ?",
        "UPDATE t SET a = VALUES(a) WHERE k = ?",
        "DELETE FROM t WHERE k = ? ORDER BY k LIMIT 1",
        "DELETE FROM t",
        "SELECT a FROM t WHERE k = :name",
    ]:
        assert prepared.prepare(sqlglot.parse_one(text, read="mysql")) is None, text
