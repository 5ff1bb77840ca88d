"""Errors of the SQL layer, named after PEP 249 (DB-API 2.0) on purpose.

Where it sits: raised by ``sql.planner``, ``sql.expr`` and ``sql.executor``
(and, later, by the session/catalog layer). They form one small tree rooted
at :class:`SQLError`, so a caller can catch everything the SQL layer raises
with one ``except``. Storage errors (``kvstore.errors.KVError``) are not
wrapped here: they keep their own meaning (retry, backoff, ...).
"""

from __future__ import annotations

__all__ = ["DataError", "NotSupportedError", "ProgrammingError", "SQLError"]


class SQLError(Exception):
    """Base of every error of the SQL layer. Catch it to handle any of them;
    the subclass says whether to fix the statement, the data, or the engine."""


class ProgrammingError(SQLError):
    """The statement is wrong: bad syntax, unknown table or column, an
    ambiguous name, a subquery that returns more than one row where one value
    is expected. Fix the SQL text; retrying it unchanged fails the same way."""


class NotSupportedError(SQLError):
    """The statement is valid SQL but uses a construct this engine does not
    implement (the message names it). Rewrite the query without it (e.g. a
    correlated subquery as a join); retrying it unchanged fails the same way."""


class DataError(SQLError):
    """The statement is fine but a value is not: a type that cannot be
    converted, an arithmetic overflow. Fix the data or add a CAST; retrying
    over the same data fails the same way."""
