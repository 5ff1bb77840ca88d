"""What the client needs from the cluster: the Kv service and the TSO.

These protocols are the seam between the client and whatever serves it: an
embedded store in the same process (``kvstore.server.embedded``) today, gRPC
stubs routed by Region tomorrow. Their methods mirror the Kv service RPCs of
TiKV's kvproto one for one, with user keys and typed exceptions
(:mod:`kvstore.errors`) in place of protobuf messages.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, Protocol

from kvstore.types import LockInfo, Mutation, TxnStatus


class KvBackend(Protocol):
    # ---- transactional
    def kv_get(
        self, key: bytes, version: int, bypass_locks: Collection[int] = ()
    ) -> bytes | None: ...

    def kv_batch_get(
        self, keys: Sequence[bytes], version: int, bypass_locks: Collection[int] = ()
    ) -> dict[bytes, bytes]: ...

    def kv_scan(
        self,
        start: bytes,
        end: bytes | None,
        version: int,
        limit: int | None = None,
        bypass_locks: Collection[int] = (),
    ) -> list[tuple[bytes, bytes]]: ...

    def kv_prewrite(
        self,
        mutations: Sequence[Mutation],
        primary: bytes,
        start_ts: int,
        lock_ttl: int,
        txn_size: int = 0,
        min_commit_ts: int = 0,
    ) -> list[LockInfo]: ...

    def kv_commit(self, keys: Sequence[bytes], start_ts: int, commit_ts: int) -> None: ...

    def kv_batch_rollback(self, keys: Sequence[bytes], start_ts: int) -> None: ...

    def kv_check_txn_status(
        self,
        primary: bytes,
        lock_ts: int,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool = True,
    ) -> TxnStatus: ...

    def kv_resolve_lock(
        self, start_ts: int, commit_ts: int, keys: Sequence[bytes] | None = None
    ) -> int: ...

    def kv_scan_lock(
        self, max_ts: int, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[LockInfo]: ...

    def kv_txn_heart_beat(self, primary: bytes, start_ts: int, advise_ttl: int) -> int: ...

    def kv_gc(self, safe_point: int) -> Any: ...

    def kv_import(
        self, pairs: Sequence[tuple[bytes, bytes]], commit_ts: int, table_id: int
    ) -> int: ...

    # ---- raw
    def raw_get(self, key: bytes) -> bytes | None: ...

    def raw_batch_get(self, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def raw_put(self, key: bytes, value: bytes, ttl: int | None = None) -> None: ...

    def raw_batch_put(
        self, pairs: Iterable[tuple[bytes, bytes]], ttl: int | None = None
    ) -> None: ...

    def raw_delete(self, key: bytes) -> None: ...

    def raw_scan(
        self, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def raw_delete_range(self, start: bytes, end: bytes | None) -> None: ...

    def raw_compare_and_swap(
        self, key: bytes, expected: bytes | None, new: bytes, ttl: int | None = None
    ) -> tuple[bool, bytes | None]: ...


class TsoBackend(Protocol):
    def get_ts(self, count: int = 1) -> int:
        """Reserve ``count`` timestamps and return the largest."""
        ...
