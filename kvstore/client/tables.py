"""Tables over any :class:`~kvstore.client.Client`: DDL, DML, row-store scans.

The small API the SQL layer sits on. Schemas are :class:`TableInfo` values
stored as JSON under meta keys (:mod:`kvstore.tablecodec`), written by
ordinary transactions: a DDL travels through the Raft log like any write, so a
columnar learner sees a table's schema in log order. Table ids come from a
meta counter key incremented in the same transaction that writes the schema,
so two concurrent ``create_table`` calls conflict and one is re-run.

:func:`scan_rows` reads the *row store* at a transaction's ``start_ts`` (a kv
scan of the table's row-key range + one bulk decode): the reference a
columnar read at the same timestamp must equal.

Works over an embedded store (``kvstore.open``) or a cluster
(``kvstore.connect``) alike: it uses only the public Transaction API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from kvstore.client.client import Client
from kvstore.client.txn import Transaction
from kvstore.errors import RowNotFoundError, SchemaError, TableExistsError, TableNotFoundError
from kvstore.tablecodec import (
    META_TABLE_ID_COUNTER,
    ColumnDef,
    TableInfo,
    decode_rows,
    make_table,
    row_key,
    row_range,
    table_meta_key,
    table_name_key,
)

__all__ = [
    "add_column",
    "create_table",
    "delete",
    "get_table",
    "get_table_by_id",
    "insert",
    "scan_rows",
    "update",
]


# Rows per scan call of scan_rows (each call is one RPC per Region).
SCAN_PAGE_ROWS = 20_000


def create_table(
    client: Client,
    name: str,
    columns: Sequence[ColumnDef],
    primary_key: Sequence[str] | str,
) -> TableInfo:
    """Create a table; returns its schema (version 1, column ids 1..n).

    ``columns``: :class:`~kvstore.tablecodec.ColumnInfo` (its id is replaced)
    or ``(name, type[, nullable[, default]])`` tuples. Raises
    :class:`TableExistsError` if the name is taken, :class:`SchemaError` for a
    bad definition (checked before anything is written)."""
    make_table(1, name, columns, primary_key)  # validate before any I/O

    def ddl(txn: Transaction) -> TableInfo:
        if txn.get(table_name_key(name)) is not None:
            raise TableExistsError(name)
        last = txn.get(META_TABLE_ID_COUNTER)
        table_id = int(last) + 1 if last else 1
        info = make_table(table_id, name, columns, primary_key)
        txn.put(META_TABLE_ID_COUNTER, str(table_id).encode())
        txn.insert(table_name_key(name), str(table_id).encode())
        txn.put(table_meta_key(table_id), info.to_json())
        return info

    return client.transaction(ddl)


def add_column(client: Client, table: str, column: ColumnDef) -> TableInfo:
    """Add one column (next free id, schema version + 1). Old rows are not
    rewritten: readers give them the column's default."""

    def ddl(txn: Transaction) -> TableInfo:
        info = get_table(txn, table).with_column(column)
        txn.put(table_meta_key(info.id), info.to_json())
        return info

    return client.transaction(ddl)


def _read(txn_or_client: Transaction | Client, fn: Any) -> Any:
    if isinstance(txn_or_client, Client):
        txn = txn_or_client.begin()
        try:
            return fn(txn)
        finally:
            txn.rollback()
    return fn(txn_or_client)


def get_table(txn_or_client: Transaction | Client, name: str) -> TableInfo:
    """The schema of table ``name`` as of the transaction's start_ts (or a
    fresh timestamp, given a client). Raises :class:`TableNotFoundError`."""

    def read(txn: Transaction) -> TableInfo:
        tid = txn.get(table_name_key(name))
        if tid is None:
            raise TableNotFoundError(name)
        return get_table_by_id(txn, int(tid))

    result: TableInfo = _read(txn_or_client, read)
    return result


def get_table_by_id(txn_or_client: Transaction | Client, table_id: int) -> TableInfo:
    def read(txn: Transaction) -> TableInfo:
        raw = txn.get(table_meta_key(table_id))
        if raw is None:
            raise TableNotFoundError(f"#{table_id}")
        return TableInfo.from_json(raw)

    result: TableInfo = _read(txn_or_client, read)
    return result


def _encode(table: TableInfo, rows: Iterable[Mapping[str, Any]]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for r in rows:
        handle, value = table.encode_row(r)
        if handle in seen:
            raise SchemaError(f"two rows with primary key {table.decode_handle(handle)!r}")
        seen.add(handle)
        out.append((row_key(table.id, handle), value))
    return out


def insert(txn: Transaction, table: TableInfo, rows: Iterable[Mapping[str, Any]]) -> None:
    """Buffer new rows (``{column: value}``; missing columns take defaults).
    All rows are checked before any is buffered. The commit fails with
    :class:`~kvstore.errors.AlreadyExistsError` if a primary key is taken."""
    for k, v in _encode(table, rows):
        txn.insert(k, v)


def update(txn: Transaction, table: TableInfo, rows: Iterable[Mapping[str, Any]]) -> None:
    """Change existing rows: each mapping holds the full primary key and the
    columns to set; other columns keep their values. Raises
    :class:`RowNotFoundError` if a row is not visible to ``txn``."""
    rows = list(rows)
    pk = table.primary_key
    keys = []
    for r in rows:
        if not isinstance(r, Mapping) or not set(pk) <= set(r):
            raise SchemaError(f"update needs the primary key {pk} in every row")
        keys.append(table.row_key(tuple(r[n] for n in pk)))
    current = txn.batch_get(keys)
    merged = []
    for k, r in zip(keys, rows, strict=True):
        old = current.get(k)
        if old is None:
            raise RowNotFoundError(table.name, tuple(r[n] for n in pk))
        row = decode_rows(table, [old]).to_pylist()[0]
        row.update(r)
        merged.append(row)
    for k, v in _encode(table, merged):
        txn.put(k, v)


def delete(txn: Transaction, table: TableInfo, pks: Iterable[Any]) -> None:
    """Delete rows by primary key (a scalar for a one-column key, else a
    tuple). Deleting an absent row is a no-op."""
    for k in [table.row_key(pk) for pk in pks]:
        txn.delete(k)


def scan_rows(txn: Transaction, table: TableInfo, columns: Sequence[str] | None = None) -> pa.Table:
    """Every row of ``table`` visible to ``txn`` (its snapshot plus its own
    buffered writes), in primary-key order, read from the row store. Locks
    met on the way are resolved as by any read."""
    start, end = row_range(table.id)
    values: list[bytes] = []
    # In pages: one scan RPC over a big table would outlast the call timeout.
    while True:
        pairs = txn.scan(start, end, limit=SCAN_PAGE_ROWS)
        values.extend(v for _, v in pairs)
        if len(pairs) < SCAN_PAGE_ROWS:
            break
        start = pairs[-1][0] + b"\x00"
    batch = decode_rows(table, values, columns)
    return pa.Table.from_batches([batch])
