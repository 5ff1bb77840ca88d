"""The columnar node: ``htapkv server columnar`` (TiFlash's role).

A store process (:mod:`kvstore.server.store_node`) registered with the label
``engine=columnar``: PD's scheduler gives it a *learner* of every Region
(never a voter, never a leader), which receives every committed entry. Its
replicas keep the row data in the node's own RocksDB like any replica (so
snapshots, restarts and log catch-up work unchanged) and, through an
:class:`~kvstore.raftstore.ApplyObserver`, feed the same write batches in
log order into a :class:`columnar.ColumnarStore`, which keeps committed table
rows as Arrow. On start (and when a Region snapshot is installed) the Arrow
state of a Region is rebuilt from the local RocksDB replica: the node
recovers from its own state plus the Raft log, without the row stores
stopping.

``Columnar.Scan`` is TiFlash's learner read, per Region of the table:

1. ask the Region's leader for its read index (``ReadIndex``: under the
   leader's lease, or through a read barrier, as fresh as a leader read); the
   learner's replica knows the leader, PD is asked only when that fails;
2. wait until this learner has applied that index (``max_wait_ms``, else
   ``DataIsNotReady``: the caller may read the row store instead);
3. lock check at ``ts`` (``KeyIsLocked`` to the client, which resolves and
   retries), MVCC filter to the newest version ``<= ts``, predicate,
   projection and optional partial aggregation, vectorised in Arrow;
4. re-check that no Region's epoch moved meanwhile (else ``DataIsNotReady``:
   retry).

The result crosses the wire as one Arrow IPC stream cut into messages of
about 1 MiB (at least ~100 KB each but the last). Freshness per Region
(applied index, lag in entries and time) is served by ``Columnar.Status`` and
exported as Prometheus metrics.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Any

import grpc
import pyarrow as pa
from google.protobuf.message import DecodeError
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from columnar import ColumnarStore
from kvstore import codec, tablecodec
from kvstore.client.columnar import (
    fit_predicates,
    predicate_columns,
    predicate_expression,
    predicate_from_pb,
)
from kvstore.client.pd_client import PdClient
from kvstore.errors import (
    DataIsNotReadyError,
    InvalidArgumentError,
    KVError,
    RegionError,
)
from kvstore.proto import columnarpb_pb2
from kvstore.proto import kvrpcpb_pb2 as kvpb
from kvstore.proto.convert import RequestContext, context_to_pb, response_error, set_error
from kvstore.proto.rpc import KV_METHODS
from kvstore.proto.tls import TlsConfig
from kvstore.raftstore import Store
from kvstore.storage import CF_DEFAULT, CF_LOCK, CF_RAFT, CF_WRITE, RocksEngine
from kvstore.storage.engine import OP_DELETE_RANGE, OP_PUT
from kvstore.txn.scheduler import GC_SAFE_POINT_KEY
from kvstore.types import Region, RegionEpoch

log = logging.getLogger(__name__)

COLUMNAR_SERVICE = "htapkv.columnarpb.Columnar"
COLUMNAR_LABEL = ("engine", "columnar")
IPC_MESSAGE_BYTES = 1 << 20
UNARY_MAX_BYTES = IPC_MESSAGE_BYTES  # ScanUnary's limit when the request sets none
DEFAULT_MAX_WAIT_MS = 2000
COMPACT_EVERY_S = 0.5
COMPACT_MIN_INTERVAL_S = 2.0
CATCH_UP_THREADS = 16

# Rebuilding a Region replays its engine contents as ops. The order matters:
# a commit record (write CF) of a long value needs the value (default CF) and
# the lock it replaces already in place.
_REBUILD_ORDER = (CF_DEFAULT, CF_LOCK, CF_WRITE)


class ColumnarObserver:
    """The replicas' apply feed into the :class:`ColumnarStore` (runs in the
    Raft driver thread)."""

    def __init__(self, engine: RocksEngine, columnar: ColumnarStore) -> None:
        self.engine = engine
        self.columnar = columnar
        self._resets = 0  # pseudo Region ids for rebuilds (see on_reset)

    def on_apply(self, region: Region, index: int, ops: list[Any]) -> None:
        self.columnar.apply(index, ops, region.id)

    def on_reset(self, region: Region, index: int) -> None:
        end = region.end_key or b"\xff"
        ops: list[Any] = [(OP_DELETE_RANGE, cf, region.start_key, end) for cf in _REBUILD_ORDER]
        for cf in _REBUILD_ORDER:
            ops.extend((OP_PUT, cf, k, v) for k, v in self.engine.scan(cf, region.start_key, end))
        sp = self.engine.get(CF_RAFT, GC_SAFE_POINT_KEY)
        if sp is not None:
            ops.append((OP_PUT, CF_RAFT, GC_SAFE_POINT_KEY, sp))
        # The store skips entries at or below a Region's applied index; a
        # rebuild is not a log entry, so it goes under an id of its own.
        self._resets += 1
        self.columnar.apply(1, ops, -self._resets)
        log.info(
            "rebuilt region %d [%s, %s) at index %d from the engine: %d records",
            region.id,
            region.start_key.hex(),
            region.end_key.hex(),
            index,
            len(ops) - 3,
        )

    def on_destroy(self, region: Region) -> None:
        end = region.end_key or b"\xff"
        ops = [(OP_DELETE_RANGE, cf, region.start_key, end) for cf in _REBUILD_ORDER]
        self._resets += 1
        self.columnar.apply(1, ops, -self._resets)
        log.info(
            "dropped region %d [%s, %s)", region.id, region.start_key.hex(), region.end_key.hex()
        )


@dataclass
class _ReadIndexRounds:
    """One Region's shared read index (TiFlash batches its learners' read
    index requests the same way): ``running`` is the round whose RPC is out;
    ``queued`` collects the readers that came after it was sent, who need a
    round of their own, sent once the running one is back."""

    region: Region
    deadline: float = 0.0  # the latest deadline among the queued readers
    running: Future[int] | None = None
    queued: Future[int] | None = None


@dataclass
class _Freshness:
    leader_index: int = 0
    behind_since: float = 0.0  # monotonic time the learner was first seen behind


def ipc_bytes(table: pa.Table) -> bytes:
    # Arrow's own buffer, not io.BytesIO: a BytesIO grows by copying (50 ms
    # against 13 ms for a 44 MiB answer on the bench machine).
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=64 * 1024)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def ipc_chunks(table: pa.Table, size: int = IPC_MESSAGE_BYTES) -> Iterator[bytes]:
    """``table`` as the messages of an Arrow IPC stream, one per gRPC
    message: the schema, then record batches of about ``size`` bytes each.
    So the client decodes each message where it lands, and never joins the
    answer into one buffer (a fresh 44 MiB buffer costs ~50 ms in page
    faults alone); the messages concatenated are still a valid stream.
    Dictionary-encoded columns are decoded first: their dictionaries would
    be messages of their own, which a record batch alone cannot carry."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    yield table.schema.serialize().to_pybytes()
    if not table.num_rows:
        return
    rows = max(1024, size * table.num_rows // max(table.nbytes, 1))
    for batch in table.to_batches(max_chunksize=rows):
        yield batch.serialize().to_pybytes()


def unary_answer(table: pa.Table, limit: int) -> columnarpb_pb2.ScanResponse:
    """ScanUnary's answer: the whole result, or ``too_large`` without it."""
    data = ipc_bytes(table)
    if len(data) > (limit or UNARY_MAX_BYTES):
        return columnarpb_pb2.ScanResponse(too_large=True)
    return columnarpb_pb2.ScanResponse(arrow_ipc=data, rows=table.num_rows)


class ColumnarService:
    def __init__(
        self, store: Store, columnar: ColumnarStore, pd: PdClient, tls: TlsConfig | None
    ) -> None:
        self.store = store
        self.columnar = columnar
        self.pd = pd
        self.tls = tls
        self._mu = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._read_index_stubs: dict[str, Any] = {}
        self._pool = ThreadPoolExecutor(CATCH_UP_THREADS, thread_name_prefix="learner-read")
        # Read index rounds run here, never on _pool: its threads wait for them.
        self._rounds_pool = ThreadPoolExecutor(CATCH_UP_THREADS, thread_name_prefix="read-index")
        self._rounds_mu = threading.Lock()
        self._rounds: dict[tuple[int, RegionEpoch], _ReadIndexRounds] = {}
        # Where the leaders are: store id by Raft address, kv address by id.
        self._raft_to_store: dict[str, int] = {}
        self._kv_addrs: dict[int, str] = {}
        self.freshness: dict[int, _Freshness] = {}

    # ------------------------------------------------------------ read index
    def _channel(self, addr: str) -> grpc.Channel:
        from kvstore.client.routing import new_channel

        with self._mu:
            ch = self._channels.get(addr)
            if ch is None:
                ch = self._channels[addr] = new_channel(addr, self.tls)
            return ch

    def _read_index_rpc(self, addr: str, ctx: RequestContext) -> int:
        # One cached stub per store: building a whole KV backend per read
        # (a stub per method) cost more than the RPC itself.
        stub = self._read_index_stubs.get(addr)
        if stub is None:
            m = KV_METHODS["ReadIndex"]
            stub = self._read_index_stubs[addr] = self._channel(addr).unary_unary(
                m.path,
                request_serializer=m.request.SerializeToString,
                response_deserializer=m.response.FromString,
            )
        resp = stub(kvpb.ReadIndexRequest(context=context_to_pb(ctx)), timeout=5.0)
        err = response_error(resp)
        if err is not None:
            raise err
        return int(resp.read_index)

    def read_index(self, region: Region, deadline: float) -> int:
        """The leader's read index for ``region`` (this learner's view of it),
        retrying leader changes until ``deadline``.

        The learner's own replica usually knows the leader (it is fed by
        it): ask that store directly with our epoch, which the leader checks.
        PD is asked only when that fails (no leader heard of, a store we do
        not know, a leader change or a split in between)."""
        last: BaseException | None = None
        use_pd = False
        while time.monotonic() < deadline:
            try:
                ctx, addr = self._pd_route(region) if use_pd else self._local_route(region)
                return self._read_index_rpc(addr, ctx)
            except (RegionError, grpc.RpcError) as e:
                last = e
                if use_pd:
                    time.sleep(0.02)  # an election or a PD refresh: try again shortly
                use_pd = True
        if isinstance(last, DataIsNotReadyError):
            raise last
        raise DataIsNotReadyError(region.id, reason=f"no read index from the leader ({last})")

    def shared_read_index(self, region: Region, deadline: float) -> int:
        """:meth:`read_index`, shared by concurrent readers of ``region``.

        A reader may use the answer of an RPC sent after it arrived, never
        one sent before (that one may predate a write acknowledged to the
        reader's client): it joins the queued round, which is sent as soon
        as no other round of the Region is out (at once if none is). The
        scans of one SQL query arrive together and mostly share one round:
        a read index costs the leader ~1 ms of CPU and this node ~0.5 ms."""
        key = (region.id, region.epoch)
        with self._rounds_mu:
            rounds = self._rounds.get(key)
            if rounds is None:
                rounds = self._rounds[key] = _ReadIndexRounds(region)
            if rounds.queued is None:
                rounds.queued = Future()
            mine = rounds.queued
            rounds.deadline = max(rounds.deadline, deadline)
            if rounds.running is None:
                self._send_round_locked(key, rounds)
        try:
            # A round ends by its own deadline (the latest of its readers'),
            # plus the RPC's own timeout at worst.
            return mine.result(timeout=max(0.0, deadline - time.monotonic()) + 10.0)
        except FutureTimeoutError:
            raise DataIsNotReadyError(region.id, reason="no read index in time") from None

    def _send_round_locked(self, key: tuple[int, RegionEpoch], rounds: _ReadIndexRounds) -> None:
        fut, rounds.queued, rounds.running = rounds.queued, None, rounds.queued
        deadline, rounds.deadline = rounds.deadline, 0.0
        assert fut is not None
        try:
            self._rounds_pool.submit(self._round, key, rounds, fut, deadline)
        except RuntimeError:  # the node is closing
            rounds.running = None
            fut.set_exception(DataIsNotReadyError(rounds.region.id, reason="node closing"))

    def _round(
        self,
        key: tuple[int, RegionEpoch],
        rounds: _ReadIndexRounds,
        fut: Future[int],
        deadline: float,
    ) -> None:
        try:
            fut.set_result(self.read_index(rounds.region, deadline))
        except BaseException as e:
            fut.set_exception(e)
        with self._rounds_mu:
            rounds.running = None
            if rounds.queued is not None:
                self._send_round_locked(key, rounds)
            elif self._rounds.get(key) is rounds:
                del self._rounds[key]

    def _local_route(self, region: Region) -> tuple[RequestContext, str]:
        peer = self.store.peers.get(region.id)
        group = peer.group if peer is not None else None
        leader_raft = group.leader() if group is not None else None
        if leader_raft is None:
            raise DataIsNotReadyError(region.id, reason="no leader heard of")
        store_id = self._store_by_raft_addr(leader_raft)
        leader = next((p for p in region.peers if p.store_id == store_id), None)
        if leader is None or store_id not in self._kv_addrs:
            raise DataIsNotReadyError(region.id, reason="leader store unknown here")
        return RequestContext(region.id, region.epoch, leader), self._kv_addrs[store_id]

    def _store_by_raft_addr(self, raft_addr: str) -> int | None:
        for _ in range(2):
            sid = self._raft_to_store.get(raft_addr)
            if sid is not None:
                return sid
            with self._mu:  # a store we have not met: ask PD once for them all
                for st in self.pd.get_all_stores(exclude_tombstone=True):
                    if st.raft_address:
                        self._raft_to_store[st.raft_address] = st.id
                    self._kv_addrs[st.id] = st.address
        return None

    def _pd_route(self, region: Region) -> tuple[RequestContext, str]:
        found = self.pd.get_region_by_id(region.id)
        if found is None or not found[1]:
            raise DataIsNotReadyError(region.id, reason="leader unknown")
        current, leader_store = found[0], int(found[1])
        if current.epoch != region.epoch:
            raise DataIsNotReadyError(region.id, reason="region changed; learner behind")
        store = self.pd.get_store(leader_store)
        if store is None:
            raise DataIsNotReadyError(region.id, reason="leader store unknown")
        self._kv_addrs[store.id] = store.address  # it may have moved
        leader = next(p for p in current.peers if p.store_id == leader_store)
        return RequestContext(region.id, current.epoch, leader), store.address

    def _catch_up(self, region: Region, deadline: float) -> None:
        """Wait until this learner has applied ``region`` up to its leader's
        read index (``DataIsNotReady`` at the deadline)."""
        index = self.shared_read_index(region, deadline)
        peer = self.store.peers.get(region.id)
        if peer is None:
            raise DataIsNotReadyError(region.id, reason="region moved away")
        fresh = self.freshness.setdefault(region.id, _Freshness())
        fresh.leader_index = index
        while peer.log_applied_index() < index:
            if fresh.behind_since == 0.0:
                fresh.behind_since = time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                raise DataIsNotReadyError(
                    region.id,
                    reason=f"learner at {peer.log_applied_index()}, leader at {index}",
                )
            self.store.driver.wait_loop(min(left, 0.05))
        fresh.behind_since = 0.0

    # ------------------------------------------------------------ scan
    def _catch_up_all(
        self, regions: list[Region], deadline: float, caught: dict[int, Region]
    ) -> None:
        """:meth:`_catch_up` each of ``regions`` not in ``caught`` (same
        epoch) yet, in parallel; record them there."""
        todo = {r.id: r for r in regions if caught.get(r.id) != r}
        pending = list(todo.values())
        futures = [self._pool.submit(self._catch_up, r, deadline) for r in pending[1:]]
        if pending:  # this thread takes one: no hand-off for a lone Region
            self._catch_up(pending[0], deadline)
        for f in futures:
            f.result()
        caught.update(todo)

    def _guess_regions(self, table: str) -> list[Region]:
        """The Regions of ``table`` by the schema this learner has applied
        (none if it knows no such table or lacks some of its Regions)."""
        try:
            return self._regions_of(self.columnar.table_info(table).id)
        except KVError:
            return []

    def _regions_of(self, table_id: int) -> list[Region]:
        lo, hi = tablecodec.row_range(table_id)
        start, end = codec.txn_key(lo), codec.txn_key(hi)
        regions = sorted(
            (p.region for p in list(self.store.peers.values())),
            key=lambda r: r.start_key,
        )
        covering = [
            r for r in regions if (not r.end_key or r.end_key > start) and r.start_key < end
        ]
        # The learner must host every Region of the range, or rows are missing.
        pos = start
        for r in covering:
            if r.start_key > pos:
                break
            pos = r.end_key if r.end_key else b"\xff" * 8
            if not r.end_key or pos >= end:
                return covering
        raise DataIsNotReadyError(0, reason="this node does not host every Region of the table yet")

    def scan(self, req: columnarpb_pb2.ScanRequest) -> pa.Table:
        if not req.table or req.ts <= 0:
            raise InvalidArgumentError("Scan needs a table and a positive ts")
        wait_s = (req.max_wait_ms or DEFAULT_MAX_WAIT_MS) / 1000
        deadline = time.monotonic() + wait_s
        # The schema's Region and the table's Regions, each caught up to its
        # leader's read index, all at once (each is an RPC to a leader). The
        # table's Regions are first guessed from the schema this learner has
        # (the DDL, or a later ADD COLUMN, may be newer than what it applied);
        # once the schema's Region is caught up, the schema is authoritative,
        # and any Region the guess missed is caught up then.
        name_key = codec.txn_key(tablecodec.table_name_key(req.table))
        meta_region = next(
            (p.region for p in list(self.store.peers.values()) if p.region.contains(name_key)),
            None,
        )
        if meta_region is None:
            raise DataIsNotReadyError(0, reason="this node does not host the schema's Region yet")
        caught: dict[int, Region] = {}
        self._catch_up_all([meta_region, *self._guess_regions(req.table)], deadline, caught)
        info = self.columnar.table_info(req.table, req.ts, list(req.bypass_locks))
        regions = self._regions_of(info.id)
        self._catch_up_all(regions, deadline, caught)
        columns = list(req.columns) or None
        preds = predicate_from_pb(req.predicates)
        try:
            predicate = predicate_expression(preds, info.arrow_schema())
            pred_cols = [c for p in preds for c in predicate_columns(p)]
            if req.aggregates:
                aggs = [(a.column or "*", a.func) for a in req.aggregates]
                table = self.columnar.aggregate(
                    info,
                    req.ts,
                    list(req.group_by),
                    aggs,
                    # As comparisons: a global aggregate runs them as
                    # compute kernels on slices in parallel.
                    fit_predicates(preds, info.arrow_schema()) or None,
                    list(req.bypass_locks),
                    predicate_columns=pred_cols,
                )
            else:
                table = self.columnar.read(
                    info,
                    req.ts,
                    columns,
                    predicate,
                    list(req.bypass_locks),
                    predicate_columns=pred_cols,
                )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, KeyError) as e:
            # A predicate that does not fit the column (a string against a
            # number, an unknown column): the caller's mistake.
            raise InvalidArgumentError(f"bad predicate or column for table {req.table}: {e}") from e
        # A split or membership change while we read: the caller retries.
        for r in regions:
            peer = self.store.peers.get(r.id)
            if peer is None or peer.region.epoch != r.epoch:
                raise DataIsNotReadyError(r.id, reason="region changed during the read")
        return table

    def _run_scan(
        self, data: bytes
    ) -> tuple[columnarpb_pb2.ScanRequest, pa.Table] | columnarpb_pb2.ScanResponse:
        """The request and its result, or the response that carries its error."""
        resp = columnarpb_pb2.ScanResponse()
        try:
            req = columnarpb_pb2.ScanRequest.FromString(data)
            return req, self.scan(req)
        except DecodeError as e:
            set_error(resp, InvalidArgumentError(f"malformed Scan request: {e}"))
        except KVError as e:
            set_error(resp, e)
        return resp

    def _scan_unary(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        ran = self._run_scan(data)
        if isinstance(ran, columnarpb_pb2.ScanResponse):
            return ran.SerializeToString()
        req, table = ran
        return unary_answer(table, req.max_unary_bytes).SerializeToString()

    def _scan(
        self, data: bytes, context: grpc.ServicerContext
    ) -> Iterator[columnarpb_pb2.ScanResponse]:
        ran = self._run_scan(data)
        if isinstance(ran, columnarpb_pb2.ScanResponse):
            yield ran
            return
        table = ran[1]
        chunks = list(ipc_chunks(table))
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            yield columnarpb_pb2.ScanResponse(arrow_ipc=chunk, rows=table.num_rows if last else 0)

    # ------------------------------------------------------------ status
    def _leader_commit(self, peer: Any) -> int:
        """The leader's commit index as this learner last heard it (carried by
        every append and heartbeat): freshness without asking anyone."""
        group = peer.group
        if group is None:
            return 0
        try:
            st = self.store.driver.call(group.status, timeout=2.0)
        except Exception:  # the driver is busy or stopping: unknown this time
            return 0
        return int(st.get("leader_commit_idx") or 0)

    def status(self) -> columnarpb_pb2.StatusResponse:
        resp = columnarpb_pb2.StatusResponse()
        now = time.monotonic()
        for rid, peer in sorted(self.store.peers.items()):
            f = self.freshness.setdefault(rid, _Freshness())
            f.leader_index = max(f.leader_index, self._leader_commit(peer))
            applied = peer.log_applied_index()
            lag = max(0, f.leader_index - applied)
            if lag and f.behind_since == 0.0:
                f.behind_since = now
            elif not lag:
                f.behind_since = 0.0
            resp.regions.add(
                region_id=rid,
                applied_index=applied,
                leader_index=f.leader_index,
                lag_entries=lag,
                lag_ms=(now - f.behind_since) * 1000 if lag and f.behind_since else 0.0,
            )
        resp.tables.extend(t.name for t in self.columnar.tables())
        for name, stable, deltas, raw in self.columnar.table_storage():
            resp.storage.add(table=name, stable_rows=stable, delta_parts=deltas, raw_rows=raw)
        return resp

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        def status(data: bytes, context: grpc.ServicerContext) -> bytes:
            return self.status().SerializeToString()

        return grpc.method_handlers_generic_handler(
            COLUMNAR_SERVICE,
            {
                "Scan": grpc.unary_stream_rpc_method_handler(
                    self._scan, response_serializer=columnarpb_pb2.ScanResponse.SerializeToString
                ),
                "ScanUnary": grpc.unary_unary_rpc_method_handler(self._scan_unary),
                "Status": grpc.unary_unary_rpc_method_handler(status),
            },
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._rounds_pool.shutdown(wait=False)  # a round out ends by its deadline
        with self._mu:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()


class FreshnessCollector(Collector):
    """Per-Region freshness of the learner, for /metrics."""

    def __init__(self, service: ColumnarService) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        st = self.service.status()
        applied = GaugeMetricFamily(
            "htapkv_columnar_applied_index", "Log index applied by the learner", labels=["region"]
        )
        lag = GaugeMetricFamily(
            "htapkv_columnar_lag_entries",
            "Entries behind the leader's read index",
            labels=["region"],
        )
        lag_ms = GaugeMetricFamily(
            "htapkv_columnar_lag_ms", "How long the learner has been behind", labels=["region"]
        )
        for r in st.regions:
            applied.add_metric([str(r.region_id)], r.applied_index)
            lag.add_metric([str(r.region_id)], r.lag_entries)
            lag_ms.add_metric([str(r.region_id)], r.lag_ms)
        yield applied
        yield lag
        yield lag_ms


def compaction_loop(columnar: ColumnarStore, stop: threading.Event) -> None:
    """Fold Arrow deltas into each table's stable base in the background:
    apply only appends small deltas, reads stay on a few large chunks. A
    compaction rewrites the whole table (~0.14 s per 1M rows), so each table
    is compacted at most every ``COMPACT_MIN_INTERVAL_S``: a steady trickle
    of writes must not keep a core busy rewriting it. Any delta at all is
    folded in then (a read of a table with deltas sorts the whole table; one
    of a lone stable base reuses its MVCC filter)."""
    last: dict[int, float] = {}
    while not stop.wait(COMPACT_EVERY_S):
        try:
            now = time.monotonic()
            for info in columnar.tables():
                if now - last.get(info.id, 0.0) < COMPACT_MIN_INTERVAL_S:
                    continue
                if columnar.needs_compaction(info.id, any_delta=True):
                    columnar.compact(info.id)
                    last[info.id] = time.monotonic()
        except Exception:  # a failed round is retried; apply goes on regardless
            log.exception("columnar compaction failed")


def add_columnar_arguments(p: argparse.ArgumentParser) -> None:
    from kvstore.server.store_server import add_store_arguments

    add_store_arguments(p)


def run_columnar(args: argparse.Namespace) -> int:
    """``htapkv server columnar``: a store process with the columnar label,
    a :class:`ColumnarStore` fed by its replicas, and the Columnar service."""
    from kvstore.server.store_node import run_with_pd

    if not args.pd:
        raise InvalidArgumentError("a columnar node needs --pd")
    labels = [x for x in args.labels.split(",") if x.strip()]
    if "=".join(COLUMNAR_LABEL) not in labels:
        labels.append("=".join(COLUMNAR_LABEL))
    args.labels = ",".join(labels)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s columnar %(name)s %(message)s")
    return run_with_pd(args, columnar=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_columnar_arguments(p)
    raise SystemExit(run_columnar(p.parse_args(argv)))


if __name__ == "__main__":
    main()


__all__ = [
    "COLUMNAR_SERVICE",
    "ColumnarObserver",
    "ColumnarService",
    "FreshnessCollector",
    "compaction_loop",
    "run_columnar",
]
