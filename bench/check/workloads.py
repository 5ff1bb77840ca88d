"""The client side of ``htapkv check``: what each workload does and records.

A workload has four parts, used by :mod:`bench.check.runner`:

* ``setup(client)``: in the parent, before the clients start (accounts,
  a table);
* ``client_loop(client, ctx)``: in each client *process*, until the
  deadline: one operation at a time, each recorded as an invoke and a
  completion (:class:`~bench.check.history.Recorder`);
* ``final(client, ctx)``: in the parent, once every fault is healed: the
  final reads the checker needs;
* ``check(ops)``: the pure checker.

How errors become outcomes (the rule that matters most): a transaction whose
body or prewrite failed left nothing committed (``fail``; the client rolls
back, a resolver cleans what a crash left); a transaction whose primary
commit failed other than by being rolled back is ``info``. Raw writes that
raised are ``info`` (the clients run with ``raw_retry_unknown=False``: a
write that may have applied raises ``UndeterminedError``); reads that raised
are ``fail`` (they changed nothing).

``inject`` is a test-only hook (never on the command line): a deliberately
broken client that lets a test show the runner and checkers catch a real
anomaly. ``lose-ack``: the set workload acknowledges some adds it never
commits.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.check import append, bank, columnar_eq, register, sets
from bench.check.history import CheckResult, Op, Outcome, Recorder
from kvstore.client.client import Client
from kvstore.client.txn import Transaction
from kvstore.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    TxnAbortedError,
    WriteConflictError,
)

FINAL_PROCESS = 1_000_000  # process id of the parent's final reads


@dataclass
class Ctx:
    """What a client loop needs besides the client."""

    worker: int
    rec: Recorder
    rng: random.Random
    deadline: float  # time.monotonic()
    inject: str | None = None
    generation: int = 0
    counter: int = 0
    # Set by the runner's client processes: the run ends when the parent
    # says so (after the fault in progress at the deadline), not at a time.
    stopped: Callable[[], bool] | None = None

    @property
    def process(self) -> int:
        return self.worker * 10_000 + self.generation

    def unique(self) -> int:
        """A value no other operation of the run uses."""
        self.counter += 1
        return self.worker * 1_000_000 + self.counter

    def running(self) -> bool:
        if self.stopped is not None:
            return not self.stopped()
        return time.monotonic() < self.deadline

    def op(self, f: str, value: Any, body: Callable[[], tuple[Outcome, Any]]) -> None:
        """Invoke, run ``body`` (returns outcome and result), complete. An
        exception escaping ``body`` is ``info``: we do not know what it did."""
        p = self.process
        self.rec.invoke(p, f, value)
        try:
            outcome, result = body()
        except Exception as e:
            outcome, result = "info", None
            self.rec.complete(p, f, "info", None, f"{type(e).__name__}: {e}"[:300])
        else:
            self.rec.complete(p, f, outcome, result)
        if outcome == "info":
            self.generation += 1  # the old process may still be in flight


def run_txn(client: Client, body: Callable[[Transaction], Any]) -> tuple[Outcome, Any, str | None]:
    """One attempt of a transaction (no retry: a retry would be a new
    operation). Returns outcome, ``body``'s result, and the error if any."""
    txn = client.begin()
    try:
        result = body(txn)
    except Exception as e:
        txn.rollback()
        return "fail", None, f"{type(e).__name__}: {e}"[:300]
    try:
        txn.commit()
    except (WriteConflictError, TxnAbortedError, AlreadyExistsError) as e:
        return "fail", None, f"{type(e).__name__}: {e}"[:300]
    except Exception as e:
        # Still active: the primary's commit was sent and its fate is
        # unknown. Rolled back: prewrite failed, nothing committed.
        outcome: Outcome = "info" if txn.is_active else "fail"
        return outcome, None, f"{type(e).__name__}: {e}"[:300]
    return "ok", result, None


def txn_op(
    ctx: Ctx, client: Client, f: str, value: Any, body: Callable[[Transaction], Any]
) -> None:
    p = ctx.process
    ctx.rec.invoke(p, f, value)
    outcome, result, err = run_txn(client, body)
    ctx.rec.complete(p, f, outcome, result, err)
    if outcome == "info":
        ctx.generation += 1


# --------------------------------------------------------------------- bank
@dataclass
class Bank:
    name: str = "bank"
    accounts: list[str] = field(default_factory=lambda: [f"a{i}" for i in range(5)])
    initial: int = 100

    def key(self, a: str) -> bytes:
        return b"bank/" + a.encode()

    def setup(self, client: Client) -> None:
        with client.begin() as t:
            for a in self.accounts:
                t.put(self.key(a), b"%d" % self.initial)

    def _read(self, client: Client, ctx: Ctx, process: int | None = None) -> None:
        def body(t: Transaction) -> dict[str, int]:
            got = t.batch_get([self.key(a) for a in self.accounts])
            return {k.decode()[5:]: int(v) for k, v in got.items()}

        p = ctx.process if process is None else process
        ctx.rec.invoke(p, "read", None)
        outcome, result, err = run_txn(client, body)
        ctx.rec.complete(p, "read", outcome, result, err)

    def client_loop(self, client: Client, ctx: Ctx) -> None:
        while ctx.running():
            if ctx.rng.random() < 0.3:
                self._read(client, ctx)
                continue
            src, dst = ctx.rng.sample(self.accounts, 2)
            amount = ctx.rng.randint(1, 20)

            def body(t: Transaction, src: str = src, dst: str = dst, amount: int = amount) -> Any:
                a = int(t.get(self.key(src)) or b"0")
                b = int(t.get(self.key(dst)) or b"0")
                if a < amount:
                    return "insufficient"
                t.put(self.key(src), b"%d" % (a - amount))
                t.put(self.key(dst), b"%d" % (b + amount))
                return "moved"

            txn_op(ctx, client, "transfer", {"from": src, "to": dst, "amount": amount}, body)

    def final(self, client: Client, ctx: Ctx) -> bool:
        self._read(client, ctx, FINAL_PROCESS)
        return ctx.rec.events[-1].type == "ok"

    def check(self, ops: list[Op]) -> CheckResult:
        return bank.check(ops, accounts=self.accounts, total=self.initial * len(self.accounts))


# --------------------------------------------------------------------- register
@dataclass
class Register:
    name: str = "register"
    keys: list[str] = field(default_factory=lambda: ["r0", "r1", "r2"])
    values: int = 5  # a small range, so compare-and-swap often succeeds

    def setup(self, client: Client) -> None:
        for k in self.keys:
            client.raw.delete(b"reg/" + k.encode())

    def client_loop(self, client: Client, ctx: Ctx) -> None:
        raw = client.raw
        while ctx.running():
            k = ctx.rng.choice(self.keys)
            key = b"reg/" + k.encode()
            x = ctx.rng.random()
            if x < 0.5:

                def read(key: bytes = key) -> tuple[Outcome, Any]:
                    try:
                        v = raw.get(key)
                    except Exception:
                        return "fail", None
                    return "ok", None if v is None else int(v)

                ctx.op("read", [k, None], read)
            elif x < 0.75:
                v = ctx.rng.randrange(self.values)

                def write(key: bytes = key, v: int = v) -> tuple[Outcome, Any]:
                    raw.put(key, b"%d" % v)  # raises: info
                    return "ok", None

                ctx.op("write", [k, v], write)
            else:
                old, new = ctx.rng.randrange(self.values), ctx.rng.randrange(self.values)

                def cas(key: bytes = key, old: int = old, new: int = new) -> tuple[Outcome, Any]:
                    swapped, _prev = raw.compare_and_swap(key, b"%d" % old, b"%d" % new)
                    return ("ok" if swapped else "fail"), None

                ctx.op("cas", [k, [old, new]], cas)

    def final(self, client: Client, ctx: Ctx) -> bool:
        ok = True
        for k in self.keys:
            ctx.rec.invoke(FINAL_PROCESS, "read", [k, None])
            try:
                v = client.raw.get(b"reg/" + k.encode())
            except Exception as e:
                ctx.rec.complete(FINAL_PROCESS, "read", "fail", None, type(e).__name__)
                ok = False
            else:
                ctx.rec.complete(FINAL_PROCESS, "read", "ok", None if v is None else int(v))
        return ok

    def check(self, ops: list[Op]) -> CheckResult:
        return register.check(ops)


# --------------------------------------------------------------------- set
@dataclass
class SetWorkload:
    name: str = "set"
    prefix: bytes = b"set/"

    def setup(self, client: Client) -> None:
        pass

    def _read(self, client: Client, ctx: Ctx, process: int) -> None:
        def body(t: Transaction) -> list[int]:
            return sorted(int(k[len(self.prefix) :]) for k, _ in t.scan(self.prefix, b"set0"))

        ctx.rec.invoke(process, "read", None)
        outcome, result, err = run_txn(client, body)
        ctx.rec.complete(process, "read", outcome, result, err)

    def client_loop(self, client: Client, ctx: Ctx) -> None:
        while ctx.running():
            if ctx.rng.random() < 0.05:
                self._read(client, ctx, ctx.process)
                continue
            v = ctx.unique()
            if ctx.inject == "lose-ack" and v % 5 == 0:
                # Test-only: acknowledge an add that is never committed.
                ctx.rec.invoke(ctx.process, "add", v)
                ctx.rec.complete(ctx.process, "add", "ok")
                continue

            def body(t: Transaction, v: int = v) -> None:
                t.put(self.prefix + b"%d" % v, b"1")

            txn_op(ctx, client, "add", v, body)

    def final(self, client: Client, ctx: Ctx) -> bool:
        self._read(client, ctx, FINAL_PROCESS)
        return ctx.rec.events[-1].type == "ok"

    def check(self, ops: list[Op]) -> CheckResult:
        return sets.check(ops)


# --------------------------------------------------------------------- list-append
@dataclass
class Append:
    name: str = "append"
    keys: list[str] = field(default_factory=lambda: [f"k{i}" for i in range(6)])

    def key(self, k: str) -> bytes:
        return b"append/" + k.encode()

    def setup(self, client: Client) -> None:
        pass

    def _txn(self, client: Client, ctx: Ctx, mops: list[list[Any]], process: int) -> None:
        def body(t: Transaction) -> list[list[Any]]:
            out = []
            for f, k, v in mops:
                raw = t.get(self.key(k))
                cur = json.loads(raw) if raw is not None else []
                if f == "append":
                    t.put(self.key(k), json.dumps([*cur, v]).encode())
                    out.append([f, k, v])
                else:
                    out.append([f, k, cur])
            return out

        ctx.rec.invoke(process, "txn", mops)
        outcome, result, err = run_txn(client, body)
        ctx.rec.complete(process, "txn", outcome, result, err)
        if outcome == "info" and process != FINAL_PROCESS:
            ctx.generation += 1

    def client_loop(self, client: Client, ctx: Ctx) -> None:
        while ctx.running():
            mops: list[list[Any]] = []
            # Few keys at a time, biased to a hot few: cycles need overlap.
            for _ in range(ctx.rng.randint(1, 4)):
                k = ctx.rng.choice(self.keys[:3] if ctx.rng.random() < 0.7 else self.keys)
                if ctx.rng.random() < 0.5:
                    mops.append(["append", k, ctx.unique()])
                else:
                    mops.append(["r", k, None])
            self._txn(client, ctx, mops, ctx.process)

    def final(self, client: Client, ctx: Ctx) -> bool:
        self._txn(client, ctx, [["r", k, None] for k in self.keys], FINAL_PROCESS)
        return ctx.rec.events[-1].type == "ok"

    def check(self, ops: list[Op]) -> CheckResult:
        return append.check(ops)


# --------------------------------------------------------------------- columnar-eq
@dataclass
class ColumnarEq:
    name: str = "columnar-eq"
    table: str = "check_cq"
    rows: int = 20

    def setup(self, client: Client) -> None:
        from kvstore.client import tables

        info = tables.create_table(
            client, self.table, [("id", "BIGINT"), ("v", "BIGINT"), ("s", "TEXT")], "id"
        )
        with client.begin() as t:
            tables.insert(t, info, [{"id": i, "v": 0, "s": "init"} for i in range(self.rows)])

    def _pair(self, client: Client, ctx: Ctx, process: int) -> None:
        from kvstore.client.columnar import row_store_scan

        def rows(tbl: Any) -> list[list[Any]]:
            return sorted([r["id"], r["v"], r["s"]] for r in tbl.to_pylist())

        ctx.rec.invoke(process, "scan-pair", None)
        try:
            ts = client.tso()
            reader = client.columnar
            before = reader.fallbacks if reader is not None else 0
            col = client.columnar_scan(self.table, ["id", "v", "s"], ts=ts)
            source = "columnar"
            if reader is None or reader.fallbacks != before:
                source = "fallback"
            row = row_store_scan(client, self.table, ["id", "v", "s"], (), ts)
        except Exception as e:
            ctx.rec.complete(process, "scan-pair", "fail", None, f"{type(e).__name__}: {e}"[:300])
            return
        result = {"ts": ts, "columnar": rows(col), "row": rows(row), "source": source}
        ctx.rec.complete(process, "scan-pair", "ok", result)

    def client_loop(self, client: Client, ctx: Ctx) -> None:
        from kvstore.client import tables

        info = tables.get_table(client, self.table)
        while ctx.running():
            x = ctx.rng.random()
            if x < 0.2:
                self._pair(client, ctx, ctx.process)
                continue
            if x < 0.8:
                pk, v = ctx.rng.randrange(self.rows), ctx.unique()

                def upd(t: Transaction, pk: int = pk, v: int = v) -> None:
                    tables.update(t, info, [{"id": pk, "v": v, "s": f"w{ctx.worker}"}])

                txn_op(ctx, client, "write", ["update", pk, v], upd)
            else:
                pk = 1000 + ctx.unique()

                def ins(t: Transaction, pk: int = pk) -> None:
                    tables.insert(t, info, [{"id": pk, "v": pk, "s": "new"}])

                txn_op(ctx, client, "write", ["insert", pk, pk], ins)

    def final(self, client: Client, ctx: Ctx) -> bool:
        self._pair(client, ctx, FINAL_PROCESS)
        last = ctx.rec.events[-1]
        return last.type == "ok" and last.value["source"] == "columnar"

    def check(self, ops: list[Op]) -> CheckResult:
        return columnar_eq.check(ops)


WORKLOADS: dict[str, Callable[[], Any]] = {
    "bank": Bank,
    "register": Register,
    "set": SetWorkload,
    "append": Append,
    "columnar-eq": ColumnarEq,
}


def make(name: str) -> Any:
    if name not in WORKLOADS:
        raise InvalidArgumentError(f"unknown workload {name!r}; one of {', '.join(WORKLOADS)}")
    return WORKLOADS[name]()
