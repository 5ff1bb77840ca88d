"""Running a benchmark the way a user does, for the smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_quick_bench(
    workload: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """``htapkv bench WORKLOAD --quick [EXTRA...]`` into ``tmp_path``; returns
    the finished process, the output folder and the data folder. ``env``
    replaces the environment (None: inherit it). Asserts nothing."""
    out, data_dir = tmp_path / "results", tmp_path / "data"
    cmd = [sys.executable, "-m", "kvstore.cli", "bench", workload, "--quick", *extra]
    proc = subprocess.run(
        [*cmd, "--output", str(out), "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    return proc, out, data_dir


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_leftover_clusters(data_dir: Path) -> None:
    """If a benchmark died before its own cleanup, stop the processes it
    started (each local cluster leaves a cluster.json naming them)."""
    from kvstore.server.cluster import stop_detached

    if data_dir.exists():
        for f in data_dir.glob("*/htapkv-cluster/cluster.json"):
            stop_detached(f.parent)
