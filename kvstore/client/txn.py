"""Transactions: a write buffer, snapshot reads, Percolator two-phase commit.

Reads go to the store at ``start_ts`` (overlaid with this transaction's own
buffered writes); writes stay in the buffer until :meth:`Transaction.commit`:

1. choose the primary key (the smallest key written);
2. prewrite every mutation (primary's batch first) with a lock TTL; locks of
   other transactions are resolved and the prewrite retried; a write conflict
   rolls back what was prewritten and raises :class:`WriteConflictError`;
3. take ``commit_ts`` from the TSO and commit the primary: this single step is
   the commit point of the whole transaction;
4. commit the secondaries. Failures here are harmless: readers that meet a
   secondary lock find the primary committed and finish the job.

A long commit keeps its primary lock alive with heart beats
(:class:`TtlManager`), so a slow but healthy committer is not rolled back.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from kvstore.errors import (
    ClosedError,
    CommitTsExpiredError,
    InvalidArgumentError,
    KeyIsLockedError,
    KVError,
    TxnAbortedError,
    TxnLockNotFoundError,
    UndeterminedError,
    WriteConflictError,
)
from kvstore.types import (
    Mutation,
    Op,
    physical_ms,
    validate_key,
    validate_limit,
    validate_range,
    validate_value,
)

if TYPE_CHECKING:
    from kvstore.client.client import Client

T = TypeVar("T")

_ACTIVE, _COMMITTED, _ROLLED_BACK = "active", "committed", "rolled back"
# Point reads a transaction remembers (a bulk load's existence checks beyond
# this are simply asked again if ever repeated).
SNAPSHOT_CACHE_KEYS = 100_000


def backoff_sleep(attempt: int, cap_ms: int, rng: random.Random) -> None:
    """Exponential backoff with full jitter (client-go's default style).

    Used only where the thing we wait for (a TTL running out in another
    process) cannot signal us."""
    ms = min(cap_ms, 2 ** min(attempt, 10))
    time.sleep(rng.uniform(ms / 2, ms) / 1000)


class Transaction:
    def __init__(self, client: Client, start_ts: int) -> None:
        self._client = client
        self.start_ts = start_ts
        self.commit_ts: int | None = None
        self._mutations: dict[bytes, Mutation] = {}
        self._state = _ACTIVE
        # While a statement runs: (key, mutation it replaced) in write order,
        # so a failed statement can be taken back without touching the rest.
        self._undo: list[tuple[bytes, Mutation | None]] | None = None
        self._commit_checks: list[Callable[[], None]] = []
        # What point reads found at start_ts (None: absent). A snapshot read
        # is repeatable (a lock older than start_ts is resolved before the
        # read answers), so asking again would only cost a round trip: SQL
        # reads a row, then reads it again to update it. client-go keeps the
        # same cache in its snapshot.
        self._snapshot: dict[bytes, bytes | None] = {}

    # ---------------------------------------------------------------- reads
    def _check_active(self) -> None:
        if self._state != _ACTIVE:
            raise InvalidArgumentError(f"transaction {self.start_ts} is {self._state}")

    def get(self, key: bytes) -> bytes | None:
        self._check_active()
        validate_key(key)
        m = self._mutations.get(key)
        if m is not None and m.op is not Op.LOCK:
            return None if m.op is Op.DELETE else m.value
        if key in self._snapshot:
            return self._snapshot[key]
        b = self._client.backend
        value: bytes | None = self._client.read_resolving(
            self.start_ts, lambda bypass: b.kv_get(key, self.start_ts, bypass)
        )
        self._remember({key: value})
        return value

    def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        self._check_active()
        out: dict[bytes, bytes] = {}
        remote: list[bytes] = []
        snapshot = self._snapshot
        for k in keys:
            validate_key(k)
            m = self._mutations.get(k)
            if m is None or m.op is Op.LOCK:
                if k in snapshot:
                    v = snapshot[k]
                    if v is not None:
                        out[k] = v
                else:
                    remote.append(k)
            elif m.op is not Op.DELETE:
                out[k] = m.value
        if remote:
            b = self._client.backend
            got: dict[bytes, bytes] = self._client.read_resolving(
                self.start_ts, lambda bypass: b.kv_batch_get(remote, self.start_ts, bypass)
            )
            out.update(got)
            self._remember({k: got.get(k) for k in remote})
        return out

    def _remember(self, found: dict[bytes, bytes | None]) -> None:
        if len(self._snapshot) + len(found) <= SNAPSHOT_CACHE_KEYS:
            self._snapshot.update(found)

    def scan(
        self, start: bytes, end: bytes | None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` pairs with ``start <= key < end`` in key order."""
        self._check_active()
        start, end = validate_range(start, end)
        limit = validate_limit(limit)
        local = {
            k: m
            for k, m in self._mutations.items()
            if k >= start and (end is None or k < end) and m.op is not Op.LOCK
        }
        # Buffered deletes may hide fetched rows: ask for that many more.
        fetch = None if limit is None else limit + len(local)
        b = self._client.backend
        rows = dict(
            self._client.read_resolving(
                self.start_ts, lambda bypass: b.kv_scan(start, end, self.start_ts, fetch, bypass)
            )
        )
        for k, m in local.items():
            if m.op is Op.DELETE:
                rows.pop(k, None)
            else:
                rows[k] = m.value
        out = sorted(rows.items())
        return out if limit is None else out[:limit]

    # ---------------------------------------------------------------- writes
    def _set(self, key: bytes, m: Mutation) -> None:
        if self._undo is not None:
            self._undo.append((key, self._mutations.get(key)))
        self._mutations[key] = m

    @contextlib.contextmanager
    def statement(self) -> Iterator[None]:
        """Statement atomicity (SQL's): the writes made inside the block are
        all kept, or, if it raises, all taken back, leaving the buffer as it
        was before the block. Not nestable."""
        self._check_active()
        if self._undo is not None:
            raise InvalidArgumentError("statements do not nest")
        self._undo = []
        try:
            yield
        except BaseException:
            for key, prev in reversed(self._undo):
                if prev is None:
                    self._mutations.pop(key, None)
                else:
                    self._mutations[key] = prev
            raise
        finally:
            self._undo = None

    def add_commit_check(self, check: Callable[[], None]) -> None:
        """Run ``check()`` at commit after every key is prewritten (locked)
        and before the commit point; if it raises, the transaction is rolled
        back and the error propagates. The SQL layer checks here that the
        schemas it wrote with are still current."""
        self._check_active()
        self._commit_checks.append(check)

    @property
    def written_keys(self) -> int:
        """How many keys the buffer holds (puts, deletes and locks)."""
        return len(self._mutations)

    def put(self, key: bytes, value: bytes) -> None:
        self._check_active()
        self._set(validate_key(key), Mutation(Op.PUT, key, validate_value(value)))

    def insert(self, key: bytes, value: bytes) -> None:
        """Put that fails at commit with AlreadyExistsError if ``key`` has a
        value (as this transaction sees it: after its own delete of ``key``,
        the insert is a plain put, as DELETE then INSERT is in SQL)."""
        self._check_active()
        prev = self._mutations.get(validate_key(key))
        op = Op.PUT if prev is not None and prev.op == Op.DELETE else Op.INSERT
        self._set(key, Mutation(op, key, validate_value(value)))

    def delete(self, key: bytes) -> None:
        self._check_active()
        self._set(validate_key(key), Mutation(Op.DELETE, key))

    def lock_keys(self, *keys: bytes) -> None:
        """Make the commit conflict with any write to ``keys`` after our
        start_ts, without changing them (prevents write skew on keys read)."""
        self._check_active()
        for k in keys:  # all first: a bad key must leave the buffer unchanged
            validate_key(k)
        for k in keys:
            if k not in self._mutations:
                self._set(k, Mutation(Op.LOCK, k))

    # ---------------------------------------------------------------- 2PC
    def commit(self) -> None:
        self._check_active()
        self._commit(stop_after=None)

    def _commit(self, stop_after: str | None) -> None:
        """Two-phase commit. ``stop_after`` ("prewrite" or "primary") abandons
        the protocol at that point, exactly as a crashed client would; it
        exists for fault-injection tests."""
        if not self._mutations:
            self._state = _COMMITTED
            self.commit_ts = self.start_ts
            return
        c = self._client
        keys = sorted(self._mutations)
        primary, secondaries = keys[0], keys[1:]
        mutations = [self._mutations[k] for k in keys]
        ttl = c.lock_ttl_for(len(mutations))
        with c.ttl_manager.keep_alive(primary, self.start_ts, ttl):
            try:
                self._prewrite(mutations, primary, ttl)
                for check in self._commit_checks:
                    check()
            except UndeterminedError as e:
                # Before the primary's commit nothing is decided: whatever
                # the lost prewrite left is rolled back (here, or by the
                # first reader once the TTL runs out). So this is a definite
                # abort, and the caller may run the transaction again.
                self._state = _ROLLED_BACK
                self._cleanup(keys)
                raise TxnAbortedError(
                    f"transaction {self.start_ts} aborted: prewrite did not finish ({e})"
                ) from e
            except BaseException:
                self._state = _ROLLED_BACK
                self._cleanup(keys)
                raise
            if stop_after == "prewrite":
                self._state = _ROLLED_BACK
                return
            commit_ts = self._commit_primary(primary)
        self.commit_ts = commit_ts
        self._state = _COMMITTED
        if stop_after == "primary" or not secondaries:
            return
        # The transaction is committed whatever happens to these: a reader
        # meeting a leftover secondary lock finds the primary's commit record
        # and finishes the job. So they go in the background.
        c.commit_secondaries(secondaries, self.start_ts, commit_ts)

    def _prewrite(self, mutations: list[Mutation], primary: bytes, ttl: int) -> None:
        c = self._client
        deadline = time.monotonic() + c.lock_wait_timeout
        attempt = 0
        while True:
            locks = c.backend.kv_prewrite(mutations, primary, self.start_ts, ttl, len(mutations))
            if not locks:
                return
            wait_ms = c.resolver.resolve(locks, 0, set())
            if time.monotonic() > deadline:
                raise KeyIsLockedError(locks[0])
            if wait_ms:
                attempt += 1
                backoff_sleep(attempt, min(wait_ms, 500), c.rng)

    def _commit_primary(self, primary: bytes) -> int:
        c = self._client
        for _ in range(16):
            commit_ts = c.pd.get_ts()
            try:
                c.backend.kv_commit([primary], self.start_ts, commit_ts)
                return commit_ts
            except CommitTsExpiredError:
                continue  # a reader pushed min_commit_ts: take a newer ts
            except TxnLockNotFoundError as e:
                raise TxnAbortedError(
                    f"transaction {self.start_ts} was rolled back before its commit"
                ) from e
            except KVError:
                raise
            except Exception as e:
                raise UndeterminedError(
                    f"commit of transaction {self.start_ts} has an unknown outcome: {e}"
                ) from e
        raise TxnAbortedError(f"transaction {self.start_ts}: min_commit_ts kept moving")

    def _cleanup(self, keys: list[bytes]) -> None:
        # Best effort: if this fails the TTL expires and resolvers roll back.
        with contextlib.suppress(KVError):
            self._client.backend.kv_batch_rollback(keys, self.start_ts)

    def rollback(self) -> None:
        """Discard the buffer. Nothing is on the store before commit, so
        nothing needs undoing there."""
        if self._state == _ACTIVE:
            self._state = _ROLLED_BACK
            self._mutations.clear()

    @property
    def is_active(self) -> bool:
        return self._state == _ACTIVE

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            if self._state == _ACTIVE:
                self.commit()
        else:
            self.rollback()


class TtlManager:
    """One daemon thread that sends ``txn_heart_beat`` for commits in
    progress longer than a third of their TTL. Registering costs a heap push;
    the thread exists only once a commit has been registered."""

    def __init__(self, heart_beat: Callable[[bytes, int, int], int]) -> None:
        self._heart_beat = heart_beat
        self._cv = threading.Condition()
        self._live: dict[int, tuple[bytes, int]] = {}
        self._due: list[tuple[float, int]] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    def keep_alive(self, primary: bytes, start_ts: int, ttl_ms: int) -> _KeepAlive:
        return _KeepAlive(self, primary, start_ts, ttl_ms)

    def _register(self, primary: bytes, start_ts: int, ttl_ms: int) -> None:
        with self._cv:
            self._live[start_ts] = (primary, ttl_ms)
            heapq.heappush(self._due, (time.monotonic() + ttl_ms / 3000, start_ts))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="ttl-manager", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _unregister(self, start_ts: int) -> None:
        with self._cv:
            self._live.pop(start_ts, None)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._cv.wait(timeout)
                if self._closed:
                    return
                _, start_ts = heapq.heappop(self._due)
                entry = self._live.get(start_ts)
                if entry is None:
                    continue
                primary, ttl = entry
                heapq.heappush(self._due, (time.monotonic() + ttl / 3000, start_ts))
            # A lock's TTL counts from its start_ts (not from the last beat), so
            # ask for the time gone since then plus a whole TTL, as client-go's
            # ttlManager does: a fixed TTL would let a commit slower than that
            # be rolled back by the first reader while still heart-beating.
            elapsed = max(0, int(time.time() * 1000) - physical_ms(start_ts))
            # A missing lock (not yet prewritten, or rolled back) is for the
            # commit path to find out; keep beating until it unregisters.
            with contextlib.suppress(KVError):
                self._heart_beat(primary, start_ts, elapsed + ttl)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _KeepAlive:
    def __init__(self, mgr: TtlManager, primary: bytes, start_ts: int, ttl: int) -> None:
        self._args = (mgr, primary, start_ts, ttl)

    def __enter__(self) -> None:
        mgr, primary, start_ts, ttl = self._args
        mgr._register(primary, start_ts, ttl)

    def __exit__(self, *exc: object) -> None:
        self._args[0]._unregister(self._args[2])


def run_transaction(client: Client, fn: Callable[[Transaction], T], max_retries: int) -> T:
    """Body of :meth:`Client.transaction` (see there)."""
    if max_retries < 0:
        raise InvalidArgumentError("max_retries must be >= 0")
    attempt = 0
    while True:
        if client.closed:
            raise ClosedError("client is closed")
        txn = client.begin()
        try:
            result = fn(txn)
            if txn.is_active:
                txn.commit()
            return result
        except (WriteConflictError, TxnAbortedError):
            txn.rollback()
            if attempt >= max_retries:
                raise
            attempt += 1
            backoff_sleep(attempt, 100, client.rng)
        except BaseException:
            txn.rollback()
            raise
