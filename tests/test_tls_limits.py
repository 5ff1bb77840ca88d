"""Mutual TLS and per-connection limits on the Kv service.

* With ``tls`` the server accepts a client whose certificate the cluster's
  CA signed, and refuses (at the handshake) a client without a certificate,
  a plaintext client, and a client whose certificate another CA signed.
* ``max_in_flight``: a connection with that many requests running gets
  RESOURCE_EXHAUSTED for the next unary call, and for each request of a
  BatchCommands message that would pass the limit; the stream and the
  running requests carry on, and once they finish the connection is served
  again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore.client.routing import new_channel
from kvstore.proto import tikvpb_pb2
from kvstore.proto.rpc import BATCH_COMMANDS, KV_METHODS, KV_SERVICE
from kvstore.proto.tls import TlsConfig
from kvstore.server.certs import generate_certs
from kvstore.server.embedded import EmbeddedStore
from kvstore.server.kv_service import BoundServer, EmbeddedHandler, serve
from kvstore.storage import MemoryEngine

RAW_GET = KV_METHODS["RawGet"]


def raw_get(ch: grpc.Channel, key: bytes = b"k", timeout: float = 10.0) -> Any:
    call = ch.unary_unary(
        RAW_GET.path,
        request_serializer=RAW_GET.request.SerializeToString,
        response_deserializer=RAW_GET.response.FromString,
    )
    return call(RAW_GET.request(key=key), timeout=timeout)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: dict[str, Path]) -> Iterator[BoundServer]:
    store = EmbeddedStore(MemoryEngine(), durable=False)
    tls = TlsConfig(str(pki["ca"]), str(pki["server_cert"]), str(pki["server_key"]))
    bound = serve(EmbeddedHandler(store), "127.0.0.1:0", tls=tls)
    try:
        yield bound
    finally:
        bound.stop()


def test_mtls_accepts_a_signed_client(tls_server: BoundServer, pki: dict[str, Path]) -> None:
    tls = TlsConfig(str(pki["ca"]), str(pki["client_cert"]), str(pki["client_key"]))
    ch = new_channel(tls_server.address, tls)
    try:
        assert raw_get(ch).not_found
    finally:
        ch.close()


def test_mtls_refuses_plaintext_and_unsigned_clients(
    tls_server: BoundServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    other = generate_certs(tmp_path / "other")
    plaintext = new_channel(tls_server.address)
    # Trusts the server, but presents a certificate of another CA.
    foreign = new_channel(
        tls_server.address,
        TlsConfig(str(pki["ca"]), str(other["client_cert"]), str(other["client_key"])),
    )
    # No client certificate at all.
    anonymous = grpc.secure_channel(
        tls_server.address, grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    )
    for ch in (plaintext, foreign, anonymous):
        try:
            with pytest.raises(grpc.RpcError) as info:
                raw_get(ch, timeout=5.0)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            ch.close()


class BlockingHandler(EmbeddedHandler):
    """RawGet blocks until released: requests stay in flight on demand."""

    def __init__(self) -> None:
        super().__init__(EmbeddedStore(MemoryEngine(), durable=False))
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def raw_get(self, ctx: Any, key: bytes) -> bytes | None:
        self.entered.release()
        self.release.wait(30)
        return super().raw_get(ctx, key)


def test_in_flight_limit_per_connection() -> None:
    handler = BlockingHandler()
    bound = serve(handler, "127.0.0.1:0", max_in_flight=2, max_workers=8)
    ch = new_channel(bound.address)
    try:
        results: list[Any] = []
        threads = [threading.Thread(target=lambda: results.append(raw_get(ch))) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in threads:
            assert handler.entered.acquire(timeout=10)
        # Two running on this connection: a third unary call is refused...
        with pytest.raises(grpc.RpcError) as info:
            raw_get(ch)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in flight" in (info.value.details() or "")
        # ...and so is each request of a BatchCommands message.
        stream = ch.stream_stream(
            f"/{KV_SERVICE}/{BATCH_COMMANDS}",
            request_serializer=tikvpb_pb2.BatchCommandsRequest.SerializeToString,
            response_deserializer=tikvpb_pb2.BatchCommandsResponse.FromString,
        )
        msg = tikvpb_pb2.BatchCommandsRequest(request_ids=[1, 2])
        for _ in range(2):
            msg.requests.add().RawGet.key = b"k"
        replies = list(stream(iter([msg]), timeout=10))
        codes = [r.status.code for reply in replies for r in reply.responses]
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]] * 2
        handler.release.set()
        for t in threads:
            t.join(10)
        assert len(results) == 2
        assert raw_get(ch).not_found  # served again once the others finished
    finally:
        handler.release.set()
        ch.close()
        bound.stop()
