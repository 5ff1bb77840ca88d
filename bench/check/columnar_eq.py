"""Columnar-equality checker: the columnar replica and the row store agree.

A columnar read at timestamp ``ts`` must return exactly the rows a row-store
read at ``ts`` returns (the learner waits for the leader's read index,
refuses to read past a lock at or below ``ts``, keeps the newest version
``<= ts``). The workload updates a table under faults and, now and then,
reads it both ways at one ``ts``.

Operations: ``f="scan-pair"``, ``ok`` result
``{"ts": int, "columnar": rows, "row": rows, "source": "columnar"|"fallback"}``
with rows as lists of ``[pk, ...]`` values (any order). A pair answered by
the row-store fallback (the columnar node was down) is equal by construction:
counted, not evidence. Writes (``f="write"``) are not checked here; the
transactional checkers cover them. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.check.history import Anomaly, CheckResult, Op

MAX_SHOWN = 10


def _rows(rows: Any) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r) for r in rows or [])


def check(ops: Sequence[Op]) -> CheckResult:
    anomalies: list[Anomaly] = []
    pairs = compared = fallbacks = 0
    for op in ops:
        if op.f != "scan-pair" or op.outcome != "ok":
            continue
        pairs += 1
        res = op.result
        if res.get("source") != "columnar":
            fallbacks += 1
            continue
        compared += 1
        col, row = _rows(res["columnar"]), _rows(res["row"])
        if col == row:
            continue
        missing = sorted((row - col).elements(), key=repr)
        extra = sorted((col - row).elements(), key=repr)
        # Rows differing only in non-key columns: the same pk on both sides.
        changed = sorted({r[0] for r in missing} & {r[0] for r in extra}, key=repr)
        anomalies.append(
            Anomaly(
                "columnar-mismatch",
                f"#{op.id} at ts {res['ts']}: columnar lacks {len(missing)} row(s), has "
                f"{len(extra)} extra ({len(changed)} pk(s) with other values); "
                f"e.g. lacks {missing[:MAX_SHOWN]}, extra {extra[:MAX_SHOWN]}",
                [op.id],
                {"ts": res["ts"], "missing": missing[:100], "extra": extra[:100]},
            )
        )
    stats = {"pairs": pairs, "compared": compared, "fallbacks": fallbacks}
    if compared == 0:
        return CheckResult(
            "columnar-eq", None, anomalies, stats={**stats, "why": "no columnar read"}
        )
    return CheckResult("columnar-eq", not anomalies, anomalies, stats=stats)
