"""The live display of a benchmark run: one line per phase with its elapsed
time, operations done and rate.

It draws on stderr, so stdout carries only the result table. Workers report in
chunks (see ``chunk_size``): a progress update takes a lock, and one per
operation would be measured along with the operation.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Mean operations per second since the task started (frozen once stopped)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        if not elapsed or not task.completed:
            return Text("      - ops/s", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:>11,.0f} ops/s", style="progress.data.speed")


def phase_progress(console: Console | None = None) -> Progress:
    """A :class:`rich.progress.Progress` for benchmark phases; use it as a
    context manager and add one task per phase."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        RateColumn(),
        console=console or Console(stderr=True),
        refresh_per_second=5,
    )


def chunk_size(total_ops: int) -> int:
    """How many operations a worker runs between two progress updates: about
    1/50 of the phase, between 1 and 1000."""
    return max(1, min(1000, total_ops // 50))
