"""``htapkv bench ycsb``: the YCSB generators (zipfian skew, bounds,
determinism; workload mixes), smoke runs against the embedded store, and,
where etcd is installed, the etcd peer. Performance is never asserted
(DESIGN.md §6): only that the numbers exist and are consistent.

The etcd tests need Debian's ``etcd-server`` package (the ``etcd`` binary)
and the ``aetcd`` Python client; they are skipped, with that reason, where
either is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.ycsb_workload import (
    INSERT,
    KEY_PREFIX,
    OP_NAMES,
    READ,
    RMW,
    SCAN,
    UPDATE,
    WORKLOADS,
    ScrambledZipfianGenerator,
    UniformGenerator,
    ZipfianGenerator,
    fnvhash64,
    key_name,
    load_plan,
    modify,
    run_plan,
    value_pool,
    zeta,
)
from tests.bench_helpers import alive, run_quick_bench

HAVE_ETCD = shutil.which("etcd") is not None
HAVE_AETCD = importlib.util.find_spec("aetcd") is not None
needs_etcd = pytest.mark.skipif(
    not (HAVE_ETCD and HAVE_AETCD),
    reason="needs the etcd binary (apt-get install etcd-server etcd-client) and aetcd "
    f"(pip install aetcd); etcd found: {HAVE_ETCD}, aetcd found: {HAVE_AETCD}",
)


# ---------------------------------------------------------------- generators
def test_fnvhash64_is_a_non_negative_java_long() -> None:
    values = [fnvhash64(i) for i in range(10_000)]
    assert all(0 <= v < 2**63 for v in values)
    assert len(set(values)) == len(values)  # no collision on small record numbers
    assert fnvhash64(12345) == fnvhash64(12345)


def test_keys_are_user_plus_hashed_record_number() -> None:
    assert key_name(0).startswith(KEY_PREFIX)
    assert key_name(7) == b"user" + str(fnvhash64(7)).encode()
    assert len({key_name(i) for i in range(5000)}) == 5000


def test_zipfian_is_in_bounds_and_deterministic() -> None:
    for items in (1, 2, 3, 100, 10_000):
        g = ZipfianGenerator(items, random.Random(1))
        draws = [g.next() for _ in range(5000)]
        assert all(0 <= d < items for d in draws)
    for items in (1, 7, 1000):
        g2 = ScrambledZipfianGenerator(items, random.Random(1))
        assert all(0 <= g2.next() < items for _ in range(5000))

    def seq(seed: int) -> list[int]:
        g = ScrambledZipfianGenerator(1000, random.Random(seed))
        return [g.next() for _ in range(1000)]

    assert seq(3) == seq(3)
    assert seq(3) != seq(4)


def test_zipfian_skew_matches_theory() -> None:
    n, draws = 100, 200_000
    g = ZipfianGenerator(n, random.Random(5))
    counts = Counter(g.next() for _ in range(draws))
    # P(item i) = 1 / ((i+1)^0.99 * zeta(n)): item 0 gets ~19% here.
    expected0 = 1 / zeta(n, 0.99)
    assert abs(counts[0] / draws - expected0) < 0.01
    assert counts[0] > counts[1] > counts[10] > counts[60]


def test_scrambled_zipfian_concentrates_on_few_scattered_keys() -> None:
    n, draws = 1000, 100_000
    z = ScrambledZipfianGenerator(n, random.Random(7))
    zc = Counter(z.next() for _ in range(draws))
    u = UniformGenerator(n, random.Random(7))
    uc = Counter(u.next() for _ in range(draws))

    def top_share(c: Counter[int], k: int) -> float:
        return sum(v for _, v in c.most_common(k)) / draws

    # The 10 hottest of 1000 items: ~1% of draws if uniform, far more if zipfian.
    assert top_share(uc, 10) < 0.02
    assert top_share(zc, 10) > 0.08
    # Scrambled: the hottest items are not the first record numbers.
    hottest = [k for k, _ in zc.most_common(5)]
    assert hottest != list(range(5))


# ---------------------------------------------------------------- plans
def _shares(plan_counts: list[int]) -> dict[int, float]:
    total = sum(plan_counts)
    return {c: n / total for c, n in enumerate(plan_counts) if n}


@pytest.mark.parametrize(
    ("workload", "mix"),
    [
        ("a", {READ: 0.5, UPDATE: 0.5}),
        ("b", {READ: 0.95, UPDATE: 0.05}),
        ("c", {READ: 1.0}),
        ("e", {SCAN: 0.95, INSERT: 0.05}),
        ("f", {READ: 0.5, RMW: 0.5}),
        ("put", {UPDATE: 1.0}),
        ("rmw", {RMW: 1.0}),
    ],
)
def test_workload_mix_proportions(workload: str, mix: dict[int, float]) -> None:
    ops, records = 20_000, 1000
    plan = run_plan(
        WORKLOADS[workload],
        distribution="zipfian",
        records=records,
        ops=ops,
        concurrency=7,
        seed=1,
        value_pool=16,
    )
    assert plan.total == ops
    shares = _shares(plan.counts)
    assert set(shares) == set(mix)
    for code, p in mix.items():
        assert abs(shares[code] - p) < 0.015, (OP_NAMES[code], shares[code], p)
    # Dealt round-robin: every op once, worker sizes differ by at most one.
    sizes = [len(w) for w in plan.per_worker]
    assert sum(sizes) == ops and max(sizes) - min(sizes) <= 1
    assert Counter(op.code for w in plan.per_worker for op in w) == Counter(
        {c: n for c, n in enumerate(plan.counts) if n}
    )
    loaded = {key_name(i) for i in range(records)}
    inserted = [op.key for w in plan.per_worker for op in w if op.code == INSERT]
    assert len(set(inserted)) == len(inserted) and not set(inserted) & loaded
    assert plan.records_after == records + len(inserted)
    known = loaded | set(inserted)
    for op in (op for w in plan.per_worker for op in w):
        assert op.key in known
        if op.code == SCAN:
            assert 1 <= op.arg <= WORKLOADS[workload].max_scan_length
        if op.code in (UPDATE, RMW, INSERT):
            assert 0 <= op.arg < 16


def test_plans_are_deterministic_per_seed() -> None:
    def plan(seed: int, distribution: str) -> list[Any]:
        p = run_plan(
            WORKLOADS["a"],
            distribution=distribution,
            records=500,
            ops=2000,
            concurrency=3,
            seed=seed,
            value_pool=8,
        )
        return p.per_worker

    assert plan(1, "zipfian") == plan(1, "zipfian")
    assert plan(1, "zipfian") != plan(2, "zipfian")
    assert plan(1, "uniform") == plan(1, "uniform")


def test_load_plan_inserts_every_record_once() -> None:
    plan = load_plan(1001, 4, 8)
    keys = [op.key for w in plan.per_worker for op in w]
    assert plan.counts[INSERT] == 1001 == len(set(keys)) == plan.total
    assert set(keys) == {key_name(i) for i in range(1001)}


def test_values_and_modify_keep_the_record_size() -> None:
    pool = value_pool(4, 10, 100, seed=1)
    assert all(len(v) == 1000 for v in pool) and len(set(pool)) == 4
    assert pool == value_pool(4, 10, 100, seed=1)
    changed = modify(pool[0], 100)
    assert len(changed) == 1000 and changed != pool[0]


# ---------------------------------------------------------------- smoke runs
def _load(out: Path) -> dict[str, Any]:
    files = list(out.glob("ycsb-*.json"))
    assert len(files) == 1, list(out.iterdir())
    assert files[0].with_suffix(".md").exists()
    return json.loads(files[0].read_text())  # type: ignore[no-any-return]


def _check_rows(data: dict[str, Any], system: str) -> None:
    rows = [r for r in data["results"] if r["system"] == system]
    assert rows, data["results"]
    for r in rows:
        assert r["errors"] == 0, r
        assert r["count"] == r["ops"] == r["planned_ops"], r
        assert r["ops_per_s"] > 0, r
        lat = r["latency_us"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"], r
    # Per phase: the operation rows add up to the phase's "all" row.
    for phase, mix in data["parameters"]["mix"].items():
        per_op = {r["operation"]: r for r in rows if r["phase"] == phase}
        assert set(per_op) == {*mix["planned"], "all"}
        assert sum(per_op[op]["ops"] for op in mix["planned"]) == per_op["all"]["ops"]
        for op, n in mix["planned"].items():
            assert per_op[op]["ops"] == n


def test_ycsb_quick_against_embedded_writes_results(tmp_path: Path) -> None:
    proc, out, data_dir = run_quick_bench(
        "ycsb", tmp_path, "--workload", "a", "--target", "embedded"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "htapkv bench ycsb" in proc.stdout
    data = _load(out)
    p = data["parameters"]
    assert p["workload"] == "a" and p["peer"] is None and p["target"] == "embedded"
    _check_rows(data, "htapkv")
    run_all = next(r for r in data["results"] if r["id"] == "htapkv.run.all")
    assert run_all["count"] == p["ops"]
    load_all = next(r for r in data["results"] if r["id"] == "htapkv.load.all")
    assert load_all["count"] == p["records"]
    assert set(p["mix"]["run"]["planned"]) == {"read", "update"}
    assert data["machine"]["cpu_count"] and data["load_average"]["start"] is not None
    assert data["command"].startswith("htapkv bench ycsb")
    assert (out / data["plot"]).stat().st_size > 0
    assert not any(data_dir.iterdir())


def test_ycsb_quick_suite_reports_targets(tmp_path: Path) -> None:
    proc, out, _ = run_quick_bench(
        "ycsb", tmp_path, "--suite", "targets", "--ops", "600", "--target", "embedded"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = _load(out)
    _check_rows(data, "htapkv")
    phases = {r["phase"]: r for r in data["results"] if r["operation"] == "all"}
    assert set(phases) == {"load", "put.c1", "put.c256", "rmw.c256"}
    assert phases["put.c256"]["concurrency"] == 256 and phases["put.c1"]["concurrency"] == 1
    assert data["parameters"]["distribution"] == "uniform"  # the suite's default
    target = data["target"]
    # No etcd in this run: the comparisons are not judged, htapkv's own share is.
    assert target["throughput"]["met"] is None and target["latency"]["met"] is None
    assert isinstance(target["rmw"]["met"], bool)
    assert target["rmw"]["htapkv_share"] > 0
    assert "targets" in proc.stdout


@pytest.mark.slow
def test_ycsb_quick_against_a_local_cluster(tmp_path: Path) -> None:
    proc, out, _ = run_quick_bench("ycsb", tmp_path, "--workload", "f", "--target", "cluster")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = _load(out)
    assert data["parameters"]["target"] == "cluster"
    assert "LocalCluster" in data["htapkv_target"]
    _check_rows(data, "htapkv")
    ops = {r["operation"] for r in data["results"] if r["phase"] == "run"}
    assert {"read", "read-modify-write"} <= ops


def test_ycsb_peer_etcd_missing_says_how_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}  # no etcd on this PATH
    proc, out, _ = run_quick_bench("ycsb", tmp_path, "--peer", "etcd", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sudo apt-get install etcd-server etcd-client" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not list(out.glob("ycsb-*.json"))


# ---------------------------------------------------------------- etcd
@needs_etcd
def test_etcd_peer_starts_serves_and_stops(tmp_path: Path) -> None:
    from bench.etcd_peer import EtcdCluster, EtcdKV

    with EtcdCluster(tmp_path / "etcd") as cluster:
        pids = cluster.pids
        assert len(pids) == 3 and all(alive(p) for p in pids)
        ports = {m.client_port for m in cluster.members} | {m.peer_port for m in cluster.members}
        assert len(ports) == 6

        async def exercise() -> None:
            kv = EtcdKV(cluster.endpoints)
            await kv.connect()
            try:
                assert kv.endpoint in cluster.endpoints
                await kv.put(b"user1", b"x" * 1000)
                await kv.put(b"user2", b"y" * 1000)
                assert await kv.read(b"user1") == b"x" * 1000
                assert await kv.read(b"user0") is None
                assert await kv.scan(b"user", b"uses", 10) == 2
                assert await kv.scan(b"user", b"uses", 1) == 1
                await kv.read_modify_write(b"user1", lambda v: v + b"!")
                assert await kv.read(b"user1") == b"x" * 1000 + b"!"
            finally:
                await kv.close()

        asyncio.run(exercise())
    assert not any(alive(p) for p in pids)


@needs_etcd
def test_etcd_peer_stops_members_when_the_body_fails(tmp_path: Path) -> None:
    from bench.etcd_peer import EtcdCluster

    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), EtcdCluster(tmp_path / "etcd") as cluster:
        pids = cluster.pids
        raise RuntimeError("boom")
    assert pids and not any(alive(p) for p in pids)


@needs_etcd
def test_ycsb_quick_beside_etcd(tmp_path: Path) -> None:
    proc, out, data_dir = run_quick_bench("ycsb", tmp_path, "--workload", "f", "--peer", "etcd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = _load(out)
    _check_rows(data, "htapkv")
    _check_rows(data, "etcd")
    assert data["peer"]["version"] and len(data["peer"]["pids"]) == 3
    assert not any(alive(p) for p in data["peer"]["pids"])
    assert "etcd ops/s" in proc.stdout and "ratio" in proc.stdout
    etcd_all = next(r for r in data["results"] if r["id"] == "etcd.run.all")
    assert etcd_all["cpu"]["peer_servers_s"] > 0
    assert any("aetcd" in n for n in data["notes"])
    assert not any(data_dir.iterdir())
