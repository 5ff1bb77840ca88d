"""PD's gRPC service (``htapkv.pdpb.PD``), today only the timestamp oracle.

:class:`TsoService` serves ``Tso`` from any object with ``get_ts(count)`` (an
embedded store's oracle now; PD's replicated one later). Errors travel in the
response header (``pdpb.Error``, mapped by :mod:`kvstore.proto.convert`);
malformed requests get ``INVALID_ARGUMENT`` there, bugs get status INTERNAL.
"""

from __future__ import annotations

import logging
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from kvstore.errors import InvalidArgumentError, KVError
from kvstore.proto import pdpb_pb2
from kvstore.proto.convert import pd_error_to_pb
from kvstore.proto.rpc import PD_SERVICE
from kvstore.types import TSO_LOGICAL_BITS, TSO_LOGICAL_MASK

log = logging.getLogger(__name__)

MAX_TSO_BATCH = 1 << 16


class TsoSource(Protocol):
    def get_ts(self, count: int = 1) -> int: ...


class TsoService:
    def __init__(self, tso: TsoSource) -> None:
        self.tso = tso

    def tso_call(self, req: pdpb_pb2.TsoRequest) -> pdpb_pb2.TsoResponse:
        resp = pdpb_pb2.TsoResponse(count=req.count)
        try:
            if not 0 < req.count <= MAX_TSO_BATCH:
                raise InvalidArgumentError(f"count must be in 1..{MAX_TSO_BATCH}")
            ts = self.tso.get_ts(req.count)
        except KVError as e:
            resp.header.error.CopyFrom(pd_error_to_pb(e))
            return resp
        resp.timestamp.physical = ts >> TSO_LOGICAL_BITS
        resp.timestamp.logical = ts & TSO_LOGICAL_MASK
        return resp

    def _tso(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            req = pdpb_pb2.TsoRequest.FromString(data)
        except DecodeError as e:
            resp = pdpb_pb2.TsoResponse()
            resp.header.error.CopyFrom(pd_error_to_pb(InvalidArgumentError(f"malformed: {e}")))
            return resp.SerializeToString()
        try:
            return self.tso_call(req).SerializeToString()
        except Exception as e:
            log.exception("Tso failed")
            context.abort(grpc.StatusCode.INTERNAL, f"Tso: {type(e).__name__}: {e}")
            raise  # not reached: abort raises

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            PD_SERVICE, {"Tso": grpc.unary_unary_rpc_method_handler(self._tso)}
        )


__all__ = ["TsoService", "TsoSource"]
