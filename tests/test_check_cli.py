"""``htapkv check``'s arguments and ``--soak`` loop, without a cluster.

The loop is driven by a fake run (``run_one``) that returns canned
outcomes, so these tests check the loop's own rules: seeds and output
directories per run, stopping at the first run that is not valid, at the
time limit and on Ctrl-C, the exit status, and ``soak.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench.check import cli, runner
from bench.check.history import CheckResult
from bench.check.runner import RunConfig, RunOutcome, SoakOutcome, soak


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="htapkv")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["check", "--workload", "register", *argv])


def test_defaults_are_one_pd_and_no_soak() -> None:
    args = parse()
    assert (args.pds, args.soak, args.time, args.nemesis) == (1, None, 60.0, "none")


def test_pds_and_soak_arguments() -> None:
    assert parse("--pds", "3").pds == 3
    assert parse("--soak").soak == cli.SOAK_DEFAULT_S == 24 * 3600
    assert parse("--soak", "600", "--time", "30").soak == 600.0


@pytest.mark.parametrize(
    "bad", [["--pds", "2"], ["--soak", "0"], ["--soak", "-5"], ["--soak", "x"]]
)
def test_bad_arguments_are_refused(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse(*bad)
    assert e.value.code == 2
    assert f"argument {bad[0]}" in capsys.readouterr().err


def test_run_refuses_a_pd_count_a_cluster_cannot_have(tmp_path: Path) -> None:
    from kvstore.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        runner.run(RunConfig("register", pds=2, output=tmp_path))


class FakeRuns:
    """Stands in for :func:`runner.run`: verdicts in order, then valid."""

    def __init__(self, verdicts: list[bool | None], interrupt_at: int | None = None) -> None:
        self.verdicts = verdicts
        self.interrupt_at = interrupt_at
        self.configs: list[RunConfig] = []

    def __call__(self, cfg: RunConfig, progress: Any = None) -> RunOutcome:
        self.configs.append(cfg)
        if len(self.configs) == self.interrupt_at:
            raise KeyboardInterrupt
        i = len(self.configs) - 1
        valid = self.verdicts[i] if i < len(self.verdicts) else True
        assert cfg.seed is not None
        meta = {
            "workload": cfg.workload,
            "nemesis": cfg.nemesis,
            "outcomes": {"ok": 1, "fail": 0, "info": 0},
        }
        return RunOutcome(CheckResult("fake", valid), [], [], cfg.output, cfg.seed, meta)


def test_soak_runs_with_the_next_seed_until_a_run_is_not_valid(tmp_path: Path) -> None:
    fake = FakeRuns([True, True, False])
    seen: list[RunOutcome] = []
    cfg = RunConfig("bank", "kill", time=5, seed=40, output=tmp_path, pds=3)
    out = soak(cfg, 3600, on_run=seen.append, run_one=fake)
    assert [c.seed for c in fake.configs] == [40, 41, 42]
    assert [c.output for c in fake.configs] == [tmp_path / f"run-00{i}" for i in (1, 2, 3)]
    assert {(c.workload, c.nemesis, c.time, c.pds) for c in fake.configs} == {
        ("bank", "kill", 5, 3)
    }
    assert len(seen) == 3 and not out.interrupted
    assert out.exit_code == 1
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert [r["valid"] for r in summary["runs"]] == [True, True, False]
    assert [r["seed"] for r in summary["runs"]] == [40, 41, 42]


def test_soak_stops_at_its_time_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = [0.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    fake = FakeRuns([])

    def ten_seconds(cfg: RunConfig, progress: Any = None) -> RunOutcome:
        clock[0] += 10.0
        return fake(cfg, progress)

    out = soak(RunConfig("set", seed=1, output=tmp_path), 25.0, run_one=ten_seconds)
    assert len(out.runs) == 3  # started at 0, 10 and 20 s; none at 30 s
    assert out.exit_code == 0 and not out.interrupted


def test_soak_ends_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    fake = FakeRuns([], interrupt_at=3)
    out = soak(RunConfig("set", seed=9, output=tmp_path), 3600, run_one=fake)
    assert out.interrupted and len(out.runs) == 2 and out.exit_code == 0
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert summary["interrupted"] is True and len(summary["runs"]) == 2


def test_soak_that_finished_nothing_is_undecided(tmp_path: Path) -> None:
    out = soak(RunConfig("set", seed=9, output=tmp_path), 3600, run_one=FakeRuns([], 1))
    assert out.runs == [] and out.exit_code == 2


def test_cli_soak_returns_the_worst_runs_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[RunConfig, float]] = []

    def fake_soak(cfg: RunConfig, duration: float, progress: Any, on_run: Any) -> SoakOutcome:
        calls.append((cfg, duration))
        runs = [FakeRuns([])(replace_seed(cfg, 5)), FakeRuns([None])(replace_seed(cfg, 6))]
        for r in runs:
            on_run(r)
        return SoakOutcome(runs, False, tmp_path)

    monkeypatch.setattr(runner, "soak", fake_soak)
    args = parse("--soak", "120", "--time", "7", "--pds", "3", "--output", str(tmp_path))
    assert cli.main(args) == 2
    ((cfg, duration),) = calls
    assert duration == 120.0 and cfg.time == 7.0 and cfg.pds == 3
    printed = capsys.readouterr().out
    assert "seed 5" in printed and "--pds 3" in printed and "--seed 6" in printed  # replay


def replace_seed(cfg: RunConfig, seed: int) -> RunConfig:
    from dataclasses import replace

    return replace(cfg, seed=seed)
