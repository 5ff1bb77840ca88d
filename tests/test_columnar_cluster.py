"""The columnar replica in a real cluster (PD, 3 stores, 1 columnar node).

a. Property (hypothesis): random sequences of transactions on a table —
   inserts, updates, deletes, aborted transactions, transactions abandoned
   after prewrite or after the primary's commit (their locks are resolved by
   the readers) — and at random points a columnar read at ``ts`` (now, or a
   timestamp taken earlier) returns exactly what a row-store scan at the
   same ``ts`` returns. Every compared read is answered by the columnar node
   (the client's fallback counter must not move): otherwise the test would
   compare the row store with itself.
b. Regions created by splits get a learner too; reads across many Regions
   stay exact.
c. Pushdown: filter, projection and grouped aggregation run on the node and
   equal the same computation on the row store's rows; a large result comes
   in Arrow IPC messages of at least 100 KB (but the last).
d. The columnar node SIGKILLed under a write load: scans fall back to the
   row store (same answer); restarted, it rebuilds from its own RocksDB
   replica plus the log, converges with the row store and serves again; its
   freshness shows in Columnar.Status, /metrics and ``htapkv cluster status``.
e. A read below the GC safe point fails with GcTooEarlyError.
f. Predicates on DATE and DECIMAL columns push down; one that does not fit
   its column is a typed error at once (not a wait and a fallback).
"""

from __future__ import annotations

import datetime
import decimal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.client import Client, tables
from kvstore.client.columnar import row_store_scan
from kvstore.client.routing import new_channel
from kvstore.errors import GcTooEarlyError, InvalidArgumentError
from kvstore.proto import columnarpb_pb2
from kvstore.server.cluster import LocalCluster
from kvstore.types import ColumnRef

REPO = Path(__file__).resolve().parent.parent
COLUMNS = [("id", "BIGINT"), ("name", "TEXT"), ("amount", "DOUBLE"), ("n", "INT")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("colcluster"),
        stores=3,
        columnar=1,
        store_args=["--split-keys", "400", "--gc-interval", "0.5"],
        startup_timeout=120,
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.connect(lock_ttl_ms=200, lock_wait_timeout=30.0) as c:
        yield c


def _sorted(t: pa.Table) -> list[dict[str, Any]]:
    return sorted(t.to_pylist(), key=lambda r: r["id"])


def assert_same_at(client: Client, table: str, ts: int) -> pa.Table:
    before = client.columnar.fallbacks if client.columnar else 0
    col = client.columnar_scan(table, ts=ts, max_wait=30.0)
    assert client.columnar is not None and client.columnar.fallbacks == before, (
        "the columnar node did not answer: the comparison would be the row store with itself"
    )
    row = row_store_scan(client, table, None, (), ts)
    assert _sorted(col) == _sorted(row)
    return col


# --------------------------------------------------------------------------- a
row_values = st.fixed_dictionaries(
    {
        "name": st.one_of(st.none(), st.text(max_size=6)),
        "amount": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32)),
        "n": st.integers(-(2**31), 2**31 - 1),
    }
)
txn_ops = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.integers(0, 11), row_values),
    min_size=1,
    max_size=4,
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), txn_ops),
        st.tuples(st.just("abort"), txn_ops),
        st.tuples(st.just("abandon_prewrite"), txn_ops),
        st.tuples(st.just("abandon_primary"), txn_ops),
        st.tuples(st.just("read_now"), st.just([])),
        st.tuples(st.just("read_earlier"), st.integers(0, 50)),
    ),
    min_size=3,
    max_size=10,
)
_table_seq = iter(range(10**6))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
def test_columnar_reads_equal_row_store_reads(client: Client, steps: list[Any]) -> None:
    name = f"prop{next(_table_seq)}"
    info = tables.create_table(client, name, COLUMNS, "id")
    seen_ts: list[int] = []
    for kind, arg in steps:
        if kind == "read_now":
            ts = client.tso()
            seen_ts.append(ts)
            assert_same_at(client, name, ts)
            continue
        if kind == "read_earlier":
            if seen_ts:
                assert_same_at(client, name, seen_ts[arg % len(seen_ts)])
            continue
        txn = client.begin()
        present = {r["id"] for r in tables.scan_rows(txn, info, ["id"]).to_pylist()}
        for op, pk, values in arg:
            if op == "delete":
                tables.delete(txn, info, [pk])
                present.discard(pk)
            elif pk in present:
                tables.update(txn, info, [{"id": pk, **values}])
            else:
                tables.insert(txn, info, [{"id": pk, **values}])
                present.add(pk)
        seen_ts.append(txn.start_ts)
        if kind == "commit":
            txn.commit()
            seen_ts.append(txn.commit_ts or txn.start_ts)
        elif kind == "abort":
            txn.rollback()
        else:  # a client that dies mid-commit: locks stay until resolved
            txn._commit(stop_after=kind.removeprefix("abandon_"))
    assert_same_at(client, name, client.tso())


# --------------------------------------------------------------------------- b, c
def test_many_regions_and_pushdown(cluster: LocalCluster, client: Client) -> None:
    info = tables.create_table(client, "big", COLUMNS, "id")
    n = 6000
    for lo in range(0, n, 500):
        with client.begin() as txn:
            tables.insert(
                txn,
                info,
                [
                    {"id": i, "name": f"customer-{i % 7}", "amount": i * 0.5, "n": i % 100}
                    for i in range(lo, lo + 500)
                ],
            )
    cluster.wait_for("splits, each Region with a learner", cluster.fully_replicated, 120)
    regions = cluster.pd().scan_regions(b"", b"", 0)
    assert len(regions) >= 3
    columnar_ids = {p.store_id for p in cluster.processes() if p.role == "columnar"}
    assert columnar_ids
    for region, _ in regions:
        assert columnar_ids <= {p.store_id for p in region.peers if p.is_learner}
    ts = client.tso()
    full = assert_same_at(client, "big", ts)
    assert full.num_rows == n
    assert client.columnar is not None
    fallbacks = client.columnar.fallbacks  # every read below must be the node's
    # Filter + projection on the node.
    pred = [("amount", ">=", 1000.0), ("n", "<", 50)]
    got = client.columnar_scan("big", ["id", "amount"], pred, ts)
    want = row_store_scan(client, "big", ["id", "amount"], pred, ts)
    assert got.column_names == ["id", "amount"]
    assert _sorted(got) == _sorted(want) and got.num_rows > 0
    # A runtime filter (an integer column among join keys), alone and with
    # another predicate, as a list or an Arrow array.
    keys = [3, 17, 17, 4242, 5999, 10_000]
    for in_pred in (
        [("id", "in", keys)],
        [("id", "in", pa.array(keys)), ("n", "<", 50)],
    ):
        got = client.columnar_scan("big", ["id", "n"], in_pred, ts)
        want = row_store_scan(client, "big", ["id", "n"], in_pred, ts)
        assert _sorted(got) == _sorted(want)
        assert {r["id"] for r in got.to_pylist()} == (
            {3, 17, 4242, 5999} if len(in_pred) == 1 else {3, 17, 4242}
        )
    # Two columns of the row, on the node and in the fallback, read and aggregated.
    two = [("amount", ">", ColumnRef("n")), ("n", "<", 50)]
    got = client.columnar_scan("big", ["id"], two, ts)
    want = row_store_scan(client, "big", ["id"], two, ts)
    assert _sorted(got) == _sorted(want) and 0 < got.num_rows < n
    counted = client.columnar_scan("big", None, two, ts, aggregates=[("count", "*")])
    assert counted.to_pylist() == [{"count(*)": got.num_rows}]
    with pytest.raises(InvalidArgumentError, match="list of integers"):
        client.columnar_scan("big", ["id"], [("id", "in", ["a"])], ts)
    with pytest.raises(InvalidArgumentError, match="not aggregates"):
        client.columnar_scan("big", None, [("id", "in", keys)], ts, aggregates=[("count", "*")])
    # Grouped aggregation on the node.
    aggs = [("sum", "amount"), ("count", "*"), ("max", "n")]
    got = client.columnar_scan("big", ts=ts, group_by=["name"], aggregates=aggs)
    want = row_store_scan(client, "big", None, (), ts, ["name"], aggs)

    def by_name(t: pa.Table) -> list[dict[str, Any]]:
        return sorted(t.to_pylist(), key=lambda r: r["name"])

    assert by_name(got) == by_name(want) and got.num_rows == 7
    # Expressions in aggregates, filtered, global (the node's kernel path)
    # and grouped; amount and n are exact in binary, so the sums are too.
    expr_aggs = [("sum", "amount * (1 - n / 4)"), ("min", "amount - n"), ("count", "*")]
    for by in ([], ["name"]):
        got = client.columnar_scan("big", None, pred, ts, group_by=by, aggregates=expr_aggs)
        want = row_store_scan(client, "big", None, pred, ts, by, expr_aggs)
        assert got.column_names == [*by, "sum(amount * (1 - n / 4))", "min(amount - n)", "count(*)"]
        assert sorted(got.to_pylist(), key=str) == sorted(want.to_pylist(), key=str)
        assert got.num_rows == (7 if by else 1) and got["count(*)"].to_pylist()[0] > 0
    assert client.columnar.fallbacks == fallbacks  # the node computed them, not the row store
    with pytest.raises(InvalidArgumentError):
        client.columnar_scan("big", ts=ts, aggregates=[("sum", "amount ** 2")])
    # The wire.
    node = next(p for p in cluster.processes() if p.role == "columnar")
    ch = new_channel(node.addr)
    try:
        call = ch.unary_stream(
            "/htapkv.columnarpb.Columnar/Scan",
            request_serializer=columnarpb_pb2.ScanRequest.SerializeToString,
            response_deserializer=columnarpb_pb2.ScanResponse.FromString,
        )
        messages = [m.arrow_ipc for m in call(columnarpb_pb2.ScanRequest(table="big", ts=ts))]
        # ScanUnary: the whole answer in one message, or none over the limit.
        unary = ch.unary_unary(
            "/htapkv.columnarpb.Columnar/ScanUnary",
            request_serializer=columnarpb_pb2.ScanRequest.SerializeToString,
            response_deserializer=columnarpb_pb2.ScanResponse.FromString,
        )
        req = columnarpb_pb2.ScanRequest(table="big", ts=ts, group_by=["name"])
        req.aggregates.add(func="count", column="")
        one = unary(req)
        assert not one.too_large and one.rows == 7
        counts = pa.ipc.open_stream(pa.py_buffer(one.arrow_ipc)).read_all()
        assert sum(counts.column(1).to_pylist()) == n
        refused = unary(columnarpb_pb2.ScanRequest(table="big", ts=ts, max_unary_bytes=1000))
        assert refused.too_large and not refused.arrow_ipc and refused.rows == 0
    finally:
        ch.close()
    # One IPC message per gRPC message: the schema, then record batches
    # (decoded where they land), ~1 MiB each but the last; together, one
    # valid IPC stream.
    schema = pa.ipc.read_schema(pa.py_buffer(messages[0]))
    batches = [pa.ipc.read_record_batch(pa.py_buffer(m), schema) for m in messages[1:]]
    assert sum(b.num_rows for b in batches) == n
    sizes = [len(m) for m in messages[1:]]
    assert all(s >= 100_000 for s in sizes[:-1]), sizes
    assert pa.ipc.open_stream(pa.py_buffer(b"".join(messages))).read_all().num_rows == n
    # An aggregate answer over the client's unary limit is read again as a stream.
    limit, restreamed = client.columnar.unary_max_bytes, client.columnar.restreamed
    client.columnar.unary_max_bytes = 1000
    try:
        per_id = [("sum", "amount"), ("count", "*")]
        got = client.columnar_scan("big", ts=ts, group_by=["id"], aggregates=per_id)
    finally:
        client.columnar.unary_max_bytes = limit
    assert client.columnar.restreamed == restreamed + 1
    want = row_store_scan(client, "big", None, (), ts, ["id"], per_id)
    assert _sorted(got) == _sorted(want) and got.num_rows == n
    assert client.columnar.fallbacks == fallbacks


# --------------------------------------------------------------------------- d
def test_columnar_node_down_then_restarted(cluster: LocalCluster, client: Client) -> None:
    info = tables.create_table(client, "restart", COLUMNS, "id")
    with client.begin() as txn:
        tables.insert(txn, info, [{"id": i, "n": i} for i in range(300)])
    ts = client.tso()
    assert_same_at(client, "restart", ts)
    assert client.columnar is not None
    # A write load runs through the kill and the restart.
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        i = 1000
        while not stop.is_set():
            with client.begin() as txn:
                tables.insert(txn, info, [{"id": i, "n": i}])
                tables.update(txn, info, [{"id": i % 300, "n": i}])
            written.append(i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        cluster.wait_for("writes before the kill", lambda: len(written) >= 5, 60)
        cluster.kill("columnar1")
        before = client.columnar.fallbacks
        answer = client.columnar_scan("restart", ts=ts, max_wait=1.0)
        assert client.columnar.fallbacks == before + 1  # answered by the row store
        assert answer.num_rows == 300
        at_kill = len(written)
        cluster.wait_for("writes while it is down", lambda: len(written) >= at_kill + 5, 60)
        with client.begin() as txn:
            tables.update(txn, info, [{"id": 7, "n": -7}])
        cluster.restart("columnar1")
        at_restart = len(written)
        cluster.wait_for("writes after the restart", lambda: len(written) >= at_restart + 5, 60)
    finally:
        stop.set()
        t.join(timeout=60)
    now = client.tso()
    got = assert_same_at(client, "restart", now)  # converged with the row store
    assert got.num_rows == 300 + len(written)
    assert {r["id"]: r["n"] for r in got.to_pylist()}[7] in (-7, *written)
    assert_same_at(client, "restart", ts)  # history survives the restart too
    # Freshness: Columnar.Status, /metrics and `htapkv cluster status`.
    node = next(p for p in cluster.processes() if p.role == "columnar")
    ch = new_channel(node.addr)

    def status() -> columnarpb_pb2.StatusResponse:
        return columnarpb_pb2.StatusResponse.FromString(
            ch.unary_unary("/htapkv.columnarpb.Columnar/Status")(b"", timeout=10)
        )

    try:
        # A Region split off a moment ago may not have applied anything here
        # yet: wait for every Region's learner to have applied something.
        cluster.wait_for(
            "every Region applied on the columnar node",
            lambda: all(r.applied_index > 0 for r in status().regions),
            60,
        )
        st_resp = status()
    finally:
        ch.close()
    assert st_resp.regions and all(r.applied_index > 0 for r in st_resp.regions)
    assert "restart" in st_resp.tables
    storage = {t.table: t for t in st_resp.storage}
    # Every row of the table is somewhere in Arrow: base, deltas or raw.
    assert "restart" in storage
    st = storage["restart"]
    assert st.stable_rows + st.raw_rows > 0 or st.delta_parts > 0
    metrics = urllib.request.urlopen(f"http://{node.status_addr}/metrics", timeout=5).read()
    assert b"htapkv_columnar_applied_index" in metrics
    out = subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "cluster", "status", "--pd", cluster.pd_addr],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Columnar freshness" in out.stdout
    assert "Columnar storage" in out.stdout and "restart" in out.stdout


# --------------------------------------------------------------------------- e
def test_read_below_gc_safe_point_fails(cluster: LocalCluster, client: Client) -> None:
    info = tables.create_table(client, "gcd", COLUMNS, "id")
    with client.begin() as txn:
        tables.insert(txn, info, [{"id": 1}])
    old = client.tso()
    with client.begin() as txn:
        tables.update(txn, info, [{"id": 1, "n": 2}])
    new_sp = cluster.pd().update_gc_safe_point(client.tso())
    assert new_sp > old

    # The safe point reaches the learner through the log (the GC worker's
    # write); until then the node may still answer, so wait for the refusal.
    def refused() -> bool:
        try:
            client.columnar_scan("gcd", ts=old, max_wait=1.0)
        except GcTooEarlyError:
            return True
        return False

    cluster.wait_for("reads below the safe point to be refused", refused, 60)
    with pytest.raises(GcTooEarlyError):
        client.columnar_scan("gcd", ts=old)


# --------------------------------------------------------------------------- f
def test_date_predicates_push_down_and_bad_ones_fail_fast(client: Client) -> None:
    info = tables.create_table(
        client, "events", [("id", "BIGINT"), ("day", "DATE"), ("price", "DECIMAL(10,2)")], "id"
    )
    start = datetime.date(2026, 1, 1)
    with client.begin() as txn:
        rows = [
            {"id": i, "day": start + datetime.timedelta(days=i), "price": decimal.Decimal(i) / 4}
            for i in range(60)
        ]
        tables.insert(txn, info, rows)
    ts = client.tso()
    assert client.columnar is not None
    before = client.columnar.fallbacks
    pred = [("day", "<=", datetime.date(2026, 1, 31)), ("price", ">", decimal.Decimal("2.5"))]
    got = client.columnar_scan("events", ["id"], pred, ts)
    assert client.columnar.fallbacks == before  # answered by the node
    assert sorted(got.column("id").to_pylist()) == list(range(11, 31))
    # Plain numbers against a DECIMAL column work too (an int64 literal has
    # no common decimal precision with DECIMAL(10,2) in Arrow).
    got = client.columnar_scan("events", ["id"], [("price", ">=", 14), ("price", "<", 14.5)], ts)
    assert client.columnar.fallbacks == before
    assert sorted(got.column("id").to_pylist()) == [56, 57]
    # A predicate that does not fit its column: a typed error at once, not a
    # wait for the node and a fallback.
    t0 = time.monotonic()
    with pytest.raises(InvalidArgumentError):
        client.columnar_scan("events", None, [("day", ">", "not a date")], ts)
    assert client.columnar.fallbacks == before
    print(f"bad predicate refused in {time.monotonic() - t0:.3f} s")
