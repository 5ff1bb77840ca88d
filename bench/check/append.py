"""List-append checker: Elle-style dependency cycles under snapshot isolation.

Each key holds a list; transactions append unique values to keys and read
whole lists. Because appends are unique and a list shows its whole past, the
reads reveal each key's *version order*: every read must be a prefix of the
longest one (otherwise: ``incompatible-order``). From that order and the
reads, dependencies between committed transactions follow (Adya's):

* ``ww`` T1 -> T2: T2 appended the value right after T1's in a key's order;
* ``wr`` T1 -> T2: T2 read a list whose last value T1 appended;
* ``rw`` T1 -> T2: T1 read a list that T2's append extended (T2 appended the
  value right after the last one T1 saw): an anti-dependency.

Cycles in that graph are anomalies (found per strongly connected component,
Tarjan, then a shortest cycle by breadth-first search):

* ``G0``: only ``ww`` edges (dirty write);
* ``G1c``: ``ww`` and ``wr`` edges, at least one ``wr`` (circular information flow);
* ``G-single``: exactly one ``rw`` edge (read skew, lost update);
* ``G2``: two or more ``rw`` edges (write skew): *allowed* under snapshot
  isolation, reported in ``allowed``.

Without a cycle: ``G1a`` (an ``ok`` transaction read a value appended by one
that failed), ``G1b`` (it read a list ending in a value another transaction
appended before its own last append to that key), ``duplicate-elements`` (a
value twice in one list), ``unexpected-value`` (a value nobody appended),
``internal`` (a transaction's read does not show its own earlier appends,
or differs from its own earlier read plus appends), ``stale-or-lost`` (a
read misses a value appended by an ``ok`` transaction that had returned
before the reader began: the timestamp oracle orders that commit before the
reader's snapshot, so it is lost or the read is stale).

Operations: ``f="txn"``, ``value`` a list of micro-operations
``["append", k, v]`` / ``["r", k, None]``; an ``ok`` result is the same list
with each read's list filled in. ``info`` transactions count as committed once
one of their values is read. Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Hashable, Iterable, Sequence

from bench.check.history import Anomaly, CheckResult, Op

WW, WR, RW = "ww", "wr", "rw"
MAX_PER_KIND = 20
MAX_SEARCHES = 500  # BFS runs per component and kind


def _key(k: object) -> Hashable:
    return tuple(k) if isinstance(k, list) else k


class _Graph:
    def __init__(self) -> None:
        # (a, b) -> {edge type: a key that explains it}
        self.edges: dict[tuple[int, int], dict[str, Hashable]] = defaultdict(dict)
        self.out: dict[int, set[int]] = defaultdict(set)

    def add(self, a: int, b: int, kind: str, key: Hashable) -> None:
        if a != b:
            self.edges[a, b].setdefault(kind, key)
            self.out[a].add(b)

    def sccs(self) -> list[list[int]]:
        """Tarjan's algorithm, iterative (histories outgrow the recursion limit)."""
        index: dict[int, int] = {}
        low: dict[int, int] = {}
        on_stack: set[int] = set()
        stack: list[int] = []
        out: list[list[int]] = []
        counter = 0
        for root in list(self.out):
            if root in index:
                continue
            work: list[tuple[int, Iterable[int]]] = [(root, iter(sorted(self.out[root])))]
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack.add(root)
            while work:
                v, it = work[-1]
                for w in it:
                    if w not in index:
                        index[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on_stack.add(w)
                        work.append((w, iter(sorted(self.out.get(w, ())))))
                        break
                    if w in on_stack:
                        low[v] = min(low[v], index[w])
                else:
                    work.pop()
                    if work:
                        low[work[-1][0]] = min(low[work[-1][0]], low[v])
                    if low[v] == index[v]:
                        comp = []
                        while True:
                            w = stack.pop()
                            on_stack.discard(w)
                            comp.append(w)
                            if w == v:
                                break
                        if len(comp) > 1:
                            out.append(sorted(comp))
        return out

    def path(self, src: int, dst: int, kinds: set[str], within: set[int]) -> list[int] | None:
        """Shortest path src -> dst over edges having one of ``kinds``."""
        prev: dict[int, int] = {src: src}
        queue = deque([src])
        while queue:
            v = queue.popleft()
            if v == dst:
                path = [v]
                while v != src:
                    v = prev[v]
                    path.append(v)
                return path[::-1]
            for w in sorted(self.out.get(v, ())):
                if w in within and w not in prev and kinds & self.edges[v, w].keys():
                    prev[w] = v
                    queue.append(w)
        return None

    def shortest_cycle(self, comp: set[int], first: str, rest: set[str]) -> list[int] | None:
        """Shortest cycle whose first edge has type ``first`` and the others a
        type in ``rest``, inside ``comp``; as nodes, first node repeated."""
        best: list[int] | None = None
        tried = 0
        for (a, b), kinds in self.edges.items():
            if first not in kinds or a not in comp or b not in comp:
                continue
            tried += 1
            if tried > MAX_SEARCHES:
                break
            back = self.path(b, a, rest, comp)
            if back is not None and (best is None or len(back) + 1 < len(best)):
                best = [a, *back]
        return best

    def describe(self, cycle: list[int], prefer: Sequence[str]) -> tuple[list[str], list[str]]:
        steps, kinds = [], []
        for a, b in itertools.pairwise(cycle):
            e = self.edges[a, b]
            kind = next(k for k in prefer if k in e)
            kinds.append(kind)
            steps.append(f"#{a} -{kind} {e[kind]!r}-> #{b}")
        return steps, kinds


def check(ops: Sequence[Op]) -> CheckResult:
    txns = [op for op in ops if op.f == "txn"]
    found: dict[str, list[Anomaly]] = defaultdict(list)
    writer: dict[tuple[Hashable, Hashable], Op] = {}
    appends: dict[int, dict[Hashable, list[Hashable]]] = {}
    for t in txns:
        mine: dict[Hashable, list[Hashable]] = defaultdict(list)
        for f, k, v in t.value:
            if f == "append":
                writer[_key(k), _key(v)] = t
                mine[_key(k)].append(_key(v))
        appends[t.id] = mine

    # Reads of ok transactions: full lists (for version orders) and external
    # observations (what the txn saw of others, for wr/rw edges).
    full: dict[Hashable, list[tuple[Op, list[Hashable]]]] = defaultdict(list)
    external: list[tuple[Op, Hashable, list[Hashable]]] = []
    for t in txns:
        if t.outcome != "ok":
            continue
        known: dict[Hashable, list[Hashable]] = {}
        own: dict[Hashable, list[Hashable]] = defaultdict(list)
        for f, k_, v in t.result:
            k = _key(k_)
            if f == "append":
                if k in known:
                    known[k] = [*known[k], _key(v)]
                else:
                    own[k].append(_key(v))
                continue
            seen = [_key(x) for x in v or []]
            if k in known:
                if seen != known[k]:
                    found["internal"].append(
                        Anomaly(
                            "internal",
                            f"#{t.id} read {k!r} = {seen}, its own view was {known[k]}",
                            [t.id],
                            {"key": k},
                        )
                    )
            elif own[k]:
                n = len(own[k])
                if seen[-n:] != own[k]:
                    found["internal"].append(
                        Anomaly(
                            "internal",
                            f"#{t.id} read {k!r} = {seen} without its own "
                            f"appends {own[k]} at the end",
                            [t.id],
                            {"key": k},
                        )
                    )
                else:
                    external.append((t, k, seen[:-n]))
            else:
                external.append((t, k, seen))
            known[k] = seen
            full[k].append((t, seen))
            if len(set(seen)) != len(seen):
                found["duplicate-elements"].append(
                    Anomaly(
                        "duplicate-elements", f"#{t.id} read {k!r} = {seen}", [t.id], {"key": k}
                    )
                )
            for x in seen:
                w = writer.get((k, x))
                if w is None:
                    found["unexpected-value"].append(
                        Anomaly(
                            "unexpected-value",
                            f"#{t.id} read {x!r} in {k!r}, never appended",
                            [t.id],
                            {"key": k, "value": x},
                        )
                    )
                elif w.outcome == "fail":
                    found["G1a"].append(
                        Anomaly(
                            "G1a",
                            f"#{t.id} read {x!r} in {k!r}, appended by failed #{w.id}",
                            [t.id, w.id],
                            {"key": k, "value": x},
                        )
                    )
            if seen and (w := writer.get((k, seen[-1]))) is not None and w.id != t.id:
                last = appends[w.id][k]
                if seen[-1] != last[-1]:
                    found["G1b"].append(
                        Anomaly(
                            "G1b",
                            f"#{t.id} read {k!r} ending in {seen[-1]!r}, an "
                            f"intermediate append of #{w.id} (its last: {last[-1]!r})",
                            [t.id, w.id],
                            {"key": k},
                        )
                    )

    # Real time: an ok append that returned before a reader began is in its read.
    acked: dict[Hashable, list[tuple[float, Hashable, int]]] = defaultdict(list)
    for t in txns:
        if t.outcome == "ok":
            for k, vs in appends[t.id].items():
                acked[k].extend((t.end, v, t.id) for v in vs)
    for entries in acked.values():
        entries.sort(key=lambda x: x[0])
    for k, reads in full.items():
        for t, seen in reads:
            have = set(seen)
            missing = []
            for end, v, wid in acked.get(k, []):
                if end >= t.start:
                    break
                if v not in have:
                    missing.append((v, wid))
            if missing:
                found["stale-or-lost"].append(
                    Anomaly(
                        "stale-or-lost",
                        f"#{t.id} read {k!r} without {len(missing)} value(s) appended by "
                        "transactions acknowledged before it began: "
                        f"{[v for v, _ in missing][:10]}",
                        [t.id, *sorted({wid for _, wid in missing})[:10]],
                        {"key": k, "values": [v for v, _ in missing]},
                    )
                )

    # Version orders: the longest read of each key; every read its prefix.
    order: dict[Hashable, list[Hashable]] = {}
    for k, reads in full.items():
        longest = max(reads, key=lambda r: len(r[1]))
        order[k] = longest[1]
        for t, seen in reads:
            if seen != longest[1][: len(seen)]:
                found["incompatible-order"].append(
                    Anomaly(
                        "incompatible-order",
                        f"{k!r}: #{t.id} read {seen}, #{longest[0].id} read {longest[1]}",
                        [t.id, longest[0].id],
                        {"key": k},
                    )
                )

    committed = {t.id for t in txns if t.outcome == "ok"}
    for k, vs in order.items():
        committed.update(w.id for v in vs if (w := writer.get((k, v))) and w.outcome == "info")
    g = _Graph()
    for k, vs in order.items():
        ws = [writer.get((k, v)) for v in vs]
        for a, b in itertools.pairwise(ws):
            if a is not None and b is not None and a.id in committed and b.id in committed:
                g.add(a.id, b.id, WW, k)
    for t, k, seen in external:
        vs = order.get(k, [])
        if seen != vs[: len(seen)]:
            continue  # reported as incompatible-order
        if seen and (w := writer.get((k, seen[-1]))) is not None and w.id in committed:
            g.add(w.id, t.id, WR, k)
        u = writer.get((k, vs[len(seen)])) if len(vs) > len(seen) else None
        if u is not None and u.id in committed:
            g.add(t.id, u.id, RW, k)

    allowed: list[Anomaly] = []
    comps = g.sccs()
    for comp_list in comps:
        comp = set(comp_list)
        forbidden = False
        searches = (
            ("G0", WW, {WW}, (WW,)),
            ("G1c", WR, {WW, WR}, (WR, WW)),
            ("G-single", RW, {WW, WR}, (RW, WW, WR)),
        )
        for name, first, rest, prefer in searches:
            cycle = g.shortest_cycle(comp, first, rest)
            if cycle is None:
                continue
            forbidden = True
            steps, _ = g.describe(cycle, prefer if name != "G-single" else (WW, WR, RW))
            found[name].append(
                Anomaly(name, f"cycle: {'; '.join(steps)}", cycle[:-1], {"cycle": steps})
            )
        if not forbidden:
            cycle = g.shortest_cycle(comp, RW, {WW, WR, RW})
            if cycle is not None:
                steps, _ = g.describe(cycle, (WW, WR, RW))
                allowed.append(
                    Anomaly("G2", f"cycle: {'; '.join(steps)}", cycle[:-1], {"cycle": steps})
                )

    anomalies = [a for kind in sorted(found) for a in found[kind][:MAX_PER_KIND]]
    stats: dict[str, object] = {
        "txns": {o: sum(1 for t in txns if t.outcome == o) for o in ("ok", "fail", "info")},
        "keys": len(order),
        "edges": len(g.edges),
        "cyclic_components": len(comps),
        "anomaly_counts": {k: len(v) for k, v in sorted(found.items())},
    }
    return CheckResult("append", not anomalies, anomalies, allowed, stats)
