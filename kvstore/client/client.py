"""The client object users hold."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

from kvstore.client.backend import KvBackend, TsoBackend
from kvstore.client.lock_resolver import LockResolver
from kvstore.client.raw import RawClient
from kvstore.client.txn import Transaction, TtlManager, backoff_sleep, run_transaction
from kvstore.errors import ClosedError, InvalidArgumentError, KeyIsLockedError, KVError
from kvstore.types import TS_MAX

if TYPE_CHECKING:
    import pyarrow as pa

    from kvstore.client.columnar import ColumnarReader

T = TypeVar("T")

DEFAULT_LOCK_TTL_MS = 3000
MAX_LOCK_TTL_MS = 20_000
DEFAULT_LOCK_WAIT_TIMEOUT_S = 20.0
SECONDARIES_GRACE_S = 5.0


class Client:
    """Entry point of the API: ``raw``, ``begin``, ``transaction``, ``tso``.

    Thread-safe: many threads may share one client (a :class:`Transaction`
    belongs to one thread at a time). Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        backend: KvBackend,
        tso: TsoBackend,
        *,
        on_close: Callable[[], None] | None = None,
        lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS,
        lock_wait_timeout: float = DEFAULT_LOCK_WAIT_TIMEOUT_S,
        seed: int | None = None,
    ) -> None:
        if not isinstance(lock_ttl_ms, int) or lock_ttl_ms <= 0:
            raise InvalidArgumentError("lock_ttl_ms must be a positive int")
        self.backend = backend
        self.pd = tso
        self.raw = RawClient(backend)
        self.resolver = LockResolver(backend, tso)
        self.ttl_manager = TtlManager(backend.kv_txn_heart_beat)
        self.lock_ttl_ms = lock_ttl_ms
        self.lock_wait_timeout = lock_wait_timeout
        self.rng = random.Random(seed)
        self._on_close = on_close
        self._closed = False
        self._close_lock = threading.Lock()
        self._committer = ThreadPoolExecutor(2, thread_name_prefix="txn-secondaries")
        self._secondaries: set[Future[None]] = set()
        # Set by kvstore.connect when the cluster can serve analytic reads.
        self.columnar: ColumnarReader | None = None

    def commit_secondaries(self, keys: list[bytes], start_ts: int, commit_ts: int) -> None:
        """Commit a committed transaction's secondary keys in the background
        (TiKV's client does the same): the caller's commit has already
        returned. Failures are harmless: a reader that meets a leftover lock
        finds the primary's commit record and commits the key itself."""

        def run() -> None:
            with contextlib.suppress(KVError):
                self.backend.kv_commit(keys, start_ts, commit_ts)

        try:
            fut = self._committer.submit(run)
        except RuntimeError:  # closing: do it here and now
            run()
            return
        with self._close_lock:
            self._secondaries.add(fut)
        fut.add_done_callback(self._secondary_done)

    def _secondary_done(self, fut: Future[None]) -> None:
        with self._close_lock:
            self._secondaries.discard(fut)

    # ---------------------------------------------------------------- API
    def begin(self) -> Transaction:
        """Start a transaction at a fresh ``start_ts``."""
        self._check_open()
        return Transaction(self, self.pd.get_ts())

    def transaction(self, fn: Callable[[Transaction], T], max_retries: int = 10) -> T:
        """Run ``fn(txn)`` and commit. On a write conflict, re-run ``fn`` at a
        new start_ts (never replaying the old writes), up to ``max_retries``
        times. Returns ``fn``'s result. Any other exception rolls back and
        propagates."""
        self._check_open()
        return run_transaction(self, fn, max_retries)

    def columnar_scan(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        predicate: Sequence[tuple[str, str, Any]] = (),
        ts: int | None = None,
        *,
        group_by: Sequence[str] = (),
        aggregates: Sequence[tuple[str, str]] = (),
        max_wait: float = 5.0,
        on_fallback: Callable[[str], None] | None = None,
    ) -> pa.Table:
        """Rows of ``table`` as of ``ts`` (default: now) as a ``pyarrow.Table``,
        read from the columnar replica when the cluster has one (filter,
        projection and aggregation run there), else from the row store: the
        same answer either way (see :mod:`kvstore.client.columnar`).
        ``predicate``: ``(column, op, value)`` tuples, ANDed; ``aggregates``:
        ``(function, column)`` with ``sum count min max``, per ``group_by``.
        ``on_fallback(why)`` is called if the row store had to answer."""
        self._check_open()
        from kvstore.client.columnar import row_store_scan

        if self.columnar is not None:
            return self.columnar.scan(
                table,
                columns,
                predicate,
                ts,
                group_by=group_by,
                aggregates=aggregates,
                max_wait=max_wait,
                on_fallback=on_fallback,
            )
        return row_store_scan(self, table, columns, predicate, ts, group_by, aggregates)

    def tso(self) -> int:
        """A fresh timestamp from the timestamp oracle."""
        self._check_open()
        return self.pd.get_ts()

    def gc(self, safe_point: int) -> object:
        """Resolve every lock at or below ``safe_point``, then drop the versions
        no reader at or above it can see. Reads below it fail afterwards."""
        self._check_open()
        bypass: set[int] = set()
        attempt = 0
        while locks := self.backend.kv_scan_lock(safe_point, b"", None, 1024):
            wait = self.resolver.resolve(locks, 0, bypass)
            if wait:
                attempt += 1
                backoff_sleep(attempt, min(wait, 500), self.rng)
        return self.backend.kv_gc(safe_point)

    # ---------------------------------------------------------------- internals
    def lock_ttl_for(self, n_keys: int) -> int:
        """Bigger transactions take longer to commit: give them a longer TTL
        (client-go scales with size the same way)."""
        return min(MAX_LOCK_TTL_MS, self.lock_ttl_ms + n_keys // 64 * 100)

    def read_resolving(self, start_ts: int, read: Callable[[set[int]], T]) -> T:
        """Run ``read(bypass_locks)``, resolving locks it meets, until it
        succeeds or :attr:`lock_wait_timeout` passes."""
        bypass: set[int] = set()
        deadline = time.monotonic() + self.lock_wait_timeout
        attempt = 0
        while True:
            try:
                return read(bypass)
            except KeyIsLockedError as e:
                caller_ts = start_ts if start_ts < TS_MAX else 0
                wait = self.resolver.resolve([e.lock], caller_ts, bypass)
                if time.monotonic() > deadline:
                    raise
                if wait:
                    attempt += 1
                    backoff_sleep(attempt, min(wait, 500), self.rng)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("client is closed")

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        # Secondaries still being committed get a few seconds to finish: the
        # transactions are committed either way, but locks left behind make
        # the next readers resolve them. Against an unreachable cluster they
        # are dropped (cancelled, or failed fast once the backend is closed)
        # rather than holding close() for a timeout each.
        with self._close_lock:
            pending = list(self._secondaries)
        wait(pending, timeout=SECONDARIES_GRACE_S)
        self._committer.shutdown(wait=False, cancel_futures=True)
        if self.columnar is not None:
            self.columnar.close()
        self.ttl_manager.close()
        if self._on_close is not None:
            self._on_close()
        self._committer.shutdown(wait=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
