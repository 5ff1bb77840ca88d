"""The SQL layer: a small TiDB in the client process.

Where it sits: on top of ``kvstore.client`` (transactions, the tables API,
columnar reads) and below ``bench``. It reaches data only through the client
and the columnar read API; it holds no state beyond a session's open
transaction and caches, so any number of clients can run it side by side.

Modules, bottom-up:

* :mod:`sql.errors` -- PEP 249's exception classes, rooted in ``KVError``.
* :mod:`sql.values` -- constants, ``?`` parameters, implicit conversions.
* :mod:`sql.catalog` -- DDL onto schemas in KV meta keys; schema-change
  safety against concurrent writers; index backfill.
* :mod:`sql.planner` -- sqlglot's optimizer and planner to a plan of table
  scans (with the columns and filters each needs) and relational steps. Pure.
* :mod:`sql.expr`, :mod:`sql.executor` -- the plan run on Arrow, vectorised
  (pyarrow compute and Acero), never row at a time.
* :mod:`sql.prepared` -- the shapes of common OLTP statements (point select,
  INSERT VALUES, UPDATE/DELETE by key), read once per text, ``?`` s as slots.
  Pure.
* :mod:`sql.session` -- statements, transactions, engine routing, EXPLAIN.
* :mod:`sql.dbapi` -- PEP 249: ``connect``, connections, cursors.
* :mod:`sql.shell`, :mod:`sql.load` -- ``htapkv sql`` and ``htapkv load``.
* :mod:`sql.demo` -- the ``htapkv demo`` command and its SQL section.

Invariants: a statement is atomic (it fails whole, writing nothing); both
engines answer a scan at the transaction's ``start_ts``, so routing changes
cost, never results; a transaction that wrote a table commits only if the
table's schema did not change under it.
"""

from sql.dbapi import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Connection,
    Cursor,
    Date,
    DateFromTicks,
    Timestamp,
    TimestampFromTicks,
    apilevel,
    connect,
    paramstyle,
    threadsafety,
)
from sql.errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
