"""Resolving locks left by other transactions (client-go ``LockResolver``).

A reader or writer that meets a lock asks the lock's primary key what became
of its transaction (``check_txn_status``), then:

* committed  -> ``resolve_lock(commit_ts)`` on the locked key (commit it);
* rolled back (including TTL expired just now) -> ``resolve_lock(0)``;
* alive, and the check pushed ``min_commit_ts`` above the reader's ts -> the
  reader may ignore the lock (its owner must commit above the reader);
* alive otherwise -> the caller backs off until the TTL runs out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from kvstore.client.backend import KvBackend, TsoBackend
from kvstore.errors import TxnNotFoundError
from kvstore.types import LockInfo, LockType, TxnStatus, physical_ms

_STATUS_CACHE_SIZE = 2048


class LockResolver:
    def __init__(self, backend: KvBackend, tso: TsoBackend) -> None:
        self._b = backend
        self._tso = tso
        # Final statuses (committed / rolled back) never change: cache them.
        self._resolved: OrderedDict[int, TxnStatus] = OrderedDict()
        self._mu = threading.Lock()
        self.resolved_count = 0

    def _cached(self, lock_ts: int) -> TxnStatus | None:
        with self._mu:
            return self._resolved.get(lock_ts)

    def _remember(self, lock_ts: int, status: TxnStatus) -> None:
        with self._mu:
            self._resolved[lock_ts] = status
            while len(self._resolved) > _STATUS_CACHE_SIZE:
                self._resolved.popitem(last=False)

    def get_txn_status(self, lock: LockInfo, caller_start_ts: int) -> TxnStatus | None:
        """Status of the lock's transaction, or None if its primary knows
        nothing of it yet (its prewrite may still be under way)."""
        cached = self._cached(lock.lock_ts)
        if cached is not None:
            return cached
        current_ts = self._tso.get_ts()
        # Only roll back a transaction whose primary lock is missing if this
        # (secondary) lock has expired too: otherwise the primary's prewrite
        # may simply not have landed yet.
        expired = physical_ms(lock.lock_ts) + lock.ttl < physical_ms(current_ts)
        try:
            status = self._b.kv_check_txn_status(
                lock.primary, lock.lock_ts, caller_start_ts, current_ts, expired
            )
        except TxnNotFoundError:
            return None
        if not status.is_alive:
            self._remember(lock.lock_ts, status)
        return status

    def resolve(self, locks: list[LockInfo], caller_start_ts: int, bypass: set[int]) -> int:
        """Try to clear ``locks``. Adds to ``bypass`` the lock timestamps a
        reader at ``caller_start_ts`` may now ignore. Returns how many ms the
        caller should wait before retrying (0: retry now)."""
        wait_ms = 0
        for lock in locks:
            if lock.lock_ts in bypass:
                continue
            status = self.get_txn_status(lock, caller_start_ts)
            if status is None:
                wait_ms = max(wait_ms, self._ms_before_expiry(lock))
                continue
            if status.is_alive:
                pushed = status.lock is not None and status.lock.min_commit_ts > caller_start_ts
                if caller_start_ts and pushed and lock.lock_type != LockType.LOCK:
                    bypass.add(lock.lock_ts)
                else:
                    wait_ms = max(wait_ms, self._ms_before_expiry(lock, status.lock_ttl))
                continue
            self._b.kv_resolve_lock(lock.lock_ts, status.commit_ts, [lock.key])
            self.resolved_count += 1
        return wait_ms

    def _ms_before_expiry(self, lock: LockInfo, ttl: int | None = None) -> int:
        now = physical_ms(self._tso.get_ts())
        left = physical_ms(lock.lock_ts) + (ttl if ttl is not None else lock.ttl) - now
        return max(left, 1)
