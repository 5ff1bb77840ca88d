"""Measure the columnar path's costs (not a test; timing is never asserted).

    .venv/bin/python tests/columnar_costs.py [rows]

Prints: bulk decode rows/s (tablecodec.decode_rows), building the same
Arrow table from Python rows (the cost the bulk decoder avoids), apply
entries/s and ops/s (ColumnarStore.apply of commit batches of 100 rows, as a
learner would receive them), compaction time, and read rows/s (MVCC filter at
a ts) with and without a predicate.
"""

from __future__ import annotations

import datetime as dt
import struct
import sys
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from columnar import ColumnarStore, partial_aggregate
from kvstore import codec
from kvstore.storage.engine import CF_LOCK, CF_WRITE, OP_DELETE, OP_PUT
from kvstore.tablecodec import make_table, row_key, table_meta_key
from kvstore.types import Write, WriteType

_EPOCH = dt.date(1970, 1, 1)


def _naive_decode(t: Any, value: bytes) -> dict[str, Any]:
    """The row-at-a-time alternative: struct-parse each value into a dict."""
    _, _, nn, nnull = struct.unpack_from("<BBHH", value)
    ids = struct.unpack_from(f"<{nn + nnull}I", value, 6)
    ends = struct.unpack_from(f"<{nn}I", value, 6 + 4 * (nn + nnull))
    base = 6 + 8 * nn + 4 * nnull
    by_id = {c.id: c for c in t.columns}
    row: dict[str, Any] = {c.name: c.default for c in t.columns}
    prev = 0
    for cid, end in zip(ids[:nn], ends, strict=True):
        c = by_id[cid]
        raw = value[base + prev : base + end]
        prev = end
        if c.type == "DATE":
            row[c.name] = _EPOCH + dt.timedelta(days=struct.unpack("<i", raw)[0])
        elif c.kind.value == "string":
            row[c.name] = raw.decode()
        elif c.type == "DOUBLE":
            row[c.name] = struct.unpack("<d", raw)[0]
        else:
            row[c.name] = struct.unpack("<q", raw)[0]
    for cid in ids[nn:]:
        row[by_id[cid].name] = None
    return row


def main(n: int) -> None:
    t = make_table(
        1,
        "bench",
        [("id", "BIGINT"), ("grp", "VARCHAR(16)"), ("v", "DOUBLE"), ("q", "INT"), ("d", "DATE")],
        "id",
    )
    rows = [
        {"id": i, "grp": f"g{i % 10}", "v": i * 0.5, "q": i % 1000, "d": dt.date(2020, 1, 1)}
        for i in range(n)
    ]
    enc = [t.encode_row(r) for r in rows]
    values = [v for _, v in enc]
    from kvstore.tablecodec import decode_rows

    t0 = time.perf_counter()
    batch = decode_rows(t, values)
    dt_dec = time.perf_counter() - t0
    t0 = time.perf_counter()
    pa.RecordBatch.from_pylist(rows, schema=t.arrow_schema())
    dt_py = time.perf_counter() - t0
    print(f"decode_rows: {n / dt_dec:,.0f} rows/s ({dt_dec * 1e9 / n / 5:.0f} ns/value)")
    t0 = time.perf_counter()
    pa.RecordBatch.from_pylist([_naive_decode(t, v) for v in values], schema=t.arrow_schema())
    dt_naive = time.perf_counter() - t0
    print(f"per-row Python decode + from_pylist: {n / dt_naive:,.0f} rows/s")
    print(
        f"from_pylist (Python rows): {n / dt_py:,.0f} rows/s ({dt_py * 1e9 / n / 5:.0f} ns/value)"
    )
    assert batch.num_rows == n

    col = ColumnarStore()
    schema_key = codec.append_ts(codec.txn_key(table_meta_key(1)), 2)
    col.apply(1, [(OP_PUT, CF_WRITE, schema_key, Write(WriteType.PUT, 1, t.to_json()).to_bytes())])
    entries = []
    ts = 10
    for start in range(0, n, 100):
        ops = []
        for h, v in enc[start : start + 100]:
            k = codec.txn_key(row_key(1, h))
            ops.append(
                (
                    OP_PUT,
                    CF_WRITE,
                    codec.append_ts(k, ts + 1),
                    Write(WriteType.PUT, ts, v).to_bytes(),
                )
            )
            ops.append((OP_DELETE, CF_LOCK, k, None))
        entries.append(ops)
        ts += 2
    t0 = time.perf_counter()
    for i, ops in enumerate(entries, 2):
        col.apply(i, ops)
    dt_apply = time.perf_counter() - t0
    n_ops = sum(len(o) for o in entries)
    print(
        f"apply: {len(entries) / dt_apply:,.0f} entries/s of 100 committed rows "
        f"({n_ops / dt_apply:,.0f} ops/s, {n / dt_apply:,.0f} rows/s)"
    )
    t0 = time.perf_counter()
    col.read(t, ts)  # first read decodes the raw rows into a delta
    print(f"first read (bulk-decodes {n} raw rows + MVCC sort): {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    col.compact()
    print(f"compact: {time.perf_counter() - t0:.3f} s")
    for label, pred in [("read", None), ("read + predicate", pc.field("q") < 10)]:
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            out = col.read(t, ts, predicate=pred)
        dt_read = (time.perf_counter() - t0) / reps
        print(f"{label} (stable only): {n / dt_read:,.0f} rows/s scanned, {out.num_rows} returned")
    # One more commit: a delta next to the base forces the MVCC sort.
    col.apply(len(entries) + 2, entries[0])
    t0 = time.perf_counter()
    out = col.read(t, ts)
    dt_read = time.perf_counter() - t0
    print(f"read (stable + 1 delta, sorted MVCC): {n / dt_read:,.0f} rows/s")
    t0 = time.perf_counter()
    partial_aggregate(out, ["grp"], [("v", "sum"), ("*", "count"), ("q", "max")])
    print(f"partial_aggregate: {n / (time.perf_counter() - t0):,.0f} rows/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
