"""The SQL layer's errors: PEP 249's exception classes, inside the one error tree.

PEP 249 asks for ``Error`` and its subclasses; here ``Error`` is itself a
:class:`kvstore.errors.KVError`, so ``except KVError`` still catches every
failure of the system. Errors from the layers below are translated once, in
:func:`translate`; the original stays attached as ``__cause__``.

A statement that raises any of these has written nothing: statements are
atomic inside their transaction (see :mod:`sql.session`).
"""

from __future__ import annotations

from kvstore.errors import (
    AlreadyExistsError,
    ClosedError,
    DataIsNotReadyError,
    GcTooEarlyError,
    InvalidArgumentError,
    KeyIsLockedError,
    KVError,
    RowFormatError,
    SchemaError,
    TableExistsError,
    TableNotFoundError,
    TxnAbortedError,
    UndeterminedError,
    WriteConflictError,
)


class Warning(Exception):  # noqa: N818 - PEP 249 names it so
    """PEP 249's warning class (e.g. a columnar read fell back to the row
    store). Not raised; warnings are listed on ``cursor.warnings``."""


class Error(KVError):
    """Base of every SQL error (PEP 249)."""


# The query engine's modules name the base SQLError; it is PEP 249's Error.
SQLError = Error


class InterfaceError(Error):
    """The DB-API object was misused (e.g. a closed cursor): fix the caller."""


class DatabaseError(Error):
    """An error about the database or the statement (PEP 249)."""


class DataError(DatabaseError):
    """A value does not fit its column (type, range, length, NULL in a NOT
    NULL column) or an expression failed on the data: fix the data."""


class OperationalError(DatabaseError):
    """The cluster could not run the statement now (unreachable nodes, a
    timeout): retrying later may succeed."""


class TransactionRetryError(OperationalError):
    """The transaction lost a write conflict, or a table it wrote changed
    schema before it committed. Nothing of it is committed: run the whole
    transaction again (``Connection.run_transaction`` does so)."""


class TableImportingError(OperationalError):
    """The table is taken over by a physical bulk import (``htapkv load``,
    :mod:`sql.load`): its rows are being written outside transactions, so
    statements that read or write it are refused until the import finishes
    (retry then). An import that failed leaves the mark in place, and says
    so: drop the table (``DROP TABLE``), create it again and load again."""


class UnknownOutcomeError(OperationalError):
    """The commit was sent but its answer was lost: the transaction may or
    may not have committed. Read the data to find out; do not blindly retry."""


class IntegrityError(DatabaseError):
    """A primary-key or unique-index violation: the row already exists."""


class InternalError(DatabaseError):
    """Something inside htapkv failed that should not have: please report it."""


class ProgrammingError(DatabaseError):
    """The statement is wrong: bad syntax, an unknown table or column, the
    wrong number of parameters. Fix the SQL."""


class ParseError(ProgrammingError):
    """SQL syntax error at ``line``/``column`` (1-based)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        where = f" at line {line}, column {column}" if line else ""
        super().__init__(f"syntax error{where}: {message}")
        self.line, self.column = line, column


class UnknownTableError(ProgrammingError):
    """No table of that name (as of the statement's snapshot)."""


class UnknownColumnError(ProgrammingError):
    """No column of that name in the tables the statement reads."""


class NotSupportedError(DatabaseError):
    """Valid SQL that htapkv does not implement (the message names the
    construct)."""


def translate(e: Exception) -> Error:
    """The SQL error for an error of a lower layer."""
    if isinstance(e, Error):
        return e
    msg = str(e) or type(e).__name__
    out: Error
    if isinstance(e, TableNotFoundError):
        out = UnknownTableError(f"unknown table {msg}")
    elif isinstance(e, TableExistsError):
        out = ProgrammingError(f"table {msg} already exists")
    elif isinstance(e, AlreadyExistsError):
        out = IntegrityError(f"duplicate entry: {msg}")
    elif isinstance(e, (SchemaError, RowFormatError, InvalidArgumentError)):
        out = DataError(msg)
    elif isinstance(e, (WriteConflictError, TxnAbortedError)):
        out = TransactionRetryError(f"transaction must be retried: {msg}")
    elif isinstance(e, UndeterminedError):
        out = UnknownOutcomeError(msg)
    elif isinstance(e, GcTooEarlyError):
        out = ProgrammingError(f"snapshot is older than the GC safe point: {msg}")
    elif isinstance(e, ClosedError):
        out = InterfaceError(msg)
    elif isinstance(e, (KeyIsLockedError, DataIsNotReadyError, KVError)):
        out = OperationalError(msg)
    else:
        out = InternalError(f"{type(e).__name__}: {msg}")
    out.__cause__ = e
    return out
