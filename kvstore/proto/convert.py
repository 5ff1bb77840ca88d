"""Python values <-> protobuf messages: the one place where they are mapped.

Both ends of every RPC use these functions, so a value that crosses the wire
comes out as it went in (``tests/test_proto_convert.py`` checks the round trips
with hypothesis):

* records: :class:`~kvstore.types.Mutation`, :class:`~kvstore.types.LockInfo`,
  :class:`~kvstore.types.TxnStatus`, :class:`~kvstore.types.Region` (with its
  epoch and peers), and :class:`RequestContext` (the routing information every
  request carries);
* errors: a :class:`~kvstore.errors.RegionError` <-> ``errorpb.Error`` (the
  response's ``region_error``); any other :class:`~kvstore.errors.KVError` <->
  ``kvrpcpb.KeyError`` (the response's ``error``/``errors``): per-key
  transaction outcomes with their fields, caller mistakes and environment
  errors as a message string in a kind of their own. An error class without a
  kind of its own travels as its nearest mapped base class (an unknown
  ``TxnError`` subclass arrives as ``TxnError``, anything else as ``KVError``).
* PD: :class:`~kvstore.errors.KVError` <-> ``pdpb.Error`` in a response
  header (:func:`set_pd_error`/:func:`pd_header_error`: ``NOT_LEADER`` carries
  the leader's address), ``StoreMeta`` <-> ``metapb.Store``, ``PdMember`` <->
  ``pdpb.Member``.

Decoding never trusts its input: a value that cannot be represented (an
unknown enum number, an out-of-range integer) raises
:class:`~kvstore.errors.InvalidArgumentError`, which the servicer returns to
the caller as a typed error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from kvstore.errors import (
    AlreadyBootstrappedError,
    AlreadyExistsError,
    ClosedError,
    ClusterMismatchError,
    CommittedError,
    CommitTsExpiredError,
    DataIsNotReadyError,
    EpochNotMatchError,
    GcTooEarlyError,
    InvalidArgumentError,
    KeyIsLockedError,
    KeyNotInRegionError,
    KVError,
    NotBootstrappedError,
    NotLeaderError,
    PdError,
    PdNotLeaderError,
    PdUnavailableError,
    ProposalDroppedError,
    RegionError,
    RegionNotFoundError,
    ServerIsBusyError,
    StorageError,
    StoreTombstoneError,
    TsoError,
    TxnAbortedError,
    TxnError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    UndeterminedError,
    WriteConflictError,
)
from kvstore.proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2, pdpb_pb2
from kvstore.types import (
    LockInfo,
    LockType,
    Mutation,
    Op,
    PdMember,
    Peer,
    Region,
    RegionEpoch,
    StoreMeta,
    StoreState,
    TxnAction,
    TxnStatus,
)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a request was routed (kvproto ``Context``): the Region, the epoch
    the client believed current, and the peer it targeted. The default (Region
    0, no epoch, no peer) means "not routed": a single-store server ignores it.
    """

    region_id: int = 0
    region_epoch: RegionEpoch | None = None
    peer: Peer | None = None


@dataclass(frozen=True, slots=True)
class GcResult:
    """What a ``KvGC`` call did, as the client sees it (the server's
    ``GcStats`` travels as these two counters)."""

    keys_scanned: int = 0
    versions_removed: int = 0


# ----------------------------------------------------------------- helpers
E = TypeVar("E")


def _enum(table: dict[int, E], value: int, what: str) -> E:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgumentError(f"unknown {what} {value}") from None


def _text(s: object) -> str:
    """``str(s)`` as valid UTF-8 (protobuf refuses lone surrogates, which
    messages built from undecodable bytes may hold)."""
    return str(s).encode("utf-8", "replace").decode("utf-8")


def encoding_error(e: Exception) -> InvalidArgumentError:
    """A value protobuf refused to encode (wrong type, negative or too large
    for its field): the caller's mistake, reported as such."""
    return InvalidArgumentError(f"cannot encode request: {e}")


# ----------------------------------------------------------------- regions
def epoch_to_pb(e: RegionEpoch) -> metapb_pb2.RegionEpoch:
    return metapb_pb2.RegionEpoch(conf_ver=e.conf_ver, version=e.version)


def epoch_from_pb(m: metapb_pb2.RegionEpoch) -> RegionEpoch:
    return RegionEpoch(conf_ver=m.conf_ver, version=m.version)


def peer_to_pb(p: Peer) -> metapb_pb2.Peer:
    role = metapb_pb2.Learner if p.is_learner else metapb_pb2.Voter
    return metapb_pb2.Peer(id=p.id, store_id=p.store_id, role=role)


def peer_from_pb(m: metapb_pb2.Peer) -> Peer:
    if m.role not in (metapb_pb2.Voter, metapb_pb2.Learner):
        raise InvalidArgumentError(f"unknown peer role {m.role}")
    return Peer(id=m.id, store_id=m.store_id, is_learner=m.role == metapb_pb2.Learner)


def region_to_pb(r: Region) -> metapb_pb2.Region:
    return metapb_pb2.Region(
        id=r.id,
        start_key=r.start_key,
        end_key=r.end_key,
        region_epoch=epoch_to_pb(r.epoch),
        peers=[peer_to_pb(p) for p in r.peers],
    )


def region_from_pb(m: metapb_pb2.Region) -> Region:
    return Region(
        id=m.id,
        start_key=m.start_key,
        end_key=m.end_key,
        epoch=epoch_from_pb(m.region_epoch),
        peers=tuple(peer_from_pb(p) for p in m.peers),
    )


def context_to_pb(c: RequestContext) -> kvrpcpb_pb2.Context:
    m = kvrpcpb_pb2.Context(region_id=c.region_id)
    if c.region_epoch is not None:
        m.region_epoch.CopyFrom(epoch_to_pb(c.region_epoch))
    if c.peer is not None:
        m.peer.CopyFrom(peer_to_pb(c.peer))
    return m


def context_from_pb(m: kvrpcpb_pb2.Context) -> RequestContext:
    return RequestContext(
        region_id=m.region_id,
        region_epoch=epoch_from_pb(m.region_epoch) if m.HasField("region_epoch") else None,
        peer=peer_from_pb(m.peer) if m.HasField("peer") else None,
    )


# ----------------------------------------------------------------- records
_OP_TO_PB = {
    Op.PUT: kvrpcpb_pb2.Put,
    Op.DELETE: kvrpcpb_pb2.Del,
    Op.LOCK: kvrpcpb_pb2.Lock,
    Op.INSERT: kvrpcpb_pb2.Insert,
    Op.CHECK_NOT_EXISTS: kvrpcpb_pb2.CheckNotExists,
}
_OP_FROM_PB = {int(v): k for k, v in _OP_TO_PB.items()}
_LOCK_TYPE_TO_PB = {
    LockType.PUT: kvrpcpb_pb2.Put,
    LockType.DELETE: kvrpcpb_pb2.Del,
    LockType.LOCK: kvrpcpb_pb2.Lock,
}
_LOCK_TYPE_FROM_PB = {int(v): k for k, v in _LOCK_TYPE_TO_PB.items()}
_ACTION_TO_PB = {
    TxnAction.NO_ACTION: kvrpcpb_pb2.NoAction,
    TxnAction.TTL_EXPIRE_ROLLBACK: kvrpcpb_pb2.TTLExpireRollback,
    TxnAction.LOCK_NOT_EXIST_ROLLBACK: kvrpcpb_pb2.LockNotExistRollback,
    TxnAction.MIN_COMMIT_TS_PUSHED: kvrpcpb_pb2.MinCommitTSPushed,
}
_ACTION_FROM_PB = {int(v): k for k, v in _ACTION_TO_PB.items()}


def mutation_to_pb(m: Mutation) -> kvrpcpb_pb2.Mutation:
    if not isinstance(m, Mutation) or not isinstance(m.op, Op):
        raise InvalidArgumentError("mutations must be Mutation records")
    return kvrpcpb_pb2.Mutation(op=_OP_TO_PB[m.op], key=m.key, value=m.value)


def mutation_from_pb(m: kvrpcpb_pb2.Mutation) -> Mutation:
    return Mutation(_enum(_OP_FROM_PB, m.op, "mutation op"), m.key, m.value)


def lock_info_to_pb(info: LockInfo) -> kvrpcpb_pb2.LockInfo:
    return kvrpcpb_pb2.LockInfo(
        primary_lock=info.primary,
        lock_version=info.lock_ts,
        key=info.key,
        lock_ttl=info.ttl,
        txn_size=info.txn_size,
        lock_type=_LOCK_TYPE_TO_PB[info.lock_type],
        min_commit_ts=info.min_commit_ts,
    )


def lock_info_from_pb(m: kvrpcpb_pb2.LockInfo) -> LockInfo:
    return LockInfo(
        key=m.key,
        primary=m.primary_lock,
        lock_ts=m.lock_version,
        ttl=m.lock_ttl,
        lock_type=_enum(_LOCK_TYPE_FROM_PB, m.lock_type, "lock type"),
        min_commit_ts=m.min_commit_ts,
        txn_size=m.txn_size,
    )


def txn_status_to_pb(
    s: TxnStatus, into: kvrpcpb_pb2.CheckTxnStatusResponse | None = None
) -> kvrpcpb_pb2.CheckTxnStatusResponse:
    m = into if into is not None else kvrpcpb_pb2.CheckTxnStatusResponse()
    m.lock_ttl = s.lock_ttl
    m.commit_version = s.commit_ts
    m.action = _ACTION_TO_PB[s.action]
    if s.lock is not None:
        m.lock_info.CopyFrom(lock_info_to_pb(s.lock))
    return m


def txn_status_from_pb(m: kvrpcpb_pb2.CheckTxnStatusResponse) -> TxnStatus:
    return TxnStatus(
        lock_ttl=m.lock_ttl,
        commit_ts=m.commit_version,
        action=_enum(_ACTION_FROM_PB, m.action, "check_txn_status action"),
        lock=lock_info_from_pb(m.lock_info) if m.HasField("lock_info") else None,
    )


# ----------------------------------------------------------------- region errors
def region_error_to_pb(e: RegionError) -> errorpb_pb2.Error:
    m = errorpb_pb2.Error(message=_text(e))
    if isinstance(e, NotLeaderError):
        m.not_leader.region_id = e.region_id
        if e.leader_store_id or e.leader_peer_id:
            m.not_leader.leader.id = e.leader_peer_id
            m.not_leader.leader.store_id = e.leader_store_id
    elif isinstance(e, EpochNotMatchError):
        m.epoch_not_match.region_id = e.region_id
        m.epoch_not_match.current_regions.extend(
            region_to_pb(r) for r in e.current_regions if isinstance(r, Region)
        )
    elif isinstance(e, KeyNotInRegionError):
        m.key_not_in_region.key = e.key
        m.key_not_in_region.region_id = e.region_id
        m.key_not_in_region.start_key = e.start_key
        m.key_not_in_region.end_key = e.end_key
    elif isinstance(e, RegionNotFoundError):
        m.region_not_found.region_id = e.region_id
    elif isinstance(e, ServerIsBusyError):
        m.server_is_busy.reason = _text(e.reason)
        m.server_is_busy.backoff_ms = e.backoff_ms
    elif isinstance(e, ProposalDroppedError):
        m.proposal_dropped.region_id = e.region_id
        m.proposal_dropped.reason = _text(e.reason)
    elif isinstance(e, DataIsNotReadyError):
        m.data_is_not_ready.region_id = e.region_id
        m.data_is_not_ready.peer_id = e.peer_id
        m.data_is_not_ready.safe_ts = e.safe_ts
        m.data_is_not_ready.reason = _text(e.reason)
    # Any other RegionError: the message alone (decodes as a plain RegionError).
    return m


def region_error_from_pb(m: errorpb_pb2.Error) -> RegionError:
    kind = m.WhichOneof("kind")
    if kind == "not_leader":
        nl = m.not_leader
        return NotLeaderError(nl.region_id, nl.leader.store_id, nl.leader.id)
    if kind == "epoch_not_match":
        enm = m.epoch_not_match
        return EpochNotMatchError(enm.region_id, [region_from_pb(r) for r in enm.current_regions])
    if kind == "key_not_in_region":
        k = m.key_not_in_region
        return KeyNotInRegionError(k.key, k.region_id, k.start_key, k.end_key)
    if kind == "region_not_found":
        return RegionNotFoundError(m.region_not_found.region_id)
    if kind == "server_is_busy":
        return ServerIsBusyError(m.server_is_busy.reason, m.server_is_busy.backoff_ms)
    if kind == "proposal_dropped":
        return ProposalDroppedError(m.proposal_dropped.region_id, m.proposal_dropped.reason)
    if kind == "data_is_not_ready":
        d = m.data_is_not_ready
        return DataIsNotReadyError(d.region_id, d.peer_id, d.safe_ts, d.reason)
    return RegionError(m.message)


# ----------------------------------------------------------------- key errors
# Errors that carry only a message, by the KeyError kind that carries them.
# Looked up along the exception's MRO, so subclasses travel as their nearest
# mapped base; KVError itself is the catch-all.
_MESSAGE_KINDS: dict[type[KVError], str] = {
    TxnAbortedError: "abort",
    UndeterminedError: "undetermined",
    InvalidArgumentError: "invalid_argument",
    GcTooEarlyError: "gc_too_early",
    ClosedError: "closed",
    StorageError: "storage",
    TsoError: "tso",
    TxnError: "retryable",
    KVError: "other",
}
_MESSAGE_CLASSES: dict[str, Callable[[str], KVError]] = {
    kind: cls for cls, kind in _MESSAGE_KINDS.items()
}


def key_error_to_pb(e: KVError) -> kvrpcpb_pb2.KeyError:
    """Encode any non-Region :class:`KVError` (a RegionError belongs in
    ``region_error``: see :func:`region_error_to_pb`)."""
    m = kvrpcpb_pb2.KeyError()
    if isinstance(e, KeyIsLockedError):
        m.locked.CopyFrom(lock_info_to_pb(e.lock))
    elif isinstance(e, WriteConflictError):
        c = m.conflict
        c.key, c.start_ts, c.reason = e.key, e.start_ts, _text(e.reason)
        c.conflict_ts, c.conflict_commit_ts = e.conflict_start_ts, e.conflict_commit_ts
    elif isinstance(e, AlreadyExistsError):
        m.already_exist.key = e.key
    elif isinstance(e, TxnLockNotFoundError):
        m.txn_lock_not_found.key = e.key
        m.txn_lock_not_found.start_ts = e.start_ts
    elif isinstance(e, TxnNotFoundError):
        m.txn_not_found.primary_key = e.key
        m.txn_not_found.start_ts = e.start_ts
    elif isinstance(e, CommitTsExpiredError):
        x = m.commit_ts_expired
        x.key, x.start_ts = e.key, e.start_ts
        x.attempted_commit_ts, x.min_commit_ts = e.commit_ts, e.min_commit_ts
    elif isinstance(e, CommittedError):
        m.committed.key = e.key
        m.committed.start_ts = e.start_ts
        m.committed.commit_ts = e.commit_ts
    else:
        kind = next(_MESSAGE_KINDS[c] for c in type(e).__mro__ if c in _MESSAGE_KINDS)
        setattr(m, kind, _text(e))
    return m


def key_error_from_pb(m: kvrpcpb_pb2.KeyError) -> KVError:
    kind = m.WhichOneof("kind")
    if kind == "locked":
        return KeyIsLockedError(lock_info_from_pb(m.locked))
    if kind == "conflict":
        c = m.conflict
        return WriteConflictError(c.key, c.start_ts, c.conflict_ts, c.conflict_commit_ts, c.reason)
    if kind == "already_exist":
        return AlreadyExistsError(m.already_exist.key)
    if kind == "txn_lock_not_found":
        return TxnLockNotFoundError(m.txn_lock_not_found.key, m.txn_lock_not_found.start_ts)
    if kind == "txn_not_found":
        return TxnNotFoundError(m.txn_not_found.primary_key, m.txn_not_found.start_ts)
    if kind == "commit_ts_expired":
        x = m.commit_ts_expired
        return CommitTsExpiredError(x.key, x.start_ts, x.attempted_commit_ts, x.min_commit_ts)
    if kind == "committed":
        return CommittedError(m.committed.key, m.committed.start_ts, m.committed.commit_ts)
    if kind is None:
        return KVError("malformed KeyError: no kind set")
    message: str = getattr(m, kind)
    return _MESSAGE_CLASSES[kind](message)


# ----------------------------------------------------------------- responses
def set_error(resp: Message, e: KVError) -> None:
    """Record ``e`` in a Kv response: ``region_error`` for a RegionError,
    else ``error`` (or ``errors``, for responses that carry a list)."""
    if isinstance(e, RegionError):
        resp.region_error.CopyFrom(region_error_to_pb(e))  # type: ignore[attr-defined]
    elif "errors" in resp.DESCRIPTOR.fields_by_name:
        resp.errors.append(key_error_to_pb(e))  # type: ignore[attr-defined]
    else:
        resp.error.CopyFrom(key_error_to_pb(e))  # type: ignore[attr-defined]


def response_error(resp: Message) -> KVError | None:
    """The error a Kv response reports (None if it succeeded). For a
    ``PrewriteResponse`` use :func:`prewrite_outcome`."""
    if resp.HasField("region_error"):
        return region_error_from_pb(resp.region_error)  # type: ignore[attr-defined]
    if resp.HasField("error"):
        return key_error_from_pb(resp.error)  # type: ignore[attr-defined]
    return None


def prewrite_outcome(resp: kvrpcpb_pb2.PrewriteResponse) -> list[LockInfo]:
    """The locks that blocked a prewrite (empty: it succeeded); raises the
    error it failed with otherwise."""
    if resp.HasField("region_error"):
        raise region_error_from_pb(resp.region_error)
    locks: list[LockInfo] = []
    for ke in resp.errors:
        if ke.WhichOneof("kind") != "locked":
            raise key_error_from_pb(ke)
        locks.append(lock_info_from_pb(ke.locked))
    return locks


# ----------------------------------------------------------------- PD
_PD_KINDS: dict[type[KVError], pdpb_pb2.ErrorType] = {
    InvalidArgumentError: pdpb_pb2.INVALID_ARGUMENT,
    TsoError: pdpb_pb2.TSO_UNAVAILABLE,
    ClosedError: pdpb_pb2.CLOSED,
    PdNotLeaderError: pdpb_pb2.NOT_LEADER,
    NotBootstrappedError: pdpb_pb2.NOT_BOOTSTRAPPED,
    AlreadyBootstrappedError: pdpb_pb2.ALREADY_BOOTSTRAPPED,
    StoreTombstoneError: pdpb_pb2.STORE_TOMBSTONE,
    ClusterMismatchError: pdpb_pb2.CLUSTER_MISMATCH,
    PdUnavailableError: pdpb_pb2.UNKNOWN,
    PdError: pdpb_pb2.UNKNOWN,
    KVError: pdpb_pb2.UNKNOWN,
}
_PD_CLASSES: dict[int, Callable[[str], KVError]] = {
    int(v): k for k, v in _PD_KINDS.items() if k not in (PdError, PdUnavailableError)
}


def pd_error_to_pb(e: KVError) -> pdpb_pb2.Error:
    kind = next(_PD_KINDS[c] for c in type(e).__mro__ if c in _PD_KINDS)
    message = e.message if isinstance(e, PdNotLeaderError) else _text(e)
    return pdpb_pb2.Error(type=kind, message=_text(message))


def pd_error_from_pb(m: pdpb_pb2.Error) -> KVError | None:
    """None for ``OK``. (``NOT_LEADER`` without the leader: use
    :func:`pd_header_error` to get the leader from the response header.)"""
    if m.type == pdpb_pb2.OK:
        return None
    return _PD_CLASSES.get(m.type, KVError)(m.message)


def set_pd_error(header: pdpb_pb2.ResponseHeader, e: KVError) -> None:
    """Record ``e`` in a PD response header (a :class:`PdNotLeaderError` also
    names the leader, in ``header.leader``)."""
    header.error.CopyFrom(pd_error_to_pb(e))
    if isinstance(e, PdNotLeaderError) and (e.leader_addr or e.leader_name):
        header.leader.CopyFrom(pdpb_pb2.Member(name=e.leader_name, client_addr=e.leader_addr))


def pd_header_error(header: pdpb_pb2.ResponseHeader) -> KVError | None:
    """The error a PD response header carries, None for OK."""
    e = pd_error_from_pb(header.error)
    if isinstance(e, PdNotLeaderError) and header.HasField("leader"):
        e.leader_name = header.leader.name
        e.leader_addr = header.leader.client_addr
    return e


def member_to_pb(m: PdMember) -> pdpb_pb2.Member:
    return pdpb_pb2.Member(
        name=m.name, member_id=m.member_id, client_addr=m.client_addr, peer_addr=m.peer_addr
    )


def member_from_pb(m: pdpb_pb2.Member) -> PdMember:
    return PdMember(
        name=m.name, member_id=m.member_id, client_addr=m.client_addr, peer_addr=m.peer_addr
    )


def store_to_pb(s: StoreMeta) -> metapb_pb2.Store:
    return metapb_pb2.Store(
        id=s.id,
        address=s.address,
        state=int(s.state),  # type: ignore[arg-type]
        labels=[metapb_pb2.StoreLabel(key=k, value=v) for k, v in s.labels],
        version=s.version,
        raft_address=s.raft_address,
        status_address=s.status_address,
        start_timestamp=s.start_timestamp,
    )


def store_from_pb(m: metapb_pb2.Store) -> StoreMeta:
    state = _enum({int(v): v for v in StoreState}, m.state, "store state")
    return StoreMeta(
        id=m.id,
        address=_text(m.address),
        state=state,
        labels=tuple((lb.key, lb.value) for lb in m.labels),
        version=m.version,
        raft_address=m.raft_address,
        status_address=m.status_address,
        start_timestamp=m.start_timestamp,
    )


__all__ = [
    "GcResult",
    "RequestContext",
    "context_from_pb",
    "context_to_pb",
    "encoding_error",
    "epoch_from_pb",
    "epoch_to_pb",
    "key_error_from_pb",
    "key_error_to_pb",
    "lock_info_from_pb",
    "lock_info_to_pb",
    "mutation_from_pb",
    "mutation_to_pb",
    "member_from_pb",
    "member_to_pb",
    "pd_error_from_pb",
    "pd_error_to_pb",
    "pd_header_error",
    "peer_from_pb",
    "peer_to_pb",
    "prewrite_outcome",
    "region_error_from_pb",
    "region_error_to_pb",
    "region_from_pb",
    "region_to_pb",
    "response_error",
    "set_error",
    "set_pd_error",
    "store_from_pb",
    "store_to_pb",
    "txn_status_from_pb",
    "txn_status_to_pb",
]
