"""PD's ``Tso`` RPC (``htapkv.pdpb.PD/Tso``): the one implementation of it.

``Tso`` is a bidirectional stream: each request reserves ``count``
timestamps and is answered, in order, on the same stream (a client keeps one
stream open and batches its callers into one request). :class:`TsoService`
serves it from any object with ``get_ts(count)``: an embedded store's oracle
(``python -m kvstore.server.kv_service``) or the PD leader's
(:mod:`kvstore.server.pd_server`, which also checks the request header and
answers ``NOT_LEADER`` on followers, by raising from ``get_ts``).

Errors travel in the response header (``pdpb.Error``, mapped by
:mod:`kvstore.proto.convert`), never as a gRPC status, and the stream stays
open: a malformed message gets ``INVALID_ARGUMENT``, a bug ``UNKNOWN`` (and a
log line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from kvstore.errors import InvalidArgumentError, KVError
from kvstore.proto import pdpb_pb2
from kvstore.proto.convert import set_pd_error
from kvstore.proto.rpc import PD_SERVICE
from kvstore.types import TSO_LOGICAL_BITS, TSO_LOGICAL_MASK

log = logging.getLogger(__name__)

MAX_TSO_BATCH = 1 << 16


class TsoSource(Protocol):
    def get_ts(self, count: int = 1) -> int: ...


# Checks a request header and returns the cluster id to answer with (raises
# a KVError, e.g. ClusterMismatchError, to refuse the request).
HeaderCheck = Callable[[pdpb_pb2.RequestHeader], int]


class TsoService:
    def __init__(self, tso: TsoSource, *, check_header: HeaderCheck | None = None) -> None:
        self.tso = tso
        self.check_header = check_header

    def tso_call(self, req: pdpb_pb2.TsoRequest) -> pdpb_pb2.TsoResponse:
        """Answer one request (errors in the header)."""
        resp = pdpb_pb2.TsoResponse(count=req.count)
        try:
            if self.check_header is not None:
                resp.header.cluster_id = self.check_header(req.header)
            if not 0 < req.count <= MAX_TSO_BATCH:
                raise InvalidArgumentError(f"count must be in 1..{MAX_TSO_BATCH}")
            ts = self.tso.get_ts(req.count)
        except KVError as e:
            set_pd_error(resp.header, e)
            return resp
        resp.timestamp.physical = ts >> TSO_LOGICAL_BITS
        resp.timestamp.logical = ts & TSO_LOGICAL_MASK
        return resp

    def tso_stream(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        for data in request_iterator:
            try:
                req = pdpb_pb2.TsoRequest.FromString(data)
            except DecodeError as e:
                resp = pdpb_pb2.TsoResponse()
                set_pd_error(resp.header, InvalidArgumentError(f"malformed TsoRequest: {e}"))
                yield resp.SerializeToString()
                continue
            try:
                yield self.tso_call(req).SerializeToString()
            except Exception as e:  # a bug: say so, keep the stream
                log.exception("Tso failed")
                resp = pdpb_pb2.TsoResponse(count=req.count)
                set_pd_error(resp.header, KVError(f"Tso: {type(e).__name__}: {e}"))
                yield resp.SerializeToString()

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        # No deserializer: grpc's own would answer a parse failure with a bare
        # INTERNAL status and end the stream.
        return {"Tso": grpc.stream_stream_rpc_method_handler(self.tso_stream)}

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(PD_SERVICE, self.method_handlers())


__all__ = ["MAX_TSO_BATCH", "HeaderCheck", "TsoService", "TsoSource"]
