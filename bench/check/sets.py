"""Set checker: every acknowledged add is there; nothing appears from nowhere.

The workload adds unique integers (one transaction each) and reads the whole
set now and then, and once more at the end after the faults have healed.

Rules, for each ``ok`` read R:

* **lost**: an ``ok`` add that *completed before R was invoked* is absent
  from R. (A later read takes a newer snapshot than the commit, so it must
  see it. Adds still in flight during R may go either way.)
* **unexpected**: R contains a value no add ever attempted.
* **failed-present**: R contains a value whose add ``fail``-ed: a definite
  failure that took effect after all.

``info`` adds may be present or absent; the final read counts those it shows
(recovered) and those it does not. Counts for the final read: ``ok`` adds
present, ``lost``, ``recovered`` (unknown, present), ``unknown-absent``,
``unexpected``. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.check.history import Anomaly, CheckResult, Op

MAX_LISTED = 50  # values listed per anomaly


def check(ops: Sequence[Op]) -> CheckResult:
    adds = [op for op in ops if op.f == "add"]
    reads = [op for op in ops if op.f == "read" and op.outcome == "ok"]
    attempted = {int(op.value): op for op in adds}
    failed = {int(op.value) for op in adds if op.outcome == "fail"}
    ok_adds = sorted((op for op in adds if op.outcome == "ok"), key=lambda op: op.end)
    anomalies: list[Anomaly] = []
    lost_ever: set[int] = set()
    for r in reads:
        seen = {int(v) for v in r.result or []}
        # ok adds acknowledged before this read was invoked.
        due = [op for op in ok_adds if op.end < r.start]
        lost = [op for op in due if int(op.value) not in seen]
        if lost:
            lost_ever.update(int(op.value) for op in lost)
            anomalies.append(
                Anomaly(
                    "lost",
                    f"read #{r.id} misses {len(lost)} acknowledged add(s): "
                    f"{sorted(int(op.value) for op in lost)[:MAX_LISTED]}",
                    [r.id, *(op.id for op in lost[:MAX_LISTED])],
                    {"values": sorted(int(op.value) for op in lost)},
                )
            )
        unexpected = sorted(seen - attempted.keys())
        if unexpected:
            anomalies.append(
                Anomaly(
                    "unexpected",
                    f"read #{r.id} has value(s) never added: {unexpected[:MAX_LISTED]}",
                    [r.id],
                    {"values": unexpected},
                )
            )
        present_failed = sorted(seen & failed)
        if present_failed:
            anomalies.append(
                Anomaly(
                    "failed-present",
                    f"read #{r.id} has value(s) whose add failed: {present_failed[:MAX_LISTED]}",
                    [r.id, *(attempted[v].id for v in present_failed[:MAX_LISTED])],
                    {"values": present_failed},
                )
            )
    stats: dict[str, object] = {
        "adds": len(adds),
        "ok": len(ok_adds),
        "fail": len(failed),
        "info": sum(1 for op in adds if op.outcome == "info"),
        "reads": len(reads),
    }
    if not reads:
        return CheckResult("set", None, anomalies, stats={**stats, "why": "no ok read"})
    final = max(reads, key=lambda r: r.start)
    seen = {int(v) for v in final.result or []}
    unknown = {int(op.value) for op in adds if op.outcome == "info"}
    stats["final"] = {
        "ok": sum(1 for op in ok_adds if int(op.value) in seen),
        "lost": sum(1 for op in ok_adds if int(op.value) not in seen and op.end < final.start),
        "recovered": len(unknown & seen),
        "unknown-absent": len(unknown - seen),
        "unexpected": len(seen - attempted.keys()),
    }
    stats["lost-ever"] = len(lost_ever)
    return CheckResult("set", not anomalies, anomalies, stats=stats)
