"""columnar.ColumnarStore: apply, reads, schemas in-band, compaction, GC, aggregation.

The random-interleaving comparison with the row store is in
``test_columnar_property.py``; these are the targeted cases.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from columnar_helpers import Op, open_teed

from columnar import GC_SAFE_POINT_KEY, ColumnarStore, merge_partials, partial_aggregate
from columnar import aggregate as aggregate_mod
from columnar.aggregate import (
    Comparison,
    comparison_expression,
    comparison_mask,
    filtered_aggregate,
)
from columnar.expression import columns_of, evaluate
from kvstore import codec
from kvstore.client import Client, Transaction, tables
from kvstore.errors import (
    DataIsNotReadyError,
    GcTooEarlyError,
    InvalidArgumentError,
    KeyIsLockedError,
    TableNotFoundError,
)
from kvstore.mvcc.reader import check_lock_conflict
from kvstore.storage.engine import (
    CF_DEFAULT,
    CF_LOCK,
    CF_WRITE,
    DATA_CFS,
    OP_DELETE_RANGE,
    OP_PUT,
)
from kvstore.tablecodec import TableInfo, decode_table_meta_key, make_table
from kvstore.txn.scheduler import GC_SAFE_POINT_KEY as ROW_STORE_SAFE_POINT_KEY
from kvstore.types import ColumnRef, Lock, LockType, Region, RegionEpoch

COLUMNS = [("id", "BIGINT"), ("grp", "TEXT"), ("v", "DOUBLE"), ("blob", "TEXT")]


def _workload(client: Client, n_txns: int = 40, rows_per_txn: int = 10) -> TableInfo:
    t = tables.create_table(client, "w", COLUMNS, "id")
    ids = itertools.count()
    for i in range(n_txns):
        with client.begin() as txn:
            new = [next(ids) for _ in range(rows_per_txn)]
            tables.insert(
                txn,
                t,
                [
                    {"id": k, "grp": f"g{k % 3}", "v": k * 0.5, "blob": "b" * (k % 2 * 300)}
                    for k in new
                ],
            )
            if i % 4 == 3:
                tables.update(txn, t, [{"id": new[0] - 5, "v": -1.0}])
                tables.delete(txn, t, [new[0] - 7])
    return t


def _reference(client: Client, t: TableInfo, ts: int | None = None) -> pa.Table:
    txn = client.begin() if ts is None else Transaction(client, ts)
    return tables.scan_rows(txn, t)


def test_row_store_constants_match() -> None:
    assert GC_SAFE_POINT_KEY == ROW_STORE_SAFE_POINT_KEY


@pytest.mark.parametrize("lock_type", list(LockType))
@pytest.mark.parametrize("start_ts", [5, 10, 11])
@pytest.mark.parametrize("min_commit_ts", [0, 10, 11])
@pytest.mark.parametrize("bypass", [(), (10,)])
def test_lock_rule_is_the_row_store_rule(
    lock_type: LockType, start_ts: int, min_commit_ts: int, bypass: tuple[int, ...]
) -> None:
    col = ColumnarStore()
    key = codec.txn_key(b"t" + (1 + (1 << 63)).to_bytes(8, "big") + b"_r" + b"h")
    lock = Lock(lock_type, b"p", start_ts, 100, min_commit_ts)
    col.apply(1, [(OP_PUT, CF_LOCK, key, lock.to_bytes())])
    try:
        check_lock_conflict(key, lock, 10, bypass)
        row_store = None
    except KeyIsLockedError as e:
        row_store = e.lock
    try:
        col.read(make_table(1, "t", COLUMNS, "id"), 10, bypass_locks=bypass)
        columnar = None
    except KeyIsLockedError as e:
        columnar = e.lock
    assert columnar == row_store


def test_reads_match_the_row_store_at_every_commit() -> None:
    col = ColumnarStore()
    client, _ = open_teed(col)
    with client:
        t = _workload(client)
        stamps = [client.tso()]
        with client.begin() as txn:
            tables.delete(txn, t, range(0, 400, 2))
        stamps.append(client.tso())
        for ts in stamps:
            assert col.read(t, ts).to_pylist() == _reference(client, t, ts).to_pylist()
        col.compact()
        for ts in stamps:
            assert col.read("w", ts).to_pylist() == _reference(client, t, ts).to_pylist()
        assert col.stats()["delta_parts"] == 0 and col.stats()["pending_values"] == 0


def test_projection_predicate_and_aggregation() -> None:
    col = ColumnarStore()
    client, _ = open_teed(col)
    with client:
        t = _workload(client, 10)
        ts = client.tso()
        ref = _reference(client, t, ts)
        pred = (pc.field("v") > 20) & (pc.field("grp") != "g1")
        got = col.read(t, ts, columns=["id", "v"], predicate=pred)
        assert got.to_pylist() == ref.filter(pred).select(["id", "v"]).to_pylist()
        aggs = [("v", "sum"), ("*", "count"), ("v", "min"), ("v", "max"), ("blob", "count")]
        whole = partial_aggregate(ref, ["grp"], aggs).sort_by("grp")
        halves = [partial_aggregate(col.read(t, ts, predicate=p), ["grp"], aggs) for p in
                  (pc.field("id") < 40, pc.field("id") >= 40)]  # fmt: skip
        assert merge_partials(halves, ["grp"], aggs).sort_by("grp").to_pylist() == whole.to_pylist()
        assert partial_aggregate(ref, [], [("*", "count")]).to_pylist() == [
            {"count(*)": ref.num_rows}
        ]


def test_rows_before_their_schema_are_kept_until_it_arrives() -> None:
    """Two Regions: the meta keys' entries arrive after the rows' entries
    (the learner applies Regions independently)."""
    client, tee = open_teed(None)
    with client:
        t = _workload(client, 8)
        ts = client.tso()
        ref = _reference(client, t, ts)
        meta: list[list[Op]] = []
        rows: list[list[Op]] = []
        for _, ops in tee.log:
            meta.append([o for o in ops if _is_meta(o)])
            rows.append([o for o in ops if not _is_meta(o)])
    col = ColumnarStore()
    for i, ops in enumerate(rows, 1):
        col.apply(i, ops, region_id=2)
    with pytest.raises(TableNotFoundError):
        col.read("w", ts)
    assert col.stats()["raw_rows"] > 0
    col.compact()  # no schema yet: nothing may be decoded or lost
    for i, ops in enumerate(meta, 1):
        col.apply(i, ops, region_id=1)
    assert col.applied_index(1) == col.applied_index(2) == len(tee.log)
    assert col.read("w", ts).to_pylist() == ref.to_pylist()


def _is_meta(op: Op) -> bool:
    key = op[2] if op[1] == CF_LOCK else codec.split_ts(op[2])[0]
    try:
        user = codec.decode_txn_key(key)
    except Exception:
        return False
    return decode_table_meta_key(user) is not None or user.startswith(b"m")


def test_replayed_entries_are_ignored_and_wait_applied() -> None:
    client, tee = open_teed(None)
    with client:
        t = _workload(client, 5)
        ts = client.tso()
        ref = _reference(client, t, ts)
    col = ColumnarStore()
    assert not col.wait_applied(0, 1, timeout=0.01)
    for index, ops in tee.log:
        assert col.apply(index, ops)
    for index, ops in tee.log:  # a restart re-reading the log
        assert not col.apply(index, ops)
    assert col.wait_applied(0, len(tee.log), timeout=0.01)
    assert col.read("w", ts).to_pylist() == ref.to_pylist()


def test_compaction_during_apply_loses_nothing() -> None:
    client, tee = open_teed(None)
    with client:
        t = _workload(client, 120, 5)
        ts = client.tso()
        ref = _reference(client, t, ts)
    col = ColumnarStore()
    stop = threading.Event()
    compactions = 0

    def compactor() -> None:
        nonlocal compactions
        while not stop.is_set():
            compactions += col.compact()

    th = threading.Thread(target=compactor)
    th.start()
    try:
        for index, ops in tee.log:
            col.apply(index, ops)
            if index % 50 == 0:
                # Reads flush raw rows into deltas meanwhile (a prewrite may
                # be applied without its commit yet: a lock, as it should).
                with contextlib.suppress(KeyIsLockedError):
                    col.read("w", ts)
    finally:
        stop.set()
        th.join()
    assert compactions > 0
    assert col.read("w", ts).to_pylist() == ref.to_pylist()
    col.compact()
    assert col.read("w", ts).to_pylist() == ref.to_pylist()


def test_gc_safe_point_prunes_and_refuses_older_reads() -> None:
    col = ColumnarStore()
    client, _ = open_teed(col)
    with client:
        t = _workload(client, 20)
        before = client.tso()
        with client.begin() as txn:
            live = tables.scan_rows(txn, t).column("id").to_pylist()
            tables.update(txn, t, [{"id": i, "v": 0.0} for i in live[::3]])
            tables.delete(txn, t, range(1, 100, 3))
        sp = client.tso()
        client.gc(sp)
        assert col.gc_safe_point == sp
        with pytest.raises(GcTooEarlyError):
            col.read("w", before)
        n_before = col.stats()
        col.compact()
        after = col.stats()
        assert after["stable_rows"] < n_before["stable_rows"] + 10_000  # pruned, still there
        assert col.read("w", sp).to_pylist() == _reference(client, t, sp).to_pylist()
        assert col.read("w", client.tso()).to_pylist() == _reference(client, t).to_pylist()


def test_locks_block_until_resolved_and_snapshot_reinstall() -> None:
    col = ColumnarStore()
    client, tee = open_teed(col, lock_ttl_ms=10)
    with client:
        t = _workload(client, 3)
        txn = client.begin()
        tables.update(txn, t, [{"id": 1, "v": 9.0}, {"id": 2, "v": 9.0}])
        txn._commit(stop_after="primary")  # committed; secondary still locked
        ts = client.tso()
        with pytest.raises(KeyIsLockedError) as e:
            col.read("w", ts)
        assert e.value.lock.lock_ts == txn.start_ts
        got = client.read_resolving(ts, lambda bypass: col.read("w", ts, bypass_locks=bypass))
        assert got.to_pylist() == _reference(client, t, ts).to_pylist()
        # A Region snapshot: delete_range over every data CF, then every key again.
        engine = tee.inner
        ops: list[Op] = [(OP_DELETE_RANGE, cf, b"", b"\xff") for cf in DATA_CFS]
        for cf in (CF_DEFAULT, CF_LOCK, CF_WRITE):
            ops += [(OP_PUT, cf, k, v) for k, v in engine.scan(cf, b"", None)]
        col.apply(tee.index + 1, ops)
        assert col.read("w", ts).to_pylist() == got.to_pylist()
        col.compact()
        assert col.read("w", ts).to_pylist() == got.to_pylist()


def test_a_table_whose_schema_key_is_still_locked_is_a_lock_not_a_missing_table() -> None:
    """A DDL commits its primary first; the schema key (a secondary) commits
    in the background. A learner read meanwhile must report the lock (the
    reader resolves it) rather than 'no such table'."""
    from kvstore.tablecodec import META_TABLE_ID_COUNTER, table_meta_key, table_name_key

    col = ColumnarStore()
    client, _ = open_teed(col, lock_ttl_ms=10)
    with client:
        info = make_table(1, "late", [("id", "BIGINT")], "id")
        txn = client.begin()
        txn.put(META_TABLE_ID_COUNTER, b"1")  # the primary (smallest key)
        txn.put(table_name_key("late"), b"1")
        txn.put(table_meta_key(1), info.to_json())
        txn._commit(stop_after="primary")
        ts = client.tso()
        with pytest.raises(KeyIsLockedError) as e:
            col.table_info("late", ts)
        assert e.value.lock.lock_ts == txn.start_ts
        with pytest.raises(TableNotFoundError):
            col.table_info("late")  # without a read ts: simply not known yet
        with pytest.raises(TableNotFoundError):
            col.table_info("never", txn.start_ts - 1)  # a lock newer than the read
        got = client.read_resolving(ts, lambda bypass: col.table_info("late", ts, bypass))
        assert got == info


def test_one_delta_is_enough_to_compact_when_asked() -> None:
    """The node's compaction loop folds in any delta (a read of a table with
    deltas re-sorts it whole); the eager threshold stays MAX_DELTAS."""
    client, tee = open_teed(None)
    with client:
        _workload(client, 3)
    col = ColumnarStore()
    for index, ops in tee.log:
        col.apply(index, ops)
    tid = col.table_info("w").id
    col.read("w", 2**62)  # decodes the raw rows into a delta
    assert col.stats()["delta_parts"] >= 1
    assert col.needs_compaction(tid, any_delta=True)
    assert not col.needs_compaction(tid)
    # What Columnar.Status reports per table (the bench waits on it).
    [(name, _, deltas, _)] = col.table_storage()
    assert name == "w" and deltas >= 1
    col.compact(tid)
    assert not col.needs_compaction(tid, any_delta=True)
    rows = col.read("w", 2**62).num_rows
    assert col.table_storage() == [("w", rows, 0, 0)]


def test_count_star_alone_counts_the_rows_of_a_compacted_table() -> None:
    """count(*) needs no column: the compacted base's view must still give
    the row count (an empty column list is not an empty table)."""
    client, tee = open_teed(None)
    with client:
        t = _workload(client, 5)
        ts = client.tso()
        ref = _reference(client, t, ts)
    col = ColumnarStore()
    for index, ops in tee.log:
        col.apply(index, ops)
    col.compact()
    got = col.aggregate("w", ts, [], [("*", "count")])
    assert got.to_pylist() == [{"count(*)": ref.num_rows}] and ref.num_rows > 0
    assert col.read("w", ts, []).num_rows == ref.num_rows


def _filter_table() -> pa.Table:
    n = 1000
    t = pa.table(
        {
            "i": pa.array([None if k % 97 == 0 else k % 50 for k in range(n)], pa.int64()),
            "d": pa.array([k * 0.25 for k in range(n)], pa.float64()),
            "s": pa.array([None if k % 89 == 0 else f"s{k % 7}" for k in range(n)]),
            "day": pa.array([k % 400 for k in range(n)], pa.int32()).cast(pa.date32()),
            "m": pa.array([decimal.Decimal(k) / 100 for k in range(n)], pa.decimal128(12, 2)),
            # No NULLs: compared in numpy (NaN included, as IEEE compares it).
            "n": pa.array([k % 60 for k in range(n)], pa.int32()),
            "f": pa.array([math.nan if k % 13 == 0 else k / 8 for k in range(n)], pa.float64()),
            # float32: 0.05 is not float32(0.05), which Arrow widens to compare.
            "g": pa.array([(k % 20) / 20 for k in range(n)], pa.float32()),
        }
    )
    # Two chunks: numpy gets a copy of them joined, not a buffer.
    return pa.concat_tables([t.slice(0, 400), t.slice(400)])


WHERES = [
    [("n", "<", 20), ("d", ">=", 10.0)],
    [("n", ">=", 2.5), ("n", "!=", 7), ("s", "=", "s3"), ("f", ">", 3)],
    [("n", "<", 2**40), ("n", ">", -(2**40))],  # beyond int32: Arrow compares them
    [("f", "!=", 1.0), ("f", "<=", 100.0)],
    [("f", "=", 12.5), ("i", ">=", 0)],
    [("g", "<=", 0.05), ("g", "!=", 0.0)],
    [("i", "<", 20), ("d", ">=", 10.0)],
    [("s", "=", "s3")],
    [("s", "!=", "s3"), ("i", ">", 5), ("i", "<=", 40)],
    [("i", "is_null", None)],
    [("s", "not_null", None), ("day", ">=", datetime.date(1970, 6, 1))],
    [("m", ">", decimal.Decimal("2.50")), ("m", "<=", decimal.Decimal("7.00"))],
    [("i", "=", 1000)],  # selects nothing
    # Two columns of the row (NULLs in i, NaN in f): l_commitdate < l_receiptdate.
    [("i", "<", ColumnRef("n")), ("d", ">=", 10.0)],
    [("f", ">", ColumnRef("d")), ("s", "!=", "s2")],
]
GLOBAL_AGGS = [
    ("d", "sum"),
    ("i", "sum"),
    ("m", "sum"),
    ("*", "count"),
    ("i", "count"),
    ("d", "min"),
    ("s", "max"),
    ("day", "min"),
]


@pytest.mark.parametrize("where", WHERES, ids=str)
@pytest.mark.parametrize("parallel_rows", [100_000, 150])
def test_comparisons_aggregate_like_the_expression_path(
    where: list[Comparison], parallel_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel path (sliced over threads when small PARALLEL_MIN_ROWS makes
    # 1000 rows several slices) must agree with one Acero plan over the
    # same filter, NULLs and empty selections included.
    monkeypatch.setattr(aggregate_mod, "PARALLEL_MIN_ROWS", parallel_rows)
    t = _filter_table()
    expr = comparison_expression(where)
    for keys, aggs in (([], GLOBAL_AGGS), ([], [("*", "count")]), (["s"], GLOBAL_AGGS[:5])):
        want = partial_aggregate(t, keys, aggs, expr)
        got = filtered_aggregate(t, keys, aggs, where)
        assert got.schema == want.schema
        # Multiples of 0.25: float sums are exact in any order.
        assert sorted(got.to_pylist(), key=str) == sorted(want.to_pylist(), key=str)
    # The mask is the filter: same rows as the expression keeps.
    # (By row number: NaN never equals NaN, so the tables cannot be compared.)
    rows = t.append_column("row", pa.array(range(t.num_rows)))
    assert rows.filter(comparison_mask(t, where))["row"] == rows.filter(expr)["row"]


def test_bad_comparisons_are_typed_errors() -> None:
    t = _filter_table()
    for bad in ([("i", "~", 1)], [("i", "<", None)], [("i",)]):
        with pytest.raises(InvalidArgumentError):
            filtered_aggregate(t, [], [("*", "count")], bad)  # type: ignore[arg-type]


def test_expression_aggregates_parse_strictly_and_compute_like_arrow() -> None:
    t = pa.table({"p": [10.0, 20.0, 40.0], "d": [0.5, 0.25, 0.0], "k": [1, 2, 4]})
    assert evaluate(t, "p * (1 - d)").to_pylist() == [5.0, 15.0, 40.0]
    assert evaluate(t, "-k + 2 * k").to_pylist() == [1, 2, 4]
    assert evaluate(t, "k / 2").to_pylist() == [0.5, 1.0, 2.0]  # division is in DOUBLE
    assert columns_of("p * (1 - d) * (1 + p)") == ["p", "d"]
    assert columns_of("*") == [] and columns_of("p") == ["p"]
    got = partial_aggregate(t, [], [("p * (1 - d)", "sum"), ("*", "count")], pc.field("k") > 1)
    assert got.to_pylist() == [{"sum(p * (1 - d))": 55.0, "count(*)": 2}]
    got = filtered_aggregate(t, [], [("p * d", "max")], [("k", ">", 1)])
    assert got.to_pylist() == [{"max(p * d)": 5.0}]
    # Grouped: the expression runs inside the Acero plan, division included.
    g = t.append_column("g", pa.array(["a", "b", "a"]))
    got = partial_aggregate(g, ["g"], [("k / 2 + p * (1 - d)", "sum")], pc.field("k") > 0)
    assert sorted(got.to_pylist(), key=str) == [
        {"g": "a", "sum(k / 2 + p * (1 - d))": 47.5},
        {"g": "b", "sum(k / 2 + p * (1 - d))": 16.0},
    ]
    # double(x) casts to DOUBLE (SQL's arithmetic over DECIMALs), in both
    # evaluators; it names no column.
    m = pa.table({"m": pa.array([decimal.Decimal("1.10"), None], pa.decimal128(15, 2))})
    assert evaluate(m, "double(m) * (1.0 - double(m))").type == pa.float64()
    assert evaluate(m, "double(m) * 2").to_pylist() == [2.2, None]
    assert columns_of("double(m) + double(double(m))") == ["m"]
    got = partial_aggregate(m, [], [("double(m) * 2", "sum")])
    assert got.to_pylist() == [{"sum(double(m) * 2)": 2.2}]
    for bad in (
        "p.x",
        "f(p)",
        "p ** 2",
        "'s'",
        "p and d",
        "p[0]",
        "1 +",
        "p * True",
        "double(p, d)",
        "double(x=p)",
        "double()",
    ):
        with pytest.raises(InvalidArgumentError):
            evaluate(t, bad)
    with pytest.raises(InvalidArgumentError, match="no column 'zz'"):
        evaluate(t, "zz * 2")
    with pytest.raises(InvalidArgumentError):
        partial_aggregate(t, [], [("p ** 2", "sum")])


# ------------------------------------------------------------ shared read index
def _service_with_fake_read_index() -> tuple[Any, list[threading.Event], list[int]]:
    """A ColumnarService whose leader RPC is a fake: call i blocks until
    ``gates[i]`` is set, then answers ``100 + i`` (or raises for 666)."""
    from kvstore.server.columnar_node import ColumnarService

    svc = ColumnarService(None, None, None, None)  # type: ignore[arg-type]
    gates = [threading.Event() for _ in range(8)]
    sent: list[int] = []
    mu = threading.Lock()

    def read_index(region: Region, deadline: float) -> int:
        with mu:
            i = len(sent)
            sent.append(i)
        assert gates[i].wait(10)
        if i == 2:
            raise DataIsNotReadyError(region.id, reason="leader gone")
        return 100 + i

    svc.read_index = read_index  # type: ignore[method-assign]
    return svc, gates, sent


def test_a_reader_never_gets_a_read_index_sent_before_it_came() -> None:
    svc, gates, sent = _service_with_fake_read_index()
    region = Region(7, b"", b"", RegionEpoch(1, 1), ())
    deadline = time.monotonic() + 30
    got: dict[str, int | BaseException] = {}

    def reader(name: str) -> None:
        try:
            got[name] = svc.shared_read_index(region, deadline)
        except BaseException as e:
            got[name] = e

    try:
        first = threading.Thread(target=reader, args=("first",))
        first.start()
        _wait_for(lambda: len(sent) == 1)  # round 0 is out
        late = [threading.Thread(target=reader, args=(f"late{i}",)) for i in range(3)]
        for t in late:
            t.start()
        _wait_for(lambda: svc._rounds[(7, region.epoch)].queued is not None)
        gates[0].set()
        first.join(10)
        assert got["first"] == 100
        # The three who came while round 0 was out share round 1, sent after it.
        _wait_for(lambda: len(sent) == 2)
        assert not any(f"late{i}" in got for i in range(3))
        gates[1].set()
        for t in late:
            t.join(10)
        assert [got[f"late{i}"] for i in range(3)] == [101] * 3 and len(sent) == 2
        # A failed round fails every reader of it; the next reader sends anew.
        gates[2].set()
        reader("unlucky")
        assert isinstance(got["unlucky"], DataIsNotReadyError)
        gates[3].set()
        reader("next")
        assert got["next"] == 103 and len(sent) == 4
        assert svc._rounds == {}  # nothing left behind when idle
    finally:
        for g in gates:
            g.set()
        svc.close()


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)
