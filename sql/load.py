"""Bulk load: Arrow data into a table, by physical import or by transactions.

Rows are cast to the table's Arrow schema (so a type mismatch fails before
anything is written, naming the column) and encoded in bulk
(:func:`kvstore.tablecodec.encode_rows`). Two ways in:

**Physical import** (TiDB Lightning's physical mode; the default for an
empty table). Every check on the data runs before anything is written: the
column types and ranges (:func:`kvstore.tablecodec.check_rows`), key and
value sizes, duplicate primary keys and duplicate unique-index values
inside the data. Then:

1. *Mark*: a DDL transaction sets the schema's ``importing`` to its
   start_ts and bumps the version. From then on statements refuse the table
   (:class:`~sql.errors.TableImportingError`, from the catalog), and a
   writer that read the schema before the mark fails its commit check (the
   version moved) and, re-run, is refused.
2. *Wait and check*: wait until no lock older than the mark remains in the
   table's key range (as ``CREATE INDEX`` does: a writer locked before the
   mark either commits or is rolled back), then read the range at a fresh
   timestamp: it must hold no row and no index entry. If it does, the mark
   is removed again and nothing was written (then: fall back to
   transactions, or refuse).
3. *Import*: ``commit_ts`` comes from the TSO, after that check. Rows and
   index entries are encoded per chunk and sent as committed records
   (``KvImport``: the write record a prewrite + commit at ``commit_ts`` would
   leave, no lock) to the leaders of their Regions, several chunks in
   flight; each request is one Raft write batch, so every replica and the
   columnar learner apply it in log order (the learner turns a write record
   with its value into an Arrow row whether or not it saw a lock first).
   A Region that split meanwhile answers EpochNotMatch and the client
   splits that part again.
4. *Unmark*: a DDL transaction clears ``importing`` (checking it is still
   ours) and bumps the version. Its commit_ts is above ``commit_ts``, and
   every record was acknowledged before it: a reader that can use the table
   at all (a snapshot at or after the unmark) sees every imported row, and
   one before the mark sees none, so the import is atomic to SQL.

A failure after the mark leaves the table marked, with a message saying so:
the records written so far are committed, and readers would see a part of
the data. The way out is ``DROP TABLE``, create it again, and load again
(the orphaned records stay as unreachable garbage, as after any DROP
TABLE). Raw KV reads of the table's range are not fenced: they may see a
partial import.

GC: ``commit_ts`` is fresh, so it is above the safe point (the store
refuses one below it). An import that outlasts the GC lifetime sees the
safe point pass it: the remaining chunks then go in at a fresh ``commit_ts``
(still above the emptiness check and below the unmark). Each imported key
has one version, which GC keeps.

**Transactions** (a table with rows, or ``mode="txn"``): a batch of rows per
transaction, ``INSERT`` mutations, so a key that already exists fails its
batch with :class:`~sql.errors.IntegrityError` and the batches before it
stay committed. Secondary indexes are maintained like any insert.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvstore.client.client import Client
from kvstore.client.txn import Transaction
from kvstore.errors import (
    GcTooEarlyError,
    KVError,
    RegionError,
    SchemaError,
    UndeterminedError,
)
from kvstore.tablecodec import (
    Kind,
    TableInfo,
    check_rows,
    encode_index_entries,
    encode_rows,
    row_key,
    table_meta_key,
    table_prefix,
)
from kvstore.types import MAX_KEY_SIZE, MAX_VALUE_SIZE
from sql.catalog import SchemaChangedError, check_not_importing
from sql.errors import (
    DataError,
    Error,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    translate,
)
from sql.session import Session

__all__ = ["MODES", "TableNotEmptyError", "cast_to_table", "load_arrow", "load_file"]

MODES = ("auto", "import", "txn")
# Rows per KvImport chunk: large enough to amortise an RPC and a Raft entry,
# small enough that applying one (in the store's Raft driver thread, which
# ticks every Region) stays short: with 20,000 lineitem rows (~3 MB) per
# entry, leaders changed under the load on 2 cores and chunks failed.
IMPORT_CHUNK_ROWS = 10_000
IMPORT_THREADS = 2
# Tries per chunk (each with the client's whole retry deadline).
IMPORT_ATTEMPTS = 3
# Bytes a row value or key takes beyond its strings' bytes, at most (column
# ids, offsets, 8-byte fixed-width values, the key prefixes).
_PER_COLUMN_BOUND = 24
_KEY_OVERHEAD = 64


class TableNotEmptyError(IntegrityError):
    """A physical import was asked for (``mode="import"``) but the table
    holds rows: nothing was written. Load with transactions instead
    (``mode="auto"`` or ``"txn"``), or empty the table first."""


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
    session: Session,
    table: str,
    data: pa.Table,
    batch_rows: int = 5000,
    progress: bool = False,
    *,
    mode: str = "auto",
    on_rows: Callable[[int], None] | None = None,
) -> int:
    """Insert every row of ``data``; returns the number inserted.

    ``mode``: ``"auto"`` imports physically into an empty table and uses
    transactions otherwise; ``"import"`` refuses a non-empty table
    (:class:`TableNotEmptyError`); ``"txn"`` always uses transactions of
    ``batch_rows`` rows. ``on_rows(n)`` is called as rows are written."""
    if mode not in MODES:
        raise ProgrammingError(f"load mode must be one of {MODES}, not {mode!r}")
    client = session.client
    snap = client.begin()
    try:
        info = session.catalog.table(snap, table)
    finally:
        snap.rollback()
    data = cast_to_table(info, data)
    _check_lengths(info, data)
    bar = Progress(
        TextColumn(f"loading {table}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    )
    with bar:
        task = bar.add_task("rows", total=data.num_rows)
        lock = threading.Lock()

        def advance(n: int) -> None:
            with lock:
                bar.update(task, advance=n)
                if on_rows is not None:
                    on_rows(n)

        if data.num_rows == 0:
            return 0
        if mode == "import" or (mode == "auto" and _is_empty(client, info)):
            done = _import(session, info, data, advance, fallback=mode == "auto")
            if done is not None:
                return done
            # Rows arrived between the first look and the mark; the mark and
            # unmark moved the schema version, which the commit checks compare.
            snap = client.begin()
            try:
                info = session.catalog.table(snap, table)
            finally:
                snap.rollback()
            data = cast_to_table(info, data)
        return _load_txn(session, info, data, batch_rows, advance)


# ---------------------------------------------------------------- transactions
def _load_txn(
    session: Session,
    info: TableInfo,
    data: pa.Table,
    batch_rows: int,
    advance: Callable[[int], None],
) -> int:
    client = session.client
    done = 0
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
        advance(part.num_rows)
    return done


# ---------------------------------------------------------------- physical import
def _table_range(info: TableInfo) -> tuple[bytes, bytes]:
    """Every key of the table (rows and indexes)."""
    p = table_prefix(info.id)
    return p, p[:-1] + bytes((p[-1] + 1,))


def _is_empty(client: Client, info: TableInfo) -> bool:
    """No committed row or index entry and no lock in the table's range at
    a fresh timestamp (a lock met is resolved, or waited for, by the read)."""
    start, end = _table_range(info)
    snap = client.begin()
    try:
        return not snap.scan(start, end, limit=1)
    finally:
        snap.rollback()


def _check_import_data(info: TableInfo, data: pa.Table) -> None:
    """Everything that could fail once records are written, checked first:
    column values, key and value sizes, duplicate keys inside ``data``."""
    try:
        arrays = check_rows(info, data)
    except SchemaError as e:
        raise DataError(str(e)) from None
    n = data.num_rows
    # Upper bounds of each row's value and keys from its strings' lengths,
    # so an oversized row is refused before the import begins (the store
    # checks the exact sizes again).
    value_bound = pa.array([_PER_COLUMN_BOUND * len(info.columns)] * n, pa.int64())
    lengths: dict[str, pa.Array] = {}
    for c in info.columns:
        if c.kind is Kind.STRING:
            lengths[c.name] = pc.fill_null(pc.binary_length(arrays[c.name]).cast(pa.int64()), 0)
            value_bound = pc.add(value_bound, lengths[c.name])
    biggest = pc.max(value_bound).as_py()
    if biggest is not None and biggest > MAX_VALUE_SIZE:
        raise DataError(
            f"a row of {info.name!r} is too large (the limit is {MAX_VALUE_SIZE} bytes)"
        )
    key_cols = [list(info.primary_key)] + [
        list(i.columns) + list(info.primary_key) for i in info.indexes
    ]
    for cols in key_cols:
        bound = pa.array([_KEY_OVERHEAD + 9 * len(cols)] * n, pa.int64())
        for name in cols:
            if name in lengths:
                # Memcomparable encoding: 9 bytes per 8 bytes of string.
                bound = pc.add(bound, pc.multiply(pc.add(lengths[name], 8), 2))
        top = pc.max(bound).as_py()
        if top is not None and top > MAX_KEY_SIZE:
            raise DataError(
                f"a key of {info.name!r} over {cols} is too large "
                f"(the limit is {MAX_KEY_SIZE} bytes)"
            )
    _check_unique(data, list(info.primary_key), f"primary key of {info.name!r}")
    for i in info.indexes:
        if i.unique:
            # NULLs never collide in a unique index (they are not unique entries).
            keyed = data.select(list(i.columns))
            mask = None
            for name in i.columns:
                valid = pc.is_valid(keyed.column(name))
                mask = valid if mask is None else pc.and_(mask, valid)
            _check_unique(keyed.filter(mask), list(i.columns), f"unique index {i.name!r}")


def _check_unique(data: pa.Table, columns: list[str], what: str) -> None:
    if data.num_rows == 0:
        return
    groups = data.select(columns).group_by(columns).aggregate([([], "count_all")])
    if groups.num_rows != data.num_rows:
        dup = groups.filter(pc.greater(groups.column("count_all"), 1)).slice(0, 1).to_pylist()
        row = {c: dup[0][c] for c in columns} if dup else {}
        raise IntegrityError(f"duplicate entry {row} for the {what} in the data")


def _mark(session: Session, info: TableInfo) -> TableInfo:
    def ddl(txn: Transaction) -> TableInfo:
        now = session.catalog.table(txn, info.name)  # refuses a table already importing
        if now.id != info.id or now.version != info.version:
            raise SchemaChangedError(f"table {info.name!r} changed schema while the load began")
        marked = replace(now, version=now.version + 1, importing=txn.start_ts)
        txn.put(table_meta_key(now.id), marked.to_json())
        return marked

    return session.client.transaction(ddl)


def _unmark(session: Session, marked: TableInfo) -> None:
    def ddl(txn: Transaction) -> None:
        now = session.catalog.table(txn, marked.name, importing_ok=True)
        if now.id != marked.id or now.importing != marked.importing:
            raise OperationalError(
                f"table {marked.name!r} was changed by someone else during the import"
            )
        txn.put(
            table_meta_key(now.id), replace(now, version=now.version + 1, importing=0).to_json()
        )

    session.client.transaction(ddl)


def _import(
    session: Session,
    info: TableInfo,
    data: pa.Table,
    advance: Callable[[int], None],
    *,
    fallback: bool,
) -> int | None:
    """The physical import (module docstring). Returns None if the table
    turned out not to be empty and ``fallback`` allows transactions."""
    check_not_importing(info)
    _check_import_data(info, data)
    client = session.client
    try:
        marked = _mark(session, info)
    except KVError as e:
        raise translate(e) from e
    try:
        start, end = _table_range(info)
        session.catalog.wait_for_older_writers(client.tso(), start, end)
        empty = _is_empty(client, info)
    except BaseException:
        # Nothing was imported yet: leave the table as we found it if we can.
        with contextlib.suppress(KVError):
            _unmark(session, marked)
        raise
    if not empty:
        _unmark(session, marked)
        if fallback:
            return None
        raise TableNotEmptyError(
            f"table {info.name!r} is not empty: a physical import needs an empty table "
            "(load with transactions instead); nothing was written"
        )
    commit_ts = client.tso()
    sent = [0]

    def count(n: int) -> None:
        sent[0] += n
        advance(n)

    try:
        done = _send(client, marked, data, commit_ts, count)
        _unmark(session, marked)
    except KVError as e:
        err = translate(e)
        raise type(err)(
            f"bulk import into {info.name!r} failed after {sent[0]} of {data.num_rows} "
            f"rows: {err}. The table stays marked as importing (statements on it fail with "
            f"TableImportingError): DROP TABLE {info.name}, create it again and load again"
        ) from e
    return done


def _send(
    client: Client,
    info: TableInfo,
    data: pa.Table,
    commit_ts: int,
    advance: Callable[[int], None],
) -> int:
    """Encode ``data`` chunk by chunk and import the chunks, a few in flight."""
    ts = [commit_ts]
    ts_lock = threading.Lock()

    def one(part: pa.Table) -> int:
        handles, values = encode_rows(info, part)
        pairs = [(row_key(info.id, h), v) for h, v in zip(handles, values, strict=True)]
        if info.indexes:
            pairs.extend(encode_index_entries(info, part, handles))
        for attempt in range(IMPORT_ATTEMPTS):
            used = ts[0]
            try:
                client.backend.kv_import(pairs, used, info.id)
                break
            except GcTooEarlyError:
                # An import longer than the GC lifetime: the safe point
                # passed commit_ts. The rest goes in at a fresh one. Each
                # commit_ts is above the emptiness check and below the
                # unmark, which is all the atomicity argument needs, and GC
                # keeps a key's only version whatever its age.
                with ts_lock:
                    if ts[0] == used:
                        ts[0] = client.tso()
                if attempt == IMPORT_ATTEMPTS - 1:
                    raise
            except (RegionError, UndeterminedError):
                # The client gave up on a Region within its deadline (leaders
                # moving, splits, a slow store). Writing the same records
                # again is harmless, so the chunk is simply sent again.
                if attempt == IMPORT_ATTEMPTS - 1:
                    raise
        n: int = part.num_rows
        advance(n)
        return n

    done = 0
    with ThreadPoolExecutor(IMPORT_THREADS, thread_name_prefix="import") as pool:
        # Bounded look-ahead: at most 2 * threads encoded chunks in memory.
        pending = []
        for part in _batches(data, IMPORT_CHUNK_ROWS):
            pending.append(pool.submit(one, part))
            if len(pending) >= 2 * IMPORT_THREADS:
                done += pending.pop(0).result()
        for f in pending:
            done += f.result()
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
    session: Session,
    table: str,
    path: str,
    batch_rows: int = 5000,
    fmt: str = "auto",
    mode: str = "auto",
) -> tuple[int, float]:
    """Load a Parquet or CSV file; ``(rows, seconds)``."""
    data = read_file(path, fmt)
    t0 = time.perf_counter()
    n = load_arrow(session, table, data, batch_rows, progress=True, mode=mode)
    return n, time.perf_counter() - t0
