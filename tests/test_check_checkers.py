"""The consistency checkers of ``htapkv check`` on hand-made histories.

Each checker must find known anomalies (with the right classification) and
pass known-good histories. Hypothesis then generates histories from a
sequential model execution (always valid; for the register, operations are
spread out in time around their linearization point so they overlap) and
asserts the checkers accept them, and mutates them (an acknowledged write
dropped from a read, a read returning an older value) to assert they are
caught. Pure and fast: no cluster.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.check import append, bank, columnar_eq, register, sets
from bench.check.history import Event, Op, Recorder, load, merge, pair, read_jsonl, save


class H:
    """Builds a list of Op with increasing ids."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def __call__(
        self,
        f: str,
        value: Any,
        outcome: str = "ok",
        result: Any = None,
        start: float = 0.0,
        end: float | None = None,
        process: int = 0,
    ) -> Op:
        if end is None:
            end = math.inf if outcome == "info" else start + 1
        op = Op(len(self.ops), process, f, value, outcome, result, start, end)  # type: ignore[arg-type]
        self.ops.append(op)
        return op


# ------------------------------------------------------------------ history
def test_pair_matches_invokes_and_open_invokes_become_info(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "c1.jsonl", clock=iter([1.0, 2.0, 3.0, 4.0, 5.0]).__next__)
    rec.invoke(1, "write", ["x", 1])
    rec.complete(1, "write", "ok")
    rec.invoke(1, "read", ["x", None])
    rec.complete(1, "read", "ok", 1)
    rec.invoke(2, "write", ["x", 2])  # never completes: the client died
    rec.close()
    other = [Event(7, "invoke", "cas", ["x", [1, 3]], 1.5), Event(7, "info", "cas", None, 2.5)]
    events = merge([read_jsonl(tmp_path / "c1.jsonl"), other])
    ops = pair(events)
    assert [(o.f, o.outcome) for o in ops] == [
        ("write", "ok"),
        ("cas", "info"),
        ("read", "ok"),
        ("write", "info"),
    ]
    assert ops[1].end == math.inf and ops[3].end == math.inf
    assert ops[2].result == 1
    save(tmp_path / "h.json", events, {"workload": "register"})
    again, meta = load(tmp_path / "h.json")
    assert again == events and meta == {"workload": "register"}


# ------------------------------------------------------------------ bank
def test_bank_good_and_bad_reads() -> None:
    h = H()
    h("transfer", {"from": "a", "to": "b", "amount": 3})
    h("read", None, result={"a": 7, "b": 13})
    h("read", None, result={"a": 10, "b": 10})
    assert bank.check(h.ops, accounts=["a", "b"], total=20).valid
    h("read", None, result={"a": 7, "b": 10})
    h("read", None, result={"a": -1, "b": 21})
    h("read", None, result={"a": 20})
    r = bank.check(h.ops, accounts=["a", "b"], total=20)
    assert not r.valid
    kinds = sorted(a.kind for a in r.anomalies)
    assert kinds == ["missing-account", "negative", "wrong-total"]
    assert next(a for a in r.anomalies if a.kind == "wrong-total").ops == [3]


# ------------------------------------------------------------------ register
def test_register_linearizable_concurrent_history() -> None:
    h = H()
    h("write", ["x", 1], start=0, end=10, process=1)
    h("read", ["x", None], result=None, start=1, end=2, process=2)  # before the write
    h("read", ["x", None], result=1, start=3, end=4, process=2)  # after it
    h("cas", ["x", [1, 2]], start=11, end=12, process=1)
    h("read", ["x", None], result=2, start=13, end=14, process=2)
    h("write", ["x", 9], outcome="fail", start=15, end=16, process=3)  # dropped
    assert register.check(h.ops).valid


def test_register_stale_read_is_not_linearizable_and_window_names_it() -> None:
    h = H()
    h("write", ["x", 1], start=0, end=1)
    h("write", ["x", 2], start=2, end=3)
    h("read", ["x", None], result=1, start=4, end=5)  # stale
    h("write", ["y", 5], start=0, end=1)
    r = register.check(h.ops)
    assert r.valid is False
    (a,) = r.anomalies
    assert a.details["key"] == "x" and a.details["stuck_op"] == 2
    assert 2 in a.ops and 3 not in a.ops


def test_register_info_write_may_happen_late_or_never() -> None:
    h = H()
    h("write", ["x", 1], start=0, end=1)
    h("write", ["x", 2], outcome="info", start=2)  # unknown outcome
    h("read", ["x", None], result=1, start=3, end=4)  # not yet (or never)
    h("read", ["x", None], result=2, start=5, end=6)  # now it did
    assert register.check(h.ops).valid
    h2 = H()
    h2("write", ["x", 1], start=0, end=1)
    h2("cas", ["x", [7, 8]], outcome="info", start=2)  # could never apply
    h2("read", ["x", None], result=1, start=3, end=4)
    assert register.check(h2.ops).valid
    # ...but an info write cannot take effect before it was invoked.
    h3 = H()
    h3("read", ["x", None], result=2, start=0, end=1)
    h3("write", ["x", 2], outcome="info", start=2)
    assert register.check(h3.ops).valid is False


def test_register_cas_from_wrong_state_is_caught() -> None:
    h = H()
    h("write", ["x", 1], start=0, end=1)
    h("cas", ["x", [5, 6]], start=2, end=3)  # ok, but x was 1
    assert register.check(h.ops).valid is False


def test_register_budget_exhausted_is_unknown_not_invalid() -> None:
    h = H()
    for i in range(12):
        h("write", ["x", i], start=0, end=100, process=i)
    h("read", ["x", None], result=99, start=101, end=102)
    r = register.check(h.ops, budget=50)
    assert r.valid is None and not r.anomalies


def _register_history(draw: st.DrawFn, n_ops: int, spread: bool) -> H:
    """A sequential register execution, each op's interval placed around its
    linearization point (so ops overlap), with some info writes."""
    h = H()
    state: dict[str, Any] = {}
    for i in range(n_ops):
        t = 10.0 * i
        key = draw(st.sampled_from(["x", "y"]))
        kind = draw(st.sampled_from(["read", "write", "cas", "cas-fail", "info"]))
        lo = t - (draw(st.floats(0, 25)) if spread else 1)
        hi = t + (draw(st.floats(0.5, 25)) if spread else 1)
        if kind == "read":
            h("read", [key, None], result=state.get(key), start=lo, end=hi, process=i)
        elif kind == "write" or (kind == "cas" and key not in state):
            state[key] = i
            h("write", [key, i], start=lo, end=hi, process=i)
        elif kind == "cas":
            h("cas", [key, [state[key], i]], start=lo, end=hi, process=i)
            state[key] = i
        elif kind == "cas-fail":
            h("cas", [key, [-1, i]], outcome="fail", start=lo, end=hi, process=i)
        else:
            applied = draw(st.booleans())
            if applied:
                state[key] = i
            h("write", [key, i], outcome="info", start=lo if applied else t, process=i)
    return h


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_register_accepts_model_histories_and_catches_stale_reads(data: st.DataObject) -> None:
    h = _register_history(data.draw, data.draw(st.integers(1, 30)), spread=True)
    assert register.check(h.ops).valid is True
    # Mutation: on a history without overlap, a read that returns an older
    # value than the latest acknowledged write is never linearizable.
    h2 = _register_history(data.draw, data.draw(st.integers(4, 20)), spread=False)
    ops = h2.ops
    writes = [o for o in ops if o.f == "write" and o.outcome == "ok"]
    reads = [o for o in ops if o.f == "read" and o.outcome == "ok"]
    cand = [
        (w1, w2, r)
        for w1 in writes
        for w2 in writes
        for r in reads
        if w1.value[0] == w2.value[0] == r.value[0]
        and w1.end < w2.start
        and w2.end < r.start
        and r.result == w2.value[1]
    ]
    if not cand:
        return
    w1, _w2, r = cand[0]
    ops[r.id] = Op(r.id, r.process, r.f, r.value, "ok", w1.value[1], r.start, r.end)
    assert register.check(ops).valid is False


# ------------------------------------------------------------------ set
def test_set_counts_and_anomalies() -> None:
    h = H()
    h("add", 1, start=0, end=1)
    h("add", 2, outcome="info", start=0)
    h("add", 3, outcome="info", start=0)
    h("add", 4, outcome="fail", start=0, end=1)
    h("read", None, result=[1, 2], start=5, end=6)
    r = sets.check(h.ops)
    assert r.valid, r.anomalies
    assert r.stats["final"] == {
        "ok": 1,
        "lost": 0,
        "recovered": 1,
        "unknown-absent": 1,
        "unexpected": 0,
    }
    h("add", 5, start=7, end=8)
    h("read", None, result=[2, 4, 9], start=9, end=10)
    r = sets.check(h.ops)
    assert not r.valid
    kinds = {a.kind: a for a in r.anomalies}
    assert set(kinds) == {"lost", "unexpected", "failed-present"}
    assert kinds["lost"].details["values"] == [1, 5]
    assert r.stats["final"]["lost"] == 2 and r.stats["final"]["unexpected"] == 1


def test_set_add_concurrent_with_read_may_be_absent() -> None:
    h = H()
    h("add", 1, start=0, end=10)
    h("read", None, result=[], start=5, end=6)
    assert sets.check(h.ops).valid


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(["ok", "info", "fail", "read"]), min_size=1, max_size=40), st.data()
)
def test_set_model_histories_pass_and_dropped_acks_are_caught(
    kinds: list[str], data: st.DataObject
) -> None:
    h = H()
    present: set[int] = set()
    for i, kind in enumerate(kinds):
        if kind == "read":
            h("read", None, result=sorted(present), start=i, end=i + 0.5)
            continue
        applied = kind == "ok" or (kind == "info" and data.draw(st.booleans()))
        if applied:
            present.add(i)
        h("add", i, outcome=kind, start=i, end=i + 0.5)
    h("read", None, result=sorted(present), start=len(kinds), end=len(kinds) + 1)
    assert sets.check(h.ops).valid
    acked = [o for o in h.ops if o.f == "add" and o.outcome == "ok"]
    if acked:
        victim = data.draw(st.sampled_from(acked))
        final = h.ops[-1]
        dropped = [v for v in final.result if v != victim.value]
        h.ops[-1] = Op(final.id, 0, "read", None, "ok", dropped, final.start, final.end)
        r = sets.check(h.ops)
        assert not r.valid and any(victim.value in a.details["values"] for a in r.anomalies)


# ------------------------------------------------------------------ list-append
def txn(h: H, mops: list[list[Any]], outcome: str = "ok", start: float = 0) -> Op:
    value = [[f, k, None if f == "r" else v] for f, k, v in mops]
    return h("txn", value, outcome=outcome, result=mops if outcome == "ok" else None, start=start)


def kinds_of(r: Any) -> list[str]:
    return sorted(a.kind for a in r.anomalies)


def test_append_serial_history_is_valid() -> None:
    h = H()
    txn(h, [["append", "x", 1], ["r", "x", [1]]])
    txn(h, [["r", "x", [1]], ["append", "x", 2], ["append", "y", 1]])
    txn(h, [["r", "x", [1, 2]], ["r", "y", [1]]])
    txn(h, [["append", "x", 3]], outcome="info")  # unknown, never seen
    r = append.check(h.ops)
    assert r.valid and not r.allowed, r.anomalies


def test_append_g0_write_cycle() -> None:
    h = H()
    txn(h, [["append", "x", 1], ["append", "y", 2]])
    txn(h, [["append", "x", 2], ["append", "y", 1]])
    txn(h, [["r", "x", [1, 2]], ["r", "y", [1, 2]]])
    r = append.check(h.ops)
    assert "G0" in kinds_of(r)
    g0 = next(a for a in r.anomalies if a.kind == "G0")
    assert sorted(g0.ops) == [0, 1]


def test_append_g1c_circular_information_flow() -> None:
    h = H()
    txn(h, [["append", "x", 1], ["r", "y", [1]]])  # T0 saw T1's append
    txn(h, [["append", "y", 1], ["r", "x", [1]]])  # T1 saw T0's append
    r = append.check(h.ops)
    assert kinds_of(r) == ["G1c"]


def test_append_g_single_lost_update() -> None:
    h = H()
    txn(h, [["append", "x", 0]])
    txn(h, [["r", "x", [0]], ["append", "x", 1]])
    txn(h, [["r", "x", [0]], ["append", "x", 2]])  # both read [0]: one must fail
    txn(h, [["r", "x", [0, 1, 2]]])
    r = append.check(h.ops)
    assert kinds_of(r) == ["G-single"]
    assert sorted(r.anomalies[0].ops) == [1, 2]


def test_append_g2_write_skew_is_allowed() -> None:
    h = H()
    txn(h, [["r", "x", []], ["append", "y", 1]])
    txn(h, [["r", "y", []], ["append", "x", 1]])
    txn(h, [["r", "x", [1]], ["r", "y", [1]]])
    r = append.check(h.ops)
    assert r.valid and [a.kind for a in r.allowed] == ["G2"]


def test_append_g1a_g1b_duplicates_garbage_internal() -> None:
    h = H()
    txn(h, [["append", "x", 1]], outcome="fail")
    txn(h, [["r", "x", [1]]])  # G1a
    txn(h, [["append", "y", 1], ["append", "y", 2]])
    txn(h, [["r", "y", [1]]])  # G1b: intermediate state of txn 2
    txn(h, [["r", "z", [5, 5]]])  # duplicate + never appended
    txn(h, [["append", "w", 1], ["r", "w", []]])  # internal: own append missing
    r = append.check(h.ops)
    kinds = kinds_of(r)
    assert {"G1a", "G1b", "duplicate-elements", "unexpected-value", "internal"} <= set(kinds)
    assert next(a for a in r.anomalies if a.kind == "G1a").ops == [1, 0]


def test_append_incompatible_orders() -> None:
    h = H()
    txn(h, [["append", "x", 1]])
    txn(h, [["append", "x", 2]])
    txn(h, [["r", "x", [1, 2]]])
    txn(h, [["r", "x", [2, 1]]])
    assert "incompatible-order" in kinds_of(append.check(h.ops))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_append_serial_executions_pass_and_mutations_are_caught(data: st.DataObject) -> None:
    """Serial execution of random transactions (some failed, some with an
    unknown outcome that did or did not apply): a serial history is valid
    under SI and has no G2 either. (Mutations: the hand-made tests above.)"""
    h = H()
    db: dict[str, list[int]] = {}
    counter = 0
    for _ in range(data.draw(st.integers(1, 12))):
        mops: list[list[Any]] = []
        outcome = data.draw(st.sampled_from(["ok", "ok", "ok", "fail", "info"]))
        local = {k: list(v) for k, v in db.items()}
        for _ in range(data.draw(st.integers(1, 4))):
            k = data.draw(st.sampled_from(["x", "y", "z"]))
            if data.draw(st.booleans()):
                counter += 1
                local.setdefault(k, []).append(counter)
                mops.append(["append", k, counter])
            else:
                mops.append(["r", k, list(local.get(k, []))])
        if outcome == "ok" or (outcome == "info" and data.draw(st.booleans())):
            db = local
        txn(h, mops, outcome=outcome)
    txn(h, [["r", k, list(db.get(k, []))] for k in ("x", "y", "z")])
    r = append.check(h.ops)
    assert r.valid and not r.allowed, r.anomalies


def test_append_dropped_write_makes_a_cycle() -> None:
    # T1 appends 2 after T0's 1; T2 reads x without 2 but saw T1's y (read skew).
    h = H()
    txn(h, [["append", "x", 1]])
    txn(h, [["r", "x", [1]], ["append", "x", 2], ["append", "y", 1]])
    txn(h, [["r", "y", [1]], ["r", "x", [1]]])  # saw T1's y but not its x: read skew
    txn(h, [["r", "x", [1, 2]]])
    r = append.check(h.ops)
    assert kinds_of(r) == ["G-single"]


# ------------------------------------------------------------------ columnar-eq
def test_columnar_eq() -> None:
    h = H()
    rows = [[1, "a", 2.0], [2, "b", 3.0]]
    h(
        "scan-pair",
        None,
        result={"ts": 5, "columnar": rows[::-1], "row": rows, "source": "columnar"},
    )
    h("scan-pair", None, result={"ts": 6, "columnar": rows, "row": rows, "source": "fallback"})
    r = columnar_eq.check(h.ops)
    assert r.valid and r.stats == {"pairs": 2, "compared": 1, "fallbacks": 1}
    bad = [[1, "a", 2.0], [2, "b", 4.0], [3, "c", 1.0]]
    h("scan-pair", None, result={"ts": 7, "columnar": bad, "row": rows, "source": "columnar"})
    r = columnar_eq.check(h.ops)
    assert not r.valid
    (a,) = r.anomalies
    assert a.details["missing"] == [(2, "b", 3.0)] and len(a.details["extra"]) == 2


# ------------------------------------------------------------------ the command
def test_check_command_parses_and_prints_a_verdict() -> None:
    import argparse
    import io

    from rich.console import Console

    from bench.check import cli
    from bench.check.runner import RunOutcome

    parser = argparse.ArgumentParser(prog="htapkv")
    cli.register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["check", "--workload", "set", "--nemesis", "kill", "--time", "5"])
    assert (ns.workload, ns.nemesis, ns.time, ns.clients) == ("set", "kill", 5.0, 3)
    h = H()
    h("add", 1)
    h("read", None, result=[], start=5, end=6)
    result = sets.check(h.ops)
    meta = {"workload": "set", "nemesis": "none", "outcomes": {"ok": 2, "fail": 0, "info": 0}}
    outcome = RunOutcome(result, h.ops, [], Path("/tmp/x"), 1, meta)
    assert outcome.exit_code == 1
    buf = io.StringIO()
    cli.print_verdict(outcome, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "INVALID" in text and "lost" in text and "#0 p0 add 1 -> ok" in text


def test_append_acknowledged_append_missing_from_a_later_read() -> None:
    h = H()
    txn(h, [["append", "x", 1]], start=0)  # returns at 1
    txn(h, [["r", "x", []]], start=0.5)  # concurrent: may miss it
    txn(h, [["r", "x", []]], start=2)  # began after: must see it
    r = append.check(h.ops)
    assert kinds_of(r) == ["stale-or-lost"]
    assert r.anomalies[0].ops == [2, 0]


def test_all_nemesis_injects_every_kind_before_repeating_one() -> None:
    """``--nemesis all`` cycles through the kinds this machine can run, in
    a seeded order, so a run of len(kinds) rounds has seen every one."""
    import random

    from bench.check.nemesis import Nemesis

    n = Nemesis(None, "all", random.Random(3))
    assert "kill" in n.kinds and "pause" in n.kinds
    for _ in range(3):
        rounds = [n._next_kind() for _ in range(len(n.kinds))]
        assert sorted(rounds) == sorted(n.kinds)
    again = Nemesis(None, "all", random.Random(3))
    first = [again._next_kind() for _ in range(len(again.kinds))]
    n2 = Nemesis(None, "all", random.Random(3))
    assert [n2._next_kind() for _ in range(len(n2.kinds))] == first  # seeded
