"""The methods of htapkv's gRPC services, derived from the descriptors.

One table serves both ends: the servicer registers a handler per entry, the
client stub calls by entry, and BatchCommands pairs each entry with its
``oneof`` field in ``BatchCommandsRequest.Request``/``Response``. Deriving it
from ``tikvpb.proto`` means a new RPC cannot be half-wired: :data:`KV_METHODS`
refuses to build if a unary RPC lacks its BatchCommands field (or the field's
types differ).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from kvstore.proto import kvrpcpb_pb2, pdpb_pb2, tikvpb_pb2

KV_SERVICE = "htapkv.tikvpb.Tikv"
PD_SERVICE = "htapkv.pdpb.PD"
BATCH_COMMANDS = "BatchCommands"
TSO_PATH = f"/{PD_SERVICE}/Tso"
TSO_REQUEST: type[pdpb_pb2.TsoRequest] = pdpb_pb2.TsoRequest
TSO_RESPONSE: type[pdpb_pb2.TsoResponse] = pdpb_pb2.TsoResponse

# Big enough for a batch of maximal values (8 MiB each, kvstore.types), small
# enough that a runaway scan is refused rather than buffered.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Requests one client connection may have running on a server at once (its
# BatchCommands streams included): a runaway client is refused, not queued.
DEFAULT_MAX_IN_FLIGHT = 4096


@dataclass(frozen=True, slots=True)
class KvMethod:
    name: str  # RPC name, e.g. "KvGet"
    path: str  # "/htapkv.tikvpb.Tikv/KvGet"
    batch_field: str  # its field in the BatchCommands oneofs, e.g. "Get"
    request: type[Message]
    response: type[Message]


def _build() -> dict[str, KvMethod]:
    service = tikvpb_pb2.DESCRIPTOR.services_by_name["Tikv"]
    req_fields = tikvpb_pb2.BatchCommandsRequest.Request.DESCRIPTOR.fields
    resp_fields = tikvpb_pb2.BatchCommandsResponse.Response.DESCRIPTOR.fields
    by_request = {f.message_type.full_name: f.name for f in req_fields if f.message_type}
    by_response = {f.message_type.full_name: f.name for f in resp_fields if f.message_type}
    out: dict[str, KvMethod] = {}
    for m in service.methods:
        if m.client_streaming or m.server_streaming:
            continue
        field = by_request.get(m.input_type.full_name)
        if field is None or by_response.get(m.output_type.full_name) != field:
            raise RuntimeError(f"{m.name}: no matching BatchCommands field in tikvpb.proto")
        out[m.name] = KvMethod(
            name=m.name,
            path=f"/{KV_SERVICE}/{m.name}",
            batch_field=field,
            request=getattr(kvrpcpb_pb2, m.input_type.name),
            response=getattr(kvrpcpb_pb2, m.output_type.name),
        )
    return out


KV_METHODS: dict[str, KvMethod] = _build()
BY_BATCH_FIELD: dict[str, KvMethod] = {m.batch_field: m for m in KV_METHODS.values()}


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """gRPC options for either end: message size limits both ways. A message
    over the limit fails with status RESOURCE_EXHAUSTED."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


__all__ = [
    "BATCH_COMMANDS",
    "BY_BATCH_FIELD",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KV_METHODS",
    "KV_SERVICE",
    "PD_SERVICE",
    "TSO_PATH",
    "KvMethod",
    "channel_options",
]
