"""The timeline of a check run, as a PNG.

One lane per client process; each operation a bar from invoke to completion,
coloured by outcome (``info`` bars run to the end of the plot, dashed: their
effect may come at any later time); nemesis faults shaded with their target
named; operations an anomaly involves marked with a black cross.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench.check.history import CheckResult, Op
from bench.check.nemesis import Fault

COLOURS = {"ok": "#2e7d32", "fail": "#c62828", "info": "#ef6c00"}


def timeline(
    path: Path,
    ops: Sequence[Op],
    faults: Sequence[Fault],
    result: CheckResult,
    t0: float,
    title: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    lanes = {p: i for i, p in enumerate(sorted({op.process for op in ops}))}
    finite = [op.end for op in ops if not math.isinf(op.end)]
    t_end = (max(finite) if finite else t0 + 1) - t0
    fig, ax = plt.subplots(figsize=(14, max(3.0, 0.35 * len(lanes) + 1.5)))
    for f in faults:
        end = (f.end if f.end is not None else t0 + t_end) - t0
        ax.axvspan(f.start - t0, end, color="#90a4ae", alpha=0.25, lw=0)
        ax.text(f.start - t0, len(lanes) - 0.4, f"{f.kind}\n{f.target}", fontsize=7, va="top")
    for outcome, colour in COLOURS.items():
        segs = []
        for op in ops:
            if op.outcome != outcome:
                continue
            y = lanes[op.process]
            end = t_end if math.isinf(op.end) else op.end - t0
            segs.append([(op.start - t0, y), (max(end, op.start - t0 + 0.002), y)])
        if segs:
            style = "dashed" if outcome == "info" else "solid"
            ax.add_collection(LineCollection(segs, colors=colour, linewidths=3, linestyles=style))
    bad = {i for a in result.anomalies for i in a.ops}
    marks = [(op.start - t0, lanes[op.process]) for op in ops if op.id in bad]
    if marks:
        xs, ys = zip(*marks, strict=True)
        ax.scatter(xs, ys, marker="x", color="black", s=40, zorder=5)
    ax.set_xlim(0, max(t_end, 0.1))
    ax.set_ylim(-1, len(lanes))
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([f"p{p}" for p in lanes], fontsize=7)
    ax.set_xlabel("seconds since the workload started")
    ax.set_title(f"{title} - {CheckResult.verdict(result.valid)}", fontsize=10)
    handles = [Line2D([], [], color=c, lw=3, label=o) for o, c in COLOURS.items()]
    handles.append(Line2D([], [], color="black", marker="x", lw=0, label="anomaly"))
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
