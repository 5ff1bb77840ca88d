"""Percolator actions through :class:`kvstore.txn.TxnScheduler` (TiKV semantics).

Every test drives the scheduler over a :class:`~kvstore.storage.MemoryEngine`
with explicit timestamps ``T(ms, logical)`` so that TTL expiry (counted in
physical milliseconds) is fully controlled. Engine contents are inspected
directly (``lock``/``write``/``default`` column families) to check what each
command wrote, and compared before/after to check that a failed command wrote
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import pytest

from kvstore import codec
from kvstore.errors import (
    AlreadyExistsError,
    CommittedError,
    CommitTsExpiredError,
    GcTooEarlyError,
    InvalidArgumentError,
    KeyIsLockedError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    WriteConflictError,
)
from kvstore.mvcc import MvccReader
from kvstore.storage import ALL_CFS, CF_DEFAULT, CF_LOCK, CF_WRITE, MemoryEngine
from kvstore.txn import TxnScheduler
from kvstore.types import (
    SHORT_VALUE_MAX_LEN,
    Lock,
    LockInfo,
    LockType,
    Mutation,
    Op,
    TxnAction,
    WriteType,
    compose_ts,
)

TTL = 100  # ms
P, D, L, R = WriteType.PUT, WriteType.DELETE, WriteType.LOCK, WriteType.ROLLBACK
LONG = b"L" * (SHORT_VALUE_MAX_LEN + 1)
SHORT = b"s" * SHORT_VALUE_MAX_LEN


def T(ms: int, logical: int = 0) -> int:  # noqa: N802  (reads like a constant in tables)
    return compose_ts(ms, logical)


# ----------------------------------------------------------------- helpers
@pytest.fixture
def eng() -> MemoryEngine:
    return MemoryEngine()


@pytest.fixture
def s(eng: MemoryEngine) -> TxnScheduler:
    return TxnScheduler(eng, eng)


def dump(engine: MemoryEngine) -> dict[str, list[tuple[bytes, bytes]]]:
    return {cf: list(engine.scan(cf, b"", None)) for cf in ALL_CFS}


def prewrite(
    s: TxnScheduler,
    start: int,
    *muts: Mutation,
    primary: bytes | None = None,
    ttl: int = TTL,
) -> list[LockInfo]:
    return s.kv_prewrite(list(muts), primary or muts[0].key, start, ttl)


def put(key: bytes, value: bytes = b"v") -> Mutation:
    return Mutation(Op.PUT, key, value)


def delete(key: bytes) -> Mutation:
    return Mutation(Op.DELETE, key)


def commit_put(s: TxnScheduler, key: bytes, value: bytes, start: int, commit: int) -> None:
    assert prewrite(s, start, put(key, value)) == []
    s.kv_commit([key], start, commit)


def commit_op(s: TxnScheduler, m: Mutation, start: int, commit: int) -> None:
    assert prewrite(s, start, m) == []
    s.kv_commit([m.key], start, commit)


def writes(engine: MemoryEngine, key: bytes) -> list[tuple[int, WriteType]]:
    """(commit_ts, type) of every record in the write CF, newest first."""
    return [(c, w.write_type) for c, w in MvccReader(engine).versions(codec.txn_key(key))]


def lock_of(engine: MemoryEngine, key: bytes) -> Lock | None:
    return MvccReader(engine).load_lock(codec.txn_key(key))


def default_value(engine: MemoryEngine, key: bytes, start: int) -> bytes | None:
    return engine.get(CF_DEFAULT, codec.append_ts(codec.txn_key(key), start))


class Unchanged:
    """``with Unchanged(eng): <failing command>`` asserts nothing was written."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        self.before = dump(self.engine)

    def __exit__(self, *exc: object) -> None:
        assert dump(self.engine) == self.before


# ================================================================= prewrite
def _other_write(kind: WriteType) -> Callable[[TxnScheduler], None]:
    """Leave a record of type ``kind`` on b"k" by another txn at ts T(20)."""

    def setup(s: TxnScheduler) -> None:
        if kind == R:
            s.kv_batch_rollback([b"k"], T(20))
        else:
            m = {P: put(b"k"), D: delete(b"k"), L: Mutation(Op.LOCK, b"k")}[kind]
            commit_op(s, m, T(18), T(20))

    return setup


@pytest.mark.parametrize("kind", [P, D, L, R])
def test_prewrite_write_conflict_with_any_newer_record(eng, s, kind):
    _other_write(kind)(s)
    start_of_other = T(20) if kind == R else T(18)
    with Unchanged(eng), pytest.raises(WriteConflictError) as ei:
        prewrite(s, T(15), put(b"k", b"mine"))
    e = ei.value
    assert (e.key, e.start_ts, e.conflict_start_ts, e.conflict_commit_ts, e.reason) == (
        b"k",
        T(15),
        start_of_other,
        T(20),
        "optimistic",
    )


@pytest.mark.parametrize(
    ("start", "ok"),
    [
        (T(15), False),  # commit_ts T(20) > start: conflict
        (T(20), True),  # commit_ts == start: the write is in our snapshot
        (T(25), True),  # committed before we started
    ],
)
def test_prewrite_conflict_boundary(eng, s, start, ok):
    commit_put(s, b"k", b"old", T(10), T(20))
    if ok:
        assert prewrite(s, start, put(b"k", b"new")) == []
        assert lock_of(eng, b"k").start_ts == start
    else:
        with Unchanged(eng), pytest.raises(WriteConflictError):
            prewrite(s, start, put(b"k", b"new"))


def test_prewrite_conflict_on_second_key_writes_nothing(eng, s):
    commit_put(s, b"b", b"x", T(10), T(30))
    with Unchanged(eng), pytest.raises(WriteConflictError) as ei:
        prewrite(s, T(20), put(b"a", LONG), put(b"b"), put(b"c"))
    assert ei.value.key == b"b"
    assert lock_of(eng, b"a") is None
    assert default_value(eng, b"a", T(20)) is None


@pytest.mark.parametrize("other_start", [T(10), T(30)])  # older or newer than ours
def test_prewrite_blocked_by_other_lock(eng, s, other_start):
    assert prewrite(s, other_start, put(b"k", b"x"), primary=b"pk", ttl=77) == []
    with Unchanged(eng):
        blocked = prewrite(s, T(20), put(b"a", LONG), put(b"k"), delete(b"z"))
    assert blocked == [
        LockInfo(
            key=b"k",
            primary=b"pk",
            lock_ts=other_start,
            ttl=77,
            lock_type=LockType.PUT,
            min_commit_ts=other_start + 1,
            txn_size=0,
        )
    ]
    assert lock_of(eng, b"a") is None


def test_prewrite_blocked_reports_every_lock(eng, s):
    prewrite(s, T(10), put(b"a"))
    prewrite(s, T(11), delete(b"c"))
    blocked = prewrite(s, T(20), put(b"a"), put(b"b"), put(b"c"))
    assert [(i.key, i.lock_ts, i.lock_type) for i in blocked] == [
        (b"a", T(10), LockType.PUT),
        (b"c", T(11), LockType.DELETE),
    ]
    assert lock_of(eng, b"b") is None


def test_duplicate_prewrite_is_idempotent(eng, s):
    muts = [put(b"a", b"1"), put(b"b", LONG), delete(b"c")]
    assert prewrite(s, T(10), *muts) == []
    after_first = dump(eng)
    assert prewrite(s, T(10), *muts) == []
    assert dump(eng) == after_first
    # A duplicate arriving after the commit is a no-op too (no new lock).
    s.kv_commit([b"a", b"b", b"c"], T(10), T(20))
    committed = dump(eng)
    assert prewrite(s, T(10), *muts) == []
    assert dump(eng) == committed
    assert s.kv_get(b"b", T(30)) == LONG


def test_prewrite_records_lock_fields(eng, s):
    s.kv_prewrite([put(b"a", SHORT), put(b"b", LONG), delete(b"c")], b"a", T(10), 55, 3, T(12))
    la, lb, lc = lock_of(eng, b"a"), lock_of(eng, b"b"), lock_of(eng, b"c")
    assert la == Lock(LockType.PUT, b"a", T(10), 55, T(12), 3, SHORT)
    assert lb == Lock(LockType.PUT, b"a", T(10), 55, T(12), 3, None)
    assert lc == Lock(LockType.DELETE, b"a", T(10), 55, T(12), 3, None)
    # Short values live in the lock, long ones in the default CF.
    assert default_value(eng, b"a", T(10)) is None
    assert default_value(eng, b"b", T(10)) == LONG
    # Without an explicit min_commit_ts it is start_ts + 1.
    prewrite(s, T(11), put(b"d"))
    assert lock_of(eng, b"d").min_commit_ts == T(11) + 1


# ----------------------------------------------------------------- insert / check_not_exists
@pytest.mark.parametrize(
    ("history", "op", "exists"),
    [
        ([], Op.INSERT, False),
        ([put(b"k")], Op.INSERT, True),
        ([put(b"k"), delete(b"k")], Op.INSERT, False),
        ([put(b"k"), Mutation(Op.LOCK, b"k")], Op.INSERT, True),  # LOCK record carries no data
        ([delete(b"k"), put(b"k")], Op.INSERT, True),
        ([], Op.CHECK_NOT_EXISTS, False),
        ([put(b"k")], Op.CHECK_NOT_EXISTS, True),
        ([put(b"k"), delete(b"k")], Op.CHECK_NOT_EXISTS, False),
    ],
)
def test_insert_and_check_not_exists(eng, s, history, op, exists):
    for i, m in enumerate(history):
        commit_op(s, m, T(10 + 10 * i), T(15 + 10 * i))
    start = T(100)
    m = Mutation(op, b"k", b"new")
    if exists:
        with Unchanged(eng), pytest.raises(AlreadyExistsError) as ei:
            prewrite(s, start, m)
        assert ei.value.key == b"k"
        return
    with Unchanged(eng) if op == Op.CHECK_NOT_EXISTS else nullcontext():
        assert prewrite(s, start, m) == []
    if op == Op.CHECK_NOT_EXISTS:
        assert lock_of(eng, b"k") is None  # a pure check writes nothing
    else:
        assert lock_of(eng, b"k").lock_type == LockType.PUT
        s.kv_commit([b"k"], start, T(110))
        assert s.kv_get(b"k", T(120)) == b"new"


def test_insert_after_rollback_record_above_put_still_exists(eng, s):
    commit_put(s, b"k", b"v", T(10), T(11))
    s.kv_batch_rollback([b"k"], T(20))
    with pytest.raises(AlreadyExistsError):
        prewrite(s, T(30), Mutation(Op.INSERT, b"k", b"x"))


def test_insert_conflict_is_reported_before_existence(eng, s):
    commit_put(s, b"k", b"v", T(10), T(30))
    with pytest.raises(WriteConflictError):
        prewrite(s, T(20), Mutation(Op.INSERT, b"k", b"x"))


def test_insert_failure_rolls_back_whole_prewrite(eng, s):
    commit_put(s, b"b", b"v", T(10), T(11))
    with Unchanged(eng), pytest.raises(AlreadyExistsError):
        prewrite(s, T(20), put(b"a", LONG), Mutation(Op.INSERT, b"b", b"x"))


# ================================================================= commit
def test_commit_without_lock(eng, s):
    with Unchanged(eng), pytest.raises(TxnLockNotFoundError) as ei:
        s.kv_commit([b"k"], T(10), T(20))
    assert (ei.value.key, ei.value.start_ts) == (b"k", T(10))


def test_commit_with_someone_elses_lock(eng, s):
    prewrite(s, T(5), put(b"k"))
    with Unchanged(eng), pytest.raises(TxnLockNotFoundError):
        s.kv_commit([b"k"], T(10), T(20))


def test_commit_fails_if_any_key_lacks_its_lock_and_writes_nothing(eng, s):
    prewrite(s, T(10), put(b"a"), put(b"c"))
    with Unchanged(eng), pytest.raises(TxnLockNotFoundError) as ei:
        s.kv_commit([b"a", b"b", b"c"], T(10), T(20))
    assert ei.value.key == b"b"


@pytest.mark.parametrize(
    ("mutation", "wtype", "value"),
    [
        (put(b"k", SHORT), P, SHORT),
        (put(b"k", LONG), P, LONG),
        (delete(b"k"), D, None),
        (Mutation(Op.LOCK, b"k"), L, b"before"),
    ],
)
def test_commit_turns_lock_into_write(eng, s, mutation, wtype, value):
    commit_put(s, b"k", b"before", T(1), T(2))
    prewrite(s, T(10), mutation)
    s.kv_commit([b"k"], T(10), T(20))
    assert lock_of(eng, b"k") is None
    assert writes(eng, b"k") == [(T(20), wtype), (T(2), P)]
    assert s.kv_get(b"k", T(20)) == value
    assert s.kv_get(b"k", T(19)) == b"before"


def test_recommit_is_idempotent(eng, s):
    prewrite(s, T(10), put(b"a", LONG), put(b"b"))
    s.kv_commit([b"a", b"b"], T(10), T(20))
    committed = dump(eng)
    s.kv_commit([b"a", b"b"], T(10), T(20))
    s.kv_commit([b"a"], T(10), T(20))
    assert dump(eng) == committed


def test_commit_after_rollback_fails(eng, s):
    prewrite(s, T(10), put(b"k"))
    s.kv_batch_rollback([b"k"], T(10))
    with Unchanged(eng), pytest.raises(TxnLockNotFoundError):
        s.kv_commit([b"k"], T(10), T(20))


def test_commit_ts_must_exceed_start_ts(eng, s):
    prewrite(s, T(10), put(b"k"))
    for bad in (T(10), T(9)):
        with Unchanged(eng), pytest.raises(InvalidArgumentError):
            s.kv_commit([b"k"], T(10), bad)


def test_commit_ts_below_pushed_min_commit_ts(eng, s):
    prewrite(s, T(10), put(b"k"))
    st = s.kv_check_txn_status(b"k", T(10), T(30), T(31))
    assert st.action == TxnAction.MIN_COMMIT_TS_PUSHED
    with Unchanged(eng), pytest.raises(CommitTsExpiredError) as ei:
        s.kv_commit([b"k"], T(10), T(25))
    e = ei.value
    assert (e.key, e.start_ts, e.commit_ts, e.min_commit_ts) == (b"k", T(10), T(25), T(30) + 1)
    s.kv_commit([b"k"], T(10), T(30) + 1)
    assert writes(eng, b"k") == [(T(30) + 1, P)]


def test_commit_ts_equal_to_min_commit_ts_is_fine(eng, s):
    s.kv_prewrite([put(b"k")], b"k", T(10), TTL, 0, T(15))
    with pytest.raises(CommitTsExpiredError):
        s.kv_commit([b"k"], T(10), T(15) - 1)
    s.kv_commit([b"k"], T(10), T(15))
    assert s.kv_get(b"k", T(15)) == b"v"


# ================================================================= rollback
def test_rollback_then_late_prewrite_conflicts(eng, s):
    s.kv_batch_rollback([b"k"], T(10))
    with Unchanged(eng), pytest.raises(WriteConflictError) as ei:
        prewrite(s, T(10), put(b"k"))
    e = ei.value
    assert (e.start_ts, e.conflict_start_ts, e.conflict_commit_ts, e.reason) == (
        T(10),
        T(10),
        T(10),
        "self_rolled_back",
    )


def test_late_prewrite_after_rollback_and_newer_write(eng, s):
    s.kv_batch_rollback([b"k"], T(10))
    commit_put(s, b"k", b"x", T(12), T(14))
    with pytest.raises(WriteConflictError) as ei:
        prewrite(s, T(10), put(b"k"))
    assert ei.value.reason == "self_rolled_back"


def test_rollback_of_committed_key(eng, s):
    prewrite(s, T(10), put(b"a"), put(b"b"))
    s.kv_commit([b"b"], T(10), T(20))
    with Unchanged(eng), pytest.raises(CommittedError) as ei:
        s.kv_batch_rollback([b"a", b"b"], T(10))
    assert (ei.value.key, ei.value.start_ts, ei.value.commit_ts) == (b"b", T(10), T(20))
    assert lock_of(eng, b"a") is not None


def test_rollback_without_lock_leaves_rollback_record(eng, s):
    s.kv_batch_rollback([b"k"], T(10))
    assert writes(eng, b"k") == [(T(10), R)]
    assert lock_of(eng, b"k") is None
    assert s.kv_get(b"k", T(20)) is None
    # Idempotent.
    before = dump(eng)
    s.kv_batch_rollback([b"k"], T(10))
    assert dump(eng) == before


def test_rollback_removes_lock_and_long_value(eng, s):
    commit_put(s, b"k", b"old", T(1), T(2))
    prewrite(s, T(10), put(b"k", LONG))
    assert default_value(eng, b"k", T(10)) == LONG
    s.kv_batch_rollback([b"k"], T(10))
    assert lock_of(eng, b"k") is None
    assert default_value(eng, b"k", T(10)) is None
    assert writes(eng, b"k") == [(T(10), R), (T(2), P)]
    assert s.kv_get(b"k", T(20)) == b"old"


def test_rollback_leaves_other_txns_lock_alone(eng, s):
    prewrite(s, T(5), put(b"k", LONG))
    s.kv_batch_rollback([b"k"], T(10))
    assert lock_of(eng, b"k").start_ts == T(5)
    assert default_value(eng, b"k", T(5)) == LONG
    assert writes(eng, b"k") == [(T(10), R)]
    s.kv_commit([b"k"], T(5), T(20))
    assert s.kv_get(b"k", T(20)) == LONG


# ================================================================= check_txn_status
def test_check_txn_status_alive(eng, s):
    prewrite(s, T(100), put(b"p", LONG), ttl=50)
    with Unchanged(eng):
        st = s.kv_check_txn_status(b"p", T(100), 0, T(150))  # 100 + 50 is not < 150
    assert st.is_alive and not st.is_committed and not st.is_rolled_back
    assert (st.lock_ttl, st.commit_ts, st.action) == (50, 0, TxnAction.NO_ACTION)
    assert st.lock is not None and st.lock.lock_ts == T(100) and st.lock.primary == b"p"


def test_check_txn_status_caller_below_min_commit_ts_does_not_push(eng, s):
    prewrite(s, T(100), put(b"p"), ttl=50)
    with Unchanged(eng):
        st = s.kv_check_txn_status(b"p", T(100), T(100), T(101))
    assert st.action == TxnAction.NO_ACTION


def test_check_txn_status_ttl_expired_rolls_back(eng, s):
    prewrite(s, T(100), put(b"p", LONG), ttl=50)
    st = s.kv_check_txn_status(b"p", T(100), 0, T(151))
    assert st.action == TxnAction.TTL_EXPIRE_ROLLBACK
    assert st.is_rolled_back and st.lock_ttl == 0 and st.commit_ts == 0
    assert lock_of(eng, b"p") is None
    assert default_value(eng, b"p", T(100)) is None
    assert writes(eng, b"p") == [(T(100), R)]
    with pytest.raises(TxnLockNotFoundError):
        s.kv_commit([b"p"], T(100), T(160))
    # Asking again reports the rollback without doing anything.
    with Unchanged(eng):
        again = s.kv_check_txn_status(b"p", T(100), 0, T(200))
    assert again.is_rolled_back and again.action == TxnAction.NO_ACTION


def test_check_txn_status_pushes_min_commit_ts_for_reader(eng, s):
    commit_put(s, b"p", b"old", T(1), T(2))
    prewrite(s, T(100), put(b"p", b"new"), ttl=50)
    with pytest.raises(KeyIsLockedError):
        s.kv_get(b"p", T(120))
    st = s.kv_check_txn_status(b"p", T(100), T(120), T(121))
    assert st.action == TxnAction.MIN_COMMIT_TS_PUSHED
    assert st.is_alive and st.lock_ttl == 50
    assert st.lock is not None and st.lock.min_commit_ts == T(120) + 1
    assert lock_of(eng, b"p").min_commit_ts == T(120) + 1
    # The reader at T(120) (and below) now ignores the lock ...
    assert s.kv_get(b"p", T(120)) == b"old"
    assert s.kv_scan(b"", None, T(120)) == [(b"p", b"old")]
    # ... a later reader is still blocked ...
    with pytest.raises(KeyIsLockedError):
        s.kv_get(b"p", T(120) + 1)
    # ... and the owner must commit above the reader.
    with pytest.raises(CommitTsExpiredError):
        s.kv_commit([b"p"], T(100), T(110))
    s.kv_commit([b"p"], T(100), T(125))
    assert s.kv_get(b"p", T(120)) == b"old"
    assert s.kv_get(b"p", T(125)) == b"new"


def test_check_txn_status_committed(eng, s):
    prewrite(s, T(100), put(b"p"))
    s.kv_commit([b"p"], T(100), T(110))
    with Unchanged(eng):
        st = s.kv_check_txn_status(b"p", T(100), 0, T(10_000))
    assert st.is_committed and st.commit_ts == T(110) and st.action == TxnAction.NO_ACTION
    assert not st.is_alive and not st.is_rolled_back


def test_check_txn_status_rolled_back(eng, s):
    prewrite(s, T(100), put(b"p"))
    s.kv_batch_rollback([b"p"], T(100))
    with Unchanged(eng):
        st = s.kv_check_txn_status(b"p", T(100), 0, T(10_000), rollback_if_not_exist=False)
    assert st.is_rolled_back and st.action == TxnAction.NO_ACTION


def test_check_txn_status_missing_without_rollback(eng, s):
    prewrite(s, T(50), put(b"p"))  # another txn's lock does not count
    with Unchanged(eng), pytest.raises(TxnNotFoundError) as ei:
        s.kv_check_txn_status(b"p", T(100), 0, T(200), rollback_if_not_exist=False)
    assert (ei.value.key, ei.value.start_ts) == (b"p", T(100))


def test_check_txn_status_missing_with_rollback(eng, s):
    st = s.kv_check_txn_status(b"p", T(100), 0, T(200), rollback_if_not_exist=True)
    assert st.action == TxnAction.LOCK_NOT_EXIST_ROLLBACK and st.is_rolled_back
    assert writes(eng, b"p") == [(T(100), R)]
    # The prewrite that was still in flight now fails.
    with pytest.raises(WriteConflictError) as ei:
        prewrite(s, T(100), put(b"p"))
    assert ei.value.reason == "self_rolled_back"


# ================================================================= resolve_lock
def _txn3(s: TxnScheduler, start: int = T(10)) -> None:
    prewrite(s, start, put(b"p", b"1"), put(b"s1", LONG), delete(b"s2"), primary=b"p")


def test_resolve_lock_commit_given_keys(eng, s):
    commit_put(s, b"s2", b"old", T(1), T(2))
    _txn3(s)
    s.kv_commit([b"p"], T(10), T(20))
    assert s.kv_resolve_lock(T(10), T(20), [b"s1"]) == 1
    assert lock_of(eng, b"s1") is None and writes(eng, b"s1") == [(T(20), P)]
    assert lock_of(eng, b"s2") is not None
    assert s.kv_resolve_lock(T(10), T(20), [b"s2"]) == 1
    assert s.kv_batch_get([b"p", b"s1", b"s2"], T(20)) == {b"p": b"1", b"s1": LONG}


def test_resolve_lock_rollback_given_keys(eng, s):
    _txn3(s)
    s.kv_batch_rollback([b"p"], T(10))
    assert s.kv_resolve_lock(T(10), 0, [b"s1", b"s2"]) == 2
    for k in (b"s1", b"s2"):
        assert lock_of(eng, k) is None
        assert writes(eng, k) == [(T(10), R)]
    assert default_value(eng, b"s1", T(10)) is None


@pytest.mark.parametrize("commit_ts", [T(20), 0])
def test_resolve_lock_scans_all_locks_of_the_txn(eng, s, commit_ts):
    _txn3(s)
    prewrite(s, T(11), put(b"other"))  # another txn: must be left alone
    if commit_ts:
        s.kv_commit([b"p"], T(10), commit_ts)
    assert s.kv_resolve_lock(T(10), commit_ts) == (3 if not commit_ts else 2)
    for k in (b"p", b"s1", b"s2"):
        assert lock_of(eng, k) is None
    assert lock_of(eng, b"other").start_ts == T(11)
    if commit_ts:
        assert s.kv_batch_get([b"p", b"s1", b"s2"], T(30)) == {b"p": b"1", b"s1": LONG}
    else:
        assert all(writes(eng, k) == [(T(10), R)] for k in (b"p", b"s1", b"s2"))
        assert s.kv_batch_get([b"p", b"s1", b"s2"], T(30)) == {}
    # Nothing left to resolve.
    before = dump(eng)
    assert s.kv_resolve_lock(T(10), commit_ts) == 0
    assert dump(eng) == before


def test_resolve_lock_commit_on_rolled_back_key_fails_and_writes_nothing(eng, s):
    _txn3(s)
    s.kv_batch_rollback([b"s1"], T(10))
    with Unchanged(eng), pytest.raises(TxnLockNotFoundError):
        s.kv_resolve_lock(T(10), T(20), [b"s2", b"s1"])


# ================================================================= scan_lock
def test_scan_lock_max_ts_limit_and_range(eng, s):
    prewrite(s, T(10), put(b"a"))
    prewrite(s, T(30), put(b"b"))
    prewrite(s, T(20), put(b"c"), put(b"d"), primary=b"c")
    prewrite(s, T(40), put(b"e"))

    def keys(*args, **kw):
        return [(i.key, i.lock_ts) for i in s.kv_scan_lock(*args, **kw)]

    assert keys(T(100)) == [
        (b"a", T(10)),
        (b"b", T(30)),
        (b"c", T(20)),
        (b"d", T(20)),
        (b"e", T(40)),
    ]
    assert keys(T(20)) == [(b"a", T(10)), (b"c", T(20)), (b"d", T(20))]
    assert keys(T(9)) == []
    # limit counts matching locks, not scanned ones.
    assert keys(T(20), limit=2) == [(b"a", T(10)), (b"c", T(20))]
    assert keys(T(100), b"b", b"d") == [(b"b", T(30)), (b"c", T(20))]
    assert keys(T(100), b"c", None, limit=1) == [(b"c", T(20))]
    assert keys(T(100), limit=0) == []
    info = s.kv_scan_lock(T(100), b"d", b"e")[0]
    assert (info.primary, info.lock_type, info.ttl) == (b"c", LockType.PUT, TTL)


# ================================================================= heart beat
def test_txn_heart_beat_extends_never_shortens(eng, s):
    prewrite(s, T(100), put(b"p"), put(b"s"), primary=b"p", ttl=50)
    assert s.kv_txn_heart_beat(b"p", T(100), 200) == 200
    assert lock_of(eng, b"p").ttl == 200
    assert s.kv_txn_heart_beat(b"p", T(100), 10) == 200
    assert lock_of(eng, b"p").ttl == 200
    # The extended TTL decides expiry.
    assert s.kv_check_txn_status(b"p", T(100), 0, T(250)).is_alive
    assert s.kv_check_txn_status(b"p", T(100), 0, T(301)).action == TxnAction.TTL_EXPIRE_ROLLBACK


def test_txn_heart_beat_without_lock(eng, s):
    prewrite(s, T(100), put(b"p"))
    with Unchanged(eng), pytest.raises(TxnLockNotFoundError):
        s.kv_txn_heart_beat(b"p", T(99), 500)
    with Unchanged(eng), pytest.raises(TxnLockNotFoundError):
        s.kv_txn_heart_beat(b"q", T(100), 500)


# ================================================================= reads
@pytest.fixture
def history(s: TxnScheduler) -> TxnScheduler:
    """b"k": PUT v1 @20, PUT LONG @40, LOCK @50, ROLLBACK @55, DELETE @60,
    PUT v3 @80; b"j": PUT SHORT @30."""
    commit_put(s, b"k", b"v1", T(10), T(20))
    commit_put(s, b"j", SHORT, T(25), T(30))
    commit_put(s, b"k", LONG, T(35), T(40))
    commit_op(s, Mutation(Op.LOCK, b"k"), T(45), T(50))
    s.kv_batch_rollback([b"k"], T(55))
    commit_op(s, delete(b"k"), T(58), T(60))
    commit_put(s, b"k", b"v3", T(70), T(80))
    return s


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (T(19), None),
        (T(20), b"v1"),
        (T(39), b"v1"),
        (T(40), LONG),
        (T(50), LONG),  # LOCK record skipped
        (T(55), LONG),  # ROLLBACK record skipped
        (T(59), LONG),
        (T(60), None),  # deleted
        (T(79), None),
        (T(80), b"v3"),
        (T(10_000), b"v3"),
    ],
)
def test_get_sees_newest_version_at_ts(eng, history, ts, expected):
    assert history.kv_get(b"k", ts) == expected


def test_scan_at_ts(eng, history):
    s = history
    assert s.kv_scan(b"", None, T(30)) == [(b"j", SHORT), (b"k", b"v1")]
    assert s.kv_scan(b"", None, T(55)) == [(b"j", SHORT), (b"k", LONG)]
    assert s.kv_scan(b"", None, T(60)) == [(b"j", SHORT)]
    assert s.kv_scan(b"", None, T(80), limit=1) == [(b"j", SHORT)]
    assert s.kv_scan(b"k", None, T(80)) == [(b"k", b"v3")]
    assert s.kv_scan(b"", b"k", T(80)) == [(b"j", SHORT)]
    assert s.kv_scan(b"", None, T(80), limit=0) == []


def test_short_and_long_values_storage(eng, s):
    commit_put(s, b"short", SHORT, T(10), T(11))
    commit_put(s, b"long", LONG, T(10), T(11))
    commit_put(s, b"empty", b"", T(10), T(11))
    assert default_value(eng, b"short", T(10)) is None
    assert default_value(eng, b"long", T(10)) == LONG
    assert [v for _, v in eng.scan(CF_DEFAULT, b"", None)] == [LONG]
    assert s.kv_batch_get([b"short", b"long", b"empty", b"none"], T(11)) == {
        b"short": SHORT,
        b"long": LONG,
        b"empty": b"",
    }


@pytest.mark.parametrize(
    ("lock_ts", "read_ts", "blocks"),
    [
        (T(10), T(20), True),  # lock_ts < ts: its commit could be visible
        (T(20), T(20), False),  # its commit_ts would exceed start_ts == ts
        (T(30), T(20), False),  # lock newer than the read
    ],
)
def test_lock_blocks_reads_at_or_after_it(eng, s, lock_ts, read_ts, blocks):
    commit_put(s, b"k", b"old", T(1), T(2))
    prewrite(s, lock_ts, put(b"k", b"new"), primary=b"pk")
    if blocks:
        with pytest.raises(KeyIsLockedError) as ei:
            s.kv_get(b"k", read_ts)
        assert (ei.value.lock.key, ei.value.lock.primary, ei.value.lock.lock_ts) == (
            b"k",
            b"pk",
            lock_ts,
        )
        with pytest.raises(KeyIsLockedError):
            s.kv_scan(b"", None, read_ts)
        with pytest.raises(KeyIsLockedError):
            s.kv_batch_get([b"k"], read_ts)
        # The resolver may tell the reader to bypass it.
        assert s.kv_get(b"k", read_ts, bypass_locks={lock_ts}) == b"old"
    else:
        assert s.kv_get(b"k", read_ts) == b"old"
        assert s.kv_scan(b"", None, read_ts) == [(b"k", b"old")]


def test_lock_type_lock_never_blocks_reads(eng, s):
    commit_put(s, b"k", b"old", T(1), T(2))
    prewrite(s, T(10), Mutation(Op.LOCK, b"k"))
    assert s.kv_get(b"k", T(20)) == b"old"


def test_scan_fails_on_lock_in_range_only(eng, s):
    commit_put(s, b"a", b"1", T(1), T(2))
    commit_put(s, b"z", b"2", T(1), T(2))
    prewrite(s, T(10), put(b"m"))
    with pytest.raises(KeyIsLockedError):
        s.kv_scan(b"", None, T(20))
    assert s.kv_scan(b"", b"m", T(20)) == [(b"a", b"1")]
    assert s.kv_scan(b"n", None, T(20)) == [(b"z", b"2")]


# ================================================================= GC
# Golden table: per key, the history as (op, start, commit) — "R" rollbacks
# use start only — and, at safe point T(45), the exact surviving
# (commit_ts, type) records and which long values survive in the default CF.
SAFE = T(45)
GC_GOLDEN: dict[bytes, tuple[list[tuple[str, int, int]], list[tuple[int, WriteType]]]] = {
    # PUTs, LOCK and ROLLBACK below the safe point; PUT and DELETE above.
    b"a": (
        [("P", 10, 11), ("P", 20, 21), ("L", 30, 31), ("R", 40, 40), ("P", 50, 51), ("D", 60, 61)],
        [(T(61), D), (T(51), P), (T(21), P)],
    ),
    # The newest version <= safe point is a DELETE: it and everything older go.
    b"b": (
        [("P", 10, 11), ("D", 20, 21), ("R", 25, 25)],
        [],
    ),
    # DELETE below, PUT above the safe point.
    b"c": (
        [("P", 10, 11), ("D", 20, 21), ("P", 50, 51)],
        [(T(51), P)],
    ),
    # Only versions above the safe point.
    b"d": ([("P", 50, 51), ("P", 60, 61)], [(T(61), P), (T(51), P)]),
    # A single PUT below: it is what readers at the safe point see.
    b"e": ([("P", 10, 11)], [(T(11), P)]),
    # Started below, committed above the safe point: the older PUT stays visible.
    b"f": ([("P", 10, 11), ("P", 20, 46)], [(T(46), P), (T(11), P)]),
    # Committed exactly at the safe point: it hides the older PUT.
    b"g": ([("P", 10, 11), ("P", 40, 45)], [(T(45), P)]),
    # Only ROLLBACK/LOCK records below.
    b"h": ([("R", 10, 10), ("L", 20, 21)], []),
    # DELETE as the only version.
    b"i": ([("D", 10, 11)], []),
}


def _build_gc_history(s: TxnScheduler) -> None:
    for key, (hist, _) in GC_GOLDEN.items():
        for op, start, commit in hist:
            if op == "R":
                s.kv_batch_rollback([key], T(start))
                continue
            m = {
                "P": put(key, LONG + key + bytes([start])),
                "D": delete(key),
                "L": Mutation(Op.LOCK, key),
            }[op]
            commit_op(s, m, T(start), T(commit))


def test_gc_golden(eng, s):
    _build_gc_history(s)
    keys = list(GC_GOLDEN)
    ts_points = [SAFE, T(46), T(50), T(51), T(55), T(61), T(100)]
    before = {t: s.kv_scan(b"", None, t) for t in ts_points}
    stats = s.kv_gc(SAFE)
    assert s.gc_safe_point == SAFE
    for key, (hist, survivors) in GC_GOLDEN.items():
        assert writes(eng, key) == survivors, key
        kept_starts = set()
        for op, start, commit in hist:
            if op == "P" and (T(commit), P) in survivors:
                kept_starts.add(start)
        for op, start, _ in hist:
            if op == "P":
                val = default_value(eng, key, T(start))
                if start in kept_starts:
                    assert val == LONG + key + bytes([start]), (key, start)
                else:
                    assert val is None, (key, start)
    # No orphan default-CF value is left anywhere.
    expected_defaults = sum(1 for _, surv in GC_GOLDEN.values() for c, t in surv if t == P)
    assert len(list(eng.scan(CF_DEFAULT, b"", None))) == expected_defaults
    total = sum(len(h) for h, _ in GC_GOLDEN.values())
    assert stats.versions_removed == total - sum(len(sv) for _, sv in GC_GOLDEN.values())
    assert stats.keys_scanned == len(keys)
    # Readers at or above the safe point see exactly what they saw before.
    for t in ts_points:
        assert s.kv_scan(b"", None, t) == before[t]
    # GC is idempotent.
    again = dump(eng)
    assert s.kv_gc(SAFE).versions_removed == 0
    assert dump(eng) == again


def test_gc_refuses_while_lock_at_or_below_safe_point(eng, s):
    commit_put(s, b"a", b"1", T(10), T(11))
    commit_put(s, b"a", b"2", T(12), T(13))
    prewrite(s, T(45), put(b"b"))
    with Unchanged(eng), pytest.raises(InvalidArgumentError):
        s.kv_gc(SAFE)
    assert s.gc_safe_point == 0
    assert writes(eng, b"a") == [(T(13), P), (T(11), P)]
    s.kv_batch_rollback([b"b"], T(45))
    # A lock above the safe point does not stop GC.
    prewrite(s, T(46), put(b"c"))
    stats = s.kv_gc(SAFE)
    assert stats.versions_removed == 2  # PUT @11 and b's rollback record
    assert writes(eng, b"a") == [(T(13), P)]
    assert lock_of(eng, b"c") is not None


def test_gc_skips_a_scan_that_could_collect_nothing(eng, s):
    """With an epoch (a leader's term), a round after a full scan skips the
    scan while nothing can have become garbage, and only then."""
    commit_put(s, b"a", b"1", T(10), T(11))
    commit_put(s, b"a", b"2", T(12), T(13))
    first = s.kv_gc(T(20), epoch=1)
    assert not first.skipped and first.versions_removed == 1
    # No write since, the newest record (13) at or below the last safe point:
    # nothing more can be collected, and the scan is skipped.
    again = s.kv_gc(T(30), epoch=1)
    assert again.skipped and again.keys_scanned == 0
    assert s.gc_safe_point == T(30)  # the safe point still moves
    # A write since: a full scan, and it collects what the write made old.
    commit_put(s, b"a", b"3", T(31), T(32))
    third = s.kv_gc(T(40), epoch=1)
    assert not third.skipped and third.versions_removed == 1
    assert writes(eng, b"a") == [(T(32), P)]
    # Another epoch (writes may have passed another leader): a full scan.
    assert not s.kv_gc(T(41), epoch=2).skipped
    assert s.kv_gc(T(42), epoch=2).skipped
    # Without an epoch (an explicit KvGC): always a full scan.
    assert not s.kv_gc(T(43)).skipped


def test_gc_does_not_skip_records_newer_than_the_last_safe_point(eng, s):
    """Records above the last scan's safe point become collectable once a
    later safe point passes them: that round must scan, though nothing was
    written since; rounds before it (a bulk load's records stay above the
    safe point for the whole GC lifetime) need not."""
    commit_put(s, b"a", b"1", T(10), T(11))
    commit_put(s, b"a", b"2", T(30), T(31))  # above the first safe point
    commit_put(s, b"b", b"1", T(35), T(36))
    assert s.kv_gc(T(20), epoch=1).versions_removed == 0
    # Still below the oldest record above T(20) (31): nothing to collect.
    assert s.kv_gc(T(25), epoch=1).skipped
    assert s.kv_gc(T(30), epoch=1).skipped
    second = s.kv_gc(T(31), epoch=1)  # reaches it
    assert not second.skipped and second.versions_removed == 1
    assert writes(eng, b"a") == [(T(31), P)]
    assert s.kv_gc(T(35), epoch=1).skipped  # next one above is 36
    assert not s.kv_gc(T(40), epoch=1).skipped  # b's record: one PUT, kept
    assert writes(eng, b"b") == [(T(36), P)]
    assert s.kv_gc(T(50), epoch=1).skipped


def test_reads_and_prewrites_below_safe_point(eng, s):
    commit_put(s, b"a", b"1", T(10), T(11))
    s.kv_gc(SAFE)
    with pytest.raises(GcTooEarlyError):
        s.kv_get(b"a", SAFE - 1)
    with pytest.raises(GcTooEarlyError):
        s.kv_scan(b"", None, T(20))
    with pytest.raises(GcTooEarlyError):
        s.kv_batch_get([b"a"], T(20))
    with Unchanged(eng), pytest.raises(GcTooEarlyError):
        prewrite(s, T(20), put(b"b"))
    assert s.kv_get(b"a", SAFE) == b"1"
    # The safe point never moves back.
    with pytest.raises(InvalidArgumentError):
        s.kv_gc(T(30))


def test_safe_point_survives_scheduler_restart(eng, s):
    s.kv_gc(SAFE)
    s2 = TxnScheduler(eng, eng)
    assert s2.gc_safe_point == SAFE
    with pytest.raises(GcTooEarlyError):
        s2.kv_get(b"a", T(10))


# ================================================================= failed commands
def test_failed_commands_write_nothing(eng, s):
    """One table of failing commands against one populated store."""
    commit_put(s, b"committed", b"x", T(10), T(20))
    prewrite(s, T(30), put(b"locked", LONG), put(b"locked2"), primary=b"locked")
    failing: list[tuple[str, Callable[[], object], type[Exception]]] = [
        (
            "conflict",
            lambda: prewrite(s, T(15), put(b"new"), put(b"committed")),
            WriteConflictError,
        ),
        (
            "exists",
            lambda: prewrite(s, T(40), put(b"n2", LONG), Mutation(Op.INSERT, b"committed", b"y")),
            AlreadyExistsError,
        ),
        ("commit", lambda: s.kv_commit([b"locked", b"nolock"], T(30), T(40)), TxnLockNotFoundError),
        (
            "commit_ts",
            lambda: s.kv_commit([b"locked"], T(30), T(30)),
            InvalidArgumentError,
        ),
        (
            "rollback",
            lambda: s.kv_batch_rollback([b"fresh", b"committed"], T(10)),
            CommittedError,
        ),
        (
            "status",
            lambda: s.kv_check_txn_status(b"nolock", T(31), 0, T(50), False),
            TxnNotFoundError,
        ),
        ("heartbeat", lambda: s.kv_txn_heart_beat(b"locked2", T(31), 10), TxnLockNotFoundError),
        ("gc", lambda: s.kv_gc(T(35)), InvalidArgumentError),
        ("bad key", lambda: prewrite(s, T(40), put(b"ok"), put(b"")), InvalidArgumentError),
        ("bad ttl", lambda: s.kv_prewrite([put(b"ok")], b"ok", T(40), 0), InvalidArgumentError),
        ("no muts", lambda: s.kv_prewrite([], b"ok", T(40), TTL), InvalidArgumentError),
        ("bad ts", lambda: s.kv_commit([b"locked"], 0, T(40)), InvalidArgumentError),
        ("str keys", lambda: s.kv_commit(b"locked", T(30), T(40)), InvalidArgumentError),
    ]
    for name, cmd, exc in failing:
        before = dump(eng)
        with pytest.raises(exc):
            cmd()
        assert dump(eng) == before, name
    # The store still works: the blocked txn commits.
    s.kv_commit([b"locked", b"locked2"], T(30), T(40))
    assert s.kv_batch_get([b"locked", b"locked2", b"committed"], T(40)) == {
        b"locked": LONG,
        b"locked2": b"v",
        b"committed": b"x",
    }
    assert list(eng.scan(CF_LOCK, b"", None)) == []
    assert len(list(eng.scan(CF_WRITE, b"", None))) == 3


# ================================================================= malformed arguments
def _malformed_calls(s: TxnScheduler) -> list[tuple[str, Callable[[], object]]]:
    pw = s.kv_prewrite
    return [
        ("op not an Op", lambda: pw([Mutation("put", b"a", b"v")], b"a", T(40), TTL)),
        ("not a Mutation", lambda: pw([(Op.PUT, b"a", b"v")], b"a", T(40), TTL)),
        ("ttl bool", lambda: pw([put(b"a")], b"a", T(40), True)),
        ("ttl negative", lambda: pw([put(b"a")], b"a", T(40), -5)),
        ("ttl over u64", lambda: pw([put(b"a")], b"a", T(40), 2**64)),
        ("txn_size negative", lambda: pw([put(b"a")], b"a", T(40), TTL, -1)),
        ("min_commit_ts str", lambda: pw([put(b"a")], b"a", T(40), TTL, 0, "x")),
        ("start_ts 0", lambda: pw([put(b"a")], b"a", 0, TTL)),
        ("start_ts float", lambda: pw([put(b"a")], b"a", 1.0, TTL)),
        ("caller_start_ts str", lambda: s.kv_check_txn_status(b"p", T(30), "x", T(31))),
        ("current_ts 0", lambda: s.kv_check_txn_status(b"p", T(30), 0, 0)),
        ("advise_ttl str", lambda: s.kv_txn_heart_beat(b"p", T(30), "x")),
        ("advise_ttl over u64", lambda: s.kv_txn_heart_beat(b"p", T(30), 2**64)),
        ("resolve commit_ts negative", lambda: s.kv_resolve_lock(T(30), -1)),
        ("scan_lock limit", lambda: s.kv_scan_lock(T(40), b"", None, -1)),
        ("scan_lock bounds", lambda: s.kv_scan_lock(T(40), "a", None)),
        ("scan limit", lambda: s.kv_scan(b"", None, T(40), -1)),
        ("get ts over u64", lambda: s.kv_get(b"p", 2**64)),
        ("gc safe point 0", lambda: s.kv_gc(0)),
        ("rollback empty keys", lambda: s.kv_batch_rollback([], T(30))),
    ]


def test_malformed_arguments_raise_invalid_argument_and_write_nothing(eng, s):
    prewrite(s, T(30), put(b"p"))
    for name, call in _malformed_calls(s):
        before = dump(eng)
        with pytest.raises(InvalidArgumentError):
            call()
        assert dump(eng) == before, name
    assert lock_of(eng, b"p").ttl == TTL
