"""``htapkv check`` end to end: every workload on a real local cluster.

Each run starts its own :class:`kvstore.LocalCluster` (free ports, a
temporary directory) inside :func:`bench.check.runner.run`, which stops every
process it started (cluster and client processes) whatever happens. Checked:

* every workload under every nemesis this machine can run (none, kill,
  pause, partition, clock, disk; a random PD, store or columnar node each
  time) is judged valid, with completed operations in its history, the
  faults really injected, and its files written;
* a negative control: a deliberately broken client (the test-only
  ``inject="lose-ack"`` hook acknowledges adds it never commits) is caught by
  the set checker as lost writes, so a valid verdict above means something;
* the ``clock`` nemesis (libfaketime): a workload stays valid, each fault
  left evidence that the node's ``time.time()`` really was off by the chosen
  skew, and every TSO sampled around the faults increased; a PD restarted
  900 s behind still hands out increasing timestamps;
* the ``disk`` nemesis, each of its faults: a power loss of one store (its
  data directory on the FUSE filesystem of
  :mod:`bench.check.faults.powerloss`; the first round of every workload's
  run) really dropped unsynced data of its RocksDB write-ahead log, and the
  store came back; a failing fsync (alone, in its own run): the store
  really got EIO from ``fdatasync`` and stopped itself (exit status 70)
  instead of acknowledging anything more. Where the kernel offers FUSE a
  run without power loss fails (a missing library is a setup error);
* leaders: ``kill``, ``pause`` and ``partition`` hit the store leading the
  most Regions in their first round, and the Regions' leadership moved to
  the others; with 3 PD nodes (``kill`` and ``partition``) the first round
  hits the PD leader, the PD majority elects another, and the workload stays
  valid.

Runs are short (5 s of workload each) to keep this file near 8 minutes on 2
cores; ``htapkv check --time 60`` is the real thing.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from bench.check import faults
from bench.check.faults.powerloss import fuse_unavailable_reason
from bench.check.nemesis import Fault, log_clock_offset, partition_unavailable_reason
from bench.check.runner import RunConfig, run
from kvstore.server.cluster import LocalCluster
from kvstore.server.store_server import STORAGE_FAILURE_EXIT

pytestmark = pytest.mark.slow

RUN_S = 5.0


def _unavailable(nemesis: str) -> str | None:
    """Why this machine cannot run ``nemesis`` (None: it can)."""
    checks = {
        "partition": partition_unavailable_reason,
        "clock": faults.clock_unavailable_reason,
        "disk": faults.disk_unavailable_reason,
    }
    return checks[nemesis]() if nemesis in checks else None


NEMESES = ["none", "kill", "pause", "partition", "clock", "disk"]


@pytest.mark.parametrize("nemesis", NEMESES)
@pytest.mark.parametrize("workload", ["bank", "register", "set", "append", "columnar-eq"])
def test_workload_is_valid(workload: str, nemesis: str, tmp_path: Path) -> None:
    """Every workload under every fault, briefly (CI's share of the suite)."""
    if why := _unavailable(nemesis):
        pytest.skip(why)
    cfg = RunConfig(workload, nemesis, time=RUN_S, seed=7, output=tmp_path, clients=2)
    outcome = run(cfg)
    r = outcome.result
    assert r.valid is True, (r.anomalies[:5], r.stats, tmp_path)
    ok = [op for op in outcome.ops if op.outcome == "ok"]
    assert len(ok) > 10, outcome.meta["outcomes"]
    if nemesis != "none":
        assert outcome.faults and all(f.end is not None for f in outcome.faults)
        assert {f.kind for f in outcome.faults} == {nemesis}
        assert not outcome.meta["nemesis_errors"]
    if nemesis in ("kill", "pause", "partition"):
        first = outcome.faults[0].detail
        assert first["chosen"] == "store-leader" and first["regions_led"] > 0, first
        assert first["leader_after"] == "others", first  # every Region moved away
    if nemesis == "disk":  # power loss first, where the kernel offers FUSE
        power = fuse_unavailable_reason() is None
        assert outcome.meta["power_loss"] is power
        assert outcome.faults[0].detail["fault"] == ("power-loss" if power else "fsync")
        for f in outcome.faults:
            if f.detail["fault"] == "power-loss":
                assert_power_was_lost(f)
    for name in ("history.json", "result.json", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["result"]["valid"] is True


def test_broken_client_is_caught(tmp_path: Path) -> None:
    cfg = RunConfig("set", "none", time=4.0, seed=3, output=tmp_path, clients=2, inject="lose-ack")
    outcome = run(cfg)
    r = outcome.result
    assert r.valid is False
    assert {a.kind for a in r.anomalies} == {"lost"}
    assert r.stats["final"]["lost"] > 0
    assert outcome.exit_code == 1


def test_append_under_every_available_fault(tmp_path: Path) -> None:
    """``all``: kills, pauses and (where root and iptables-legacy allow)
    partitions, one at a time; the history must still be valid."""
    cfg = RunConfig("append", "all", time=6.0, seed=5, output=tmp_path, clients=2)
    outcome = run(cfg)
    assert outcome.result.valid is True, (outcome.result.anomalies[:5], tmp_path)
    assert outcome.faults and not outcome.meta["nemesis_errors"]


def _skew_s(spec: str) -> float:
    """The offset a libfaketime spec sets at process start (a drift: 0)."""
    return float(spec.split(maxsplit=1)[0].rstrip("s"))


@pytest.mark.skipif(faults.clock_unavailable_reason() is not None, reason="no libfaketime or cc")
def test_register_under_clock_skew(tmp_path: Path) -> None:
    cfg = RunConfig("register", "clock", time=4.0, seed=11, output=tmp_path, clients=2)
    outcome = run(cfg)
    assert outcome.result.valid is True, (outcome.result.anomalies[:5], tmp_path)
    assert not outcome.meta["nemesis_errors"]  # TSO samples increased throughout
    assert outcome.faults
    for f in outcome.faults:
        seen, want = f.detail["log_clock_offset_s"], _skew_s(f.detail["faketime"])
        assert seen["min"] - 1 <= want <= seen["max"] + 1, f.detail
        back = f.detail["restored_log_clock_offset_s"]
        assert back["min"] - 1 <= 0 <= back["max"] + 1, f.detail
        assert len(f.detail["tso"]) >= 2


@pytest.mark.skipif(faults.clock_unavailable_reason() is not None, reason="no libfaketime or cc")
def test_tso_increases_across_a_pd_restarted_with_its_clock_behind(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", pd=1, stores=1) as cluster:
        pd = cluster.pd()
        before = pd.get_ts()
        cluster.kill("pd1", signal.SIGTERM)
        log = cluster.log_path("pd1")
        offset, t0 = log.stat().st_size, time.time()
        cluster.restart("pd1", env=faults.clock_env("-900s", tmp_path / "shims"))
        seen = log_clock_offset(log, offset, t0, time.time())
        assert seen is not None and seen["min"] - 1 <= -900 <= seen["max"] + 1, seen
        assert cluster.environment("pd1")["FAKETIME"] == "-900s"
        behind = cluster.wait_for("a timestamp from the skewed PD", pd.get_ts)
        assert behind > before
        cluster.kill("pd1", signal.SIGTERM)
        cluster.restart("pd1")
        assert cluster.environment("pd1") == {}
        after = cluster.wait_for("a timestamp from the restored PD", pd.get_ts)
        assert after > behind


def assert_power_was_lost(f: Fault) -> None:
    """A power-loss round dropped unsynced data of the store's RocksDB
    write-ahead log (not only its info log), and the store restarted."""
    d = f.detail
    assert d["bytes_dropped"] > 0 and d["wal_bytes_dropped"] > 0, d
    assert all(path.startswith(f"{f.target}/") for path in d["dropped_first"]), d
    assert d["restart_s"] >= 0, d


@pytest.mark.skipif(faults.disk_unavailable_reason() is not None, reason="no C compiler")
def test_set_under_failing_fsync(tmp_path: Path) -> None:
    """The fsync fault alone (the power loss that comes first otherwise is
    checked by ``test_workload_is_valid[*-disk]``)."""
    cfg = RunConfig("set", "disk", time=4.0, seed=13, output=tmp_path, clients=2)
    cfg.disk_faults = ("fsync",)
    outcome = run(cfg)
    assert outcome.result.valid is True, (outcome.result.anomalies[:5], tmp_path)
    assert outcome.faults and not outcome.meta["nemesis_errors"]
    assert {f.detail["fault"] for f in outcome.faults} == {"fsync"}
    hit = [f for f in outcome.faults if f.detail["eio_calls"] > 0]
    assert hit, [f.detail for f in outcome.faults]
    for f in hit:  # fail-stop: the store exited by itself, saying why
        assert f.detail["exited_by_itself"] is True, f.detail
        assert f.detail["exit_code"] == STORAGE_FAILURE_EXIT, f.detail
        assert any("cannot be made durable" in e for e in f.detail["log_errors_first"])


@pytest.mark.parametrize("nemesis", ["kill", "partition"])
def test_register_with_three_pds_loses_its_pd_leader(nemesis: str, tmp_path: Path) -> None:
    """3 PD nodes: the first round hits the PD leader (killed, or cut off as
    a minority of one); the other two elect a new leader and the registers
    stay linearizable."""
    if why := _unavailable(nemesis):
        pytest.skip(why)
    cfg = RunConfig("register", nemesis, time=RUN_S, seed=17, output=tmp_path, clients=2, pds=3)
    outcome = run(cfg)
    assert outcome.result.valid is True, (outcome.result.anomalies[:5], tmp_path)
    assert not outcome.meta["nemesis_errors"] and outcome.meta["pds"] == 3
    assert len([op for op in outcome.ops if op.outcome == "ok"]) > 10, outcome.meta["outcomes"]
    f = outcome.faults[0]
    d = f.detail
    assert f.target.startswith("pd") and d["chosen"] == "pd-leader", (f.target, d)
    assert d["is_pd_leader"] is True and d["pd_leader"] == f.target, d
    assert d["leader_after"] not in (None, f.target), d  # the majority elected another
    if nemesis == "partition":
        others = sorted({"pd1", "pd2", "pd3"} - {f.target})
        assert d["split"] == {"pd": {"minority": [f.target], "majority": others}}, d
