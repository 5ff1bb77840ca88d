"""The nemesis's choices, on a fake cluster (no processes).

Which node a round hits (a leader every other round: the PD leader and the
store leading the most Regions in turn, the PD leader only with 3 PD nodes),
the minority/majority sides of a partition, and which disk faults run
(power loss only with a power-losing filesystem, else left out and said
why). The real faults are in ``tests/test_check_cluster.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.check import faults
from bench.check.nemesis import Fault, Nemesis, NemesisUnavailableError
from kvstore.types import PdMember


@dataclass
class Info:
    role: str
    addr: str
    store_id: int = 0


@dataclass
class Proc:
    info: Info


@dataclass
class FakePd:
    leader: str  # client address
    region_leaders: list[int | None]  # one entry per Region: its leader's store id

    def members(self) -> tuple[list[PdMember], PdMember | None]:
        return [], PdMember("x", client_addr=self.leader)

    def scan_regions(self, start: bytes, end: bytes, limit: int) -> list[tuple[Any, int | None]]:
        return [(None, s) for s in self.region_leaders]


@dataclass
class FakeCluster:
    n_pd: int
    pd_client: FakePd
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i in range(1, self.n_pd + 1):
            self.procs[f"pd{i}"] = Proc(Info("pd", f"h:{i}"))
        for j in range(1, 4):
            self.procs[f"store{j}"] = Proc(Info("store", f"h:{100 + j}", store_id=10 + j))
        self.procs["columnar1"] = Proc(Info("columnar", "h:200", store_id=20))

    def pd(self) -> FakePd:
        return self.pd_client

    def name_of_store(self, store_id: int) -> str:
        return next(n for n, p in self.procs.items() if p.info.store_id == store_id)


def picks(cluster: FakeCluster, rounds: int) -> list[tuple[str, dict[str, Any]]]:
    nemesis = Nemesis(cluster, "kill", random.Random(1))
    return [nemesis._pick_target() for _ in range(rounds)]


def test_three_pds_every_other_round_hits_a_leader_pd_and_store_in_turn() -> None:
    cluster = FakeCluster(3, FakePd("h:2", [12, 12, 13, None]))
    got = picks(cluster, 6)
    chosen = [d["chosen"] for _, d in got]
    assert chosen == ["pd-leader", "random", "store-leader", "random", "pd-leader", "random"]
    assert got[0][0] == "pd2" and got[0][1]["is_pd_leader"] is True
    assert got[2][0] == "store2" and got[2][1]["regions_led"] == 2
    assert got[2][1]["regions_total"] == 3 and got[2][1]["is_pd_leader"] is False


def test_one_pd_leader_rounds_hit_the_busiest_store() -> None:
    # With a single PD no other member can take over: not a leader target.
    cluster = FakeCluster(1, FakePd("h:1", [13, 11, 13]))
    got = picks(cluster, 4)
    assert [d["chosen"] for _, d in got] == ["store-leader", "random"] * 2
    assert got[0][0] == got[2][0] == "store3"


def test_no_known_leader_falls_back_to_a_random_node() -> None:
    got = picks(FakeCluster(1, FakePd("h:1", [None, None])), 1)
    assert got[0][1]["chosen"] == "random"


def test_partition_sides() -> None:
    nemesis = Nemesis(FakeCluster(3, FakePd("h:1", [11])), "kill", random.Random(1))
    assert nemesis._split("pd3") == {"pd": {"minority": ["pd3"], "majority": ["pd1", "pd2"]}}
    want = {"regions": {"minority": ["store1"], "majority": ["store2", "store3"]}}
    assert nemesis._split("store1") == want
    assert nemesis._split("columnar1") == {}  # a learner votes nowhere


@pytest.mark.skipif(faults.disk_unavailable_reason() is not None, reason="no C compiler")
def test_disk_runs_power_loss_only_on_a_power_losing_filesystem() -> None:
    without = Nemesis(None, "disk", random.Random(1))
    assert without.disk_faults == ["fsync"]
    assert "disk/power-loss" in without.left_out
    with_fs = Nemesis(None, "disk", random.Random(1), power=object())  # type: ignore[arg-type]
    assert with_fs.disk_faults == ["power-loss", "fsync"]
    assert "disk/power-loss" not in with_fs.left_out


@pytest.mark.skipif(faults.disk_unavailable_reason() is not None, reason="no C compiler")
def test_disk_faults_take_turns_power_loss_first(monkeypatch: pytest.MonkeyPatch) -> None:
    nemesis = Nemesis(None, "disk", random.Random(1), power=object())  # type: ignore[arg-type]
    ran: list[str] = []
    monkeypatch.setattr(nemesis, "_power_loss", lambda f: ran.append("power-loss"))
    monkeypatch.setattr(nemesis, "_fsync", lambda f: ran.append("fsync"))
    faults_ = [Fault("disk", "store1", 0.0) for _ in range(4)]
    for f in faults_:
        nemesis._disk(f)
    assert ran == ["power-loss", "fsync", "power-loss", "fsync"]
    assert [f.detail["fault"] for f in faults_] == ran


@pytest.mark.skipif(faults.disk_unavailable_reason() is not None, reason="no C compiler")
def test_disk_faults_can_be_chosen() -> None:
    only_fsync = Nemesis(None, "disk", random.Random(1), disk_faults=("fsync",))
    assert only_fsync.disk_faults == ["fsync"] and only_fsync.left_out == {}
    with pytest.raises(NemesisUnavailableError):  # power loss alone, without FUSE
        Nemesis(None, "disk", random.Random(1), disk_faults=("power-loss",))
    with pytest.raises(NemesisUnavailableError):
        Nemesis(None, "disk", random.Random(1), disk_faults=("torn-write",))
