"""The Kv service over a replicated :class:`~kvstore.raftstore.Store`.

Each call is routed by its context: the Region must be hosted and led here
and carry the Region's current epoch, and its keys must lie inside the
Region; otherwise the caller gets the Region error that tells it where to
go (``NotLeader``, ``EpochNotMatch``, ``KeyNotInRegion``, ``RegionNotFound``).
Reads then pass the Region's read barrier (a deposed leader that has not
noticed serves nothing stale); writes run the Region's transaction scheduler
or raw store, whose batches are proposed to the Region's Raft group.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from kvstore import codec
from kvstore.errors import KeyNotInRegionError
from kvstore.proto.convert import RequestContext
from kvstore.raftstore import RegionHandle, Store
from kvstore.types import LockInfo, Mutation, TxnStatus


class RegionKvHandler:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _route(self, ctx: RequestContext) -> RegionHandle:
        return self.store.region(ctx.region_id, ctx.region_epoch)

    def _read(self, ctx: RequestContext, txn_keys: Sequence[bytes] = ()) -> RegionHandle:
        h = self._route(ctx)
        h.check_txn_keys(txn_keys)
        h.read_barrier()
        # A split ordered before the barrier is applied while we wait for it:
        # answering from the now smaller Region would silently drop the rest
        # of a range the client believes this Region covers.
        h.check_epoch_unchanged()
        return h

    def _start_in_region(self, h: RegionHandle, encoded_start: bytes) -> None:
        r = h.region
        if encoded_start < r.start_key or (r.end_key and encoded_start >= r.end_key):
            raise KeyNotInRegionError(encoded_start, r.id, r.start_key, r.end_key)

    # ---------------------------------------------------------------- txn reads
    def kv_get(
        self, ctx: RequestContext, key: bytes, version: int, bypass_locks: Collection[int] = ()
    ) -> bytes | None:
        return self._read(ctx, [key]).scheduler.kv_get(key, version, bypass_locks)

    def kv_batch_get(
        self,
        ctx: RequestContext,
        keys: Sequence[bytes],
        version: int,
        bypass_locks: Collection[int] = (),
    ) -> dict[bytes, bytes]:
        return self._read(ctx, keys).scheduler.kv_batch_get(keys, version, bypass_locks)

    def kv_scan(
        self,
        ctx: RequestContext,
        start: bytes,
        end: bytes | None,
        version: int,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]:
        h = self._read(ctx)
        if isinstance(start, bytes):
            self._start_in_region(h, codec.txn_key(start))
        rows = h.scheduler.kv_scan(start, end, version, limit, bypass_locks)
        h.check_epoch_unchanged()
        return rows

    # ---------------------------------------------------------------- txn writes
    def kv_prewrite(
        self,
        ctx: RequestContext,
        mutations: Sequence[Mutation],
        primary: bytes,
        start_ts: int,
        lock_ttl: int,
        txn_size: int = 0,
        min_commit_ts: int = 0,
    ) -> list[LockInfo]:
        h = self._route(ctx)
        h.check_txn_keys([m.key for m in mutations if isinstance(m, Mutation)])
        return h.scheduler.kv_prewrite(
            mutations, primary, start_ts, lock_ttl, txn_size, min_commit_ts
        )

    def kv_commit(
        self, ctx: RequestContext, keys: Sequence[bytes], start_ts: int, commit_ts: int
    ) -> None:
        h = self._route(ctx)
        h.check_txn_keys(keys)
        h.scheduler.kv_commit(keys, start_ts, commit_ts)

    def kv_batch_rollback(self, ctx: RequestContext, keys: Sequence[bytes], start_ts: int) -> None:
        h = self._route(ctx)
        h.check_txn_keys(keys)
        h.scheduler.kv_batch_rollback(keys, start_ts)

    def kv_check_txn_status(
        self,
        ctx: RequestContext,
        primary: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool = True,
    ) -> TxnStatus:
        h = self._route(ctx)
        h.check_txn_keys([primary])
        return h.scheduler.kv_check_txn_status(
            primary, lock_ts, caller_start_ts, current_ts, rollback_if_not_exist
        )

    def kv_resolve_lock(
        self,
        ctx: RequestContext,
        start_ts: int,
        commit_ts: int,
        keys: Sequence[bytes] | None = None,
    ) -> int:
        h = self._route(ctx)
        if keys is not None:
            h.check_txn_keys(keys)
        return h.scheduler.kv_resolve_lock(start_ts, commit_ts, keys)

    def kv_scan_lock(
        self,
        ctx: RequestContext,
        max_ts: int,
        start: bytes = b"",
        end: bytes | None = None,
        limit: int | None = None,
    ) -> list[LockInfo]:
        return self._read(ctx).scheduler.kv_scan_lock(max_ts, start, end, limit)

    def kv_txn_heart_beat(
        self, ctx: RequestContext, primary: bytes, start_ts: int, advise_ttl: int
    ) -> int:
        h = self._route(ctx)
        h.check_txn_keys([primary])
        return h.scheduler.kv_txn_heart_beat(primary, start_ts, advise_ttl)

    def kv_import(
        self,
        ctx: RequestContext,
        pairs: Sequence[tuple[bytes, bytes]],
        commit_ts: int,
        table_id: int,
    ) -> int:
        # The epoch the request was routed with goes into the proposal
        # (RegionHandle), so a split applied meanwhile rejects the whole
        # batch with EpochNotMatch and the client splits it again.
        h = self._route(ctx)
        keys = [p[0] for p in pairs if isinstance(p, tuple) and len(p) == 2]
        keys = [k for k in keys if isinstance(k, bytes)]
        if keys:
            # Encoding preserves order: the smallest and largest keys inside
            # means all are (apply checks every key again, on every replica).
            h.check_txn_keys([min(keys), max(keys)])
        return h.scheduler.kv_import(pairs, commit_ts, table_id)

    def kv_gc(self, ctx: RequestContext, safe_point: int) -> Any:
        return self._route(ctx).scheduler.kv_gc(safe_point)

    # ---------------------------------------------------------------- raw
    def _raw(self, ctx: RequestContext, keys: Iterable[bytes], *, read: bool) -> RegionHandle:
        h = self._route(ctx)
        h.check_raw_keys(list(keys))
        if read:
            h.read_barrier()
            h.check_epoch_unchanged()
        return h

    def raw_get(self, ctx: RequestContext, key: bytes) -> bytes | None:
        return self._raw(ctx, [key], read=True).rawstore.raw_get(key)

    def raw_batch_get(self, ctx: RequestContext, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self._raw(ctx, keys, read=True).rawstore.raw_batch_get(keys)

    def raw_put(
        self, ctx: RequestContext, key: bytes, value: bytes, ttl: int | None = None
    ) -> None:
        self._raw(ctx, [key], read=False).rawstore.raw_put(key, value, ttl)

    def raw_batch_put(
        self, ctx: RequestContext, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None
    ) -> None:
        pairs = list(pairs)
        keys = [p[0] for p in pairs if isinstance(p, tuple) and len(p) == 2]
        self._raw(ctx, keys, read=False).rawstore.raw_batch_put(pairs, ttl)

    def raw_batch_put_async(
        self,
        ctx: RequestContext,
        pairs: Sequence[tuple[bytes, bytes]],
        ttl: int | None,
        done: Callable[[Exception | None], None],
    ) -> bool:
        """:meth:`raw_batch_put` without a thread waiting on the Raft round
        (see :meth:`RawStore.raw_batch_put_async`): False if it must run
        the blocking way (a latch is busy)."""
        keys = [p[0] for p in pairs]
        return self._raw(ctx, keys, read=False).rawstore.raw_batch_put_async(pairs, ttl, done)

    def raw_delete(self, ctx: RequestContext, key: bytes) -> None:
        self._raw(ctx, [key], read=False).rawstore.raw_delete(key)

    def raw_scan(
        self, ctx: RequestContext, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        h = self._raw(ctx, [], read=True)
        if isinstance(start, bytes):
            self._start_in_region(h, codec.raw_key(start))
        rows = h.rawstore.raw_scan(start, end, limit)
        h.check_epoch_unchanged()
        return rows

    def raw_delete_range(self, ctx: RequestContext, start: bytes, end: bytes | None) -> None:
        h = self._raw(ctx, [], read=False)
        if isinstance(start, bytes):
            self._start_in_region(h, codec.raw_key(start))
        h.rawstore.raw_delete_range(start, end)

    def raw_compare_and_swap(
        self,
        ctx: RequestContext,
        key: bytes,
        expected: bytes | None,
        new: bytes,
        ttl: int | None = None,
    ) -> tuple[bool, bytes | None]:
        return self._raw(ctx, [key], read=False).rawstore.raw_compare_and_swap(
            key, expected, new, ttl
        )

    def read_index(self, ctx: RequestContext) -> int:
        """Prove leadership now (the leader lease, else a read barrier) and
        answer the commit index then (TiKV's read index): a learner that has
        applied up to it holds every write acknowledged before this call (a
        write is acknowledged from inside its apply, a moment before the
        applied index moves past it; the commit index already has)."""
        h = self._route(ctx)
        h.read_barrier()
        group = h.peer.group
        committed = group.commit_index() if group is not None else 0
        return max(committed, h.peer.log_applied_index())
