"""Fuzzing the two ways in from outside (issue: security): every gRPC request
decoder of the Kv service, and the SQL front end.

* gRPC: random bytes sent as the request of every Kv method to a real store
  process. Bytes that do not decode get a typed ``invalid_argument`` answer
  (never a crash, never an INTERNAL status) and write nothing; bytes that do
  decode (protobuf is lenient) get an answer the method's response type
  parses. The server answers a normal request afterwards.
* SQL: random statements built from SQL's tokens, names of the schema and
  junk, run on an embedded store with data. Each either runs or raises an
  ``sql.Error`` subclass (never another exception); one that raises leaves
  every table exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sql
from kvstore.client.grpc_backend import GrpcKvBackend
from kvstore.proto.rpc import KV_METHODS, channel_options
from kvstore.server.launcher import StoreProcess

WRITE_METHODS = sorted(
    m
    for m in KV_METHODS
    if m.startswith(("Raw", "Kv"))
    and any(
        w in m for w in ("Put", "Delete", "Prewrite", "Commit", "Rollback", "Resolve", "Swap", "GC")
    )
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    proc = StoreProcess(tmp_path_factory.mktemp("fuzz-store"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def channel(server: StoreProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address, options=channel_options()) as ch:
        yield ch


def everything(server: StoreProcess) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """All raw pairs and all transactional pairs the store holds."""
    kv = GrpcKvBackend(server.address)
    try:
        return kv.raw_scan(b"", None, 10_000), kv.kv_scan(b"", None, (1 << 63) - 1, 10_000, set())
    finally:
        kv.close()


def _error_kind(resp: object) -> str | None:
    err = getattr(resp, "error", None)
    if err is not None and hasattr(err, "WhichOneof"):
        return err.WhichOneof("kind")
    errors = getattr(resp, "errors", None)
    if errors:
        return str(errors[0].WhichOneof("kind"))
    return None


@pytest.mark.parametrize("method", sorted(KV_METHODS))
def test_undecodable_requests_are_refused_typed_and_write_nothing(
    server: StoreProcess, channel: grpc.Channel, method: str
) -> None:
    m = KV_METHODS[method]
    call = channel.unary_unary(m.path)
    before = everything(server)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(st.binary(min_size=1, max_size=64))
    def one(data: bytes) -> None:
        try:
            m.request.FromString(data)
        except DecodeError:
            pass
        else:
            assume(False)  # decodes: the next test's business
        resp = m.response.FromString(call(data, timeout=10))
        assert _error_kind(resp) == "invalid_argument", resp

    one()
    assert everything(server) == before
    assert server.alive(), server.log_tail()


@pytest.mark.parametrize("method", sorted(set(KV_METHODS) - set(WRITE_METHODS)))
def test_decodable_random_requests_get_typed_answers(
    server: StoreProcess, channel: grpc.Channel, method: str
) -> None:
    m = KV_METHODS[method]
    call = channel.unary_unary(m.path)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(st.binary(max_size=48))
    def one(data: bytes) -> None:
        try:
            m.request.FromString(data)
        except DecodeError:
            assume(False)
        try:
            m.response.FromString(call(data, timeout=10))
        except grpc.RpcError as e:  # a limit, never a server bug
            assert e.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), e

    one()
    kv = GrpcKvBackend(server.address)
    kv.raw_put(b"fuzz-after", b"ok")
    assert kv.raw_get(b"fuzz-after") == b"ok"
    kv.close()


# ---------------------------------------------------------------- SQL
KEYWORDS = [
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "CREATE",
    "TABLE",
    "INDEX",
    "UNIQUE",
    "ALTER",
    "ADD",
    "COLUMN",
    "PRIMARY",
    "KEY",
    "NULL",
    "DEFAULT",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "LEFT",
    "ON",
    "AS",
    "IN",
    "EXISTS",
    "BETWEEN",
    "LIKE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "COUNT",
    "SUM",
    "MIN",
    "MAX",
    "AVG",
    "DISTINCT",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "FOR",
    "EXPLAIN",
    "INT",
    "BIGINT",
    "TEXT",
    "DECIMAL",
    "DATE",
    "INTERVAL",
    "DAY",
    "IS",
    "TRUE",
    "FALSE",
    "DUPLICATE",
]
NAMES = ["t", "u", "id", "name", "amount", "day", "nope", "t.id", "*"]
PUNCT = ["(", ")", ",", "=", "<", ">", "<=", "<>", "+", "-", "*", "/", ";", "?", "."]
LITERALS = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["'x'", "'2024-02-30'", "'\\''", "1.5", "1e308", "DATE '2024-01-01'", "''"]),
    st.text(max_size=6).map(lambda s: "'" + s.replace("'", "''") + "'"),
)
TOKENS = st.one_of(
    st.sampled_from(KEYWORDS), st.sampled_from(NAMES), st.sampled_from(PUNCT), LITERALS
)
# No DROP: a fuzzed "DROP TABLE t" that succeeds is fine, but ends the fixture.
STATEMENTS = st.one_of(
    st.lists(TOKENS, min_size=1, max_size=14).map(" ".join),
    # Near-valid shapes, so that the deeper layers are reached too.
    st.tuples(
        st.sampled_from(
            [
                "SELECT",
                "INSERT INTO t VALUES (",
                "UPDATE t SET amount =",
                "DELETE FROM t WHERE",
                "SELECT * FROM t WHERE",
            ]
        ),
        st.lists(TOKENS, max_size=8).map(" ".join),
    ).map(" ".join),
    st.text(max_size=30),
)


@pytest.fixture(scope="module")
def sqldb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sql.Connection]:
    conn = sql.connect(str(tmp_path_factory.mktemp("fuzz-sql") / "db"), autocommit=True)
    cur = conn.cursor()
    cur.execute(
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(8), amount DECIMAL(6,2), day DATE)"
    )
    cur.execute("CREATE UNIQUE INDEX by_name ON t (name)")
    cur.execute(
        "INSERT INTO t VALUES (1, 'a', 1.50, '2024-01-01'), (2, 'b', NULL, NULL), "
        "(3, NULL, -2, '2024-03-01')"
    )
    try:
        yield conn
    finally:
        conn.close()


def snapshot(conn: sql.Connection) -> list[tuple[object, ...]]:
    return (
        conn.cursor()
        .execute("SELECT /*+ READ_FROM_STORAGE(ROW[t]) */ * FROM t ORDER BY id")
        .fetchall()
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stmt=STATEMENTS,
    params=st.lists(st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3)), max_size=3),
)
def test_sql_front_end_raises_only_typed_errors_and_writes_nothing_on_error(
    sqldb: sql.Connection, stmt: str, params: list[object]
) -> None:
    session = sqldb.session
    if session.in_transaction:
        session.rollback()
    session.read_engine = "auto"
    before = snapshot(sqldb)
    try:
        sqldb.cursor().execute(stmt, params)
    except sql.Error:
        if session.in_transaction:
            session.rollback()
        assert snapshot(sqldb) == before
    finally:
        if session.in_transaction:
            session.rollback()
