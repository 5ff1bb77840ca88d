"""Records and value types shared by every layer of the row store.

* Timestamps: ``ts = physical_ms << 18 | logical`` (:func:`compose_ts`).
* :class:`Lock` (``lock`` CF value) and :class:`Write` (``write`` CF value) with
  their compact binary encodings. Values of at most :data:`SHORT_VALUE_MAX_LEN`
  bytes are inlined into the lock and then into the write record (TiKV's short
  value), so a read of a small value is one seek in the ``write`` CF.
* Request/response shapes of the Kv service (:class:`Mutation`, :class:`LockInfo`,
  :class:`TxnStatus`), the same in process and over gRPC.
* Input limits (:func:`validate_key`, :func:`validate_value`).
* :class:`ColumnRef`: a predicate's value that is another column, for the
  columnar read (``kvstore.client.columnar``) and its engine (``columnar``).

Pure module: no I/O, no clock.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field, replace

from kvstore.errors import InvalidArgumentError

# ----------------------------------------------------------------- timestamps
TSO_LOGICAL_BITS = 18
TSO_LOGICAL_MASK = (1 << TSO_LOGICAL_BITS) - 1
TS_MAX = (1 << 64) - 1


def compose_ts(physical_ms: int, logical: int) -> int:
    return (physical_ms << TSO_LOGICAL_BITS) | logical


def physical_ms(ts: int) -> int:
    return ts >> TSO_LOGICAL_BITS


# ----------------------------------------------------------------- limits
MAX_KEY_SIZE = 4 * 1024
MAX_VALUE_SIZE = 8 * 1024 * 1024
SHORT_VALUE_MAX_LEN = 255


def validate_key(key: object) -> bytes:
    """Return ``key`` if it is a usable key, else raise InvalidArgumentError."""
    if not isinstance(key, bytes):
        raise InvalidArgumentError(f"keys must be bytes, not {type(key).__name__}")
    if not key:
        raise InvalidArgumentError("keys must not be empty")
    if len(key) > MAX_KEY_SIZE:
        raise InvalidArgumentError(f"key of {len(key)} bytes exceeds the limit of {MAX_KEY_SIZE}")
    return key


def validate_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidArgumentError(f"values must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_SIZE:
        raise InvalidArgumentError(
            f"value of {len(value)} bytes exceeds the limit of {MAX_VALUE_SIZE}"
        )
    return value


def validate_range(start: object, end: object) -> tuple[bytes, bytes | None]:
    """A scan range: ``start`` may be ``b""`` (beginning), ``end`` ``None`` or
    ``b""`` (no upper bound)."""
    if not isinstance(start, bytes):
        raise InvalidArgumentError(f"range start must be bytes, not {type(start).__name__}")
    if end is not None and not isinstance(end, bytes):
        raise InvalidArgumentError(f"range end must be bytes or None, not {type(end).__name__}")
    if len(start) > MAX_KEY_SIZE or (end is not None and len(end) > MAX_KEY_SIZE):
        raise InvalidArgumentError("range bound exceeds the key size limit")
    return start, (end or None)


def validate_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InvalidArgumentError("limit must be a non-negative int or None")
    return limit


# ----------------------------------------------------------------- records
class LockType(enum.IntEnum):
    PUT = ord("P")
    DELETE = ord("D")
    LOCK = ord("L")


class WriteType(enum.IntEnum):
    PUT = ord("P")
    DELETE = ord("D")
    LOCK = ord("L")
    ROLLBACK = ord("R")

    @classmethod
    def from_lock_type(cls, lt: LockType) -> WriteType:
        return cls(int(lt))


_LOCK_HEAD = struct.Struct(">BQQQQI")
_WRITE_HEAD = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class Lock:
    """A Percolator lock: value of the ``lock`` CF at the encoded key."""

    lock_type: LockType
    primary: bytes
    start_ts: int
    ttl: int
    min_commit_ts: int = 0
    txn_size: int = 0
    short_value: bytes | None = None

    def to_bytes(self) -> bytes:
        head = _LOCK_HEAD.pack(
            self.lock_type,
            self.start_ts,
            self.ttl,
            self.min_commit_ts,
            self.txn_size,
            len(self.primary),
        )
        if self.short_value is None:
            return head + self.primary
        return head + self.primary + b"\x01" + self.short_value

    @classmethod
    def from_bytes(cls, b: bytes) -> Lock:
        try:
            lt, start_ts, ttl, mct, size, plen = _LOCK_HEAD.unpack_from(b)
            pos = _LOCK_HEAD.size
            primary = b[pos : pos + plen]
            if len(primary) != plen:
                raise ValueError("primary key is truncated")
            pos += plen
            if len(b) > pos and b[pos] != 1:
                raise ValueError(f"bad short value flag {b[pos]:#x}")
            short = b[pos + 1 :] if len(b) > pos else None
            return cls(LockType(lt), primary, start_ts, ttl, mct, size, short)
        except (struct.error, ValueError) as e:
            raise InvalidArgumentError(f"malformed lock record: {e}") from None

    def with_ttl(self, ttl: int) -> Lock:
        return replace(self, ttl=ttl)

    def with_min_commit_ts(self, ts: int) -> Lock:
        return replace(self, min_commit_ts=ts)


@dataclass(frozen=True, slots=True)
class Write:
    """A commit record: value of the ``write`` CF at ``key + ~commit_ts``.

    A ``ROLLBACK`` record sits at ``key + ~start_ts`` of the rolled-back
    transaction so that a late prewrite of that transaction fails.
    """

    write_type: WriteType
    start_ts: int
    short_value: bytes | None = None

    def to_bytes(self) -> bytes:
        head = _WRITE_HEAD.pack(self.write_type, self.start_ts)
        return head if self.short_value is None else head + b"\x01" + self.short_value

    @classmethod
    def from_bytes(cls, b: bytes) -> Write:
        try:
            wt, start_ts = _WRITE_HEAD.unpack_from(b)
            pos = _WRITE_HEAD.size
            if len(b) > pos and b[pos] != 1:
                raise ValueError(f"bad short value flag {b[pos]:#x}")
            short = b[pos + 1 :] if len(b) > pos else None
            return cls(WriteType(wt), start_ts, short)
        except (struct.error, ValueError) as e:
            raise InvalidArgumentError(f"malformed write record: {e}") from None


# ----------------------------------------------------------------- requests
class Op(enum.Enum):
    """Mutation kinds of a prewrite (kvproto ``Op``)."""

    PUT = "put"
    DELETE = "delete"
    LOCK = "lock"  # lock a key that was read, without changing it
    INSERT = "insert"  # put, failing with AlreadyExists if a value is visible
    CHECK_NOT_EXISTS = "check_not_exists"  # fail if a value is visible; write nothing


@dataclass(frozen=True, slots=True)
class Mutation:
    op: Op
    key: bytes
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class LockInfo:
    """What a reader learns about a lock that blocks it (kvproto ``LockInfo``)."""

    key: bytes
    primary: bytes
    lock_ts: int
    ttl: int
    lock_type: LockType
    min_commit_ts: int = 0
    txn_size: int = 0


class TxnAction(enum.Enum):
    """What ``check_txn_status`` did (kvproto ``Action``)."""

    NO_ACTION = "no_action"
    TTL_EXPIRE_ROLLBACK = "ttl_expire_rollback"
    LOCK_NOT_EXIST_ROLLBACK = "lock_not_exist_rollback"
    MIN_COMMIT_TS_PUSHED = "min_commit_ts_pushed"


@dataclass(frozen=True, slots=True)
class TxnStatus:
    """Fate of a transaction as seen at its primary key.

    Exactly one of: alive (``lock_ttl > 0``), committed (``commit_ts > 0``),
    rolled back (both 0).
    """

    lock_ttl: int = 0
    commit_ts: int = 0
    action: TxnAction = TxnAction.NO_ACTION
    lock: LockInfo | None = field(default=None)

    @property
    def is_alive(self) -> bool:
        return self.lock_ttl > 0

    @property
    def is_committed(self) -> bool:
        return self.commit_ts > 0

    @property
    def is_rolled_back(self) -> bool:
        return self.lock_ttl == 0 and self.commit_ts == 0


# ----------------------------------------------------------------- regions
@dataclass(frozen=True, slots=True)
class RegionEpoch:
    """``conf_ver`` bumps on membership changes, ``version`` on splits/merges."""

    conf_ver: int = 1
    version: int = 1


@dataclass(frozen=True, slots=True)
class Peer:
    """One replica of a Region. ``is_learner``: receives the log, never votes."""

    id: int
    store_id: int
    is_learner: bool = False


@dataclass(frozen=True, slots=True)
class Region:
    """A key range ``[start_key, end_key)`` of *encoded* keys (``end_key=b""``:
    unbounded) replicated by one Raft group."""

    id: int
    start_key: bytes
    end_key: bytes
    epoch: RegionEpoch
    peers: tuple[Peer, ...]

    def contains(self, encoded_key: bytes) -> bool:
        return encoded_key >= self.start_key and (not self.end_key or encoded_key < self.end_key)


class StoreState(enum.IntEnum):
    """metapb.StoreState: ``TOMBSTONE`` stores never come back."""

    UP = 0
    OFFLINE = 1
    TOMBSTONE = 2


COLUMNAR_LABEL = ("engine", "columnar")


@dataclass(frozen=True, slots=True)
class StoreMeta:
    """One store process as PD knows it (metapb.Store). A store labelled
    ``engine=columnar`` hosts only learners (the columnar replica)."""

    id: int
    address: str = ""
    state: StoreState = StoreState.UP
    labels: tuple[tuple[str, str], ...] = ()
    version: str = ""
    raft_address: str = ""
    status_address: str = ""
    start_timestamp: int = 0

    @property
    def is_columnar(self) -> bool:
        return COLUMNAR_LABEL in self.labels


@dataclass(frozen=True, slots=True)
class PdMember:
    """One PD process (pdpb.Member): ``client_addr`` serves the PD gRPC
    service, ``peer_addr`` its Raft."""

    name: str
    member_id: int = 0
    client_addr: str = ""
    peer_addr: str = ""


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """The value of a scan predicate that names another column of the same
    row: ``("l_commitdate", "<", ColumnRef("l_receiptdate"))``."""

    name: str
