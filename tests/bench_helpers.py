"""Running a benchmark the way a user does, for the smoke tests."""

from __future__ import annotations

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
