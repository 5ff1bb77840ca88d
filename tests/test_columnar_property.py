"""The columnar replica reads exactly what the row store reads, at any ts.

A Hypothesis state machine runs random interleavings of transactions on two
tables (an integer primary key; a composite VARCHAR+BIGINT key) against a
real embedded store whose every write batch is also applied, in the same
order, to a :class:`columnar.ColumnarStore` (``tests/columnar_helpers.py``:
a tee around the engine's ``write``, as a learner receives the Raft log):

* inserts (some values > 255 bytes, so they go through the ``default`` CF),
  updates, deletes, ``lock_keys`` on rows (LOCK locks, which never block
  reads), duplicate-key inserts that fail, write conflicts, rollbacks;
* transactions abandoned mid-commit (``_commit(stop_after="prewrite")``:
  locks of a transaction that never commits; ``"primary"``: committed, with
  secondaries still locked), later resolved by readers;
* schema changes (``add_column`` with a default: old rows read it), GC
  (versions below the safe point dropped; reads below it refused),
  compaction at any point.

At a timestamp drawn from everything handed out so far (±1, so reads land
between commits and on lock timestamps), ``read`` compares:

1. the *raw* outcome, no lock resolution: the row store's ``kv_scan`` of the
   table's rows at ts vs ``ColumnarStore.read`` — the same rows, or both
   ``KeyIsLockedError`` with the same LockInfo, or both ``GcTooEarlyError``;
2. the *resolved* outcome: ``tables.scan_rows`` at ts (which resolves the
   locks it meets) vs a columnar read through the client's lock resolver
   (``Client.read_resolving``), i.e. the learner-read flow of DESIGN.md §3.

Both sides are compared while holding the tee's lock, so no write lands
between them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import itertools
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from columnar_helpers import open_teed
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from columnar import ColumnarStore, partial_aggregate
from kvstore.client import Transaction, tables
from kvstore.errors import (
    AlreadyExistsError,
    GcTooEarlyError,
    KeyIsLockedError,
    RowNotFoundError,
    TxnAbortedError,
    WriteConflictError,
)
from kvstore.tablecodec import TableInfo, decode_rows, row_range

TTL_MS = 10
# Per table: group-by keys (a string column) and aggregates to push down.
AGGREGATIONS: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "nums": (["s"], [("n", "sum"), ("x", "max"), ("*", "count"), ("id", "min")]),
    "pairs": (["k"], [("n", "sum"), ("s", "count"), ("*", "count")]),
}
MAX_OPEN = 4
MAX_ADDED_COLUMNS = 2
TABLES = ("nums", "pairs")
PKS = {
    "nums": [0, 1, 2, 3, 4],
    "pairs": [("a", 1), ("a", 2), ("b", -1), ("ab", 0)],
}
FAILED_COMMIT = (WriteConflictError, AlreadyExistsError, TxnAbortedError)


def _maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


values_st = st.fixed_dictionaries(
    {
        "n": _maybe(st.integers(-(1 << 31), (1 << 31) - 1)),
        "x": _maybe(st.floats(allow_nan=False, width=32)),
        "d": _maybe(st.decimals(min_value=-999999, max_value=999999, places=2)),
        "flag": _maybe(st.booleans()),
        "day": _maybe(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1))),
        "at": _maybe(st.datetimes(min_value=dt.datetime(1970, 1, 1))),
    }
)
tbl_st = st.sampled_from(TABLES)
idx_st = st.integers(min_value=0, max_value=MAX_OPEN - 1)
pk_idx = st.integers(min_value=0, max_value=4)


def _sorted_rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=repr)


class ColumnarMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.col = ColumnarStore()
        self.client, self.tee = open_teed(self.col, lock_ttl_ms=TTL_MS)
        c = self.client
        self.schemas: dict[str, TableInfo] = {
            "nums": tables.create_table(
                c,
                "nums",
                [
                    ("id", "BIGINT"),
                    ("n", "INT"),
                    ("x", "DOUBLE"),
                    ("s", "VARCHAR(400)"),
                    ("d", "DECIMAL(8,2)", True, decimal.Decimal("0.50")),
                    ("flag", "BOOLEAN"),
                    ("day", "DATE"),
                    ("at", "TIMESTAMP"),
                ],
                "id",
            ),
            "pairs": tables.create_table(
                c, "pairs", [("k", "VARCHAR(10)"), ("n", "BIGINT"), ("s", "TEXT")], ["k", "n"]
            ),
        }
        self.open: list[Transaction] = []
        self.timestamps: list[int] = [c.tso()]
        self.commits: list[int] = []
        self.added = 0
        self.counter = itertools.count()

    # ------------------------------------------------------------ helpers
    def _pick(self, i: int) -> Transaction:
        if not self.open:
            self.begin()
        return self.open[i % len(self.open)]

    def _take(self, i: int) -> Transaction:
        t = self._pick(i)
        self.open.remove(t)
        return t

    def _pk(self, tbl: str, j: int) -> Any:
        pks = PKS[tbl]
        return pks[j % len(pks)]

    def _row(self, tbl: str, j: int, vals: dict[str, Any], big: bool) -> dict[str, Any]:
        text = f"v{next(self.counter)}"
        text = text.ljust(300, "~") if big else text
        if tbl == "nums":
            row = {"id": self._pk(tbl, j), "s": text, **vals}
            if vals["d"] is None:
                del row["d"]  # takes the column default
        else:
            k, n = self._pk(tbl, j)
            row = {"k": k, "n": n, "s": text}
        for c in self.schemas[tbl].columns:
            if c.name.startswith("extra") and vals["n"] is not None:
                row[c.name] = vals["n"]
        return row

    def _finish(self, t: Transaction, stop_after: str | None) -> None:
        try:
            t._commit(stop_after=stop_after)
        except FAILED_COMMIT:
            return
        if t.commit_ts is not None:
            self.timestamps.append(t.commit_ts)
            self.commits.append(t.commit_ts)

    # ------------------------------------------------------------ rules
    @precondition(lambda self: len(self.open) < MAX_OPEN)
    @rule()
    def begin(self) -> None:
        t = self.client.begin()
        self.timestamps.append(t.start_ts)
        self.open.append(t)

    @rule(i=idx_st, tbl=tbl_st, j=pk_idx, vals=values_st, big=st.booleans())
    def insert(self, i: int, tbl: str, j: int, vals: dict[str, Any], big: bool) -> None:
        tables.insert(self._pick(i), self.schemas[tbl], [self._row(tbl, j, vals, big)])

    @rule(i=idx_st, tbl=tbl_st, j=pk_idx, vals=values_st, big=st.booleans())
    def update(self, i: int, tbl: str, j: int, vals: dict[str, Any], big: bool) -> None:
        row = self._row(tbl, j, vals, big)
        if tbl == "nums":
            row = {k: v for k, v in row.items() if k in ("id", "s", "x", "extra1")}
        with contextlib.suppress(RowNotFoundError):
            tables.update(self._pick(i), self.schemas[tbl], [row])

    @rule(i=idx_st, tbl=tbl_st, j=pk_idx)
    def delete(self, i: int, tbl: str, j: int) -> None:
        tables.delete(self._pick(i), self.schemas[tbl], [self._pk(tbl, j)])

    @rule(i=idx_st, tbl=tbl_st, j=pk_idx)
    def lock_row(self, i: int, tbl: str, j: int) -> None:
        self._pick(i).lock_keys(self.schemas[tbl].row_key(self._pk(tbl, j)))

    @rule(i=idx_st)
    def commit(self, i: int) -> None:
        self._finish(self._take(i), None)

    @rule(i=idx_st, stage=st.sampled_from(["prewrite", "primary"]))
    def abandon_mid_commit(self, i: int, stage: str) -> None:
        self._finish(self._take(i), stage)

    @rule(i=idx_st)
    def rollback(self, i: int) -> None:
        self._take(i).rollback()

    @rule()
    def compact(self) -> None:
        self.col.compact()

    @precondition(lambda self: self.added < MAX_ADDED_COLUMNS)
    @rule(tbl=tbl_st)
    def add_column(self, tbl: str) -> None:
        self.added += 1
        self.schemas[tbl] = tables.add_column(
            self.client, tbl, (f"extra{self.added}", "INT", True, 7)
        )

    @rule(go=st.integers(min_value=0, max_value=3), back=st.integers(min_value=0, max_value=6))
    def gc(self, go: int, back: int) -> None:
        if go:  # a rare event, or most reads would only meet GcTooEarly
            return
        # A safe point a little in the past: reads below it must be refused
        # by both sides, reads above it must still agree.
        ts = self.timestamps[max(0, len(self.timestamps) - 1 - back)]
        # As a real GC worker: never above the oldest live transaction.
        ts = min([ts, *(t.start_ts for t in self.open)])
        if ts >= self.col.gc_safe_point:
            self.client.gc(ts)

    @rule(tbl=tbl_st, pick=st.integers(min_value=0), delta=st.sampled_from([-1, 0, 1]))
    def read(self, tbl: str, pick: int, delta: int) -> None:
        sp = self.col.gc_safe_point
        above = [t for t in self.timestamps if t >= sp] or self.timestamps
        # Small picks are drawn most: count from the newest.
        self._compare(tbl, max(1, above[-1 - pick % len(above)] + delta))

    @precondition(lambda self: self.commits)
    @rule(tbl=tbl_st, back=st.integers(min_value=0, max_value=3), delta=st.sampled_from([-1, 0]))
    def read_at_commit(self, tbl: str, back: int, delta: int) -> None:
        # Exactly at a recent commit_ts (sees it) and just below (does not).
        self._compare(tbl, self.commits[max(0, len(self.commits) - 1 - back)] + delta)

    @rule(tbl=tbl_st, pick=st.integers(min_value=0))
    def read_any(self, tbl: str, pick: int) -> None:
        self._compare(tbl, self.timestamps[pick % len(self.timestamps)])

    @rule(tbl=tbl_st)
    def read_now(self, tbl: str) -> None:
        ts = self.client.tso()
        self.timestamps.append(ts)
        self._compare(tbl, ts)

    # ------------------------------------------------------------ the check
    def _compare(self, tbl: str, ts: int) -> None:
        info = self.schemas[tbl]
        start, end = row_range(info.id)
        with self.tee.mu:
            expected: Any
            try:
                pairs = self.client.backend.kv_scan(start, end, ts)
                expected = decode_rows(info, [v for _, v in pairs]).to_pylist()
            except (KeyIsLockedError, GcTooEarlyError) as e:
                expected = e
            got: Any
            try:
                got = self.col.read(info, ts).to_pylist()
            except (KeyIsLockedError, GcTooEarlyError) as e:
                got = e
            kind = type(expected).__name__ if isinstance(expected, Exception) else "rows"
            event(f"raw read: {kind}")
            if isinstance(expected, KeyIsLockedError):
                assert isinstance(got, KeyIsLockedError), (ts, got)
                assert got.lock == expected.lock
            elif isinstance(expected, GcTooEarlyError):
                assert isinstance(got, GcTooEarlyError), (ts, got)
                return
            else:
                assert got == expected, f"at ts {ts}: columnar {got} != row store {expected}"
                event(f"rows read: {min(len(expected), 3)}+")
        # The learner-read flow: meet a lock, resolve it, retry.
        ref = tables.scan_rows(Transaction(self.client, ts), info)
        got_t: pa.Table = self.client.read_resolving(
            ts, lambda bypass: self.col.read(info, ts, bypass_locks=bypass)
        )
        assert got_t.schema == ref.schema
        assert got_t.to_pylist() == ref.to_pylist(), f"at ts {ts} after resolving"
        # Pushed-down aggregation (its own fast path on a compacted base):
        # grouped by a string column and globally, with and without a filter.
        keys, aggs = AGGREGATIONS[tbl]
        ref_rows = ref.select(list(dict.fromkeys([*keys, *(c for c, _ in aggs if c != "*")])))
        # The filter as an expression, and as comparisons (the columnar
        # node's form: a global aggregate evaluates them as kernels).
        for pred in (None, pc.field("n") > 0, [("n", ">", 0)]):
            expr = pc.field("n") > 0 if pred is not None else None
            for by in (keys, []):
                want = partial_aggregate(
                    ref_rows.filter(expr) if expr is not None else ref_rows, by, aggs
                )
                got_a = self.client.read_resolving(
                    ts,
                    lambda bypass, by=by, pred=pred: self.col.aggregate(
                        info, ts, by, aggs, pred, bypass_locks=bypass, predicate_columns=["n"]
                    ),
                )
                assert _sorted_rows(got_a) == _sorted_rows(want), f"aggregate at ts {ts}"

    def teardown(self) -> None:
        try:
            for t in self.open:
                t.rollback()
            for tbl in TABLES:
                self._compare(tbl, self.client.tso())
            self.col.compact()
            for tbl in TABLES:
                self._compare(tbl, self.client.tso())
        finally:
            self.client.close()


TestColumnarMatchesRowStore = ColumnarMachine.TestCase
TestColumnarMatchesRowStore.settings = settings(
    max_examples=50,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
class TestColumnarMatchesRowStoreLong(ColumnarMachine.TestCase):  # type: ignore[misc,name-defined]
    settings = settings(
        max_examples=300,
        stateful_step_count=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
