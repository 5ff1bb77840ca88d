"""YCSB's workloads, key chooser and record layout, as deterministic plans.

Pure: no I/O, no clock; every random choice comes from a ``random.Random``
seeded by the caller, so the same seed gives the same operations, key for key,
to every system a run compares.

What follows YCSB's ``CoreWorkload`` (and is named after it):

* **keys** are ``b"user" + str(fnvhash64(keynum))`` (``insertorder=hashed``):
  consecutive record numbers land far apart in key order, so a scan starting
  at a record's key reads records chosen at random.
* **records** are ``field_count`` fields of ``field_length`` bytes, stored as
  one value (the fields concatenated): 10 x 100 B = 1,000 B by default.
* **request distributions**: ``uniform`` over the records, or ``zipfian``:
  YCSB's *scrambled* zipfian (:class:`ScrambledZipfianGenerator`), a zipfian
  of constant 0.99 over 10^10 items folded onto the records by an FNV hash, so
  the popular records are scattered over the key space rather than clustered
  at its start.
* **workloads** (:data:`WORKLOADS`): ``a`` 50% read / 50% update, ``b`` 95/5,
  ``c`` 100% read, ``e`` 95% scan (length uniform in 1..100) / 5% insert,
  ``f`` 50% read / 50% read-modify-write. Two more isolate what the team's
  targets compare: ``put`` (100% update: a single raw put of a whole record)
  and ``rmw`` (100% read-modify-write).
* an **update** writes the whole record (YCSB's ``writeallfields=true``): one
  put. A **read-modify-write** reads a record and writes it back changed, as
  one atomic step (a transaction, or a compare-and-put).
* **inserts** take the next record number; reads chosen while inserts run
  are drawn from a chooser sized for the records expected by the end and
  re-drawn while above the records inserted so far (YCSB's rule).

A plan is made once per phase and dealt round-robin to the workers (op ``i``
to worker ``i mod concurrency``); each worker runs its share in order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# Operation codes: indexes into per-operation tables (latencies, counts).
READ, UPDATE, INSERT, SCAN, RMW = range(5)
OP_NAMES = ("read", "update", "insert", "scan", "read-modify-write")

KEY_PREFIX = b"user"
KEYS_END = b"uses"  # the first key after every b"user..." key: scans stop there

# YCSB's constants (site.ycsb.generator.ScrambledZipfianGenerator).
ZIPFIAN_CONSTANT = 0.99
SCRAMBLED_ITEM_COUNT = 10_000_000_000
SCRAMBLED_ZETAN = 26.46902820178302  # zeta(10^10, 0.99), precomputed by YCSB

FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1099511628211
_MASK64 = (1 << 64) - 1


def fnvhash64(value: int) -> int:
    """YCSB's ``Utils.fnvhash64``: FNV-1a over the 8 low bytes of ``value``
    (low byte first), as a non-negative Java ``long`` (``Math.abs`` of the
    signed result)."""
    h = FNV_OFFSET_BASIS_64
    v = value & _MASK64
    for _ in range(8):
        h ^= v & 0xFF
        v >>= 8
        h = (h * FNV_PRIME_64) & _MASK64
    signed = h - (1 << 64) if h >> 63 else h
    return abs(signed)


def key_name(keynum: int) -> bytes:
    """The key of record ``keynum`` (``insertorder=hashed``)."""
    return KEY_PREFIX + str(fnvhash64(keynum)).encode()


def zeta(n: int, theta: float) -> float:
    """sum_{i=1..n} 1 / i^theta."""
    return math.fsum(1.0 / (i**theta) for i in range(1, n + 1))


class ZipfianGenerator:
    """Integers in ``[0, items)``, item ``i`` drawn with probability
    proportional to ``1 / (i + 1)^theta`` (Gray et al., "Quickly generating
    billion-record synthetic databases", as YCSB implements it): item 0 is the
    most popular. ``zetan`` may be given when it is known (it costs ``items``
    terms to compute)."""

    def __init__(
        self,
        items: int,
        rng: random.Random,
        theta: float = ZIPFIAN_CONSTANT,
        zetan: float | None = None,
    ) -> None:
        if items < 1:
            raise ValueError("a zipfian needs at least one item")
        if not 0 < theta < 1:
            raise ValueError("theta must be in (0, 1)")
        self.items = items
        self.theta = theta
        self.rng = rng
        self.zetan = zeta(items, theta) if zetan is None else zetan
        self.alpha = 1.0 / (1.0 - theta)
        zeta2 = zeta(2, theta)
        # With 1 or 2 items every draw takes one of the two shortcuts in
        # next(), so eta (a division by zero there) is never used.
        denominator = 1 - zeta2 / self.zetan
        self.eta = (1 - (2.0 / items) ** (1 - theta)) / denominator if items > 2 else 0.0
        self._half_pow_theta = 1.0 + 0.5**theta

    def next(self) -> int:
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < self._half_pow_theta:
            return 1
        value = int(self.items * (self.eta * u - self.eta + 1) ** self.alpha)
        return min(value, self.items - 1)


class ScrambledZipfianGenerator:
    """YCSB's default request distribution: a zipfian (constant 0.99) over
    10^10 items, hashed onto ``[0, items)``. The popularity of the hot items is
    kept, their position is spread over the range."""

    def __init__(self, items: int, rng: random.Random) -> None:
        if items < 1:
            raise ValueError("a zipfian needs at least one item")
        self.items = items
        self._gen = ZipfianGenerator(
            SCRAMBLED_ITEM_COUNT, rng, ZIPFIAN_CONSTANT, zetan=SCRAMBLED_ZETAN
        )

    def next(self) -> int:
        return fnvhash64(self._gen.next()) % self.items


class UniformGenerator:
    """Integers in ``[0, items)``, each equally likely."""

    def __init__(self, items: int, rng: random.Random) -> None:
        if items < 1:
            raise ValueError("a uniform chooser needs at least one item")
        self.items = items
        self._randrange = rng.randrange

    def next(self) -> int:
        return self._randrange(self.items)


DISTRIBUTIONS = ("zipfian", "uniform")


def key_chooser(
    distribution: str, items: int, rng: random.Random
) -> ScrambledZipfianGenerator | UniformGenerator:
    if distribution == "zipfian":
        return ScrambledZipfianGenerator(items, rng)
    if distribution == "uniform":
        return UniformGenerator(items, rng)
    raise ValueError(f"unknown distribution {distribution!r} (one of {DISTRIBUTIONS})")


# ---------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    mix: tuple[tuple[int, float], ...]  # (operation, proportion), proportions sum to 1
    max_scan_length: int = 100

    def proportion(self, op: int) -> float:
        return sum(p for o, p in self.mix if o == op)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("a", "update heavy: 50% read, 50% update", ((READ, 0.5), (UPDATE, 0.5))),
        Workload("b", "read mostly: 95% read, 5% update", ((READ, 0.95), (UPDATE, 0.05))),
        Workload("c", "read only: 100% read", ((READ, 1.0),)),
        Workload(
            "e", "short ranges: 95% scan (1-100 records), 5% insert", ((SCAN, 0.95), (INSERT, 0.05))
        ),
        Workload(
            "f", "read-modify-write: 50% read, 50% read-modify-write", ((READ, 0.5), (RMW, 0.5))
        ),
        Workload("put", "raw puts: 100% update (whole record)", ((UPDATE, 1.0),)),
        Workload("rmw", "100% read-modify-write (one-key transaction)", ((RMW, 1.0),)),
    )
}


@dataclass(frozen=True)
class Op:
    """One planned operation: ``arg`` is the value's index in the value pool
    for writes, the number of records for a scan, unused (0) otherwise."""

    code: int
    key: bytes
    arg: int


@dataclass
class Plan:
    """A phase's operations, dealt to workers."""

    per_worker: list[list[Op]]
    counts: list[int]  # planned operations per operation code
    records_after: int  # records that exist once every insert ran

    @property
    def total(self) -> int:
        return sum(self.counts)


def load_plan(records: int, concurrency: int, value_pool: int) -> Plan:
    """YCSB's load phase: insert records 0..records-1 (in record order)."""
    per_worker: list[list[Op]] = [[] for _ in range(concurrency)]
    for i in range(records):
        per_worker[i % concurrency].append(Op(INSERT, key_name(i), i % value_pool))
    counts = [0] * len(OP_NAMES)
    counts[INSERT] = records
    return Plan(per_worker, counts, records)


def run_plan(
    workload: Workload,
    *,
    distribution: str,
    records: int,
    ops: int,
    concurrency: int,
    seed: int | str,
    value_pool: int,
) -> Plan:
    """The run phase: ``ops`` operations of ``workload`` over ``records``
    loaded records, drawn with ``random.Random(seed)``."""
    if records < 1:
        raise ValueError("the run phase needs at least one loaded record")
    rng = random.Random(f"ycsb/{seed}")
    codes = [op for op, _ in workload.mix]
    weights = [p for _, p in workload.mix]
    expected_inserts = math.ceil(ops * workload.proportion(INSERT))
    chooser = key_chooser(distribution, records + expected_inserts, rng)
    scan_len = rng.randrange
    inserted = records
    per_worker: list[list[Op]] = [[] for _ in range(concurrency)]
    counts = [0] * len(OP_NAMES)
    chosen = rng.choices(codes, weights, k=ops) if len(codes) > 1 else codes * ops
    for i, code in enumerate(chosen):
        if code == INSERT:
            op = Op(INSERT, key_name(inserted), inserted % value_pool)
            inserted += 1
        else:
            keynum = chooser.next()
            while keynum >= inserted:  # not inserted yet (only while inserts run)
                keynum = chooser.next()
            arg = 0
            if code == SCAN:
                arg = 1 + scan_len(workload.max_scan_length)
            elif code in (UPDATE, RMW):
                arg = i % value_pool
            op = Op(code, key_name(keynum), arg)
        counts[code] += 1
        per_worker[i % concurrency].append(op)
    return Plan(per_worker, counts, inserted)


def value_pool(size: int, field_count: int, field_length: int, seed: int | str) -> list[bytes]:
    """``size`` distinct records (``field_count`` x ``field_length`` bytes).
    Printable, as YCSB's are, so a record looks the same to every client."""
    rng = random.Random(f"ycsb/{seed}/values")
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    n = field_count * field_length
    return [bytes(rng.choices(alphabet, k=n)) for _ in range(size)]


def modify(value: bytes, field_length: int) -> bytes:
    """The write of a read-modify-write: the record with its first field moved
    last (same size, different bytes)."""
    k = min(field_length, len(value))
    return value[k:] + value[:k]


def proportions(plan_counts: Sequence[int]) -> dict[str, float]:
    """Share of each operation in a plan, by name (for reports and tests)."""
    total = sum(plan_counts) or 1
    return {OP_NAMES[c]: n / total for c, n in enumerate(plan_counts) if n}
