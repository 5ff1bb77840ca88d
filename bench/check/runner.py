"""One check run: cluster, client processes, nemesis, final reads, verdict.

1. Start a :class:`kvstore.LocalCluster` in a temporary directory (1 or 3
   PD nodes, 3 stores, a columnar node only for ``columnar-eq``; the stores'
   data directories on a power-losing FUSE filesystem when the nemesis
   includes ``disk`` and FUSE works here), or use the cluster at ``--pd``
   (then only ``--nemesis none``: we cannot kill processes we did not start).
2. ``setup`` the workload, then start ``clients`` processes (multiprocessing,
   spawn). Each records its operations into its own JSON-lines file with the
   machine-wide monotonic clock.
3. Meanwhile the nemesis breaks and repairs nodes in this process.
4. At the deadline: stop the nemesis, letting the fault in progress run to
   its end with the clients still at work (a fault injected into an idle
   cluster tests little: a failing fsync with nothing to sync fails
   nothing), then stop the clients (an operation still open when a
   client is stopped is ``info``), heal everything, wait until the cluster
   serves, run the final reads (retried until they succeed).
5. Merge the histories, check, and write ``history.json``, ``result.json``
   and ``timeline.png`` into the output directory, with every server's log
   under ``logs/``.

:func:`soak` repeats runs (``htapkv check --soak``): each on a fresh cluster
with the next seed, until a time limit, Ctrl-C, or a run that is not valid.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.check import history as hist
from bench.check import workloads
from bench.check.faults.powerloss import PowerLossFS
from bench.check.history import CheckResult, Recorder
from bench.check.nemesis import (
    DISK_FAULTS,
    Fault,
    Nemesis,
    NemesisUnavailableError,
    wants_power_loss,
)
from kvstore.errors import InvalidArgumentError

CLIENT_TIMEOUT_S = 4.0  # per client call, retries included: short, so faults give unknown outcomes
FINAL_READ_TIMEOUT_S = 90.0


@dataclass
class RunConfig:
    workload: str
    nemesis: str = "none"
    time: float = 60.0
    seed: int | None = None
    pd: str | None = None
    output: Path = Path("check-results")
    clients: int = 3
    pds: int = 1  # PD nodes of the cluster we start: 1 or 3
    disk_faults: tuple[str, ...] | None = None  # the disk nemesis's faults (default: all)
    inject: str | None = None  # test-only: see bench.check.workloads
    startup_timeout: float = 120.0


@dataclass
class RunOutcome:
    result: CheckResult
    ops: list[hist.Op]
    faults: list[Fault]
    output: Path
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {True: 0, False: 1, None: 2}[self.result.valid]


@dataclass
class _WorkerArgs:
    pd: str
    workload: str
    worker: int
    seed: int
    out: str
    inject: str | None


def _worker(a: _WorkerArgs, ready: Any, go: Any, done: Any) -> None:
    """A client process: its own connection, its own recorder file. Starts
    once every client has connected (process start-up takes seconds), so the
    whole ``--time`` is workload, and stops when the parent sets ``done``."""
    import kvstore

    rec = Recorder(a.out)
    wl = workloads.make(a.workload)
    try:
        # Raw writes with an unknown outcome are recorded as such (info), not
        # sent again: a retry is not linearizable (kvstore.client.routing).
        with kvstore.connect(a.pd, timeout=CLIENT_TIMEOUT_S, raw_retry_unknown=False) as client:
            ready.release()
            go.wait()
            rng = random.Random(a.seed)
            ctx = workloads.Ctx(a.worker, rec, rng, math.inf, a.inject, stopped=done.is_set)
            wl.client_loop(client, ctx)
    finally:
        rec.close()


def run(cfg: RunConfig, progress: Any = None) -> RunOutcome:
    """Run ``cfg`` and return the verdict. ``progress(elapsed, total, note)``
    is called about once a second while the workload runs."""
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    wl = workloads.make(cfg.workload)
    if cfg.pd is not None and cfg.nemesis != "none":
        raise NemesisUnavailableError(
            "--pd runs only with --nemesis none (faults need our own processes)"
        )
    if cfg.pds not in (1, 3):
        raise InvalidArgumentError(f"a cluster has 1 or 3 PD nodes, not {cfg.pds}")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    clients_dir = out / "clients"
    clients_dir.mkdir(exist_ok=True)
    for old in clients_dir.glob("*.jsonl"):
        old.unlink()
    with contextlib.ExitStack() as stack:
        cluster = None
        power: PowerLossFS | None = None
        if cfg.pd is None:
            from kvstore.server.cluster import LocalCluster

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="htapkv-check-"))
            if wants_power_loss(cfg.nemesis) and "power-loss" in (cfg.disk_faults or DISK_FAULTS):
                # Entered before the cluster, so closed (unmounted) after it stops.
                power = stack.enter_context(PowerLossFS(Path(tmp) / "powerloss"))
            cluster = LocalCluster(
                Path(tmp) / "cluster",
                pd=cfg.pds,
                stores=3,
                columnar=1 if cfg.workload == "columnar-eq" else 0,
                startup_timeout=cfg.startup_timeout,
                store_data_root=power.mount if power is not None else None,
            )
            stack.callback(cluster.stop)
            cluster.start()
            pd = cluster.pd_addr
        else:
            pd = cfg.pd
        nemesis = Nemesis(
            cluster,
            cfg.nemesis,
            random.Random(rng.random()),
            power=power,
            disk_faults=cfg.disk_faults,
        )
        import kvstore

        with kvstore.connect(pd, timeout=30.0) as client:
            wl.setup(client)
        ctx = mp.get_context("spawn")
        ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Event()
        procs = []
        for i in range(cfg.clients):
            args = _WorkerArgs(
                pd,
                cfg.workload,
                i + 1,
                rng.randrange(2**31),
                str(clients_dir / f"client{i + 1}.jsonl"),
                cfg.inject,
            )
            p = ctx.Process(
                target=_worker,
                args=(args, ready, go, done),
                name=f"check-client{i + 1}",
            )
            p.start()
            procs.append(p)
        stack.callback(_stop_all, procs)
        give_up, connected = time.monotonic() + cfg.startup_timeout, 0
        while connected < len(procs):
            if ready.acquire(timeout=0.5):
                connected += 1
            elif any(p.exitcode is not None for p in procs) or time.monotonic() > give_up:
                raise RuntimeError("a client process exited or did not connect to the cluster")
        t0 = time.monotonic()
        deadline = t0 + cfg.time
        go.set()
        nemesis.start()
        while (now := time.monotonic()) < deadline and any(p.is_alive() for p in procs):
            if progress is not None:
                active = next((f for f in reversed(nemesis.faults) if f.end is None), None)
                note = f"{active.kind} {active.target}" if active else ""
                progress(now - t0, cfg.time, note)
            time.sleep(min(1.0, max(0.0, deadline - now)))
        nemesis.stop()  # returns once the fault in progress has been repaired
        done.set()
        workload_s = time.monotonic() - t0
        # Clients finish their operation in flight (bounded by the call timeout).
        for p in procs:
            p.join(timeout=CLIENT_TIMEOUT_S * 3 + 10)
        _stop_all(procs)
        client_failures = [p.name for p in procs if p.exitcode not in (0, None)]
        if cluster is not None:
            nemesis.heal()
        final = Recorder(clients_dir / "final.jsonl")
        fctx = workloads.Ctx(0, final, rng, 0.0)
        with kvstore.connect(pd, timeout=30.0) as client:
            give_up = time.monotonic() + FINAL_READ_TIMEOUT_S
            while not wl.final(client, fctx) and time.monotonic() < give_up:
                time.sleep(0.5)  # the cluster serves, but a Region may still be electing
        final.close()
        if cluster is not None:  # the servers' logs outlive the temporary cluster
            _keep_logs(cluster, out / "logs")
    events = hist.merge(hist.read_jsonl(f) for f in sorted(clients_dir.glob("*.jsonl")))
    ops = hist.pair(events)
    result = wl.check(ops)
    meta = {
        "workload": cfg.workload,
        "nemesis": cfg.nemesis,
        "time": cfg.time,
        "workload_s": round(workload_s, 1),
        "seed": seed,
        "clients": cfg.clients,
        "pds": cfg.pds if cfg.pd is None else None,
        "power_loss": power is not None,
        "inject": cfg.inject,
        "start": t0,
        "faults": [asdict(f) for f in nemesis.faults],
        "nemesis_errors": nemesis.errors,
        "nemesis_left_out": nemesis.left_out,
        "client_failures": client_failures,
        "outcomes": {o: sum(1 for op in ops if op.outcome == o) for o in hist.OUTCOMES},
    }
    hist.save(out / "history.json", events, meta)
    (out / "result.json").write_text(
        json.dumps({"meta": meta, "result": result.to_json()}, indent=2, default=repr) + "\n"
    )
    outcome = RunOutcome(result, ops, nemesis.faults, out, seed, meta)
    from bench.check.plot import timeline

    timeline(out / "timeline.png", ops, nemesis.faults, result, t0, title=_title(cfg, seed))
    return outcome


def _title(cfg: RunConfig, seed: int) -> str:
    pds = f", {cfg.pds} PD" if cfg.pds != 1 else ""
    return f"htapkv check {cfg.workload}, nemesis {cfg.nemesis}{pds}, {cfg.time:g} s, seed {seed}"


@dataclass
class SoakOutcome:
    runs: list[RunOutcome]
    interrupted: bool  # Ctrl-C ended it (the run in progress is dropped)
    output: Path

    @property
    def exit_code(self) -> int:
        """The worst run's: 0 all valid, 1 anomalies, 2 error or undecided
        (also when no run finished)."""
        return max((r.exit_code for r in self.runs), default=2)


def soak(
    cfg: RunConfig,
    duration: float,
    progress: Any = None,
    on_run: Any = None,
    run_one: Any = None,
) -> SoakOutcome:
    """Runs of ``cfg`` back to back, each on a fresh cluster with the next
    seed (``cfg.seed``, ``cfg.seed + 1``, ...) into ``OUTPUT/run-001``, ...,
    until ``duration`` seconds have passed, Ctrl-C, or a run that is not
    valid (its results stay for the post-mortem; ``--seed`` with its seed
    replays it). Short runs keep each history small enough to check and make
    every seed a reproducible case; ``soak.json`` lists the runs so far.
    ``on_run(outcome)`` is called after each run; ``run_one`` replaces
    :func:`run` (tests)."""
    run_one = run_one or run
    first = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[RunOutcome] = []
    interrupted = False
    end = time.monotonic() + duration
    try:
        while time.monotonic() < end:
            i = len(outcomes) + 1
            one = replace(cfg, seed=first + i - 1, output=out / f"run-{i:03d}")
            outcome = run_one(one, progress)
            outcomes.append(outcome)
            _write_soak(out, cfg, duration, outcomes, interrupted=False)
            if on_run is not None:
                on_run(outcome)
            if outcome.exit_code != 0:
                break
    except KeyboardInterrupt:
        interrupted = True
    _write_soak(out, cfg, duration, outcomes, interrupted=interrupted)
    return SoakOutcome(outcomes, interrupted, out)


def _write_soak(
    out: Path, cfg: RunConfig, duration: float, runs: list[RunOutcome], *, interrupted: bool
) -> None:
    summary = {
        "workload": cfg.workload,
        "nemesis": cfg.nemesis,
        "time_per_run": cfg.time,
        "soak_seconds": duration,
        "interrupted": interrupted,
        "runs": [
            {
                "output": str(r.output),
                "seed": r.seed,
                "valid": r.result.valid,
                "faults": len(r.faults),
                "outcomes": r.meta.get("outcomes", {}),
            }
            for r in runs
        ],
    }
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")


def _keep_logs(cluster: Any, dest: Path) -> None:
    dest.mkdir(exist_ok=True)
    for name in cluster.procs:
        with contextlib.suppress(OSError):
            shutil.copyfile(cluster.log_path(name), dest / f"{name}.log")


def _stop_all(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
