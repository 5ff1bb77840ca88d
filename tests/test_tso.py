"""The timestamp oracle: strictly increasing timestamps, across threads, batches,
clocks that go backwards, and restarts from the persisted high-water mark."""

from __future__ import annotations

import functools
import os
import sys
import threading
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvstore
from kvstore.errors import ClosedError, InvalidArgumentError
from kvstore.pd.tso import MAX_LOGICAL, TimestampOracle
from kvstore.server import embedded
from kvstore.types import TSO_LOGICAL_MASK, compose_ts, physical_ms


class FakeClock:
    """A wall clock in ms that the test moves by hand, in either direction."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Persist:
    """A dict standing in for durable storage; records every save."""

    def __init__(self) -> None:
        self.store: dict[str, int] = {}
        self.saves: list[int] = []
        self.fail = False

    def load(self) -> int:
        return self.store.get("hwm", 0)

    def save(self, hwm: int) -> None:
        if self.fail:
            raise OSError("disk on fire")
        self.saves.append(hwm)
        self.store["hwm"] = hwm


def make(
    clock: FakeClock | None = None, persist: Persist | None = None, window_ms: int = 3000
) -> tuple[TimestampOracle, FakeClock, Persist]:
    clock = clock or FakeClock()
    persist = persist or Persist()
    tso = TimestampOracle(persist.load, persist.save, clock_ms=clock, window_ms=window_ms)
    return tso, clock, persist


def logical(ts: int) -> int:
    return ts & TSO_LOGICAL_MASK


# --------------------------------------------------------------------------
# basic shape
# --------------------------------------------------------------------------


def test_timestamps_follow_the_clock_and_increase() -> None:
    tso, clock, _ = make()
    t1 = tso.get_ts()
    t2 = tso.get_ts()
    assert physical_ms(t1) == physical_ms(t2) == clock.now
    assert t1 < t2
    clock.now += 5
    t3 = tso.get_ts()
    assert physical_ms(t3) == clock.now
    assert t3 > t2


@pytest.mark.parametrize("bad", [0, -1, MAX_LOGICAL, MAX_LOGICAL + 5, 1.0, "2", None])
def test_invalid_count_is_invalid_argument(bad: object) -> None:
    tso, _, persist = make()
    before = tso.get_ts()
    with pytest.raises(InvalidArgumentError):
        tso.get_ts(bad)  # type: ignore[arg-type]
    # Nothing was reserved or broken by the bad call.
    assert tso.get_ts() == before + 1
    assert len(persist.saves) == 1


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------


def test_strictly_increasing_and_unique_under_many_threads() -> None:
    """Real wall clock, 8 threads mixing single and batch requests: every
    reserved timestamp is distinct and each thread sees its own go up."""
    persist = Persist()
    tso = TimestampOracle(persist.load, persist.save)
    n_threads, n_calls = 8, 1500
    results: list[list[tuple[int, int]]] = [[] for _ in range(n_threads)]
    start = threading.Barrier(n_threads)

    def worker(i: int) -> None:
        out = results[i]
        start.wait()
        for j in range(n_calls):
            count = 1 if j % 3 else (j % 50) + 1
            out.append((tso.get_ts(count), count))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # make the GIL hop between threads often
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)

    reserved: list[int] = []
    for out in results:
        assert len(out) == n_calls
        lasts = [last for last, _ in out]
        assert all(a < b for a, b in pairwise(lasts))
        for last, count in out:
            reserved.extend(range(last - count + 1, last + 1))
    assert len(set(reserved)) == len(reserved)


def test_concurrent_hwm_extensions_stay_ordered() -> None:
    """A 1 ms window makes nearly every call extend the HWM, and a save that
    releases the GIL (as an fsync does) lets other threads run meanwhile: no
    call may fail, repeat a ts, or hand out a ts at or above the durable HWM."""
    lock = threading.Lock()
    durable = {"hwm": 0}

    def save(hwm: int) -> None:
        os.sched_yield()  # give up the GIL, like a real fsync would
        with lock:
            durable["hwm"] = max(durable["hwm"], hwm)

    tso = TimestampOracle(lambda: durable["hwm"], save, window_ms=1)
    n_threads, n_calls = 8, 1500
    results: list[list[int]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []
    above_hwm: list[int] = []

    def worker(i: int) -> None:
        try:
            for _ in range(n_calls):
                ts = tso.get_ts()
                if physical_ms(ts) >= durable["hwm"]:
                    above_hwm.append(ts)
                results[i].append(ts)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == []
    assert above_hwm == []
    for out in results:
        assert len(out) == n_calls
        assert all(a < b for a, b in pairwise(out))
    flat = [ts for out in results for ts in out]
    assert len(set(flat)) == len(flat)


# --------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------


def test_batch_reserves_count_distinct_timestamps() -> None:
    tso, _, _ = make()
    prev = tso.get_ts()
    for count in (1, 2, 10, 1000, 5):
        last = tso.get_ts(count)
        first = last - count + 1
        # The whole batch is new and inside one millisecond (never borrows
        # from the physical part).
        assert first > prev
        assert physical_ms(first) == physical_ms(last)
        assert logical(first) >= 1
        prev = last
    assert tso.get_ts() == prev + 1


def test_logical_overflow_advances_physical() -> None:
    tso, clock, _ = make()
    base = clock.now
    t1 = tso.get_ts(MAX_LOGICAL - 1)
    assert physical_ms(t1) == base
    assert logical(t1) == MAX_LOGICAL - 1
    # The clock did not move, yet there is no logical space left in this ms.
    t2 = tso.get_ts()
    assert t2 > t1
    assert t2 == compose_ts(base + 1, 1)
    # A batch that does not fit in the rest of the ms goes to the next one whole.
    t3 = tso.get_ts(MAX_LOGICAL - 1)
    assert t3 == compose_ts(base + 2, MAX_LOGICAL - 1)
    # While the clock lags behind the borrowed time, the oracle keeps borrowing.
    clock.now = base + 2
    t4 = tso.get_ts()
    assert t4 == compose_ts(base + 3, 1)
    # Once the clock passes it, timestamps follow the clock again.
    clock.now = base + 4
    t5 = tso.get_ts()
    assert t5 == compose_ts(base + 4, 1)


def test_logical_overflow_many_small_requests() -> None:
    tso, clock, _ = make()
    prev = 0
    # Fill one ms and a bit with a frozen clock, in chunks.
    for _ in range(6):
        last = tso.get_ts(50_000)
        assert last - 50_000 + 1 > prev
        prev = last
    assert physical_ms(prev) == clock.now + 1


# --------------------------------------------------------------------------
# clocks going backwards, restarts, high-water mark
# --------------------------------------------------------------------------


def test_clock_going_backwards_still_increases() -> None:
    tso, clock, _ = make()
    seen = [tso.get_ts()]
    for delta in (-1, -1000, -10_000_000, 0, 3, -2, 10_000, -50_000):
        clock.now += delta
        seen.append(tso.get_ts())
        seen.append(tso.get_ts(7))
    assert all(a < b for a, b in pairwise(seen))


def test_restart_never_goes_backwards_even_if_clock_was_set_back() -> None:
    persist = Persist()
    tso, clock, _ = make(persist=persist)
    issued = [tso.get_ts() for _ in range(10)]
    clock.now += 2999  # still inside the first window
    issued += [tso.get_ts(100) for _ in range(10)]
    clock.now += 10_000  # past it: the HWM moves
    issued.append(tso.get_ts())

    # "Restart": a new oracle over the same persisted HWM, and a clock that was
    # set back by an hour meanwhile.
    clock2 = FakeClock(clock.now - 3_600_000)
    tso2, _, _ = make(clock=clock2, persist=persist)
    after = [tso2.get_ts() for _ in range(10)]
    assert after[0] > max(issued)
    assert all(a < b for a, b in pairwise(after))

    # And again, restarting the restarted oracle with the clock still behind.
    tso3, _, _ = make(clock=FakeClock(clock2.now), persist=persist)
    assert tso3.get_ts() > max(after)


def test_restart_with_fresh_storage_follows_the_clock() -> None:
    tso, clock, persist = make()
    assert persist.saves == [clock.now + 3000]
    assert tso.high_water_mark == clock.now + 3000
    assert physical_ms(tso.get_ts()) == clock.now


def test_hwm_is_saved_before_a_timestamp_at_or_above_it_is_handed_out() -> None:
    tso, clock, persist = make(window_ms=10)
    assert len(persist.saves) == 1  # saved while starting, before any ts
    for step in [1, 3, 5, 0, 0, 20, -15, 2, 9, 100, -100, 1]:
        clock.now += step
        n_saves, old_hwm = len(persist.saves), persist.saves[-1]
        ts = tso.get_ts()
        # Every ts handed out lies below the HWM that was durable at that time,
        # so reaching the old HWM means a save happened inside this call.
        assert physical_ms(ts) < persist.saves[-1]
        assert persist.store["hwm"] == persist.saves[-1] == tso.high_water_mark
        if physical_ms(ts) >= old_hwm:
            assert len(persist.saves) == n_saves + 1
    # The HWM only moves forward, and only as often as the window needs: at
    # start, when time reached +29 (>= +10) and when it reached +125 (>= +39).
    assert persist.saves == sorted(persist.saves)
    assert len(persist.saves) == 3


def test_logical_overflow_past_hwm_extends_it_first() -> None:
    tso, clock, persist = make(window_ms=1)
    hwm0 = persist.saves[-1]
    assert hwm0 == clock.now + 1
    tso.get_ts(MAX_LOGICAL - 1)
    ts = tso.get_ts()  # overflow: physical becomes clock.now + 1 == the old HWM
    assert physical_ms(ts) == hwm0
    assert len(persist.saves) == 2
    assert physical_ms(ts) < persist.saves[-1]


def test_failed_save_hands_out_nothing_at_or_above_the_old_hwm() -> None:
    tso, clock, persist = make(window_ms=100)
    t1 = tso.get_ts()
    old_hwm = tso.high_water_mark
    clock.now = old_hwm + 50  # the next ts needs a new HWM
    persist.fail = True
    with pytest.raises(OSError):
        tso.get_ts()
    assert tso.high_water_mark == old_hwm
    assert persist.store["hwm"] == old_hwm
    persist.fail = False
    t2 = tso.get_ts()
    assert t2 > t1
    assert physical_ms(t2) < persist.saves[-1]


steps = st.lists(
    st.tuples(
        st.integers(-5000, 5000),  # clock change in ms
        st.one_of(st.just(1), st.integers(1, MAX_LOGICAL - 1)),  # count
        st.booleans(),  # restart before this call
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150)
@given(steps, st.integers(1, 5000))
def test_timestamps_increase_through_any_clock_batches_and_restarts(
    ops: list[tuple[int, int, bool]], window_ms: int
) -> None:
    clock = FakeClock()
    persist = Persist()
    tso, _, _ = make(clock=clock, persist=persist, window_ms=window_ms)
    prev = 0
    for delta, count, restart in ops:
        clock.now += delta
        if restart:
            tso, _, _ = make(clock=clock, persist=persist, window_ms=window_ms)
        last = tso.get_ts(count)
        first = last - count + 1
        assert first > prev
        assert physical_ms(first) == physical_ms(last)
        assert logical(first) >= 1
        assert physical_ms(last) < persist.store["hwm"]
        prev = last


# --------------------------------------------------------------------------
# embedded store: the HWM is persisted in RocksDB
# --------------------------------------------------------------------------


def test_embedded_store_tso_increases_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with kvstore.open(path) as client:
        first = [client.tso() for _ in range(50)]
    assert all(a < b for a, b in pairwise(first))
    with pytest.raises(ClosedError):
        client.tso()
    with kvstore.open(path) as client:
        second = [client.tso() for _ in range(50)]
    assert second[0] > max(first)
    assert all(a < b for a, b in pairwise(second))


def test_embedded_store_tso_survives_clock_set_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same, with a clock set back an hour between the two opens: only the
    high-water mark persisted in the store keeps the second run above the
    first."""
    clock = FakeClock()
    monkeypatch.setattr(
        embedded, "TimestampOracle", functools.partial(TimestampOracle, clock_ms=clock)
    )
    path = tmp_path / "db"
    with kvstore.open(path) as client:
        first = [client.tso() for _ in range(20)]
        clock.now += 5
        first += [client.tso() for _ in range(20)]
    clock.now -= 3_600_000
    with kvstore.open(path) as client:
        second = [client.tso() for _ in range(20)]
    assert second[0] > max(first)
    assert all(a < b for a, b in pairwise(second))
    # Control: without the persisted HWM (a fresh path) the set-back clock
    # would indeed have gone backwards.
    with kvstore.open(tmp_path / "fresh") as client:
        assert client.tso() < max(first)
