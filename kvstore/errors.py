"""The one error tree of htapkv.

Every error a caller can see is a :class:`KVError`. The tree has three branches
with different remedies:

* :class:`InvalidArgumentError` and friends: the caller's mistake. Retrying the
  same call fails the same way; fix the input.
* :class:`TxnError` subclasses: per-key transaction outcomes defined by
  Percolator (a conflict, a lock, a missing lock). Each docstring says what the
  client does about it; most are handled inside ``kvstore.client`` and only
  :class:`WriteConflictError` and :class:`TxnAbortedError` normally reach user
  code.
* :class:`RegionError` subclasses: routing outcomes (filled in by the
  replicated layers): refresh the Region cache and retry.

Errors carry structured fields, never information packed into strings, so the
protobuf mapping (one place, in the server/client layer) can round-trip them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvstore.types import LockInfo


class KVError(Exception):
    """Root of every error htapkv raises on purpose."""


# --------------------------------------------------------------------------
# Caller mistakes and environment
# --------------------------------------------------------------------------


class InvalidArgumentError(KVError, ValueError):
    """The request is malformed (wrong type, empty or oversized key, oversized
    value, end before start, ...). Nothing was written. Fix the input."""


class SchemaError(InvalidArgumentError):
    """A table schema is malformed (unknown type, duplicate column, bad primary
    key) or a row does not fit it (wrong type, NULL in a NOT NULL column,
    value out of range). Nothing was written. Fix the DDL or the row."""


@dataclass(eq=False)
class TableNotFoundError(SchemaError):
    """No table of that name (or id) is known at the read timestamp. Create
    it first, or (a columnar replica) wait until the DDL's log entry is
    applied."""

    table: str

    def __str__(self) -> str:
        return f"table {self.table!r} does not exist"


@dataclass(eq=False)
class TableExistsError(SchemaError):
    """``create_table`` with a name that is already taken. Pick another name
    or use the existing table."""

    table: str

    def __str__(self) -> str:
        return f"table {self.table!r} already exists"


@dataclass(eq=False)
class RowNotFoundError(InvalidArgumentError):
    """An ``update`` named a primary key with no row visible to the
    transaction. Insert the row instead."""

    table: str
    primary_key: tuple[Any, ...]

    def __str__(self) -> str:
        return f"table {self.table!r} has no row with primary key {self.primary_key!r}"


class RowFormatError(InvalidArgumentError):
    """Stored row bytes are malformed (truncated header, offsets out of
    bounds, bad UTF-8): corruption or a foreign writer, never a user input.
    The decoder refuses them instead of guessing."""


class StorageError(KVError):
    """The local engine failed (disk full, I/O error, corruption). The request
    may not have been applied; the store should be inspected."""


class ClosedError(KVError):
    """The client or store was closed. Open a new one."""


# --------------------------------------------------------------------------
# Transaction (per-key) errors
# --------------------------------------------------------------------------


class TxnError(KVError):
    """A Percolator outcome concerning one key of one transaction."""


@dataclass(eq=False)
class KeyIsLockedError(TxnError):
    """A read or prewrite met another transaction's lock.

    The client resolves it: ``check_txn_status`` on ``lock.primary`` tells
    whether the owner committed, rolled back, or is still alive; then
    ``resolve_lock`` cleans the key, or the client backs off while the owner's
    TTL runs.
    """

    lock: LockInfo

    def __str__(self) -> str:
        return f"key {self.lock.key!r} is locked by txn {self.lock.lock_ts}"


@dataclass(eq=False)
class WriteConflictError(TxnError):
    """Prewrite found a write committed after our ``start_ts`` (or our own
    rollback record). The transaction is aborted; re-run the caller's logic at a
    new ``start_ts`` (``Client.transaction`` does this) — never replay the old
    writes."""

    key: bytes
    start_ts: int
    conflict_start_ts: int
    conflict_commit_ts: int
    reason: str = "optimistic"

    def __str__(self) -> str:
        return (
            f"write conflict on {self.key!r}: txn {self.start_ts} vs write "
            f"[{self.conflict_start_ts}, {self.conflict_commit_ts}] ({self.reason})"
        )


@dataclass(eq=False)
class AlreadyExistsError(TxnError):
    """An insert-if-absent found a committed value. Not retryable as is."""

    key: bytes

    def __str__(self) -> str:
        return f"key {self.key!r} already exists"


@dataclass(eq=False)
class TxnLockNotFoundError(TxnError):
    """Commit found neither our lock nor our commit record: the transaction was
    rolled back by someone else (usually a lock resolver after TTL expiry). If
    this is the primary key, the transaction is aborted."""

    key: bytes
    start_ts: int

    def __str__(self) -> str:
        return f"lock of txn {self.start_ts} on {self.key!r} not found"


@dataclass(eq=False)
class TxnNotFoundError(TxnError):
    """``check_txn_status`` found no lock and no record for the transaction and
    was asked not to write a rollback record. The caller decides."""

    key: bytes
    start_ts: int


@dataclass(eq=False)
class CommitTsExpiredError(TxnError):
    """The commit_ts is below the lock's ``min_commit_ts`` (a reader pushed it).
    The committer takes a new commit_ts from the TSO and commits again."""

    key: bytes
    start_ts: int
    commit_ts: int
    min_commit_ts: int


@dataclass(eq=False)
class CommittedError(TxnError):
    """A rollback was asked for a transaction that is already committed. The
    rollback is refused; the transaction stands at ``commit_ts``."""

    key: bytes
    start_ts: int
    commit_ts: int


class TxnAbortedError(TxnError):
    """The transaction cannot commit (rolled back by a resolver, retries
    exhausted, ...). Its writes are not and will not be visible."""


class UndeterminedError(TxnError):
    """The commit of the primary key was sent but its outcome is unknown (the
    connection failed). The transaction may or may not be committed; a later
    read decides. Never treat this as a failure."""


class GcTooEarlyError(KVError):
    """A read or prewrite at a timestamp below the GC safe point: the versions
    it would need may be gone. Use a newer timestamp."""


class TsoError(KVError):
    """The timestamp oracle could not hand out a timestamp (e.g. the logical
    counter is exhausted for this millisecond and the clock does not move)."""


# --------------------------------------------------------------------------
# Placement driver (PD) errors: what a PD request can end with besides the
# caller's mistakes. Region routing errors are a separate branch below.
# --------------------------------------------------------------------------


class PdError(KVError):
    """The placement driver refused a request or could not answer it."""


@dataclass(eq=False)
class PdNotLeaderError(PdError):
    """The PD member asked is not the PD leader. ``leader_addr`` is the
    leader's client address if the member knows it (``""`` otherwise): send
    the request there, or ask the other members. ``PdClient`` does this
    itself; callers only see :class:`PdUnavailableError` once its deadline
    passed."""

    message: str = "not the PD leader"
    leader_name: str = ""
    leader_addr: str = ""

    def __str__(self) -> str:
        return f"{self.message} (leader: {self.leader_addr or 'unknown'})"


class PdUnavailableError(PdError):
    """No PD member answered as leader before the deadline (all unreachable,
    or an election that did not finish in time). The request may or may not
    have taken effect: retry it later (every PD request is safe to retry:
    allocations are only wasted, never handed out twice); if it persists,
    check that a majority of the PD processes runs."""


class NotBootstrappedError(PdError):
    """The cluster has not been bootstrapped yet (no first store and Region).
    The first store bootstraps it (``PdClient.bootstrap``); others wait."""


class AlreadyBootstrappedError(PdError):
    """``Bootstrap`` on a cluster that already has a different first Region:
    another store won the race. Do not create a first Region; join instead."""


class StoreTombstoneError(PdError):
    """The store was removed from the cluster (tombstone): it must not serve
    or register again. Wipe its data directory to rejoin as a new store."""


class ClusterMismatchError(PdError):
    """The request named another cluster id than this PD's: the process talks
    to the wrong PD cluster (or its data directory belongs to another
    cluster). A configuration error: do not retry."""


# --------------------------------------------------------------------------
# Region (routing) errors: populated by the replicated layers.
# --------------------------------------------------------------------------


class RegionError(KVError):
    """The request reached the wrong place or the wrong version of a Region.
    Refresh the Region cache and retry; no data was changed."""


@dataclass(eq=False)
class NotLeaderError(RegionError):
    """This peer is not the Region's leader. ``leader_store_id``/``leader_peer_id``
    name the leader if known (0 otherwise): send the request there, or reload
    the Region from PD."""

    region_id: int
    leader_store_id: int = 0
    leader_peer_id: int = 0

    def __str__(self) -> str:
        return f"region {self.region_id}: not leader (leader store {self.leader_store_id})"


@dataclass(eq=False)
class EpochNotMatchError(RegionError):
    """The request was routed with an old Region epoch (a split or a
    membership change happened). ``current_regions`` are the Regions that now
    cover the range: update the cache with them and re-route."""

    region_id: int
    current_regions: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        return f"region {self.region_id}: epoch not match"


@dataclass(eq=False)
class KeyNotInRegionError(RegionError):
    """A key of the request lies outside the Region it was sent to: re-route
    by key."""

    key: bytes
    region_id: int
    start_key: bytes = b""
    end_key: bytes = b""


@dataclass(eq=False)
class RegionNotFoundError(RegionError):
    """This store has no replica of the Region: reload its location from PD."""

    region_id: int


@dataclass(eq=False)
class ServerIsBusyError(RegionError):
    """The store is overloaded (too many requests in flight): back off for
    ``backoff_ms`` and retry."""

    reason: str = ""
    backoff_ms: int = 0


@dataclass(eq=False)
class ProposalDroppedError(RegionError):
    """The Raft proposal may or may not have been applied (leader changed or
    the proposal timed out). For a transaction command this is an unknown
    outcome: retrying is safe because Percolator commands are idempotent."""

    region_id: int
    reason: str = ""


@dataclass(eq=False)
class DataIsNotReadyError(RegionError):
    """A learner replica (the columnar node) has not applied the Region up to
    the leader's read index in time, or does not host the Region yet. Retry
    later, or read the row store instead (the client falls back by itself)."""

    region_id: int
    peer_id: int = 0
    safe_ts: int = 0
    reason: str = ""

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"region {self.region_id}: data is not ready{why}"
