"""``htapkv check``: run a consistency workload under faults and judge it.

Exit status: 0 the history is valid, 1 the checker found anomalies, 2 the
run could not be judged (an error, or a checker that could not decide).
With ``--soak``, the worst of its runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.check.nemesis import KINDS
from bench.check.workloads import WORKLOADS
from bench.report import positive_float, positive_int

MAX_ANOMALIES_SHOWN = 10
MAX_OPS_SHOWN = 8
SOAK_DEFAULT_S = 24 * 3600.0


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="Jepsen-style consistency check under faults")
    p.add_argument("--workload", required=True, choices=list(WORKLOADS))
    p.add_argument("--nemesis", default="none", choices=list(KINDS))
    p.add_argument(
        "--time",
        type=positive_float,
        default=60.0,
        help="seconds of workload (a fault in progress then runs to its end under load; "
        "of each run, with --soak)",
    )
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--pd", help="PD address(es) of a running cluster (default: start one)")
    p.add_argument("--output", default="check-results", help="directory for the results")
    p.add_argument("--clients", type=positive_int, default=3, help="client processes")
    p.add_argument(
        "--pds",
        type=int,
        choices=(1, 3),
        default=1,
        help="PD nodes of the cluster started (3: faults can take the PD leader away "
        "while a quorum remains)",
    )
    p.add_argument(
        "--soak",
        nargs="?",
        type=positive_float,
        const=SOAK_DEFAULT_S,
        metavar="SECONDS",
        help="repeat runs of --time seconds, each on a fresh cluster with the next seed, "
        "until SECONDS have passed (default without a value: 24 h), Ctrl-C, or a run "
        "that is not valid; results in OUTPUT/run-NNN and OUTPUT/soak.json",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.check.runner import RunConfig, run

    err = Console(stderr=True)
    cfg = RunConfig(
        workload=args.workload,
        nemesis=args.nemesis,
        time=args.time,
        seed=args.seed,
        pd=args.pd,
        output=Path(args.output),
        clients=args.clients,
        pds=args.pds,
    )
    if args.soak is not None:
        return _soak(cfg, args.soak, err)
    try:
        with err.status(f"check {cfg.workload}: starting") as status:

            def progress(elapsed: float, total: float, note: str) -> None:
                fault = f" - nemesis: {note}" if note else ""
                status.update(f"check {cfg.workload}: {elapsed:.0f}/{total:.0f} s{fault}")

            outcome = run(cfg, progress)
    except Exception as e:
        err.print(f"[red]htapkv check: error: {type(e).__name__}: {e}")
        return 2
    print_verdict(outcome, Console())
    return outcome.exit_code


def _soak(cfg: Any, duration: float, err: Any) -> int:
    from rich.console import Console

    from bench.check.runner import soak

    out = Console()

    def on_run(o: Any) -> None:
        ops = ", ".join(f"{k} {v}" for k, v in o.meta["outcomes"].items())
        verdict = o.result.verdict(o.result.valid)
        out.print(f"run {o.output.name}: seed {o.seed}, {len(o.faults)} faults, {ops}: {verdict}")

    try:
        with err.status(f"soak {cfg.workload}: starting") as status:

            def progress(elapsed: float, total: float, note: str) -> None:
                fault = f" - nemesis: {note}" if note else ""
                status.update(f"soak {cfg.workload}: {elapsed:.0f}/{total:.0f} s{fault}")

            outcome = soak(cfg, duration, progress, on_run)
    except Exception as e:
        err.print(f"[red]htapkv check: error: {type(e).__name__}: {e}")
        return 2
    if outcome.runs and outcome.exit_code != 0:
        last = outcome.runs[-1]
        print_verdict(last, out)
        out.print(
            f"replay: htapkv check --workload {cfg.workload} --nemesis {cfg.nemesis} "
            f"--pds {cfg.pds} --clients {cfg.clients} --time {cfg.time:g} --seed {last.seed}"
        )
    why = "interrupted" if outcome.interrupted else "stopped"
    out.print(f"soak {why} after {len(outcome.runs)} runs: {outcome.output / 'soak.json'}")
    return outcome.exit_code


def print_verdict(outcome: Any, console: Any) -> None:
    from rich.table import Table

    r = outcome.result
    meta = outcome.meta
    colour = {True: "green", False: "red", None: "yellow"}[r.valid]
    t = Table(title=f"htapkv check {meta['workload']} (nemesis {meta['nemesis']})")
    t.add_column("item")
    t.add_column("value", overflow="fold")
    t.add_row("verdict", f"[{colour}]{r.verdict(r.valid)}[/]")
    t.add_row("seed", str(outcome.seed))
    t.add_row("operations", ", ".join(f"{k} {v}" for k, v in meta["outcomes"].items()))
    t.add_row("faults", str(len(outcome.faults)))
    for k, v in r.stats.items():
        t.add_row(k, str(v))
    for a in r.allowed[:MAX_ANOMALIES_SHOWN]:
        t.add_row(f"allowed {a.kind}", a.message)
    console.print(t)
    if r.anomalies:
        by_id = {op.id: op for op in outcome.ops}
        at = Table(title="anomalies", show_lines=True)
        at.add_column("kind", style="red")
        at.add_column("what", overflow="fold")
        at.add_column("operations", overflow="fold")
        for a in r.anomalies[:MAX_ANOMALIES_SHOWN]:
            shown = [by_id[i].describe() for i in a.ops[:MAX_OPS_SHOWN] if i in by_id]
            more = f"\n... {len(a.ops) - MAX_OPS_SHOWN} more" if len(a.ops) > MAX_OPS_SHOWN else ""
            at.add_row(a.kind, a.message[:500], "\n".join(shown) + more)
        if len(r.anomalies) > MAX_ANOMALIES_SHOWN:
            at.caption = f"{len(r.anomalies) - MAX_ANOMALIES_SHOWN} more in result.json"
        console.print(at)
    for kind, why in meta.get("nemesis_left_out", {}).items():
        console.print(f"[yellow]nemesis: {kind} left out: {why}")
    for e in meta.get("nemesis_errors", []):
        console.print(f"[yellow]nemesis: {e}")
    console.print(f"results: {outcome.output} (history.json, result.json, timeline.png)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="htapkv")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(sys.argv[1:])
    sys.exit(ns.func(ns))
