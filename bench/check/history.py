"""The history of a consistency run: what every client asked and what it was told.

A history is a list of :class:`Event` in time order. Each operation is two
events of the same ``process``: an ``invoke`` (with the arguments as
``value``) and a completion (``ok``, ``fail`` or ``info``, with the result as
``value``). The outcomes mean:

* ``ok``: the operation took effect (a read returned ``value``);
* ``fail``: it certainly did not take effect (a write conflict, a CAS whose
  comparison failed, a read that errored);
* ``info``: nobody knows (a timeout, a lost connection during a commit). An
  ``info`` write may take effect at any moment after its invoke, or never.
  Recording such an operation as failed would make the checkers blame the
  database for our ignorance, so it never is.

A process runs one operation at a time. After an ``info`` it may still be in
flight, so the client continues under a new process id (as Jepsen does).

Times are ``time.monotonic()`` seconds. On Linux that is ``CLOCK_MONOTONIC``,
one clock for the whole machine, so histories recorded by several client
processes merge by time. An invoke with no completion (a client process that
died) loads as ``info``.

Checkers never read events; they read :class:`Op`, one completed operation
with both times (:func:`pair`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

EventType = Literal["invoke", "ok", "fail", "info"]
Outcome = Literal["ok", "fail", "info"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "fail", "info")


@dataclass(frozen=True)
class Event:
    """One line of a history (JSON-able ``value``)."""

    process: int
    type: EventType
    f: str
    value: Any
    time: float
    error: str | None = None


@dataclass(frozen=True)
class Op:
    """A completed operation: the invoke and its completion together.

    ``id`` is its position among the history's operations (in invoke order);
    anomalies name operations by it. ``end`` is ``math.inf`` for ``info``
    operations: their effect, if any, may come at any later time."""

    id: int
    process: int
    f: str
    value: Any
    outcome: Outcome
    result: Any
    start: float
    end: float
    error: str | None = None

    def describe(self) -> str:
        shown = self.result if self.outcome == "ok" and self.result is not None else self.value
        err = f" ({self.error})" if self.error else ""
        return f"#{self.id} p{self.process} {self.f} {shown!r} -> {self.outcome}{err}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if math.isinf(self.end):
            d["end"] = None
        return d


@dataclass
class Anomaly:
    """Something a checker found: a ``kind`` (``lost``, ``G1c``, ...), a
    sentence, and the ids of the operations involved."""

    kind: str
    message: str
    ops: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    """What every checker returns. ``valid`` is None when the checker could
    not decide (e.g. a linearizability search over its budget). ``allowed``
    lists phenomena found that the consistency model permits (G2 under SI):
    reported, never a failure."""

    checker: str
    valid: bool | None
    anomalies: list[Anomaly] = field(default_factory=list)
    allowed: list[Anomaly] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def verdict(valid: bool | None) -> str:
        return {True: "valid", False: "INVALID", None: "unknown"}[valid]


def pair(events: Iterable[Event]) -> list[Op]:
    """Match every invoke with the next completion of its process.

    A completion without an invoke is a recorder bug and raises; an invoke
    never completed becomes an ``info`` operation."""
    ops: list[Op | None] = []
    open_: dict[int, tuple[int, Event]] = {}
    for e in sorted(events, key=lambda e: e.time):
        if e.type == "invoke":
            if e.process in open_:
                raise ValueError(f"process {e.process} invoked twice without completing")
            open_[e.process] = (len(ops), e)
            ops.append(None)
            continue
        if e.process not in open_:
            raise ValueError(f"completion without invoke for process {e.process}")
        slot, inv = open_.pop(e.process)
        end = math.inf if e.type == "info" else e.time
        result = e.value if e.type == "ok" else None
        ops[slot] = Op(slot, e.process, inv.f, inv.value, e.type, result, inv.time, end, e.error)
    for slot, inv in open_.values():
        ops[slot] = Op(slot, inv.process, inv.f, inv.value, "info", None, inv.time, math.inf)
    return [op for op in ops if op is not None]


class Recorder:
    """Records one client process's events, appending each to a JSON-lines
    file as it happens (flushed, so a client killed mid-run leaves a history
    with its last invoke open, which loads as ``info``)."""

    def __init__(self, path: str | os.PathLike[str] | None, clock: Any = None) -> None:
        import time

        self.events: list[Event] = []
        self._clock = clock or time.monotonic
        self._file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def _add(self, e: Event) -> None:
        self.events.append(e)
        if self._file is not None:
            self._file.write(json.dumps(asdict(e)) + "\n")
            self._file.flush()

    def invoke(self, process: int, f: str, value: Any) -> None:
        self._add(Event(process, "invoke", f, value, self._clock()))

    def complete(
        self, process: int, f: str, outcome: Outcome, value: Any = None, error: str | None = None
    ) -> None:
        self._add(Event(process, outcome, f, value, self._clock(), error))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str | os.PathLike[str]) -> list[Event]:
    """Events of one client's file; a torn last line (killed writer) is skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(Event(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


def merge(histories: Iterable[Sequence[Event]]) -> list[Event]:
    """One history from several clients', in time order (stable: an invoke
    and completion with equal times keep their recorded order)."""
    merged = [e for h in histories for e in h]
    merged.sort(key=lambda e: e.time)
    return merged


def save(path: str | os.PathLike[str], events: Sequence[Event], meta: dict[str, Any]) -> None:
    doc = {"meta": meta, "events": [asdict(e) for e in events]}
    Path(path).write_text(json.dumps(doc) + "\n", encoding="utf-8")


def load(path: str | os.PathLike[str]) -> tuple[list[Event], dict[str, Any]]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Event(**e) for e in doc["events"]], dict(doc.get("meta", {}))


def by_f(ops: Iterable[Op], *fs: str) -> Iterator[Op]:
    return (op for op in ops if op.f in fs)
