"""Helpers every workload shares: latency statistics, machine facts, result files.

A result is only worth keeping with the context that produced it, so each run
writes ``<output>/<workload>-<timestamp>.json`` (every number, the machine, the
exact command line) and a Markdown summary next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# Packages whose versions change the numbers (DESIGN.md §4 pins them).
DEFAULT_LIBRARIES = ("htapkv", "rocksdict", "rich", "pysyncobj", "grpcio", "pyarrow")


# ---------------------------------------------------------------- statistics
def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def latency_summary_us(latencies_ns: Iterable[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of nanosecond latencies, in microseconds."""
    values = sorted(latencies_ns)
    if not values:
        return {}
    return {
        "p50": percentile(values, 50) / 1000,
        "p90": percentile(values, 90) / 1000,
        "p99": percentile(values, 99) / 1000,
        "p999": percentile(values, 99.9) / 1000,
        "max": values[-1] / 1000,
        "mean": sum(values) / len(values) / 1000,
    }


# ---------------------------------------------------------------- machine
def _first_line_with(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type (``ext4``, ``tmpfs``...) of the filesystem holding ``path``,
    from ``/proc/mounts``; None where that file does not exist. It matters:
    an fsync on tmpfs costs nothing."""
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) > best[0]):
                    best = (len(mount), fields[2])
    except OSError:
        return None
    return best[1] if best else None


def library_versions(names: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def machine_info(libraries: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, Any]:
    """Facts about the machine and software a result depends on."""
    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable_cpus = None
    mem_kb = _first_line_with("/proc/meminfo", "MemTotal")
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _first_line_with("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "memory_total": mem_kb,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "libraries": library_versions(libraries),
        "git_revision": _git_revision(),
    }


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (``htapkv ...``), quoted so it can be pasted back."""
    args = list(sys.argv if argv is None else argv)
    if args:
        prog = os.path.basename(args[0])
        args[0] = "htapkv" if prog in ("htapkv", "cli.py", "__main__.py") else args[0]
    return shlex.join(args)


# ---------------------------------------------------------------- files
def timestamp() -> str:
    """Local time, sortable and safe in file names: ``20250131-142501``."""
    return time.strftime("%Y%m%d-%H%M%S")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines.extend("| " + " | ".join(esc(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def write_results(
    output_dir: str | os.PathLike[str], workload: str, data: dict[str, Any], markdown: str
) -> tuple[Path, Path]:
    """Write ``<workload>-<timestamp>.json`` and ``.md`` into ``output_dir``
    (created if missing); never overwrite an earlier run's files."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{workload}-{data.get('timestamp') or timestamp()}"
    n = 1
    base = stem
    while (out / f"{stem}.json").exists() or (out / f"{stem}.md").exists():
        n += 1
        stem = f"{base}-{n}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown if markdown.endswith("\n") else markdown + "\n", encoding="utf-8")
    return json_path, md_path


# ------------------------------------------------------------ shared by workloads
def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {n}")
    return n


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return x


def fmt(x: float | None, spec: str = ",.0f") -> str:
    """A table cell: ``-`` for a missing number."""
    return "-" if x is None else format(x, spec)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def notes_section(results: Iterable[Any], warnings: Iterable[str]) -> list[str]:
    """The Markdown "Notes" lines: each result's own notes (``r.id``,
    ``r.notes``), then the run's warnings; empty when there are none."""
    notes = [f"- {r.id}: {n}" for r in results for n in r.notes]
    notes += [f"- {n}" for n in warnings]
    return ["", "## Notes", "", *notes] if notes else []


# ------------------------------------------------------------ shared flags
DEFAULT_OUTPUT = "bench-results"


def add_run_flags(
    p: argparse.ArgumentParser,
    *,
    seed_help: str,
    data_dir_help: str,
    quick_help: str,
    keep_data_help: str = "do not delete the data afterwards",
) -> None:
    """The flags every workload shares, spelled the same everywhere:
    ``--seed``, ``--output``, ``--data-dir``, ``--keep-data``, ``--quick``."""
    p.add_argument("--seed", type=int, default=1, help=seed_help)
    p.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help=f"folder for the JSON, Markdown and PNG results (default {DEFAULT_OUTPUT}/)",
    )
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--keep-data", action="store_true", help=keep_data_help)
    p.add_argument("--quick", action="store_true", help=quick_help)


class _DoesNotApply(argparse.Action):
    def __init__(self, *args: Any, reason: str, **kwargs: Any) -> None:
        self.reason = reason
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} does not apply to this workload: {self.reason}")


def does_not_apply(p: argparse.ArgumentParser, flag: str, reason: str) -> None:
    """Accept one of the shared flags (``--pd``, ``--duration``, ``--ops``,
    ``--concurrency``) that this workload has no use for, and refuse it with
    ``reason``, so that every workload answers every shared flag the same
    way rather than with "unrecognized arguments"."""
    p.add_argument(
        flag,
        action=_DoesNotApply,
        reason=reason,
        metavar="X",
        help=f"does not apply: {reason}",
    )


# Warn when the load average exceeds this per CPU: the numbers are then noisy.
BUSY_LOAD_PER_CPU = 0.5


def busy_warning(load: list[float] | None, contended: str = "the CPUs") -> str | None:
    """The warning every workload prints when the machine is already busy at
    the start of a run (other processes compete for ``contended``), else None."""
    cpus = os.cpu_count() or 1
    if load and load[0] > BUSY_LOAD_PER_CPU * cpus:
        return (
            f"the machine was busy at start (load average {load[0]:.2f} on {cpus} CPUs): "
            f"other processes compete for {contended}, so the numbers are noisy"
        )
    return None


def result_header(benchmark: str, started: datetime.datetime) -> dict[str, Any]:
    """The fields every result JSON starts with (``htapkv bench report``
    reads them): the workload, the file format, when it started, and the
    exact command line that produced it."""
    return {
        "benchmark": benchmark,
        "format_version": 1,
        "timestamp": started.strftime("%Y%m%d-%H%M%S"),
        "started_at": started.isoformat(timespec="seconds"),
        "command": command_line(),
        "argv": sys.argv,
    }
