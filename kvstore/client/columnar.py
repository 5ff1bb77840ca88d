"""Analytic reads: ``client.columnar_scan`` (the client side of TiFlash reads).

:class:`ColumnarReader` sends a ``Columnar.Scan`` to a columnar node found
through PD (a store labelled ``engine=columnar``) and reassembles the Arrow
IPC stream. It handles what the learner read can answer:

* ``KeyIsLocked``: resolve the lock (check the primary, commit or roll back,
  or push its ``min_commit_ts``) and retry, passing the lock timestamps a
  reader may now ignore, exactly as a row-store read does;
* ``DataIsNotReady`` (a lagging learner, a Region it does not host yet, a
  Region that moved during the read): retry until ``max_wait``, then
* fall back to the row store: the same rows, read at the same ``ts`` through
  the transactional API, with the same predicate, projection and
  aggregation applied here (and a warning logged), so a caller always gets
  the answer, from the replica when it can.

Predicates are ``(column, op, value)`` tuples, ANDed; ops ``= != < <= > >=``
(the value a constant, or :class:`~kvstore.types.ColumnRef` for another
column of the row: ``l_commitdate < l_receiptdate``), ``is_null``,
``not_null``, and ``in`` (an integer column among a list of integers: a
join's runtime filter; scans only). Aggregates are ``(function, column)`` with
functions ``sum count min max`` (``("count", "*")`` counts rows); the
column may be an arithmetic expression of columns
(``("sum", "l_extendedprice * (1 - l_discount)")``, see
:mod:`columnar.expression`), which also names the result; with
``group_by`` they are computed per group. Over the columnar path the node
computes them; with one columnar node holding every Region its partial
aggregate is the final one (several nodes would need a merge here).
"""

from __future__ import annotations

import datetime
import decimal
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc

from columnar.expression import columns_of, with_expressions
from kvstore.client.routing import new_channel
from kvstore.errors import DataIsNotReadyError, InvalidArgumentError, KeyIsLockedError
from kvstore.proto import columnarpb_pb2
from kvstore.proto.convert import response_error
from kvstore.proto.tls import TlsConfig
from kvstore.types import ColumnRef

if TYPE_CHECKING:
    from kvstore.client.client import Client
    from kvstore.client.pd_client import PdClient

log = logging.getLogger(__name__)

SCAN_PATH = "/htapkv.columnarpb.Columnar/Scan"
SCAN_UNARY_PATH = "/htapkv.columnarpb.Columnar/ScanUnary"
DEFAULT_MAX_WAIT_S = 5.0
# How long the list of columnar nodes PD gave is used before asking again
# (a failed scan asks at once).
NODES_TTL_S = 10.0
_OPS = ("=", "!=", "<", "<=", ">", ">=", "is_null", "not_null", "in")
_AGGS = ("sum", "count", "min", "max")

Predicate = tuple[str, str, Any]
_EPOCH = datetime.date(1970, 1, 1)
_EPOCH_DT = datetime.datetime(1970, 1, 1)
Aggregate = tuple[str, str]


def check_predicates(predicates: Sequence[Predicate]) -> None:
    for p in predicates:
        if not (isinstance(p, tuple) and len(p) == 3 and isinstance(p[0], str) and p[1] in _OPS):
            raise InvalidArgumentError(
                f"a predicate is (column, op, value) with op one of {', '.join(_OPS)}: {p!r}"
            )
        if p[1] == "in" and not _int_list(p[2]):
            raise InvalidArgumentError(f"'in' takes a list of integers: {p[0]!r}")
        if isinstance(p[2], ColumnRef) and p[1] in ("in", "is_null", "not_null"):
            raise InvalidArgumentError(f"{p[1]!r} does not compare with a column: {p!r}")


def predicate_columns(p: Predicate) -> list[str]:
    """The columns a predicate reads (two when it compares two columns)."""
    col, _, value = p
    return [col, value.name] if isinstance(value, ColumnRef) else [col]


def _int_list(values: Any) -> bool:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return bool(pa.types.is_integer(values.type))
    return isinstance(values, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    )


def check_aggregates(aggregates: Sequence[Aggregate]) -> None:
    for a in aggregates:
        if not (isinstance(a, tuple) and len(a) == 2 and a[0] in _AGGS and isinstance(a[1], str)):
            raise InvalidArgumentError(
                f"an aggregate is (function, column) with function one of {', '.join(_AGGS)}: {a!r}"
            )
        if a[1] == "*" and a[0] != "count":
            raise InvalidArgumentError("only count takes '*'")
        columns_of(a[1])  # "price * (1 - discount)": it must parse


def _compare(col: str, op: str, value: Any) -> pc.Expression:
    f = pc.field(col)
    if op == "is_null":
        return f.is_null()
    if op == "not_null":
        return ~f.is_null()
    if value is None:
        raise InvalidArgumentError(f"predicate {col} {op} needs a value")
    if op == "in":
        keys = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value)
        return f.isin(keys.cast(pa.int64()))
    if isinstance(value, ColumnRef):
        value = pc.field(value.name)
    if op == "=":
        return f == value
    if op == "!=":
        return f != value
    if op == "<":
        return f < value
    if op == "<=":
        return f <= value
    if op == ">":
        return f > value
    if op == ">=":
        return f >= value
    raise InvalidArgumentError(f"unknown predicate operator {op!r}")


def _fit(value: Any, t: pa.DataType | None) -> Any:
    """A number compared with a DECIMAL column, as a Decimal: Arrow casts an
    int64 to decimal128(19, 0) and may find no common precision with the
    column's type; an exact Decimal of the value always has one."""
    if t is None or not pa.types.is_decimal(t) or isinstance(value, (bool, ColumnRef)):
        return value
    if isinstance(value, (int, float)):
        return decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
    return value


def predicate_expression(
    predicates: Sequence[Predicate], schema: pa.Schema | None = None
) -> pc.Expression | None:
    """The ANDed predicates as one ``pyarrow.compute`` expression (used by the
    columnar node and by the row-store fallback alike). With the table's
    ``schema``, numbers compared with DECIMAL columns are made exact decimals."""
    expr: pc.Expression | None = None
    for col, op, value in fit_predicates(predicates, schema):
        e = _compare(col, op, value)
        expr = e if expr is None else expr & e
    return expr


def fit_predicates(
    predicates: Sequence[Predicate], schema: pa.Schema | None = None
) -> list[Predicate]:
    """``predicates`` with numbers compared with DECIMAL columns of
    ``schema`` made exact decimals (see :func:`predicate_expression`)."""
    out = []
    for col, op, value in predicates:
        t = schema.field(col).type if schema is not None and col in schema.names else None
        out.append((col, op, value if op == "in" else _fit(value, t)))
    return out


def predicate_from_pb(preds: Sequence[columnarpb_pb2.Predicate]) -> list[Predicate]:
    out: list[Predicate] = []
    for p in preds:
        if p.op == "in":
            out.append((p.column, p.op, list(p.int_values)))
            continue
        kind = p.WhichOneof("value")
        value: Any = getattr(p, kind) if kind else None
        if kind == "date_value":
            value = _EPOCH + datetime.timedelta(days=value)
        elif kind == "timestamp_us":
            value = _EPOCH_DT + datetime.timedelta(microseconds=value)
        elif kind == "decimal_value":
            value = decimal.Decimal(value)
        elif kind == "column_value":
            value = ColumnRef(value)
        out.append((p.column, p.op, value))
    return out


def _predicate_pb(p: Predicate) -> columnarpb_pb2.Predicate:
    col, op, value = p
    m = columnarpb_pb2.Predicate(column=col, op=op)
    if op in ("is_null", "not_null"):
        return m
    if op == "in":
        values = value.to_pylist() if isinstance(value, (pa.Array, pa.ChunkedArray)) else value
        m.int_values.extend(values)
        return m
    if isinstance(value, ColumnRef):
        m.column_value = value.name
    elif isinstance(value, bool):
        m.bool_value = value
    elif isinstance(value, int):
        m.int_value = value
    elif isinstance(value, float):
        m.double_value = value
    elif isinstance(value, str):
        m.string_value = value
    elif isinstance(value, datetime.datetime):  # before date: a datetime is a date
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        m.timestamp_us = (value - _EPOCH_DT) // datetime.timedelta(microseconds=1)
    elif isinstance(value, datetime.date):
        m.date_value = (value - _EPOCH).days
    elif isinstance(value, decimal.Decimal):
        m.decimal_value = str(value)
    else:
        raise InvalidArgumentError(
            f"predicate values are bool, int, float, str, date, datetime or Decimal: {value!r}"
        )
    return m


def aggregate(
    table: pa.Table, group_by: Sequence[str], aggregates: Sequence[Aggregate]
) -> pa.Table:
    """Group and aggregate ``table`` (the final step, or the fallback's only);
    an aggregate of an expression (:mod:`columnar.expression`) sums its
    values."""
    table = with_expressions(table, [col for _, col in aggregates])
    spec: list[tuple[Any, str]] = [
        ([], "count_all") if (fn == "count" and col == "*") else (col, fn) for fn, col in aggregates
    ]
    out = table.group_by(list(group_by), use_threads=False).aggregate(spec)
    return out.rename_columns([*group_by, *(f"{fn}({col})" for fn, col in aggregates)])


class ColumnarReader:
    def __init__(self, client: Client, pd: PdClient, tls: TlsConfig | None = None) -> None:
        self.client = client
        self.pd = pd
        self.tls = tls
        self._mu = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self.fallbacks = 0  # how many scans the row store answered
        # Aggregates ask ScanUnary for answers up to this size (one message,
        # less fixed cost than a stream); a bigger one is re-read as a
        # stream, which computes it again. SQL pushes grouped aggregates of
        # 100k+ groups (TPC-H Q18: 150k groups, 3.5 MiB), so the limit sits
        # well above that and well below the 64 MiB message limit.
        self.unary_max_bytes = 32 << 20
        self.restreamed = 0  # aggregates whose answer was too large for ScanUnary
        self._known: tuple[float, list[str]] = (0.0, [])  # (asked PD at, columnar nodes)

    def _nodes(self, refresh: bool = False) -> list[str]:
        """The columnar nodes' addresses, as PD last said (asked again after
        :data:`NODES_TTL_S`, or when ``refresh``: a node failed us)."""
        asked, nodes = self._known
        if refresh or not nodes or time.monotonic() - asked > NODES_TTL_S:
            nodes = [
                s.address
                for s in self.pd.get_all_stores(exclude_tombstone=True)
                if any((lb.key, lb.value) == ("engine", "columnar") for lb in s.labels)
            ]
            self._known = (time.monotonic(), nodes)
        return nodes

    def _channel(self, addr: str) -> grpc.Channel:
        with self._mu:
            ch = self._channels.get(addr)
            if ch is None:
                ch = self._channels[addr] = new_channel(addr, self.tls)
            return ch

    def _scan_once(self, addr: str, req: columnarpb_pb2.ScanRequest, timeout: float) -> pa.Table:
        if req.aggregates:
            req.max_unary_bytes = self.unary_max_bytes
            resp = self._channel(addr).unary_unary(
                SCAN_UNARY_PATH,
                request_serializer=columnarpb_pb2.ScanRequest.SerializeToString,
                response_deserializer=columnarpb_pb2.ScanResponse.FromString,
            )(req, timeout=timeout)
            err = response_error(resp)
            if err is not None:
                raise err
            if not resp.too_large:
                return pa.ipc.open_stream(pa.py_buffer(resp.arrow_ipc)).read_all()
            self.restreamed += 1  # same ts: the stream reads the same answer
        call = self._channel(addr).unary_stream(
            SCAN_PATH,
            request_serializer=columnarpb_pb2.ScanRequest.SerializeToString,
            response_deserializer=columnarpb_pb2.ScanResponse.FromString,
        )
        # Each message is one Arrow IPC message: the schema, then record
        # batches, decoded in place (no copy into one buffer).
        schema: pa.Schema | None = None
        batches: list[pa.RecordBatch] = []
        for resp in call(req, timeout=timeout):
            err = response_error(resp)
            if err is not None:
                raise err
            buf = pa.py_buffer(resp.arrow_ipc)
            if schema is None:
                schema = pa.ipc.read_schema(buf)
            else:
                batches.append(pa.ipc.read_record_batch(buf, schema))
        if schema is None:
            raise DataIsNotReadyError(0, reason="the answer ended before its schema")
        return pa.Table.from_batches(batches, schema)

    def scan(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        predicate: Sequence[Predicate] = (),
        ts: int | None = None,
        *,
        group_by: Sequence[str] = (),
        aggregates: Sequence[Aggregate] = (),
        max_wait: float = DEFAULT_MAX_WAIT_S,
        on_fallback: Callable[[str], None] | None = None,
    ) -> pa.Table:
        check_predicates(predicate)
        check_aggregates(aggregates)
        if group_by and not aggregates:
            raise InvalidArgumentError("group_by needs aggregates")
        if aggregates and any(op == "in" for _, op, _ in predicate):
            raise InvalidArgumentError("'in' predicates filter scans, not aggregates")
        ts = ts or self.client.tso()
        req = columnarpb_pb2.ScanRequest(
            table=table,
            ts=ts,
            columns=list(columns or ()),
            group_by=list(group_by),
            max_wait_ms=int(min(max_wait, 2.0) * 1000),
        )
        req.predicates.extend(_predicate_pb(p) for p in predicate)
        for fn, col in aggregates:
            req.aggregates.add(func=fn, column="" if col == "*" else col)
        deadline = time.monotonic() + max_wait
        bypass: set[int] = set()
        attempt = 0
        why = "no columnar node"
        while time.monotonic() < deadline:
            nodes = self._nodes(refresh=attempt > 0)
            if not nodes:
                break
            del req.bypass_locks[:]
            req.bypass_locks.extend(sorted(bypass))
            try:
                # One columnar node holds a learner of every Region: it answers alone.
                result = self._scan_once(nodes[0], req, deadline - time.monotonic())
            except KeyIsLockedError as e:
                wait_ms = self.client.resolver.resolve([e.lock], ts, bypass)
                if wait_ms:
                    attempt += 1
                    time.sleep(min(wait_ms, 2 ** min(attempt, 8)) / 1000)
                continue
            except DataIsNotReadyError as e:
                why = str(e)
                attempt += 1
                time.sleep(min(0.5, 0.01 * 2**attempt))
                continue
            except grpc.RpcError as e:
                why = f"columnar node unreachable ({e.code()})"
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    why = f"columnar node failed ({e.code()}: {e.details()})"
                    break  # not a matter of time: the row store answers now
                # Down, restarting, or reconnecting: try again until the
                # deadline, then let the row store answer.
                attempt += 1
                time.sleep(min(0.2, 0.01 * 2**attempt, max(0.0, deadline - time.monotonic())))
                continue
            if aggregates:
                result = self._final(result, group_by, aggregates)
            return result
        self.fallbacks += 1
        log.warning("columnar scan of %s at %d fell back to the row store: %s", table, ts, why)
        if on_fallback is not None:
            on_fallback(why)
        return row_store_scan(self.client, table, columns, predicate, ts, group_by, aggregates)

    @staticmethod
    def _final(
        partial: pa.Table, group_by: Sequence[str], aggregates: Sequence[Aggregate]
    ) -> pa.Table:
        # One node answered for the whole table: its partial aggregate is the
        # final one; only the column names follow this API's convention.
        names = [f"{fn}({col})" for fn, col in aggregates]
        return partial.rename_columns([*group_by, *names])

    def close(self) -> None:
        with self._mu:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()


def row_store_scan(
    client: Client,
    table: str,
    columns: Sequence[str] | None,
    predicate: Sequence[Predicate],
    ts: int | None,
    group_by: Sequence[str] = (),
    aggregates: Sequence[Aggregate] = (),
) -> pa.Table:
    """The same answer as a columnar scan, from the row store at ``ts``."""
    from kvstore.client.tables import get_table, scan_rows
    from kvstore.client.txn import Transaction

    check_predicates(predicate)
    check_aggregates(aggregates)
    txn = Transaction(client, ts or client.tso())
    try:
        info = get_table(txn, table)
        t = scan_rows(txn, info)
    finally:
        txn.rollback()
    expr = predicate_expression(predicate, t.schema)
    if expr is not None:
        t = t.filter(expr)
    if aggregates:
        return aggregate(t, group_by, aggregates)
    return t.select(list(columns)) if columns else t


__all__ = [
    "ColumnarReader",
    "aggregate",
    "fit_predicates",
    "predicate_columns",
    "predicate_expression",
    "predicate_from_pb",
    "row_store_scan",
]
