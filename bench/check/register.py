"""Register checker: per-key linearizability, by a Wing-Gong search.

Raw KV promises that single-key operations are linearizable: there is one
order of all operations on a key, consistent with real time (an operation
that returned before another was invoked comes first), in which every read
returns the latest write. Linearizability is compositional, so each key is
checked alone.

Operations (``value`` is ``[key, argument]``):

* ``read``: ``[key, None]``, ``result`` the value read (None: absent);
* ``write``: ``[key, v]``;
* ``cas``: ``[key, [expected, new]]``; ``ok`` means it swapped, ``fail``
  that it certainly did not (the comparison failed).

The search (Wing & Gong, with the memoisation Lowe and Porcupine added):
the operations' call and return events form one time-ordered list. Walk it;
at a call, try to linearize that operation now (the model accepts it in the
current state, and the pair *(set of linearized operations, state)* has not
been explored before): apply it, take its call and return out of the list,
start again from the head. Reaching a return whose operation is not yet
linearized means the order chosen so far is wrong: undo the last choice and
try the next call after it. The history is linearizable once every operation
that returned is linearized.

An ``info`` write or CAS has a call but no return: it may be linearized at
any point after its invoke, or never (left out, it simply did not happen).
``fail`` operations and reads without an ``ok`` are dropped: they changed
nothing and told us nothing.

When a key is not linearizable the checker reports the operation whose
return could not be passed at the deepest point of the search, the state the
longest linearized prefix left, and the window of operations still to be
ordered at that point (those invoked before that return). Pure: no I/O, no
clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from bench.check.history import Anomaly, CheckResult, Op

DEFAULT_BUDGET = 2_000_000  # search steps per key before answering "unknown"


@dataclass
class KeyVerdict:
    key: Hashable
    valid: bool | None
    ops: int
    steps: int
    stuck_op: int | None = None  # id of the op whose return could not be passed
    window: tuple[int, ...] = ()  # ids of the ops to order at that point
    state_before: Hashable = None


def _step(state: Hashable, op: Op) -> tuple[bool, Hashable]:
    """The register model: may ``op`` run in ``state``, and the state after."""
    arg = op.value[1]
    if op.f == "read":
        return state == op.result, state
    if op.f == "write":
        return True, _freeze(arg)
    if op.f == "cas":
        expected, new = arg
        return state == _freeze(expected), _freeze(new)
    raise ValueError(f"unknown register operation {op.f!r}")


def _freeze(v: object) -> Hashable:
    return tuple(v) if isinstance(v, list) else v


def _relevant(op: Op) -> bool:
    if op.outcome == "fail":
        return False
    return not (op.f == "read" and op.outcome != "ok")


def check_key(
    key: Hashable, ops: Sequence[Op], initial: Hashable = None, budget: int = DEFAULT_BUDGET
) -> KeyVerdict:
    """Linearizability of one key's operations (already filtered to it)."""
    ops = [op for op in ops if _relevant(op)]
    n = len(ops)
    # Events: (time, 0 = return before a call at the same instant, op index).
    events = [(op.start, 1, i) for i, op in enumerate(ops)]
    events += [(op.end, 0, i) for i, op in enumerate(ops) if op.outcome == "ok"]
    events.sort()
    m = len(events)
    # A doubly linked list of events, node 0 the head; lifting an operation
    # out and putting it back are O(1) and undone in LIFO order (the search's
    # stack), so each node's own links stay valid while it is out.
    nxt = [k + 1 for k in range(m + 1)]
    prv = [k - 1 for k in range(m + 1)]
    nxt[m], prv[0] = 0, m
    is_call = [False] * (m + 1)
    op_of = [0] * (m + 1)
    ret_node = [0] * n  # 0: no return (info)
    for node, (_t, kind, i) in enumerate(events, start=1):
        op_of[node] = i
        is_call[node] = kind == 1
        if kind == 0:
            ret_node[i] = node

    def lift(node: int) -> None:
        nxt[prv[node]] = nxt[node]
        prv[nxt[node]] = prv[node]

    def unlift(node: int) -> None:
        nxt[prv[node]] = node
        prv[nxt[node]] = node

    required = sum(1 for op in ops if op.outcome == "ok")
    state: Hashable = initial
    linearized = 0
    seen: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable]] = []
    best: tuple[int, int, int, Hashable] = (-1, -1, 0, None)  # depth, stuck node, mask, state
    node = nxt[0]
    steps = 0
    while required:
        steps += 1
        if steps > budget:
            return KeyVerdict(key, None, n, steps)
        # Some operation that returned is not linearized, so its return lies
        # ahead: the walk never runs off the end of the list (node 0).
        if is_call[node]:
            i = op_of[node]
            ok, after = _step(state, ops[i])
            if ok and (linearized | 1 << i, after) not in seen:
                seen.add((linearized | 1 << i, after))
                stack.append((node, state))
                state, linearized = after, linearized | 1 << i
                lift(node)
                if ret_node[i]:
                    lift(ret_node[i])
                    required -= 1
                node = nxt[0]
            else:
                node = nxt[node]
            continue
        # A return whose operation is not linearized: backtrack.
        if len(stack) > best[0]:
            best = (len(stack), node, linearized, state)
        if not stack:
            break
        call, state = stack.pop()
        i = op_of[call]
        linearized &= ~(1 << i)
        if ret_node[i]:
            unlift(ret_node[i])
            required += 1
        unlift(call)
        node = nxt[call]
    if not required:
        return KeyVerdict(key, True, n, steps)
    _depth, stuck_node, mask, before = best
    stuck = ops[op_of[stuck_node]]
    pending = [op for i, op in enumerate(ops) if not mask >> i & 1 and op.start <= stuck.end]
    lo = min((op.start for op in pending if op.outcome == "ok"), default=stuck.start)
    window = tuple(sorted(op.id for op in pending if op.start >= lo or op.outcome == "ok"))
    return KeyVerdict(key, False, n, steps, stuck.id, window, before)


def check(ops: Sequence[Op], initial: Hashable = None, budget: int = DEFAULT_BUDGET) -> CheckResult:
    """Check every key of a register history (keys as ``op.value[0]``)."""
    per_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f in ("read", "write", "cas"):
            per_key[_freeze(op.value[0])].append(op)
    anomalies: list[Anomaly] = []
    undecided: list[Hashable] = []
    stats: dict[str, object] = {"keys": len(per_key), "ops": sum(map(len, per_key.values()))}
    steps = 0
    for key in sorted(per_key, key=repr):
        v = check_key(key, per_key[key], initial, budget)
        steps += v.steps
        if v.valid is None:
            undecided.append(key)
        elif not v.valid:
            anomalies.append(
                Anomaly(
                    "nonlinearizable",
                    f"key {key!r}: no linearization lets op #{v.stuck_op} return; "
                    f"{len(v.window)} op(s) to order from state {v.state_before!r}",
                    list(v.window),
                    {"key": key, "stuck_op": v.stuck_op, "state_before": v.state_before},
                )
            )
    stats["search_steps"] = steps
    if undecided:
        stats["undecided_keys"] = [repr(k) for k in undecided]
    valid: bool | None = False if anomalies else (None if undecided else True)
    return CheckResult("register", valid, anomalies, stats=stats)
