"""DB-API 2.0 (PEP 249) over a :class:`~sql.session.Session`.

``sql.connect("127.0.0.1:2379")`` (PD addresses: a ``host:port`` string, a
comma-separated list, or a list) reaches a cluster; ``sql.connect(path)``
opens an embedded store in a directory. As PEP 249 asks, a connection starts
with autocommit off: the first statement opens a transaction that lasts until
``commit()`` or ``rollback()``; ``connect(..., autocommit=True)`` or the
``autocommit`` attribute turns it on.

Beyond PEP 249: ``cursor.fetch_arrow_table()`` returns the rest of a result
as a ``pyarrow.Table`` without converting rows to Python; ``cursor.warnings``
lists what the last statement warned about (e.g. a columnar read that fell
back to the row store); ``connection.run_transaction(fn)`` re-runs
``fn(cursor)`` in a fresh transaction when it loses a conflict.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from sql.errors import InterfaceError, ProgrammingError, TransactionRetryError
from sql.session import Result, Session

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"

T = TypeVar("T")

_PD = re.compile(r"^[\w.\-]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$")


def _is_pd(target: str | Sequence[str]) -> bool:
    if not isinstance(target, str):
        return True
    parts = [p.strip() for p in target.split(",")]
    return all(_PD.match(p) for p in parts) and not os.path.isdir(target)


def connect(
    target: str | Sequence[str],
    *,
    autocommit: bool = False,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Connection:
    """A connection to a cluster (PD addresses) or an embedded store (a
    directory path)."""
    import kvstore

    if _is_pd(target):
        addrs = target.split(",") if isinstance(target, str) else list(target)
        client = kvstore.connect(addrs, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
    else:
        assert isinstance(target, str)
        client = kvstore.open(target)
    return Connection(Session(client, autocommit=autocommit), owns_client=True)


class Connection:
    def __init__(self, session: Session, owns_client: bool = False) -> None:
        self._session: Session | None = session
        self._owns = owns_client

    @property
    def session(self) -> Session:
        if self._session is None:
            raise InterfaceError("connection is closed")
        return self._session

    @property
    def autocommit(self) -> bool:
        return self.session.autocommit

    @autocommit.setter
    def autocommit(self, on: bool) -> None:
        if on and self.session.in_transaction:
            self.session.commit()
        self.session.autocommit = on

    def cursor(self) -> Cursor:
        return Cursor(self)

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        if self._session is None:
            return
        s, self._session = self._session, None
        try:
            s.rollback()  # PEP 249: closing without commit rolls back
        finally:
            if self._owns:
                s.client.close()

    def execute(self, operation: str, parameters: Sequence[Any] = ()) -> Cursor:
        """Shortcut: a new cursor that has run ``operation``."""
        cur = self.cursor()
        cur.execute(operation, parameters)
        return cur

    def run_transaction(self, fn: Callable[[Cursor], T], max_retries: int = 50) -> T:
        """Run ``fn(cursor)`` in its own transaction and commit; if it loses a
        conflict, roll back and run ``fn`` again from the start."""
        s = self.session
        if s.in_transaction:
            raise ProgrammingError("run_transaction needs no transaction to be open")
        for attempt in range(max_retries + 1):
            cur = self.cursor()
            try:
                s.execute("BEGIN")
                out = fn(cur)
                s.commit()
                return out
            except TransactionRetryError:
                s.rollback()
                if attempt == max_retries:
                    raise
                # Jittered exponential backoff: hot rows make conflicts come
                # in waves; spreading the retries out lets one win each wave.
                time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
            except BaseException:
                s.rollback()
                raise
        raise AssertionError("unreachable")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # As sqlite3: commit on success, roll back on error; stays open.
        if self._session is None:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


def _type_code(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "TEXT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    return str(t)


class Cursor:
    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._result: Result | None = None
        self._rows: Iterator[tuple[Any, ...]] | None = None
        self._taken = 0
        self._closed = False
        self.warnings: list[str] = []

    # ------------------------------------------------------------ PEP 249
    @property
    def description(self) -> list[tuple[Any, ...]] | None:
        t = self._result.table if self._result else None
        if t is None:
            return None
        out = []
        for f in t.schema:
            precision = getattr(f.type, "precision", None)
            scale = getattr(f.type, "scale", None)
            out.append((f.name, _type_code(f.type), None, None, precision, scale, f.nullable))
        return out

    @property
    def rowcount(self) -> int:
        return -1 if self._result is None else self._result.rowcount

    @property
    def lastrowid(self) -> None:
        return None

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("cursor is closed")
        self.connection.session  # noqa: B018 - raises if the connection is closed

    def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> Cursor:
        self._check()
        params = () if parameters is None else parameters
        if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
            raise ProgrammingError("parameters are a sequence (paramstyle qmark)")
        self._result = None
        self._rows = None
        self._taken = 0
        self._result = self.connection.session.execute(operation, params)
        self.warnings = list(self._result.warnings)
        return self

    def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> Cursor:
        self._check()
        total = 0
        for params in seq_of_parameters:
            self.execute(operation, params)
            total += max(self.rowcount, 0)
        self._result = Result(rowcount=total)
        return self

    def _iter(self) -> Iterator[tuple[Any, ...]]:
        t = self._result.table if self._result else None
        if t is None:
            raise ProgrammingError("the last statement returned no rows")
        for batch in t.to_batches(max_chunksize=1024):
            cols = [c.to_pylist() for c in batch.columns]
            yield from zip(*cols, strict=True) if cols else iter(())

    def _ensure_rows(self) -> Iterator[tuple[Any, ...]]:
        self._check()
        if self._rows is None:
            self._rows = self._iter()
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        row = next(self._ensure_rows(), None)
        if row is not None:
            self._taken += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        n = self.arraysize if size is None else size
        rows = self._ensure_rows()
        out = []
        for _ in range(n):
            r = next(rows, None)
            if r is None:
                break
            out.append(r)
        self._taken += len(out)
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        out = list(self._ensure_rows())
        self._taken += len(out)
        return out

    def fetch_arrow_table(self) -> pa.Table:
        """The rows not fetched yet, as an Arrow table (no Python objects)."""
        self._check()
        t = self._result.table if self._result else None
        if t is None:
            raise ProgrammingError("the last statement returned no rows")
        rest = t.slice(self._taken)
        self._taken = t.num_rows
        self._rows = iter(())
        return rest

    def close(self) -> None:
        self._closed = True
        self._result = None
        self._rows = None

    def setinputsizes(self, sizes: object) -> None:
        pass

    def setoutputsize(self, size: object, column: object = None) -> None:
        pass

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self._ensure_rows()

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# PEP 249 type objects and constructors.
class _DBAPITypeObject:
    def __init__(self, *values: str) -> None:
        self.values = values

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and any(other.startswith(v) for v in self.values)

    def __hash__(self) -> int:
        return hash(self.values)


STRING = _DBAPITypeObject("TEXT", "VARCHAR")
BINARY = _DBAPITypeObject("BLOB")
NUMBER = _DBAPITypeObject("BIGINT", "INT", "DOUBLE", "DECIMAL", "BOOLEAN")
DATETIME = _DBAPITypeObject("DATE", "TIMESTAMP")
ROWID = _DBAPITypeObject("BIGINT")

Date = _dt.date
Timestamp = _dt.datetime


def DateFromTicks(ticks: float) -> _dt.date:  # noqa: N802 - PEP 249's name
    return _dt.date.fromtimestamp(ticks)


def TimestampFromTicks(ticks: float) -> _dt.datetime:  # noqa: N802 - PEP 249's name
    return _dt.datetime.fromtimestamp(ticks)


def Binary(data: bytes) -> bytes:  # noqa: N802 - PEP 249's name
    return bytes(data)
