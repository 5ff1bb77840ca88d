"""A SQL session: statements, transactions, engine routing.

The session is TiDB's stateless front end in miniature, living in the client
process: it parses (sqlglot, MySQL dialect, cached by text), keeps the
current transaction, runs DDL through :mod:`sql.catalog`, DML as buffered
writes of that transaction, and queries through :mod:`sql.planner` and
:mod:`sql.executor`, feeding each table scan from the engine it routes to.

**Transactions.** ``BEGIN`` / ``START TRANSACTION`` open an explicit
transaction; ``COMMIT`` / ``ROLLBACK`` end it. Outside one, with autocommit
on, each statement is its own transaction, re-run from scratch (a new
start_ts, reads and all) if it loses a write conflict. With autocommit off
(PEP 249's default) the first statement opens a transaction that lasts until
``commit()``. DDL commits the open transaction first (as MySQL does). Every
statement is atomic: if it fails, the writes it buffered are taken back and
the transaction goes on as before the statement.

**Engine routing** (per table scan; ``EXPLAIN`` prints the choice):

* a table this transaction has written -> row store (read-your-writes);
* a hint ``/*+ READ_FROM_STORAGE(COLUMNAR[t], ROW[u]) */`` or the session
  setting ``SET htapkv_read_engine = 'row'|'columnar'|'auto'`` -> as told;
* equality on the whole primary key or a unique index, or on an index's
  columns -> row store point/index lookups; a bounded range of the first
  primary-key column -> row store range scan;
* anything else -> the columnar replica if the cluster has one, at the same
  ``start_ts``; a lagging or absent replica falls back to the row store and
  the statement carries a warning.

Both engines answer at the transaction's ``start_ts``, so the routing choice
never changes a result, only its cost. ``SELECT ... AS OF TIMESTAMP '...'``
reads at an older timestamp (above the GC safe point).
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
import sqlglot.errors
from sqlglot import exp

from kvstore.client.client import Client
from kvstore.client.tables import scan_rows
from kvstore.client.txn import Transaction
from kvstore.errors import KVError, SchemaError
from kvstore.tablecodec import (
    ColumnInfo,
    IndexInfo,
    Kind,
    TableInfo,
    decode_pylist,
    decode_rows,
    index_values_key,
    row_key,
)
from kvstore.types import ColumnRef
from sql.catalog import Catalog, column_spec, table_definition
from sql.errors import (
    DataError,
    Error,
    IntegrityError,
    NotSupportedError,
    ParseError,
    ProgrammingError,
    TransactionRetryError,
    UnknownColumnError,
    translate,
)
from sql.executor import execute
from sql.planner import PushedAggregate, QueryPlan, ScanNode, plan_query
from sql.prepared import (
    Fallback,
    InsertValues,
    KeyDelete,
    KeyUpdate,
    KeyWhere,
    PointSelect,
    Prepared,
    Slot,
    bind,
    key_where,
    point_select,
    prepare,
)
from sql.values import bind_params, coerce, literal, to_sql_literal

__all__ = ["Result", "Session"]

ENGINES = ("auto", "row", "columnar")
AUTOCOMMIT_RETRIES = 10
PARSE_CACHE_SIZE = 512
PLAN_CACHE_SIZE = 256
SCHEMA_PREFETCH = 16
# How long a columnar scan waits for a lagging replica before the row store answers.
COLUMNAR_MAX_WAIT_S = 5.0
# Scans of one query run side by side (see _Router.prefetch); shared by sessions.
_SCAN_POOL = ThreadPoolExecutor(8, thread_name_prefix="sql-scan")
_AS_OF = re.compile(r"\bAS\s+OF\s+TIMESTAMP\s+('(?:[^']|'')*'|\d+)", re.IGNORECASE)
_HINT = re.compile(r"READ_FROM_STORAGE\s*\(([^)]*)\)", re.IGNORECASE)
_HINT_ITEM = re.compile(r"(COLUMNAR|TIFLASH|ROW|TIKV)\s*\[([^\]]*)\]", re.IGNORECASE)


@dataclass
class Result:
    """What a statement produced: rows (queries), a row count (DML), the
    plan lines (EXPLAIN), warnings, and a short status message."""

    table: pa.Table | None = None
    rowcount: int = -1
    warnings: list[str] = field(default_factory=list)
    message: str = "OK"


@dataclass
class _Parsed:
    statement: exp.Expr
    text: str
    as_of: int | None
    hints: dict[str, str]  # table or alias -> "row" | "columnar"
    # The prepared form and its parameter count (see sql.prepared), read on
    # the first execution; None if the statement has none.
    prepared: tuple[Prepared, int] | None = None
    prepared_read: bool = False


def tso_of(value: str) -> int:
    """The TSO timestamp of ``AS OF TIMESTAMP`` text: a datetime (UTC) or a
    raw TSO number."""
    text = value.strip("'")
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ProgrammingError(
            f"AS OF TIMESTAMP needs a datetime or a TSO number: {value}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000) << 18


class Session:
    """One connection's state. Not thread-safe: one session per thread (as
    with any DB-API connection at threadsafety 1)."""

    def __init__(self, client: Client, *, autocommit: bool = True) -> None:
        self.client = client
        self.catalog = Catalog(client)
        self.autocommit = autocommit
        self.read_engine = "auto"
        self._txn: Transaction | None = None
        self._explicit = False
        self._written: dict[int, TableInfo] = {}
        self._cache: OrderedDict[str, list[_Parsed]] = OrderedDict()
        self._plans: OrderedDict[tuple[Any, ...], QueryPlan] = OrderedDict()
        self._plan_key: tuple[Any, ...] | None = None
        self._schema_ts = 0
        self._schema_cache: dict[str, TableInfo] = {}
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ parse
    def parse(self, text: str) -> list[_Parsed]:
        with self._cache_lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        parsed = [self._parse_one(s) for s in _split(text)]
        with self._cache_lock:
            self._cache[text] = parsed
            while len(self._cache) > PARSE_CACHE_SIZE:
                self._cache.popitem(last=False)
        return parsed

    @staticmethod
    def _parse_one(text: str) -> _Parsed:
        as_of = None
        m = _AS_OF.search(text)
        if m is not None:
            as_of = tso_of(m.group(1))
            text = text[: m.start()] + text[m.end() :]
        hints: dict[str, str] = {}
        for h in _HINT.finditer(text):
            for engine, names in _HINT_ITEM.findall(h.group(1)):
                e = "columnar" if engine.upper() in ("COLUMNAR", "TIFLASH") else "row"
                for n in names.split(","):
                    if n.strip():
                        hints[n.strip().lower()] = e
        try:
            statement = sqlglot.parse_one(text, read="mysql")
        except sqlglot.errors.ParseError as e:
            first = e.errors[0] if e.errors else {}
            raise ParseError(
                str(first.get("description", e)),
                int(first.get("line") or 0),
                int(first.get("col") or 0),
            ) from None
        except sqlglot.errors.SqlglotError as e:
            raise ParseError(str(e)) from None
        if statement is None:
            raise ParseError("empty statement")
        return _Parsed(statement, text, as_of, hints)

    # ------------------------------------------------------------------ entry
    def execute(self, text: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement with ``?`` parameters."""
        parsed = self.parse(text)
        if len(parsed) != 1:
            raise ProgrammingError(f"expected one statement, got {len(parsed)}")
        return self.run(parsed[0], params)

    def execute_script(self, text: str) -> Iterator[tuple[str, Result]]:
        """Run every statement of a script in turn, yielding each one's text
        and result; stops at the first error."""
        for part in _split(text):
            yield part, self.execute(part)

    def run(self, p: _Parsed, params: Sequence[Any] = ()) -> Result:
        try:
            if not p.prepared_read:
                p.prepared = prepare(p.statement) if p.as_of is None else None
                p.prepared_read = True
            if p.prepared is not None:
                try:
                    return self._run_prepared(*p.prepared, params, hinted=bool(p.hints))
                except Fallback:
                    pass
            self._plan_key = (p.text, tuple(params)) if all(_hashable(v) for v in params) else None
            stmt = bind_params(p.statement, params)
            return self._dispatch(stmt, p)
        except Error:
            raise
        except KVError as e:
            raise translate(e) from e
        except sqlglot.errors.SqlglotError as e:
            raise ProgrammingError(str(e)) from e

    def _run_prepared(
        self, shape: Prepared, n_params: int, params: Sequence[Any], hinted: bool
    ) -> Result:
        """Run a prepared statement with these parameters, as the general
        path would; raises Fallback to have the general path run it."""
        values = bind(params, n_params)
        if isinstance(shape, PointSelect):
            if shape.lock:
                return self._in_txn(lambda txn: self._prepared_select(shape, values, txn, hinted))
            return self._read_only(lambda txn: self._prepared_select(shape, values, txn, hinted))
        if isinstance(shape, InsertValues):
            return self._in_txn(lambda txn: self._prepared_insert(shape, values, txn))
        if isinstance(shape, KeyUpdate):
            return self._in_txn(lambda txn: self._prepared_update(shape, values, txn))
        return self._in_txn(lambda txn: self._prepared_delete(shape, values, txn))

    def _dispatch(self, stmt: exp.Expr, p: _Parsed) -> Result:
        if isinstance(stmt, exp.Transaction):
            self._end(commit=True)
            self._explicit = True
            return Result(message="BEGIN")
        if isinstance(stmt, exp.Commit):
            self._end(commit=True)
            return Result(message="COMMIT")
        if isinstance(stmt, exp.Rollback):
            self._end(commit=False)
            return Result(message="ROLLBACK")
        if isinstance(stmt, exp.Set):
            return self._set(stmt)
        if isinstance(stmt, (exp.Create, exp.Drop, exp.Alter)):
            self._end(commit=True)  # DDL commits first, as in MySQL
            return self._ddl(stmt)
        if isinstance(stmt, exp.Show):
            return self._read_only(lambda txn: self._show(stmt, txn))
        if isinstance(stmt, exp.Describe):
            if isinstance(stmt.this, exp.Table):
                return self._read_only(lambda txn: self._describe(stmt.this.name, txn))
            return self._read_only(lambda txn: self._explain(stmt.this, p, txn))
        if isinstance(stmt, exp.Query):
            if p.as_of is not None:
                return self._as_of(stmt, p)
            locking = bool(stmt.args.get("locks"))
            if locking:
                return self._in_txn(lambda txn: self._query(stmt, p, txn, lock=True))
            return self._read_only(lambda txn: self._query(stmt, p, txn, lock=False))
        if isinstance(stmt, exp.Insert):
            return self._in_txn(lambda txn: self._insert(stmt, p, txn))
        if isinstance(stmt, exp.Update):
            return self._in_txn(lambda txn: self._update(stmt, p, txn))
        if isinstance(stmt, exp.Delete):
            return self._in_txn(lambda txn: self._delete(stmt, p, txn))
        raise NotSupportedError(f"statement not supported: {stmt.sql('mysql')[:80]}")

    # ------------------------------------------------------------------ txns
    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    def _begin(self) -> Transaction:
        if self._txn is None:
            self._txn = self.client.begin()
            self._written = {}
        return self._txn

    def commit(self) -> None:
        self._end(commit=True)

    def rollback(self) -> None:
        self._end(commit=False)

    def _end(self, commit: bool) -> None:
        txn, self._txn, self._explicit = self._txn, None, False
        self._written = {}
        if txn is None:
            return
        if not commit:
            txn.rollback()
            return
        try:
            txn.commit()
        except Error:
            raise
        except KVError as e:
            raise translate(e) from e

    def _implicit(self) -> bool:
        """Does this statement run in a transaction of its own?"""
        return self._txn is None and self.autocommit and not self._explicit

    def _in_txn(self, body: Callable[[Transaction], Result]) -> Result:
        if not self._implicit():
            txn = self._begin()
            with self._statement(txn):
                return body(txn)
        # Autocommit: the statement is the transaction; a conflict re-runs it
        # whole at a new start_ts (its reads too), never replays its writes.
        for attempt in range(AUTOCOMMIT_RETRIES):
            txn = self._begin()
            try:
                with self._statement(txn):
                    result = body(txn)
                self._end(commit=True)
                return result
            except TransactionRetryError:
                self._end(commit=False)
                if attempt == AUTOCOMMIT_RETRIES - 1:
                    raise
                # Jittered backoff: the winner of a hot row needs a moment.
                time.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
            except BaseException:
                self._end(commit=False)
                raise
        raise AssertionError("unreachable")

    @contextmanager
    def _statement(self, txn: Transaction) -> Iterator[None]:
        written = dict(self._written)
        try:
            with txn.statement():
                yield
        except BaseException:
            self._written = written
            raise

    def _read_only(self, body: Callable[[Transaction], Result]) -> Result:
        if self._implicit():
            txn = self.client.begin()
            try:
                return body(txn)
            finally:
                txn.rollback()
        return body(self._begin())

    def _as_of(self, stmt: exp.Query, p: _Parsed) -> Result:
        if self._txn is not None and self._written:
            raise ProgrammingError("AS OF TIMESTAMP cannot read inside a transaction that wrote")
        assert p.as_of is not None
        snap = Transaction(self.client, p.as_of)
        try:
            return self._query(stmt, p, snap, lock=False)
        finally:
            snap.rollback()

    # ------------------------------------------------------------------ SET / SHOW
    def _set(self, stmt: exp.Set) -> Result:
        for item in stmt.expressions:
            eq = item.this
            if not isinstance(eq, exp.EQ):
                raise NotSupportedError(f"SET {item.sql('mysql')}")
            name = eq.this.name.lower()
            value = (
                literal(eq.expression)
                if not isinstance(eq.expression, exp.Column)
                else eq.expression.name
            )
            if name == "autocommit":
                on = str(value).lower() in ("1", "on", "true")
                if on and self._txn is not None and not self._explicit:
                    self._end(commit=True)
                self.autocommit = on
            elif name in ("htapkv_read_engine", "tidb_isolation_read_engines"):
                v = str(value).lower()
                v = {"tikv": "row", "tiflash": "columnar", "tikv,tiflash": "auto"}.get(v, v)
                if v not in ENGINES:
                    raise ProgrammingError(f"{name} must be one of {', '.join(ENGINES)}")
                self.read_engine = v
            else:
                raise NotSupportedError(f"unknown session variable {name!r}")
        return Result(message="SET")

    def _show(self, stmt: exp.Show, txn: Transaction) -> Result:
        what = str(stmt.this).upper()
        if what == "TABLES":
            names = sorted(self.catalog.table_names(txn))
            return Result(pa.table({"table": pa.array(names, pa.string())}), len(names))
        raise NotSupportedError(f"SHOW {what}")

    def _describe(self, name: str, txn: Transaction) -> Result:
        info = self._table(txn, name)
        pk = set(info.primary_key)
        uniq = {i.columns[0] for i in info.indexes if i.unique and len(i.columns) == 1}
        rows = {
            "column": [c.name for c in info.columns],
            "type": [c.type for c in info.columns],
            "null": ["YES" if c.nullable else "NO" for c in info.columns],
            "key": [
                "PRI" if c.name in pk else "UNI" if c.name in uniq else "" for c in info.columns
            ],
            "default": [None if c.default is None else str(c.default) for c in info.columns],
        }
        return Result(pa.table(rows), len(info.columns))

    # ------------------------------------------------------------------ DDL
    def _ddl(self, stmt: exp.Expr) -> Result:
        kind = str(stmt.args.get("kind") or "").upper()
        if isinstance(stmt, exp.Create) and kind == "TABLE":
            created = self.catalog.create_table(table_definition(stmt))
            return Result(
                rowcount=0, message="CREATE TABLE" if created else "CREATE TABLE (exists)"
            )
        if isinstance(stmt, exp.Create) and kind == "INDEX":
            index = stmt.this
            params = index.args.get("params")
            cols = [
                c.this.name if isinstance(c, exp.Ordered) else c.name
                for c in params.args.get("columns") or []
            ]
            table = index.args["table"].name
            n = self.catalog.create_index(table, index.name, cols, bool(stmt.args.get("unique")))
            return Result(rowcount=n, message=f"CREATE INDEX ({n} rows indexed)")
        if isinstance(stmt, exp.Drop) and kind == "TABLE":
            n = 0
            for t in stmt.args.get("tables") or [stmt.this]:
                n += int(self.catalog.drop_table(t.name, bool(stmt.args.get("exists"))))
            return Result(rowcount=0, message=f"DROP TABLE ({n} dropped)")
        if isinstance(stmt, exp.Alter) and kind == "TABLE":
            table = stmt.this.name
            for action in stmt.args.get("actions") or []:
                if not isinstance(action, exp.ColumnDef):
                    raise NotSupportedError(f"ALTER TABLE {action.sql('mysql')}")
                spec, pk, unique = column_spec(action)
                if pk or unique:
                    raise NotSupportedError("ADD COLUMN cannot add a key; use CREATE INDEX")
                self.catalog.add_column(table, spec)
            return Result(rowcount=0, message="ALTER TABLE")
        raise NotSupportedError(f"DDL not supported: {stmt.sql('mysql')[:80]}")

    # ------------------------------------------------------------------ queries
    def _tables(self, stmt: exp.Expr, txn: Transaction) -> dict[str, TableInfo]:
        ctes = {c.alias_or_name.lower() for c in stmt.find_all(exp.CTE)}
        names = [t.name for t in stmt.find_all(exp.Table) if t.name and t.name.lower() not in ctes]
        return self._schemas(txn, names)

    def _schemas(self, txn: Transaction, names: Sequence[str]) -> dict[str, TableInfo]:
        """Schemas as of the transaction's snapshot, read once per
        transaction: they cannot change under a snapshot (DDL commits the
        open transaction first), and an OLTP transaction of 60 statements
        would otherwise read them 60 times."""
        if self._schema_ts != txn.start_ts:
            self._schema_ts, self._schema_cache = txn.start_ts, {}
        missing = [n for n in names if n not in self._schema_cache]
        if missing:
            # The other tables this session uses come along in the same round
            # trip: the transaction will likely want them too.
            also = [
                n for n in self.catalog.known_tables(SCHEMA_PREFETCH) if n not in self._schema_cache
            ]
            self._schema_cache.update(self.catalog.tables(txn, missing, also))
        return {n: self._schema_cache[n] for n in names}

    def _table(self, txn: Transaction, name: str) -> TableInfo:
        return self._schemas(txn, [name])[name]

    def _plan(
        self, stmt: exp.Expr, tables: Mapping[str, TableInfo], cached: bool = False
    ) -> QueryPlan:
        """Plan a query; with ``cached``, reuse the plan of the same statement
        text and parameters over the same schema versions (planning costs
        15-100 ms, more than many queries take to run)."""
        key = None
        if cached and self._plan_key is not None:
            versions = tuple(sorted((t.id, t.version) for t in tables.values()))
            key = (*self._plan_key, versions)
            with self._cache_lock:
                hit = self._plans.get(key)
                if hit is not None:
                    self._plans.move_to_end(key)
                    return hit
        schema = {n: {c.name: c.type for c in t.columns} for n, t in tables.items()}
        pks = {n: list(t.primary_key) for n, t in tables.items()}
        plan = plan_query(stmt, schema, pks)
        if key is not None:
            with self._cache_lock:
                self._plans[key] = plan
                while len(self._plans) > PLAN_CACHE_SIZE:
                    self._plans.popitem(last=False)
        return plan

    def _query(
        self,
        stmt: exp.Query,
        p: _Parsed,
        txn: Transaction,
        lock: bool,
    ) -> Result:
        tables = self._tables(stmt, txn)
        if lock:
            for t in tables.values():
                self._mark_written(txn, t)
        fast = self._point_select(stmt, tables, txn, lock)
        if fast is not None:
            return Result(fast, fast.num_rows)
        plan = self._plan(stmt, tables, cached=True)
        warnings: list[str] = []
        router = _Router(self, txn, tables, p.hints, warnings, lock)
        router.prefetch(plan.scans, plan.pushdowns, plan.runtime_filtered)
        table = execute(plan, router.scan, (), router.aggregate)
        names = _written_names(stmt)
        if names is not None and len(names) == table.num_columns:
            table = table.rename_columns(names)
        return Result(table, table.num_rows, warnings)

    def _explain(self, stmt: exp.Expr, p: _Parsed, txn: Transaction) -> Result:
        if not isinstance(stmt, exp.Query):
            raise NotSupportedError("EXPLAIN explains queries")
        tables = self._tables(stmt, txn)
        plan = self._plan(stmt, tables)
        router = _Router(self, txn, tables, p.hints, [], lock=False)
        lines = plan.explain(router.describe, router.pushed_to)
        return Result(pa.table({"plan": pa.array(lines, pa.string())}), len(lines))

    def _point_select(
        self, stmt: exp.Query, tables: Mapping[str, TableInfo], txn: Transaction, lock: bool
    ) -> pa.Table | None:
        """The OLTP fast path: ``SELECT cols|* FROM t WHERE <whole key> = ...``
        answered by key lookups without the optimizer (which costs more than
        the lookup)."""
        if len(tables) != 1:
            return None
        shape = point_select(stmt, {})
        if shape is None or shape.order or shape.aggregate:
            return None
        (info,) = tables.values()
        return self._point_rows(info, shape, (), txn, lock)

    def _prepared_select(
        self, shape: PointSelect, values: Sequence[Any], txn: Transaction, hinted: bool
    ) -> Result:
        # As _query then _point_select, for a statement of one table.
        info = self._table(txn, shape.table)
        if shape.lock:
            self._mark_written(txn, info)
        table = (
            None
            if shape.order or shape.aggregate
            else self._point_rows(info, shape, values, txn, shape.lock)
        )
        if table is None and not hinted:
            # A hint may route the planner's scan to the columnar replica,
            # whose fallback adds a warning: leave hinted statements to it.
            table = self._prefix_rows(info, shape, values, txn)
        if table is None:
            raise Fallback
        return Result(table, table.num_rows)

    def _prefix_rows(
        self, info: TableInfo, shape: PointSelect, values: Sequence[Any], txn: Transaction
    ) -> pa.Table | None:
        """What the planner answers for ``SELECT bare columns FROM t WHERE
        <equalities on exactly the columns of an index or a primary-key
        prefix> [ORDER BY NOT NULL columns]``: the rows of that lookup (each
        matches every equality), sorted stably in the order the row store
        gives them, as the executor sorts them; or their MAX/MIN."""
        if self.read_engine != "auto" or shape.lock:
            return None  # the engine a setting picks may add warnings
        if shape.aggregate is not None:
            return self._prefix_min_max(info, shape, shape.aggregate, values, txn)
        cols: list[str] = []
        for name in shape.columns:
            if name is None:
                cols.extend(info.column_names)
            elif name in info.column_names:
                cols.append(name)
            else:
                return None
        order = []
        for name, desc in shape.order:
            if name not in info.column_names or info.column(name).nullable:
                return None
            order.append((name, "descending" if desc else "ascending"))
        if len(set(cols)) != len(cols):
            return None
        found = _prefix_fetch(info, shape.where, values, txn)
        if found is None:
            return None
        wanted = list(dict.fromkeys(cols + [n for n, _ in order]))
        table = pa.Table.from_batches([decode_rows(info, found, wanted)])
        if order and table.num_rows > 1:
            table = table.take(pc.sort_indices(table, sort_keys=order))
        table = table.select(cols)
        # The executor's results declare every column nullable.
        return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))

    def _point_rows(
        self,
        info: TableInfo,
        shape: PointSelect,
        values: Sequence[Any],
        txn: Transaction,
        lock: bool,
    ) -> pa.Table | None:
        if self.read_engine == "columnar":
            return None
        cols: list[str] = []
        for name in shape.columns:
            if name is None:
                cols.extend(info.column_names)
            else:
                try:
                    cols.append(info.column(name).name)
                except SchemaError:
                    return None  # let the planner name the error
        found = _key_fetch(info, shape.where, values, txn)
        if found is None:
            return None
        keys, rows = found
        if lock:
            txn.lock_keys(*keys)  # absent keys too: no write skew through them
        # Only bare columns and * get here, so the names are the columns'.
        return pa.Table.from_batches([decode_rows(info, rows, cols)])

    def _prefix_min_max(
        self,
        info: TableInfo,
        shape: PointSelect,
        aggregate: tuple[str, str, str],
        values: Sequence[Any],
        txn: Transaction,
    ) -> pa.Table | None:
        fn, name, out = aggregate
        if name not in info.column_names or info.column(name).kind not in _MIN_MAX_KINDS:
            return None
        found = _prefix_fetch(info, shape.where, values, txn)
        if found is None:
            return None
        col = info.column(name)
        arr = decode_rows(info, found, [name]).column(0) if found else pa.array([], col.arrow_type)
        value = (pc.max if fn == "max" else pc.min)(arr).as_py()
        # One row, NULL over no rows, typed and named as the executor's.
        return pa.table({out: pa.array([value], col.arrow_type)})

    # ------------------------------------------------------------------ DML
    def _mark_written(self, txn: Transaction, info: TableInfo) -> None:
        """``info`` is written (or locked) by ``txn``: its reads go to the row
        store from now on, and the commit checks its schema version."""
        if info.id not in self._written:
            self._written[info.id] = info
            self.catalog.guard(txn, [info])

    def _insert(self, stmt: exp.Insert, p: _Parsed, txn: Transaction) -> Result:
        target = stmt.this
        if isinstance(target, exp.Schema):
            name = target.this.name
            listed = [c.name for c in target.expressions]
        else:
            name, listed = target.name, []
        info = self._table(txn, name)
        columns = _insert_columns(info, name, listed)
        source = stmt.expression
        if isinstance(source, exp.Values):
            raw_rows = []
            for tup in source.expressions:
                vals = tup.expressions if isinstance(tup, exp.Tuple) else [tup]
                if len(vals) != len(columns):
                    raise ProgrammingError(
                        f"INSERT has {len(columns)} columns but a row of {len(vals)} values"
                    )
                raw_rows.append([literal(v) for v in vals])
        elif isinstance(source, exp.Query):
            result = self._query(source, p, txn, lock=False)
            assert result.table is not None
            if result.table.num_columns != len(columns):
                raise ProgrammingError(
                    f"INSERT has {len(columns)} columns, the query {result.table.num_columns}"
                )
            raw_rows = [list(r.values()) for r in result.table.to_pylist()]
        else:
            raise NotSupportedError("INSERT needs VALUES or a query")
        conflict = stmt.args.get("conflict")
        return self._insert_rows(
            txn, info, columns, raw_rows, conflict, bool(stmt.args.get("ignore"))
        )

    def _prepared_insert(
        self, shape: InsertValues, values: Sequence[Any], txn: Transaction
    ) -> Result:
        # As _insert, with the VALUES rows already read.
        info = self._table(txn, shape.table)
        columns = _insert_columns(info, shape.table, list(shape.listed))
        raw_rows = []
        for tup in shape.rows:
            if len(tup) != len(columns):
                raise ProgrammingError(
                    f"INSERT has {len(columns)} columns but a row of {len(tup)} values"
                )
            raw_rows.append([values[v.position] if type(v) is Slot else v for v in tup])
        return self._insert_rows(txn, info, columns, raw_rows, None, shape.ignore)

    def _insert_rows(
        self,
        txn: Transaction,
        info: TableInfo,
        columns: Sequence[str],
        raw_rows: list[list[Any]],
        conflict: exp.OnConflict | None,
        ignore: bool,
    ) -> Result:
        rows = [self._row(info, dict(zip(columns, r, strict=True))) for r in raw_rows]
        if conflict is not None and not conflict.args.get("duplicate"):
            raise NotSupportedError("only ON DUPLICATE KEY UPDATE is supported")
        self._mark_written(txn, info)
        n = self._write_rows(txn, info, rows, conflict, ignore)
        return Result(rowcount=n, message=f"INSERT {n}")

    def _row(self, info: TableInfo, given: Mapping[str, Any]) -> dict[str, Any]:
        coerced = {k: coerce(info.column(k), v) for k, v in given.items()}
        try:
            return info.canonical(coerced)
        except SchemaError as e:
            raise DataError(str(e)) from None

    def _existing(
        self, txn: Transaction, info: TableInfo, encoded: Sequence[_Encoded]
    ) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Current row values by row key, and unique-index entries (key ->
        handle) that the given rows would collide with."""
        keys: list[bytes] = []
        ukeys: list[bytes] = []
        for key, _, _, entries in encoded:
            keys.append(key)
            ukeys.extend(k for k, _, uniq in entries if uniq)
        got = txn.batch_get(keys + ukeys)
        return {k: got[k] for k in keys if k in got}, {k: got[k] for k in ukeys if k in got}

    def _write_rows(
        self,
        txn: Transaction,
        info: TableInfo,
        rows: list[dict[str, Any]],
        conflict: exp.OnConflict | None,
        ignore: bool,
    ) -> int:
        encoded = []
        for r in rows:
            handle, value = info.encode_canonical(r)
            encoded.append((row_key(info.id, handle), handle, value, info.index_entries(handle, r)))
        existing, taken = self._existing(txn, info, encoded)
        seen: set[bytes] = set()
        n = 0
        for r, (key, handle, value, entries) in zip(rows, encoded, strict=True):
            clash = [k for k, _, uniq in entries if uniq and k in taken and taken[k] != handle]
            if key in existing or key in seen or clash:
                if ignore:
                    continue
                if conflict is None:
                    what = (
                        info.decode_handle(handle)
                        if key in existing or key in seen
                        else "unique index"
                    )
                    raise IntegrityError(f"duplicate entry {what} for table {info.name!r}")
                if key not in existing and key not in seen:
                    raise IntegrityError(f"duplicate entry for a unique index of {info.name!r}")
                old = decode_rows(info, [txn.get(key) or existing[key]]).to_pylist()[0]
                new = dict(old)
                for eq in conflict.expressions:
                    col = eq.this.name
                    new[col] = coerce(info.column(col), _row_value(eq.expression, old, r))
                self._replace_row(txn, info, old, self._row(info, new))
                n += 2  # MySQL counts an updated duplicate as 2 rows
                continue
            txn.insert(key, value)
            for k, v, uniq in entries:
                if uniq:
                    txn.insert(k, v)
                else:
                    txn.put(k, v)
                if uniq:
                    taken[k] = handle
            seen.add(key)
            n += 1
        return n

    def _replace_row(
        self, txn: Transaction, info: TableInfo, old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        old_handle, _ = info.encode_canonical(old)
        new_handle, value = info.encode_canonical(new)
        old_entries = {k: v for k, v, _ in info.index_entries(old_handle, old)}
        new_entries = info.index_entries(new_handle, new)
        for k in old_entries:
            if k not in {e[0] for e in new_entries}:
                txn.delete(k)
        if new_handle != old_handle:
            txn.delete(row_key(info.id, old_handle))
            new_key = row_key(info.id, new_handle)
            if txn.get(new_key) is not None:
                raise IntegrityError(
                    f"duplicate entry {info.decode_handle(new_handle)} for {info.name!r}"
                )
            txn.insert(new_key, value)
        else:
            txn.put(row_key(info.id, new_handle), value)
        for k, v, uniq in new_entries:
            if k in old_entries and old_entries[k] == v:
                continue
            if uniq:
                holder = txn.get(k)
                if holder is not None and holder != new_handle:
                    raise IntegrityError(f"duplicate entry for a unique index of {info.name!r}")
                txn.put(k, v)
            else:
                txn.put(k, v)

    def _target_rows(
        self, stmt: exp.Update | exp.Delete, p: _Parsed, txn: Transaction
    ) -> tuple[TableInfo, list[dict[str, Any]]]:
        """The current rows an UPDATE/DELETE touches, read from the row store
        at the transaction's snapshot plus its own writes."""
        target = stmt.this
        if not isinstance(target, exp.Table):
            raise NotSupportedError("UPDATE/DELETE of one table only")
        info = self._table(txn, target.name)
        where = stmt.args.get("where")
        found = None
        if not stmt.args.get("order") and not stmt.args.get("limit"):
            kw = key_where(where.this if where else None, {})
            found = None if kw is None else _key_fetch(info, kw, (), txn)
        if found is not None:
            return info, decode_pylist(info, found[1])
        select = exp.select("*").from_(exp.Table(this=exp.to_identifier(target.name)))
        if where is not None:
            select.set("where", where.copy())
        for arg in ("order", "limit"):
            if stmt.args.get(arg) is not None:
                select.set(arg, stmt.args[arg].copy())
        tables = {info.name: info}
        plan = self._plan(select, tables)
        router = _Router(self, txn, tables, {}, [], lock=False, force="row")
        return info, execute(plan, router.scan).to_pylist()

    def _update(self, stmt: exp.Update, p: _Parsed, txn: Transaction) -> Result:
        info, rows = self._target_rows(stmt, p, txn)
        self._mark_written(txn, info)
        sets: list[tuple[ColumnInfo, RowValue]] = []
        for eq in stmt.expressions:
            if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
                raise NotSupportedError(f"SET {eq.sql('mysql')}")
            sets.append(
                (_set_column(info, eq.this.name), partial(_row_value, eq.expression, inserted=None))
            )
        return self._update_rows(txn, info, rows, sets)

    def _prepared_update(self, shape: KeyUpdate, values: Sequence[Any], txn: Transaction) -> Result:
        # As _update, for a WHERE that finds its rows through a key.
        info = self._table(txn, shape.table)
        found = _key_fetch(info, shape.where, values, txn)
        if found is None:
            raise Fallback
        rows = decode_pylist(info, found[1])
        self._mark_written(txn, info)
        sets: list[tuple[ColumnInfo, RowValue]] = [
            (_set_column(info, name), partial(fn, values)) for name, fn in shape.sets
        ]
        return self._update_rows(txn, info, rows, sets)

    def _update_rows(
        self,
        txn: Transaction,
        info: TableInfo,
        rows: list[dict[str, Any]],
        sets: Sequence[tuple[ColumnInfo, RowValue]],
    ) -> Result:
        """Apply ``SET col = value(old row)`` to each row."""
        changed = 0
        for old in rows:
            new = dict(old)
            for col, value in sets:
                new[col.name] = coerce(col, value(old))
            canon = self._row(info, new)
            if canon != old:
                self._replace_row(txn, info, old, canon)
                changed += 1
        return Result(rowcount=changed, message=f"UPDATE {changed}")

    def _delete(self, stmt: exp.Delete, p: _Parsed, txn: Transaction) -> Result:
        info, rows = self._target_rows(stmt, p, txn)
        return self._delete_rows(txn, info, rows)

    def _prepared_delete(self, shape: KeyDelete, values: Sequence[Any], txn: Transaction) -> Result:
        info = self._table(txn, shape.table)
        found = _key_fetch(info, shape.where, values, txn)
        if found is None:
            raise Fallback
        return self._delete_rows(txn, info, decode_pylist(info, found[1]))

    def _delete_rows(self, txn: Transaction, info: TableInfo, rows: list[dict[str, Any]]) -> Result:
        self._mark_written(txn, info)
        for r in rows:
            handle, _ = info.encode_canonical(r)
            txn.delete(row_key(info.id, handle))
            for k, _, _ in info.index_entries(handle, r):
                txn.delete(k)
        return Result(rowcount=len(rows), message=f"DELETE {len(rows)}")


# ---------------------------------------------------------------------- routing
class _Router:
    """Feeds the executor's table scans from the engine each one routes to."""

    def __init__(
        self,
        session: Session,
        txn: Transaction,
        tables: Mapping[str, TableInfo],
        hints: Mapping[str, str],
        warnings: list[str],
        lock: bool,
        force: str | None = None,
    ) -> None:
        self.s, self.txn, self.tables = session, txn, tables
        self.hints, self.warnings, self.lock, self.force = hints, warnings, lock, force
        self._futures: dict[int, Future[pa.Table]] = {}
        self._aggregates: dict[int, Future[pa.Table | None]] = {}

    def engine(self, node: ScanNode) -> tuple[str, str]:
        """``(engine, why)`` for a scan."""
        info = self.tables[node.table]
        if self.force:
            return self.force, "statement writes this table"
        if info.id in self.s._written:
            return "row", "read-your-writes"
        hint = self.hints.get(node.alias.lower()) or self.hints.get(node.table.lower())
        if hint:
            return hint, "hint"
        if self.s.read_engine != "auto":
            return self.s.read_engine, "session setting"
        access = _access_path(info, node.filters)
        if access is not None:
            return "row", access[0]
        if self.lock:
            return "row", "FOR UPDATE"
        if self.s.client.columnar is None:
            return "row", "no columnar replica"
        return "columnar", "scan"

    def describe(self, node: ScanNode) -> str:
        engine, why = self.engine(node)
        return f"{engine} ({why})"

    def pushed_to(self, pushed: PushedAggregate) -> str | None:
        """The engine that computes ``pushed`` (the columnar replica, when
        its scan goes there and storage can apply every filter), or None."""
        info = self.tables[pushed.scan.table]
        if self.engine(pushed.scan)[0] != "columnar" or self.s.client.columnar is None:
            return None
        if not all(_pushable(info, f) for f in pushed.scan.filters):
            return None
        return "columnar"

    def prefetch(
        self,
        scans: Sequence[ScanNode],
        pushdowns: Sequence[PushedAggregate] = (),
        later: Sequence[ScanNode] = (),
    ) -> None:
        """Start every scan of a query at once. Each is a round trip (a read
        index per Region on the columnar path) that mostly waits: overlapped,
        a query with 8 scans waits about as long as for its slowest one. A
        scan whose aggregate the replica computes asks for that instead.
        Scans of one table with the same filters on the same engine (TPC-H
        Q21 reads lineitem three times) are one read of the columns they
        need between them. Scans in ``later`` wait for their runtime
        filters (the keys of other inputs of a join) and are not read ahead.
        Reads only, so a locking read (which adds to the write buffer) runs
        its scans in turn."""
        if self.lock or len(scans) < 2:
            return
        pushed = {id(p.scan): p for p in pushdowns if self.pushed_to(p) is not None}
        waits = {id(n) for n in later}
        alike: dict[tuple[Any, ...], list[ScanNode]] = {}
        for node in scans:
            if id(node) in waits:
                continue
            p = pushed.get(id(node))
            if p is not None:
                self._aggregates[id(p)] = _SCAN_POOL.submit(self._aggregate, p)
                continue
            # The value's type too: 1, 1.0 and True are equal keys in Python.
            filters = tuple((c, op, type(v).__name__, v) for c, op, v in node.filters)
            alike.setdefault((node.table, self.engine(node)[0], filters), []).append(node)
        for nodes in alike.values():
            first = nodes[0]
            if len(nodes) > 1:
                wanted = {c for n in nodes for c in n.columns}
                columns = [c for c in self.tables[first.table].column_names if c in wanted]
                first = ScanNode(first.table, first.alias, columns, list(first.filters))
            fut = _SCAN_POOL.submit(self._scan, first)
            for n in nodes:
                self._futures[id(n)] = fut

    def scan(self, node: ScanNode) -> pa.Table:
        fut = self._futures.pop(id(node), None)
        if fut is None:
            return self._scan(node)
        table = fut.result()
        # A read shared by several scans has the columns of all of them.
        return table if table.column_names == node.columns else table.select(node.columns)

    def aggregate(self, pushed: PushedAggregate) -> pa.Table | None:
        """The replica's answer to ``pushed``, or None: computed by the executor."""
        fut = self._aggregates.pop(id(pushed), None)
        return fut.result() if fut is not None else self._aggregate(pushed)

    def _aggregate(self, pushed: PushedAggregate) -> pa.Table | None:
        if self.pushed_to(pushed) is None:
            return None
        node = pushed.scan

        def fell_back(why: str) -> None:
            self.warnings.append(
                f"columnar replica not ready ({why}): {node.table} aggregated from the row store"
            )

        return self.s.client.columnar_scan(
            node.table,
            None,
            list(node.filters),
            self.txn.start_ts,
            group_by=pushed.group_by,
            aggregates=pushed.aggregates,
            max_wait=COLUMNAR_MAX_WAIT_S,
            on_fallback=fell_back,
        )

    def _scan(self, node: ScanNode) -> pa.Table:
        info = self.tables[node.table]
        engine, _ = self.engine(node)
        if engine == "columnar":
            return self._columnar(node, info)
        return self._row(node, info)

    def _columnar(self, node: ScanNode, info: TableInfo) -> pa.Table:
        c = self.s.client
        if c.columnar is None:
            self.warnings.append(f"no columnar replica: {node.table} read from the row store")
            return self._row(node, info)
        pushed = [f for f in node.filters if _pushable(info, f)]
        # Runtime filters (join keys from another input) on integer columns.
        pushed.extend(
            (col, "in", keys)
            for col, keys in node.runtime.items()
            if col in info.column_names and info.column(col).kind is Kind.INT
        )

        def fell_back(why: str) -> None:
            self.warnings.append(
                f"columnar replica not ready ({why}): {node.table} read from the row store"
            )

        return c.columnar_scan(
            node.table,
            list(node.columns),
            pushed,
            self.txn.start_ts,
            max_wait=COLUMNAR_MAX_WAIT_S,
            on_fallback=fell_back,
        )

    def _row(self, node: ScanNode, info: TableInfo) -> pa.Table:
        txn = self.txn
        cols = list(node.columns) or info.column_names[:1]
        access = _access_path(info, node.filters)
        if access is not None:
            row_keys, values = access[1](txn)
            if self.lock:
                txn.lock_keys(*row_keys)  # absent keys too: no write skew through them
            return pa.Table.from_batches([decode_rows(info, values, cols)])
        table = scan_rows(txn, info, cols if not self.lock else None)
        if self.lock and table.num_rows:
            handles = _handles_of(info, table)
            txn.lock_keys(*(row_key(info.id, h) for h in handles))
            table = table.select(cols)
        return table


def _pushable(info: TableInfo, f: tuple[str, str, Any]) -> bool:
    col, op, value = f
    try:
        c = info.column(col)
        other = info.column(value.name) if isinstance(value, ColumnRef) else None
    except SchemaError:
        return False
    if other is not None:
        # Two columns of one SQL type compare in storage as sql.expr does.
        return op in ("=", "!=", "<", "<=", ">", ">=") and c.type == other.type
    if value is None or op not in ("=", "!=", "<", "<=", ">", ">="):
        return False
    k = c.kind
    ok: dict[Kind, tuple[type, ...]] = {
        Kind.INT: (int,),
        Kind.DOUBLE: (int, float),
        Kind.STRING: (str,),
        Kind.BOOL: (bool,),
        Kind.DATE: (dt.date,),
        Kind.TIMESTAMP: (dt.datetime,),
    }
    if k is Kind.DECIMAL:
        return isinstance(value, (int, decimal.Decimal)) and not isinstance(value, bool)
    return isinstance(value, ok[k]) and not (k is Kind.INT and isinstance(value, bool))


def _handles_of(info: TableInfo, table: pa.Table) -> list[bytes]:
    pk = [c.name for c in info.pk_columns]
    return [info.handle_of(tuple(r[n] for n in pk)) for r in table.select(pk).to_pylist()]


# Reads a table's rows through a key: ``(row keys it looked at, row values found)``.
RowFetch = Callable[[Transaction], tuple[list[bytes], list[bytes]]]


def _equalities(filters: Sequence[tuple[str, str, Any]]) -> dict[str, Any]:
    return {
        c: v for c, op, v in filters if op == "=" and v is not None and not isinstance(v, ColumnRef)
    }


def _by_handles(info: TableInfo, handles: Callable[[Transaction], list[bytes]]) -> RowFetch:
    def fetch(txn: Transaction) -> tuple[list[bytes], list[bytes]]:
        keys = [row_key(info.id, h) for h in handles(txn)]
        got = txn.batch_get(keys)
        return keys, [got[k] for k in keys if k in got]

    return fetch


def _access_path(
    info: TableInfo, filters: Sequence[tuple[str, str, Any]]
) -> tuple[str, RowFetch] | None:
    """A key-based way to find the rows (point get, unique index, index, or
    a primary-key prefix range), or None: the scan must read the table."""
    eq = _equalities(filters)
    pk = [c.name for c in info.pk_columns]
    try:
        if all(n in eq for n in pk):
            handle = info.handle_of(tuple(coerce(info.column(n), eq[n]) for n in pk))
            return "point get", _by_handles(info, lambda txn: [handle])
        for idx in info.indexes:
            if all(n in eq for n in idx.columns):
                values = [coerce(info.column(n), eq[n]) for n in idx.columns]
                return _index_lookup(info, idx, values)
        k = 0
        while k < len(pk) and pk[k] in eq:
            k += 1
        if k:
            cols = info.pk_columns[:k]
            prefix = row_key(
                info.id, b"".join(c.key_datum(c.check(coerce(c, eq[c.name]))) for c in cols)
            )
            end = _prefix_end(prefix)

            def scan(txn: Transaction) -> tuple[list[bytes], list[bytes]]:
                pairs = txn.scan(prefix, end)
                return [k for k, _ in pairs], [v for _, v in pairs]

            return f"primary key prefix ({', '.join(pk[:k])})", scan
    except (SchemaError, DataError):
        return None  # a value that cannot match: let the scan find nothing
    return None


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    p[-1] += 1
    return bytes(p)


def _index_lookup(info: TableInfo, idx: IndexInfo, values: list[Any]) -> tuple[str, RowFetch]:
    datums = [
        info.column(n).key_datum(info.column(n).check(v))
        for n, v in zip(idx.columns, values, strict=True)
    ]
    prefix = index_values_key(info.id, idx.id, datums)

    def unique(txn: Transaction) -> list[bytes]:
        h = txn.get(prefix)
        return [] if h is None else [h]

    def nonunique(txn: Transaction) -> list[bytes]:
        return [k[len(prefix) :] for k, _ in txn.scan(prefix, _prefix_end(prefix))]

    if idx.unique:
        return f"unique index {idx.name}", _by_handles(info, unique)
    return f"index {idx.name}", _by_handles(info, nonunique)


# A row to insert: (row key, handle, value, index entries).
_Encoded = tuple[bytes, bytes, bytes, list[tuple[bytes, bytes, bool]]]

# A SET value: ``old row -> new value``.
RowValue = Callable[[Mapping[str, Any]], Any]


def _set_column(info: TableInfo, name: str) -> ColumnInfo:
    col = info.column(name) if name in info.column_names else None
    if col is None:
        raise UnknownColumnError(f"unknown column {name!r} in table {info.name!r}")
    return col


def _insert_columns(info: TableInfo, name: str, listed: Sequence[str]) -> list[str]:
    columns = list(listed) or info.column_names
    for c in columns:
        if c not in info.column_names:
            raise UnknownColumnError(f"unknown column {c!r} in table {name!r}")
    return columns


_EXACT_TYPES: dict[Kind, type] = {Kind.INT: int, Kind.STRING: str, Kind.DATE: dt.date}
_MIN_MAX_KINDS = (Kind.INT, Kind.DECIMAL, Kind.STRING, Kind.DATE, Kind.TIMESTAMP)


def _prefix_fetch(
    info: TableInfo, where: KeyWhere, params: Sequence[Any], txn: Transaction
) -> list[bytes] | None:
    """Row values of the rows a WHERE of ANDed ``col = value`` selects
    through a non-unique index or a primary-key prefix whose columns are
    exactly the WHERE's, or None. Only values whose key equality is SQL's
    equality qualify: an int, str or date for a column of that type (a
    timestamp would match a DATE key after truncation, but not in SQL)."""
    eqs, in_list = where.bind(params)
    if in_list is not None or not eqs or not set(eqs) <= set(info.column_names):
        return None
    pk = [c.name for c in info.pk_columns]
    # The columns of the path _access_path takes for these equalities.
    path: list[str] | None = next(
        (list(i.columns) for i in info.indexes if all(n in eqs for n in i.columns)), None
    )
    if path is None:
        k = 0
        while k < len(pk) and pk[k] in eqs:
            k += 1
        path = pk[:k]
    if set(path) != set(eqs) or set(pk) <= set(eqs):
        return None
    if any(v is None for v in eqs.values()):
        return []  # col = NULL is never true
    if any(_EXACT_TYPES.get(info.column(n).kind) is not type(v) for n, v in eqs.items()):
        return None
    access = _access_path(info, [(k, "=", v) for k, v in eqs.items()])
    if access is None:
        return None
    return access[1](txn)[1]


def _key_fetch(
    info: TableInfo, where: KeyWhere, params: Sequence[Any], txn: Transaction
) -> tuple[list[bytes], list[bytes]] | None:
    """``(row keys looked at, row values found)`` of the rows a WHERE of
    ANDed ``col = value`` (or ``pk IN (...)``) selects exactly through a
    key, or None if the key columns are not a key of ``info``."""
    eqs, in_list = where.bind(params)
    names = set(info.column_names)
    if not set(eqs) <= names or (in_list and in_list[0] not in names):
        return None
    pk = [c.name for c in info.pk_columns]
    if in_list is not None:
        if len(pk) != 1 or in_list[0] != pk[0] or eqs:
            return None
        try:
            col = info.column(pk[0])
            handles = list(
                dict.fromkeys(info.handle_of(coerce(col, v)) for v in in_list[1] if v is not None)
            )
        except (SchemaError, DataError):
            return None
        return _by_handles(info, lambda txn: handles)(txn)
    exact = set(eqs) == set(pk) or any(
        i.unique and set(i.columns) == set(eqs) for i in info.indexes
    )
    if not exact:
        return None  # other columns must be checked: leave it to the planner
    if any(v is None for v in eqs.values()):
        # col = NULL is never true; _access_path would drop the condition
        # (its callers filter again) and read every row of the key prefix.
        return [], []
    access = _access_path(info, [(k, "=", v) for k, v in eqs.items()])
    if access is None:
        return None
    return access[1](txn)


def _row_value(e: exp.Expr, row: Mapping[str, Any], inserted: Mapping[str, Any] | None) -> Any:
    """Value of a SET / ON DUPLICATE KEY UPDATE expression for one row:
    column references read ``row``, ``VALUES(c)`` reads the row that failed to
    insert; the rest is constant folding."""

    def sub(node: exp.Expr) -> exp.Expr:
        if (
            isinstance(node, exp.Anonymous)
            and node.name.upper() == "VALUES"
            and inserted is not None
        ):
            return to_sql_literal(inserted[node.expressions[0].name])
        if isinstance(node, exp.Column):
            if node.name not in row:
                raise UnknownColumnError(f"unknown column {node.name!r}")
            return to_sql_literal(row[node.name])
        return node

    return literal(e.copy().transform(sub))


def _written_names(stmt: exp.Expr) -> list[str] | None:
    """Result column names as MySQL gives them: the alias, the column name,
    or else the expression as written (``sum(balance)``, not the optimizer's
    ``_col_1``). None for ``*`` (the planner's names are right there)."""
    if not isinstance(stmt, exp.Select):
        return None
    names = []
    for e in stmt.expressions:
        if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
            return None
        if isinstance(e, (exp.Alias, exp.Column)):
            names.append(e.alias_or_name)
        else:
            names.append(e.sql("mysql"))
    return names


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _split(text: str) -> list[str]:
    """Statements of a script (split on ``;`` outside quotes and comments)."""
    parts, cur, quote = [], [], ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
            cur.append(ch)
        elif ch == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = len(text) if j < 0 else j
            continue
        elif ch == ";":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]
