"""Bulk load: Arrow data into a table through large transactions.

Rows are cast to the table's Arrow schema (so a type mismatch fails before
anything is written, naming the column), encoded in bulk
(:func:`kvstore.tablecodec.encode_rows`), and inserted a batch per
transaction. Inserts use the ``INSERT`` mutation, so a key that already
exists fails its batch with :class:`~sql.errors.IntegrityError` and the
batches before it stay committed. Secondary indexes are maintained like any
insert.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvstore.client.txn import Transaction
from kvstore.errors import KVError
from kvstore.tablecodec import TableInfo, encode_rows, row_key
from sql.errors import DataError, Error, ProgrammingError, translate
from sql.session import Session

__all__ = ["cast_to_table", "load_arrow", "load_file"]


def cast_to_table(info: TableInfo, data: pa.Table) -> pa.Table:
    """``data`` with the table's columns in table order and types; columns
    missing from ``data`` are filled with their default."""
    names = set(data.column_names)
    unknown = names - set(info.column_names)
    if unknown:
        raise ProgrammingError(f"columns {sorted(unknown)} are not in table {info.name!r}")
    arrays = []
    for c in info.columns:
        if c.name in names:
            col = data.column(c.name)
            try:
                col = col.cast(c.arrow_type) if col.type != c.arrow_type else col
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(f"column {c.name!r} cannot be read as {c.type}: {e}") from None
            if not c.nullable and col.null_count:
                raise DataError(f"column {c.name!r} is NOT NULL but the data has NULLs")
        else:
            if not c.nullable and c.default is None:
                raise DataError(f"column {c.name!r} is NOT NULL and has no default")
            col = pa.chunked_array([pa.array([c.default] * data.num_rows, c.arrow_type)])
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=info.arrow_schema())


def _batches(data: pa.Table, size: int) -> Iterator[pa.Table]:
    for start in range(0, data.num_rows, size):
        yield data.slice(start, size)


def load_arrow(
    session: Session, table: str, data: pa.Table, batch_rows: int = 5000, progress: bool = False
) -> int:
    """Insert every row of ``data``; returns the number inserted."""
    client = session.client
    snap = client.begin()
    try:
        info = session.catalog.table(snap, table)
    finally:
        snap.rollback()
    data = cast_to_table(info, data)
    _check_lengths(info, data)
    done = 0
    bar = Progress(
        TextColumn(f"loading {table}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    )
    with bar:
        task = bar.add_task("rows", total=data.num_rows)
        for part in _batches(data, batch_rows):

            def write(txn: Transaction, part: pa.Table = part) -> None:
                session.catalog.guard(txn, [info])
                handles, values = encode_rows(info, part)
                keys = [row_key(info.id, h) for h in handles]
                for k, v in zip(keys, values, strict=True):
                    txn.insert(k, v)
                if info.indexes:
                    for h, row in zip(handles, part.to_pylist(), strict=True):
                        for k, v, uniq in info.index_entries(h, row):
                            if uniq:
                                txn.insert(k, v)
                            else:
                                txn.put(k, v)

            try:
                client.transaction(write)
            except Error:
                raise
            except KVError as e:
                err = translate(e)
                raise type(err)(f"{err} (after {done} rows were committed)") from e
            done += part.num_rows
            bar.update(task, advance=part.num_rows)
    return done


def _check_lengths(info: TableInfo, data: pa.Table) -> None:
    for c in info.columns:
        if c.type.startswith("VARCHAR("):
            lengths = pc.utf8_length(data.column(c.name))
            longest = pc.max(lengths).as_py()
            if longest is not None and longest > c.precision:
                raise DataError(f"column {c.name!r} ({c.type}) gets a string of {longest} chars")


def read_file(path: str, fmt: str = "auto") -> pa.Table:
    if fmt == "auto":
        fmt = "parquet" if path.endswith((".parquet", ".pq")) else "csv"
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        return pacsv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ProgrammingError(f"cannot read {path}: {e}") from None


def load_file(
    session: Session, table: str, path: str, batch_rows: int = 5000, fmt: str = "auto"
) -> tuple[int, float]:
    """Load a Parquet or CSV file; ``(rows, seconds)``."""
    data = read_file(path, fmt)
    t0 = time.perf_counter()
    n = load_arrow(session, table, data, batch_rows, progress=True)
    return n, time.perf_counter() - t0
