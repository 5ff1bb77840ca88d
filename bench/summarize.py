"""``htapkv bench report``: the README's benchmark section, regenerated from
saved results.

Every workload writes ``<output>/<workload>-<timestamp>.json`` with its
numbers, the exact command and the machine (see :mod:`bench.report`). This
command reads the newest result of each workload in a folder
(``bench-results/`` by default), renders one Markdown section (per workload:
the key numbers beside their baseline, the targets with their verdicts, the
command and the machine it ran on), prints it, and with ``--write`` puts it
into the README between the markers::

    <!-- bench-report:start -->
    ...generated...
    <!-- bench-report:end -->

Only the text between the markers is replaced; missing markers are an error
(the section is never appended somewhere by guess). Each workload has a
small summariser (:data:`SUMMARISERS`) that knows which of its numbers
matter; a workload without one gets a generic line, so a new workload shows
up before anyone writes its summariser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.report import fmt, markdown_table

START = "<!-- bench-report:start -->"
END = "<!-- bench-report:end -->"
DEFAULT_RESULTS = "bench-results"
ORDER = ("storage", "raft", "ycsb", "columnar", "tpch", "htap")


class ReportError(Exception):
    """Something the user must fix (no results, no markers); one line."""


# ---------------------------------------------------------------- reading
def newest_results(folder: Path) -> tuple[dict[str, tuple[Path, dict[str, Any]]], list[str]]:
    """The newest result per workload (by its ``timestamp``, then file name)
    and a list of files that could not be read."""
    newest: dict[str, tuple[tuple[str, str], Path, dict[str, Any]]] = {}
    skipped: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            skipped.append(f"{path.name}: {e}")
            continue
        if not isinstance(data, dict):
            skipped.append(f"{path.name}: not a result object")
            continue
        name = str(data.get("benchmark") or path.stem.split("-", 1)[0])
        key = (str(data.get("timestamp") or ""), path.name)
        if name not in newest or key > newest[name][0]:
            newest[name] = (key, path, data)
    return {n: (p, d) for n, (_, p, d) in newest.items()}, skipped


# ---------------------------------------------------------------- helpers
def _verdict(met: Any) -> str:
    return {True: "**met**", False: "**missed**"}.get(met, "not judged")


def _num(x: Any, spec: str = ",.0f") -> str:
    return fmt(x, spec) if isinstance(x, (int, float)) else "-"


def _us_to_ms(x: Any) -> str:
    return _num(x / 1000, ",.2f") if isinstance(x, (int, float)) else "-"


def machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine") or {}
    libs = m.get("libraries") or {}
    lib = ", ".join(f"{k} {v}" for k, v in libs.items() if v)
    la = data.get("load_average") or {}
    start = la.get("start") if isinstance(la, dict) else None
    parts = [
        f"{m.get('processor') or '?'}, {m.get('cpu_count') or '?'} CPUs",
        m.get("platform") or "?",
        f"Python {m.get('python_version') or '?'}",
    ]
    if lib:
        parts.append(lib)
    if m.get("git_revision"):
        parts.append(f"git {m['git_revision']}")
    if start:
        parts.append(f"load average at start {start[0]}")
    return "; ".join(parts)


def _target_lines(targets: Iterable[tuple[str, Any, Any]]) -> list[str]:
    """``- statement: value — met/missed`` lines."""
    return [
        f"- {statement}: {value} — {_verdict(met)}" if value else f"- {statement}: {_verdict(met)}"
        for statement, value, met in targets
    ]


def _targets_from(data: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Targets in the common shape ``{key: {statement, value?, met}}``."""
    out = []
    for key, t in (data.get("target") or {}).items():
        if isinstance(t, dict) and "statement" in t:
            v = t.get("value")
            out.append((t["statement"], _num(v, ".3g") if v is not None else "-", t.get("met")))
        elif key != "met" and isinstance(t, bool):
            out.append((key, "-", t))
    return out


# ---------------------------------------------------------------- per workload
def summarize_storage(d: dict[str, Any]) -> list[str]:
    rows = [
        [
            r.get("system", "?"),
            r.get("operation", "?"),
            _num(r.get("ops_per_s")),
            _num((r.get("latency_us") or {}).get("p50"), ",.1f"),
            r.get("baseline") or "",
            _num(r.get("ratio_per_key_vs_baseline"), ".1f") + "x"
            if r.get("ratio_per_key_vs_baseline")
            else "",
        ]
        for r in d.get("results", [])
    ]
    t = d.get("target") or {}
    return [
        markdown_table(
            ["system", "operation", "ops/s", "p50 µs", "baseline", "per key vs baseline"], rows
        ),
        "",
        *_target_lines([(t.get("statement", "target"), "", t.get("met"))]),
    ]


def summarize_raft(d: dict[str, Any]) -> list[str]:
    rows = [
        [
            r.get("system", "?"),
            str(r.get("regions") or "-"),
            str(r.get("inflight") or "-"),
            _num(r.get("ops_per_s")),
            _us_to_ms((r.get("latency_us") or {}).get("p50")),
            _num(r.get("throughput_vs_baseline"), ".2f") + "x"
            if r.get("throughput_vs_baseline")
            else "",
        ]
        for r in d.get("results", [])
    ]
    t = d.get("target") or {}
    lines = [
        markdown_table(
            ["system", "Regions", "in flight", "ops/s", "p50 ms", "ops/s vs fsync'd put"], rows
        ),
        "",
    ]
    if t.get("statement"):
        lines.append(f"- {t['statement']}: {_verdict(t.get('met'))}")
    return lines


def summarize_ycsb(d: dict[str, Any]) -> list[str]:
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in d.get("results", []):
        if r.get("operation") == "all":
            by.setdefault(r.get("phase", "?"), {})[r.get("system", "?")] = r
    peer = (d.get("parameters") or {}).get("peer")
    rows = []
    for phase, systems in by.items():
        h, e = systems.get("htapkv") or {}, systems.get(peer or "etcd") or {}
        ratio = (
            h["ops_per_s"] / e["ops_per_s"] if h.get("ops_per_s") and e.get("ops_per_s") else None
        )
        rows.append(
            [
                phase,
                str(h.get("concurrency", "-")),
                _num(h.get("ops_per_s")),
                _us_to_ms((h.get("latency_us") or {}).get("p50")),
                _num(e.get("ops_per_s")),
                _us_to_ms((e.get("latency_us") or {}).get("p50")),
                _num(ratio, ".2f") + "x" if ratio else "-",
            ]
        )
    name = peer or "peer"
    return [
        markdown_table(
            [
                "phase",
                "in flight",
                "htapkv ops/s",
                "p50 ms",
                f"{name} ops/s",
                f"{name} p50 ms",
                "ratio",
            ],
            rows,
        ),
        "",
        *_target_lines(
            (
                t.get("statement", k),
                _num(t.get("ratio", t.get("htapkv_share")), ".2f") + "x",
                t.get("met"),
            )
            for k, t in (d.get("target") or {}).items()
            if isinstance(t, dict)
        ),
    ]


def summarize_columnar(d: dict[str, Any]) -> list[str]:
    rows = []
    for q in d.get("queries", []):
        rows.append(
            [
                q.get("label", q.get("id", "?")),
                _num((q.get("columnar") or {}).get("median_ms"), ",.1f"),
                _num((q.get("row_store") or {}).get("median_ms"), ",.0f"),
                _num((q.get("duckdb") or {}).get("median_ms"), ",.1f"),
                _num(q.get("row_store_over_columnar"), ".0f") + "x faster",
                _num(q.get("columnar_over_duckdb"), ".1f") + "x DuckDB's time",
            ]
        )
    lag = (d.get("lag") or {}).get("lag_ms") or {}
    load = d.get("load") or {}
    return [
        f"{_num(load.get('rows'), ',d')} rows loaded at {_num(load.get('rows_per_s'))} rows/s; "
        f"replica lag under load p50 {_num(lag.get('p50'), ',.0f')} ms, "
        f"p99 {_num(lag.get('p99'), ',.0f')} ms.",
        "",
        markdown_table(
            [
                "query",
                "columnar ms",
                "row store ms",
                "DuckDB ms",
                "vs row store",
                "vs DuckDB",
            ],
            rows,
        ),
        "",
        *_target_lines(_targets_from(d)),
    ]


def summarize_tpch(d: dict[str, Any]) -> list[str]:
    qs = d.get("queries", [])
    ratios = [q["ratio_vs_duckdb"] for q in qs if q.get("ratio_vs_duckdb")]
    load = d.get("load") or {}
    t = d.get("target") or {}
    within = sum(1 for r in ratios if r <= 2.0)
    return [
        f"SF {(d.get('parameters') or {}).get('sf', '?')}: {len(qs)} queries, answers "
        f"{'agree with DuckDB' if d.get('answers_agree') else '**DIFFER from DuckDB**'}; "
        f"geometric mean {_num(d.get('geomean_ratio_vs_duckdb'), '.1f')}x DuckDB's time "
        f"({within} of {len(ratios)} queries within 2x); load "
        f"{_num(load.get('rows_per_s'))} rows/s.",
        "",
        *_target_lines(
            [
                (
                    "geometric mean within 2x of DuckDB",
                    _num(d.get("geomean_ratio_vs_duckdb"), ".1f") + "x",
                    t.get("geomean_within_2x"),
                ),
                (
                    "load at least 50,000 rows/s",
                    _num(load.get("rows_per_s")),
                    t.get("load_50k_rows_per_s"),
                ),
            ]
        ),
    ]


def summarize_htap(d: dict[str, Any]) -> list[str]:
    s = d.get("summary") or {}
    p = d.get("parameters") or {}
    ph = d.get("phases") or {}
    rows = []
    for name in ("oltp", "oltp_analytics", "sqlite"):
        x = ph.get(name)
        if x:
            lat = x.get("latency_ms") or {}
            rows.append(
                [
                    x.get("label", name),
                    _num(x.get("tps"), ",.1f"),
                    _num(lat.get("p50"), ",.1f"),
                    _num(lat.get("p99"), ",.1f"),
                    _num(x.get("retries"), ",d"),
                ]
            )
    queries = d.get("analytics") or []
    q_p50 = [q["latency_ms"]["p50"] for q in queries if (q.get("latency_ms") or {}).get("p50")]
    consistent = s.get("consistent")
    return [
        f"{p.get('warehouses', '?')} warehouse(s), {p.get('concurrency', '?')} OLTP threads, "
        f"{p.get('analytic_threads', '?')} analytic thread(s), "
        + (
            f"{p['duration_s']:g} s per phase."
            if p.get("duration_s")
            else f"{p.get('ops')} transactions per phase."
        ),
        "",
        markdown_table(["phase", "tx/s", "p50 ms", "p99 ms", "retries"], rows),
        "",
        f"Analytic queries: {_num(s.get('analytic_runs'), ',d')} runs on the columnar replica "
        f"({_num(s.get('analytic_fallbacks'), ',d')} answered by the row store), p50 per query "
        f"{', '.join(_num(x, ',.0f') for x in q_p50) or '-'} ms. Consistency after the run "
        f"(TPC-C conditions 1-4): {'ok' if consistent else '**VIOLATED**'}.",
        "",
        *_target_lines(_targets_from(d)),
    ]


def summarize_generic(d: dict[str, Any]) -> list[str]:
    t = d.get("target") or {}
    met = t.get("met") if isinstance(t, dict) else None
    return [f"No summariser for this workload yet; overall target verdict: {_verdict(met)}."]


SUMMARISERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "storage": summarize_storage,
    "raft": summarize_raft,
    "ycsb": summarize_ycsb,
    "columnar": summarize_columnar,
    "tpch": summarize_tpch,
    "htap": summarize_htap,
}


# ---------------------------------------------------------------- rendering
def render_section(results: dict[str, tuple[Path, dict[str, Any]]]) -> str:
    """The Markdown between the markers (the markers included)."""
    names = [n for n in ORDER if n in results] + sorted(n for n in results if n not in ORDER)
    out = [
        START,
        "<!-- generated by `htapkv bench report --write` from bench-results/*.json; "
        "edit the results, not this text -->",
        "",
    ]
    for name in names:
        path, d = results[name]
        when = d.get("started_at") or d.get("timestamp") or "?"
        body = SUMMARISERS.get(name, summarize_generic)
        try:
            lines = body(d)
        except Exception as e:  # an older or odd result must not stop the report
            lines = [f"(could not summarise {path.name}: {type(e).__name__}: {e})"]
        out += [
            f"### `htapkv bench {name}` ({when})",
            "",
            f"Command: `{d.get('command') or '?'}`  ",
            f"Machine: {machine_line(d)}  ",
            f"Result: `{path.name}`",
            "",
            *lines,
            "",
        ]
    out.append(END)
    return "\n".join(out) + "\n"


def replace_section(readme: str, section: str) -> str:
    """``readme`` with the text from the start marker to the end marker
    replaced by ``section`` (which carries the markers itself)."""
    i = readme.find(START)
    j = readme.find(END)
    if i < 0 or j < 0:
        missing = " and ".join(m for m, k in ((START, i), (END, j)) if k < 0)
        raise ReportError(f"the README has no {missing} marker: add both where the section goes")
    if j < i:
        raise ReportError("the README's bench-report markers are in the wrong order")
    if readme.count(START) > 1 or readme.count(END) > 1:
        raise ReportError("the README has more than one pair of bench-report markers")
    tail = readme[j + len(END) :]
    return readme[:i] + section.rstrip("\n") + tail


# ---------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="regenerate the README's benchmark section from saved results",
        description="Read the newest saved result of each workload, render the README's "
        "benchmark section, print it; with --write, replace the section between "
        f"{START} and {END} in the README.",
    )
    p.add_argument(
        "--results",
        default=DEFAULT_RESULTS,
        help=f"folder of saved results (default {DEFAULT_RESULTS}/)",
    )
    p.add_argument("--readme", default="README.md", help="the README to update (default README.md)")
    p.add_argument("--write", action="store_true", help="replace the section in the README")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        folder = Path(args.results)
        if not folder.is_dir():
            raise ReportError(f"no results folder {folder}: run a benchmark first")
        results, skipped = newest_results(folder)
        for s in skipped:
            print(f"htapkv bench report: skipped {s}", file=sys.stderr)
        if not results:
            raise ReportError(f"no result files (*.json) in {folder}")
        section = render_section(results)
        print(section, end="")
        if args.write:
            readme = Path(args.readme)
            if not readme.is_file():
                raise ReportError(f"no README at {readme}")
            text = readme.read_text(encoding="utf-8")
            new = replace_section(text, section)
            if new != text:
                readme.write_text(new, encoding="utf-8")
            print(f"htapkv bench report: updated {readme}", file=sys.stderr)
    except ReportError as e:
        print(f"htapkv bench report: error: {e}", file=sys.stderr)
        return 2
    return 0
