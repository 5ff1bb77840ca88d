"""Bank checker: money is neither created nor destroyed.

The workload moves amounts between accounts in transactions and reads the
whole bank (every account, one snapshot) now and then. Under snapshot
isolation every ``ok`` read sees a state between two committed transfers, so:

* the balances sum to the initial total (a torn or partial snapshot, a lost
  or doubled transfer shows here);
* no balance is negative (transfers check funds in the same transaction: a
  negative balance means two transfers overdrew one account — a lost update);
* every account is present (a read that misses a key is a broken snapshot).

Operations: ``read`` with ``result`` = ``{account: balance}``; ``transfer``
with ``value`` = ``{"from", "to", "amount"}`` (not checked: its effect is
seen through the reads). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bench.check.history import Anomaly, CheckResult, Op

MAX_REPORTED = 20  # anomalies of one kind kept in full; the rest only counted


def check(ops: Sequence[Op], *, accounts: Iterable[str], total: int) -> CheckResult:
    """Check every ``ok`` read of ``ops`` against the conserved ``total`` over
    ``accounts`` (names as the reads report them)."""
    names = {str(a) for a in accounts}
    found: dict[str, list[Anomaly]] = {"wrong-total": [], "negative": [], "missing-account": []}
    reads = 0
    transfers = {"ok": 0, "fail": 0, "info": 0}
    for op in ops:
        if op.f == "transfer":
            transfers[op.outcome] += 1
            continue
        if op.f != "read" or op.outcome != "ok":
            continue
        reads += 1
        balances = {str(k): int(v) for k, v in dict(op.result or {}).items()}
        missing = sorted(names - balances.keys())
        if missing:
            found["missing-account"].append(
                Anomaly(
                    "missing-account",
                    f"read #{op.id} has no balance for {', '.join(missing)}",
                    [op.id],
                    {"missing": missing, "read": balances},
                )
            )
        got = sum(balances.values())
        if got != total:
            found["wrong-total"].append(
                Anomaly(
                    "wrong-total",
                    f"read #{op.id} sums to {got}, expected {total} ({got - total:+d})",
                    [op.id],
                    {"total": got, "expected": total, "read": balances},
                )
            )
        negative = {k: v for k, v in balances.items() if v < 0}
        if negative:
            found["negative"].append(
                Anomaly(
                    "negative",
                    f"read #{op.id} has negative balances {negative}",
                    [op.id],
                    {"negative": negative, "read": balances},
                )
            )
    anomalies: list[Anomaly] = []
    stats: dict[str, object] = {"reads": reads, "transfers": transfers}
    for kind, items in found.items():
        stats[kind] = len(items)
        anomalies.extend(items[:MAX_REPORTED])
    if reads == 0:
        return CheckResult("bank", None, anomalies, stats={**stats, "why": "no ok read"})
    return CheckResult("bank", not anomalies, anomalies, stats=stats)
