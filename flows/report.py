"""Rendering and publishing of the joined accuracy x performance report (the data is flows/report_model.py).

Renderers are pure: `render_markdown` (the Prefect markdown artifact and the ClearML task's
description), `render_console` (rich tables for the CLI), `table_rows` (Prefect's table artifact),
`plot_svg` (a small hand-written SVG: recovery bars and latency vs throughput). Publishers:
`publish_prefect` (artifacts of the current flow run) and `publish_clearml` (one ClearML summary
task per report: the baseline registry in flows/baselines.py reads reports back from it).

Headline choice is deterministic so columns stay put night after night: accuracy columns are suite
averages (`suite/*`), then lm-eval group values (`tiny/acc` when `tiny_*` tasks exist), then gated
metrics, then the rest, each tier by name, at most `HEADLINE_ACCURACY_COLUMNS`; performance
headlines are TTFT median, ITL median and output tokens/s of the lightest-load benchmark of the
profile (`synchronous`, else the lowest rate), whose comparisons are the least noisy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from rich.console import Group
from rich.table import Table

from automation.backend import FLOW_RUN_TAG, BackendError, ClearMLBackend
from flows.gates import PerformanceDecision
from flows.report_model import BASE_SCHEME, Report, ReportCell

log = logging.getLogger("flows.report")

# -- how a report is stored in ClearML (read back by flows/baselines.py) ------------------------
REPORT_TAG = "report"
SERIES_TAG = "series:"
OUTCOME_TAG = "outcome:"
BASELINE_TAG = "baseline"
REPORT_CONFIG = "report"  # configuration object holding the report JSON
PROPERTIES = "properties"  # the hyperparams section ClearML shows as "User Properties"
PLOT_ARTIFACT = "report_plot"
JSON_ARTIFACT = "report_json"
MARKDOWN_ARTIFACT = "report_markdown"
SUMMARY_TASK_TYPE = "qc"
MAX_COMMENT_CHARS = 100_000

HEADLINE_ACCURACY_COLUMNS = 4
PERF_HEADLINES: tuple[tuple[str, str], ...] = (
    ("ttft_ms/median", "TTFT med ms"),
    ("itl_ms/median", "ITL med ms"),
    ("output_tokens_per_s", "out tok/s"),
)
OUTCOME_WORDS = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "baseline": "BASELINE",
                 "error": "ERROR"}
_SECRET_NAME = re.compile(r"(^|[_\-.])(secret|password|passwd|token|api_?key|access_?key|credentials?)($|[_\-.])",
                          re.IGNORECASE)


# -- small formatting helpers --------------------------------------------------------------------
def outcome_word(outcome: str | None) -> str:
    return OUTCOME_WORDS.get(outcome or "", "-")


def fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 10_000:
        return f"{value:.0f}"
    return f"{value:.4g}"


def fmt_change(change: float | None) -> str:
    return "-" if change is None or not math.isfinite(change) else f"{change:+.1%}"


def short_model(model: str) -> str:
    """`hf:org/name@rev` -> `name`, `/a/b/model` -> `model`, `clearml:<id>` -> `clearml-<id8>`."""
    if model.startswith("clearml:"):
        return f"clearml-{model.removeprefix('clearml:')[:8]}"
    text = model.removeprefix("hf:").partition("@")[0].rstrip("/")
    return text.rsplit("/", 1)[-1] or model


def cell_label(cell: ReportCell) -> str:
    return f"{short_model(cell.model)} {cell.scheme}"


def combine(outcomes: Iterable[str]) -> str | None:
    """fail beats inconclusive beats pass; None when nothing was decided."""
    seen = set(outcomes)
    if not seen:
        return None
    for worst in ("fail", "inconclusive"):
        if worst in seen:
            return worst
    return "pass"


# -- headline values -----------------------------------------------------------------------------
def _accuracy_tier(name: str, groups: set[str], gated: set[str]) -> int:
    task = name.split("/", 1)[0]
    if task == "suite":
        return 0
    if task in groups:
        return 1
    return 2 if name in gated else 3


def rank_accuracy(names: Iterable[str], gated: Iterable[str] = ()) -> list[str]:
    """Accuracy value names, most headline-worthy first (see the module docstring)."""
    unique = sorted(set(names))
    tasks = {n.split("/", 1)[0] for n in unique}
    # an lm-eval group `tiny` reports next to its subtasks `tiny_mc`, `tiny_gen`, ...
    groups = {t for t in tasks if any(o != t and o.startswith(t + "_") for o in tasks)}
    gated_set = set(gated)
    return sorted(unique, key=lambda n: (_accuracy_tier(n, groups, gated_set), n))


def headline_accuracy(report: Report, limit: int = HEADLINE_ACCURACY_COLUMNS) -> list[str]:
    names = [n for c in report.cells for n in c.accuracy]
    gated = [d.metric for c in report.cells for d in c.accuracy_gates]
    return rank_accuracy(names, gated)[:limit]


def _label_order(label: str) -> tuple[int, str, float]:
    strategy, _, rate = label.partition("@")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    return (0 if strategy == "synchronous" else 1, strategy, value)


def perf_label(performance: Mapping[str, float]) -> str | None:
    """The benchmark (rate label) whose values are the headline: the lightest load."""
    labels = {name[: -len(suffix) - 1] for name in performance for suffix, _ in PERF_HEADLINES
              if name.endswith("/" + suffix)}
    return min(labels, key=_label_order) if labels else None


def perf_headline_names(performance: Mapping[str, float]) -> list[str | None]:
    """Value names of TTFT median, ITL median and output tokens/s (None where not reported)."""
    label = perf_label(performance)
    if label is None:
        return [None] * len(PERF_HEADLINES)
    return [f"{label}/{suffix}" if f"{label}/{suffix}" in performance else None for suffix, _ in PERF_HEADLINES]


def headline_names(cell: ReportCell, limit: int = HEADLINE_ACCURACY_COLUMNS) -> list[str]:
    """The values a cell's trend is computed on."""
    accuracy = rank_accuracy(cell.accuracy, [d.metric for d in cell.accuracy_gates])[:limit]
    return [*accuracy, *(n for n in perf_headline_names(cell.performance) if n)]


# -- per-cell summaries ----------------------------------------------------------------------------
def recovery_min(cell: ReportCell) -> float | None:
    values = [d.recovery for d in cell.accuracy_gates if d.recovery is not None]
    return min(values) if values else None


def accuracy_outcome(cell: ReportCell) -> str | None:
    return combine(d.outcome for d in cell.accuracy_gates)


def performance_outcome(cell: ReportCell) -> str | None:
    return combine(d.outcome for d in cell.performance_gates if d.gating)


def base_cell(report: Report, cell: ReportCell) -> ReportCell | None:
    """The uncompressed model's cell this one is compared with."""
    bases = [c for c in report.cells if c.scheme == BASE_SCHEME and c.model == cell.model and c is not cell]
    for match in (lambda c: c.suite == cell.suite and c.profile == cell.profile, lambda c: c.profile == cell.profile):
        found = [c for c in bases if match(c)]
        if found:
            return found[0]
    return None


def relative_change(value: float | None, reference: float | None) -> float | None:
    """Plain (value - reference) / reference: positive = larger, whatever the metric's direction."""
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / reference


def perf_delta(cell: ReportCell, name: str, base: ReportCell | None) -> float | None:
    if cell.scheme == BASE_SCHEME:
        return None
    for d in cell.performance_gates:
        if d.metric == name:
            return relative_change(d.candidate, d.reference)
    return relative_change(cell.performance.get(name), base.performance.get(name) if base else None)


def step_links(cell: ReportCell) -> list[tuple[str, str]]:
    """(label, URL) of every ClearML task of the cell, failed steps included."""
    out: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for step in cell.steps:
        counts[step.step] = counts.get(step.step, 0) + 1
        label = step.step if counts[step.step] == 1 else f"{step.step} {counts[step.step]}"
        out.append((label, step.web_url))
    for failure in cell.failures:
        if failure.web_url and failure.web_url not in {u for _, u in out}:
            out.append((f"{failure.step} (failed)", failure.web_url))
    return out


# -- markdown ---------------------------------------------------------------------------------------
def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_link(text: str, url: str | None) -> str:
    # ClearML ids and URLs carry no markdown specials except '|' (escaped by md_table)
    return f"[{text}]({url})" if url else text


def _with_delta(value: float | None, change: float | None) -> str:
    return fmt(value) if change is None else f"{fmt(value)} ({fmt_change(change)})"


def _md_header(report: Report) -> str:
    counts: dict[str, int] = {}
    for cell in report.cells:
        counts[cell.outcome] = counts.get(cell.outcome, 0) + 1
    tally = ", ".join(f"{n} {outcome_word(o)}" for o, n in sorted(counts.items()))
    lines = [f"# {report.title}", "",
             f"**Outcome: {outcome_word(report.outcome)}** | series `{report.series}` | "
             f"created {report.created.isoformat(timespec='seconds')} | {len(report.cells)} cells ({tally})"]
    links = []
    if report.flow_run_id:
        links.append("Prefect flow run: " + _md_link(report.flow_run_id, report.flow_run_url))
    if report.summary_task_id:
        links.append("ClearML summary task: " + _md_link(report.summary_task_id, report.summary_task_url))
    if links:
        lines += ["", " | ".join(links)]
    return "\n".join(lines)


def _summary_headers(acc_names: Sequence[str]) -> list[str]:
    return ["Model", "Scheme", "Suite", "Profile", *acc_names, "Recovery (min)", "Accuracy",
            *(label for _, label in PERF_HEADLINES), "Performance", "Outcome"]


def _summary_values(report: Report, cell: ReportCell, acc_names: Sequence[str]) -> list[str]:
    base = base_cell(report, cell)
    perf = []
    for name in perf_headline_names(cell.performance):
        value = cell.performance.get(name) if name else None
        perf.append(_with_delta(value, perf_delta(cell, name, base) if name else None))
    acc = [fmt(cell.accuracy[n].value) if n in cell.accuracy else "-" for n in acc_names]
    return [short_model(cell.model), cell.scheme, cell.suite, cell.profile, *acc, fmt(recovery_min(cell)),
            outcome_word(accuracy_outcome(cell)), *perf, outcome_word(performance_outcome(cell)),
            outcome_word(cell.outcome)]


def _md_summary(report: Report) -> str:
    acc_names = headline_accuracy(report)
    rows = []
    for cell in report.cells:
        tasks = " ".join(_md_link(label, url) for label, url in step_links(cell)) or "-"
        rows.append([*_summary_values(report, cell, acc_names), tasks])
    note = ("Performance columns: the lightest-load benchmark of the profile, change vs the base model in "
            "brackets. Recovery: compressed / base, the minimum over gated metrics.")
    return "## Summary\n\n" + md_table([*_summary_headers(acc_names), "Tasks"], rows) + "\n\n" + note


def _md_perf_decisions(title: str, decisions: Sequence[PerformanceDecision], reference: str) -> str:
    rows = [[d.metric, d.direction, fmt(d.reference), fmt(d.candidate), fmt_change(d.change),
             f"{d.tolerance:.0%}", "yes" if d.gating else "observe", outcome_word(d.outcome), d.reason or ""]
            for d in decisions]
    headers = ["Metric", "Better", reference, "Value", "Change", "Tolerance", "Gating", "Outcome", "Reason"]
    return f"### {title}\n\n" + md_table(headers, rows)


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def _md_cell(cell: ReportCell) -> str:
    head = (f"## {short_model(cell.model)} | {cell.scheme} | {cell.suite} | {cell.profile}: "
            f"{outcome_word(cell.outcome)}")
    facts = [f"model `{cell.model}`"]
    if cell.queue:
        facts.append(f"queue `{cell.queue}`")
    if cell.output_model_id:
        facts.append(f"output model `{cell.output_model_id}`")
    parts = [head, " | ".join(facts)]
    if cell.failures:
        rows = [[f.step, f.error, _md_link(f.task_id or "-", f.web_url)] for f in cell.failures]
        parts.append("### Failures\n\n" + md_table(["Step", "Error", "Task"], rows))
    if cell.accuracy_gates:
        rows = [[d.metric, fmt(d.base.value if d.base else None), fmt(d.candidate.value if d.candidate else None),
                 fmt(d.recovery), _interval(d.low, d.high), fmt(d.threshold), outcome_word(d.outcome), d.reason]
                for d in cell.accuracy_gates]
        headers = ["Metric", "Base", "Value", "Recovery", "Interval", "Threshold", "Outcome", "Reason"]
        parts.append("### Accuracy gates (vs base)\n\n" + md_table(headers, rows))
    if cell.performance_gates:
        parts.append(_md_perf_decisions("Performance vs base", cell.performance_gates, "Base"))
    if cell.accepted_gates:
        parts.append(_md_perf_decisions(f"Performance vs accepted run (report {cell.accepted_from or '?'})",
                                        cell.accepted_gates, "Accepted"))
    if cell.trend:
        rows = [[name, fmt(_current_value(cell, name)), fmt_change(change)]
                for name, change in sorted(cell.trend.items())]
        parts.append(f"### Trend vs previous run (report {cell.trend_from or '?'})\n\n"
                     + md_table(["Value", "Now", "Change"], rows))
    if cell.accuracy:
        rank = rank_accuracy(cell.accuracy, [d.metric for d in cell.accuracy_gates])
        rows = [[n, fmt(cell.accuracy[n].value), fmt(cell.accuracy[n].stderr),
                 "-" if cell.accuracy[n].samples is None else str(cell.accuracy[n].samples)] for n in rank]
        parts.append("### Accuracy values\n\n" + md_table(["Metric", "Value", "Stderr", "Samples"], rows))
    if cell.performance:
        rows = [[n, fmt(v)] for n, v in sorted(cell.performance.items())]
        parts.append("### Performance values\n\n" + md_table(["Metric", "Value"], rows))
    if cell.steps:
        rows = [[s.step, _md_link(s.task_id, s.web_url), s.status, "yes" if s.reused else "no",
                 "-" if s.duration_s is None else f"{s.duration_s:.0f} s"] for s in cell.steps]
        parts.append("### ClearML tasks\n\n" + md_table(["Step", "Task", "Status", "Reused", "Duration"], rows))
    return "\n\n".join(parts)


def _current_value(cell: ReportCell, name: str) -> float | None:
    if name in cell.accuracy:
        return cell.accuracy[name].value
    return cell.performance.get(name)


def _md_settings(report: Report) -> str:
    parts = []
    if report.settings:
        parts.append("## Gate settings\n\n```json\n" + json.dumps(report.settings, indent=1, sort_keys=True,
                                                                   default=str) + "\n```")
    if report.provenance:
        rows = [[k, v] for k, v in sorted(report.provenance.items())]
        parts.append("## Provenance\n\n" + md_table(["What", "Value"], rows))
    return "\n\n".join(parts)


def render_markdown(report: Report) -> str:
    """The whole report as plain markdown: header, joined summary table, per-cell details, settings."""
    parts = [_md_header(report), _md_summary(report), "# Details", *(_md_cell(c) for c in report.cells),
             _md_settings(report)]
    return "\n\n".join(p for p in parts if p) + "\n"


# -- console ---------------------------------------------------------------------------------------
def render_console(report: Report) -> Group:
    """Rich tables for the CLI: the summary and every gate decision."""
    acc_names = headline_accuracy(report)
    summary = Table(title=f"{report.title}: {outcome_word(report.outcome)} (series {report.series}, "
                          f"{report.created:%Y-%m-%d %H:%M})", title_justify="left")
    for header in _summary_headers(acc_names):
        summary.add_column(header)
    for cell in report.cells:
        summary.add_row(*_summary_values(report, cell, acc_names))
    # The console keeps to what decides: accuracy gates, gating performance checks and failures;
    # observation-only metrics and every decision's reason are in the markdown report.
    decisions = Table(title="gate decisions", title_justify="left")
    for header in ("cell", "vs", "metric", "reference", "value", "recovery / change", "interval", "outcome"):
        decisions.add_column(header)
    for cell in report.cells:
        label = cell_label(cell)
        for a in cell.accuracy_gates:
            decisions.add_row(label, "base", a.metric, fmt(a.base.value if a.base else None),
                              fmt(a.candidate.value if a.candidate else None), fmt(a.recovery),
                              _interval(a.low, a.high), outcome_word(a.outcome))
        for vs, perf in (("base", cell.performance_gates), ("accepted", cell.accepted_gates)):
            for p in perf:
                if p.gating:  # observation-only changes: the summary's deltas and the markdown
                    decisions.add_row(label, vs, p.metric, fmt(p.reference), fmt(p.candidate), fmt_change(p.change),
                                      "-", outcome_word(p.outcome) + ("" if p.gating else " (observe)"))
        for f in cell.failures:
            decisions.add_row(label, f.step, "-", "-", "-", "-", "-", f"ERROR: {f.error}")
    links = Table(title="ClearML tasks", title_justify="left")
    links.add_column("cell")
    links.add_column("tasks")
    for cell in report.cells:
        links.add_row(cell_label(cell), "\n".join(f"{label}: {url}" for label, url in step_links(cell)) or "-")
    return Group(summary, decisions, links)


# -- Prefect table rows ----------------------------------------------------------------------------
def table_rows(report: Report) -> list[dict[str, str | float | None]]:
    """One flat row per cell, the same keys in every row (Prefect's table artifact)."""
    acc_names = headline_accuracy(report)
    rows: list[dict[str, str | float | None]] = []
    for cell in report.cells:
        base = base_cell(report, cell)
        row: dict[str, str | float | None] = {"model": short_model(cell.model), "scheme": cell.scheme,
                                              "suite": cell.suite, "profile": cell.profile}
        for name in acc_names:
            row[name] = cell.accuracy[name].value if name in cell.accuracy else None
        row["recovery_min"] = recovery_min(cell)
        row["accuracy"] = outcome_word(accuracy_outcome(cell))
        for (suffix, _), perf_name in zip(PERF_HEADLINES, perf_headline_names(cell.performance), strict=True):
            key = suffix.replace("/", "_")
            row[key] = cell.performance.get(perf_name) if perf_name else None
            row[f"{key}_vs_base"] = perf_delta(cell, perf_name, base) if perf_name else None
        row["performance"] = outcome_word(performance_outcome(cell))
        row["outcome"] = outcome_word(cell.outcome)
        row["tasks"] = " ".join(url for _, url in step_links(cell))
        rows.append(row)
    return rows


# -- SVG -------------------------------------------------------------------------------------------
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
BASE_COLOR = "#7f7f7f"
SVG_WIDTH = 960
_PANEL_H = 360
_MARGIN = {"left": 70, "right": 30, "top": 50, "bottom": 90}
MAX_PLOT_METRICS = 12


def scheme_colors(report: Report) -> dict[str, str]:
    schemes = sorted({c.scheme for c in report.cells if c.scheme != BASE_SCHEME})
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(schemes)}
    colors[BASE_SCHEME] = BASE_COLOR
    return colors


def _text(x: float, y: float, text: str, size: int = 12, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f"{escape(text)}</text>")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = (hi - lo) / n if hi > lo else 1.0
    return [lo + i * step for i in range(n + 1)]


def _recovery_data(report: Report) -> tuple[list[str], list[tuple[ReportCell, list[float | None]]], list[float]]:
    cells = [c for c in report.cells if c.accuracy_gates]
    gated = [d.metric for c in cells for d in c.accuracy_gates]
    metrics = rank_accuracy(gated, gated)[:MAX_PLOT_METRICS]
    series = []
    thresholds = []
    for metric in metrics:
        found = [d.threshold for c in cells for d in c.accuracy_gates if d.metric == metric]
        thresholds.append(max(found) if found else 0.95)
    for cell in cells:
        by_metric = {d.metric: d.recovery for d in cell.accuracy_gates}
        series.append((cell, [by_metric.get(m) for m in metrics]))
    return metrics, series, thresholds


def _recovery_panel(report: Report, top: float, colors: Mapping[str, str]) -> str:
    metrics, series, thresholds = _recovery_data(report)
    out = [_text(SVG_WIDTH / 2, top + 24, "Recovery (compressed / base) per metric; dashed: threshold", 14,
                 "middle", ' font-weight="bold"')]
    if not metrics or not series:
        return "".join(out) + _text(SVG_WIDTH / 2, top + _PANEL_H / 2, "no accuracy gates", 12, "middle")
    values = [v for _, vals in series for v in vals if v is not None]
    lo = math.floor(min([*values, *thresholds, 0.85]) * 20 - 1) / 20
    hi = math.ceil(max([*values, *thresholds, 1.0]) * 20 + 0.5) / 20
    x0, x1 = _MARGIN["left"], SVG_WIDTH - _MARGIN["right"]
    y0, y1 = top + _MARGIN["top"], top + _PANEL_H - _MARGIN["bottom"]

    def y_of(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    out.append(_axes(x0, x1, y0, y1, [(y_of(t), f"{t:.2f}") for t in _ticks(lo, hi)], "recovery"))
    group_w = (x1 - x0) / len(metrics)
    bar_w = max(min(group_w * 0.8 / len(series), 40.0), 2.0)
    for i, (metric, threshold) in enumerate(zip(metrics, thresholds, strict=True)):
        gx = x0 + i * group_w + (group_w - bar_w * len(series)) / 2
        for j, (cell, vals) in enumerate(series):
            value = vals[i]
            if value is None:
                continue
            top_y = y_of(max(min(value, hi), lo))
            out.append(f'<rect x="{gx + j * bar_w:.1f}" y="{top_y:.1f}" width="{bar_w * 0.95:.1f}" '
                       f'height="{y1 - top_y:.1f}" fill="{colors.get(cell.scheme, BASE_COLOR)}">'
                       f"<title>{escape(f'{cell_label(cell)} {metric}: {value:.4f}')}</title></rect>")
        ty = y_of(threshold)
        out.append(f'<line x1="{x0 + i * group_w + 2:.1f}" y1="{ty:.1f}" x2="{x0 + (i + 1) * group_w - 2:.1f}" '
                   f'y2="{ty:.1f}" stroke="#d62728" stroke-width="2" stroke-dasharray="6,3"/>')
        lx = x0 + (i + 0.5) * group_w
        out.append(_text(lx, y1 + 14, metric[:28], 10, "end", f' transform="rotate(-25 {lx:.1f} {y1 + 14:.1f})"'))
    return "".join(out)


def _axes(x0: float, x1: float, y0: float, y1: float, yticks: Sequence[tuple[float, str]], ylabel: str) -> str:
    out = [f'<line x1="{x0}" y1="{y1:.1f}" x2="{x1}" y2="{y1:.1f}" stroke="#333"/>',
           f'<line x1="{x0}" y1="{y0:.1f}" x2="{x0}" y2="{y1:.1f}" stroke="#333"/>']
    for y, label in yticks:
        out.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(_text(x0 - 6, y + 4, label, 10, "end"))
    mid = (y0 + y1) / 2
    out.append(_text(16, mid, ylabel, 11, "middle", f' transform="rotate(-90 16 {mid:.1f})"'))
    return "".join(out)


def _scatter_points(report: Report) -> list[tuple[ReportCell, float, float]]:
    points = []
    for cell in report.cells:
        ttft, _, tps = perf_headline_names(cell.performance)
        if ttft and tps:
            points.append((cell, cell.performance[tps], cell.performance[ttft]))
    return points


def _scatter_panel(report: Report, top: float, colors: Mapping[str, str]) -> str:
    out = [_text(SVG_WIDTH / 2, top + 24, "Latency (TTFT median) vs throughput (output tokens/s)", 14, "middle",
                 ' font-weight="bold"')]
    points = _scatter_points(report)
    if not points:
        return "".join(out) + _text(SVG_WIDTH / 2, top + _PANEL_H / 2, "no benchmark values", 12, "middle")
    x_hi = max(p[1] for p in points) * 1.15 or 1.0
    y_hi = max(p[2] for p in points) * 1.15 or 1.0
    x0, x1 = _MARGIN["left"], SVG_WIDTH - _MARGIN["right"]
    y0, y1 = top + _MARGIN["top"], top + _PANEL_H - _MARGIN["bottom"] + 30
    out.append(_axes(x0, x1, y0, y1, [(y1 - t / y_hi * (y1 - y0), fmt(t)) for t in _ticks(0, y_hi)],
                     "TTFT median (ms)"))
    for t in _ticks(0, x_hi):
        x = x0 + t / x_hi * (x1 - x0)
        out.append(_text(x, y1 + 16, fmt(t), 10, "middle"))
    out.append(_text((x0 + x1) / 2, y1 + 34, "output tokens/s", 11, "middle"))
    for cell, tps, ttft in points:
        x, y = x0 + tps / x_hi * (x1 - x0), y1 - ttft / y_hi * (y1 - y0)
        label = cell_label(cell)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colors.get(cell.scheme, BASE_COLOR)}">'
                   f"<title>{escape(f'{label}: {fmt(tps)} tok/s, TTFT {fmt(ttft)} ms')}</title></circle>")
        out.append(_text(x + 9, y - 7, label, 10))
    return "".join(out)


def _legend(colors: Mapping[str, str], y: float) -> str:
    out = []
    x = float(_MARGIN["left"])
    for scheme, color in sorted(colors.items(), key=lambda kv: (kv[0] != BASE_SCHEME, kv[0])):
        out.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{color}"/>')
        out.append(_text(x + 16, y, scheme, 12))
        x += 30 + 7 * len(scheme)
    return "".join(out)


def plot_svg(report: Report) -> str:
    """Recovery bars per metric and scheme (with the threshold) above a TTFT vs throughput scatter."""
    colors = scheme_colors(report)
    height = 2 * _PANEL_H + 70
    body = [
        '<rect width="100%" height="100%" fill="white"/>',
        _text(SVG_WIDTH / 2, 22, f"{report.title} ({report.created:%Y-%m-%d %H:%M})", 15, "middle",
              ' font-weight="bold"'),
        _legend(colors, 44),
        _recovery_panel(report, 50, colors),
        _scatter_panel(report, 50 + _PANEL_H, colors),
    ]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
            f'viewBox="0 0 {SVG_WIDTH} {height}" font-family="sans-serif" role="img" '
            f"aria-label={quoteattr(report.title)}>" + "".join(body) + "</svg>\n")


# -- JSON ------------------------------------------------------------------------------------------
def write_json(report: Report, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report.model_dump_json(indent=2) + "\n")
    return target


# -- Prefect ---------------------------------------------------------------------------------------
def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key[:80].rstrip("-") or "report"


async def publish_prefect(report: Report, key: str | None = None) -> list[str]:
    """Markdown, table and (when the plot was uploaded) image artifacts on the current flow/task run.

    Outside a Prefect run it does nothing (artifacts would be orphans). Returns the artifact ids.
    """
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        log.info("not inside a Prefect flow or task run: no artifacts for report %r", report.title)
        return []
    from prefect.artifacts import acreate_image_artifact, acreate_markdown_artifact, acreate_table_artifact

    base = artifact_key(key or f"report-{report.series}")
    described = f"{report.title}: {outcome_word(report.outcome)}"
    ids = [
        await acreate_markdown_artifact(render_markdown(report), key=base, description=described),
        await acreate_table_artifact(table_rows(report), key=f"{base}-table", description=described),
    ]
    if report.plot_url:
        ids.append(await acreate_image_artifact(report.plot_url, key=f"{base}-plot", description=described))
    return [str(i) for i in ids]


# -- ClearML summary task --------------------------------------------------------------------------
def _secrets(client: ClearMLBackend) -> list[str]:
    values = [client.settings.secret_key.get_secret_value(), client.settings.access_key]
    return [v for v in values if v and len(v) >= 6]


def sanitize(report: Report, secrets: Sequence[str] = ()) -> Report:
    """The report without credentials: secret-looking provenance/settings entries masked, and any
    occurrence of a known secret replaced, so a stored report never carries a key."""
    provenance = {k: ("***" if _SECRET_NAME.search(k) else v) for k, v in report.provenance.items()}
    settings = {k: ("***" if _SECRET_NAME.search(k) else v) for k, v in report.settings.items()}
    text = report.model_copy(update={"provenance": provenance, "settings": settings}).model_dump_json()
    for secret in secrets:
        text = text.replace(json.dumps(secret)[1:-1], "***")
    return Report.model_validate_json(text)


def summary_task_name(report: Report) -> str:
    return f"report {report.title} {report.created:%Y-%m-%d %H:%M}"


def report_tags(report: Report) -> list[str]:
    tags = [REPORT_TAG, f"{SERIES_TAG}{report.series}", f"{OUTCOME_TAG}{report.outcome}"]
    if report.flow_run_id:
        tags.append(f"{FLOW_RUN_TAG}{report.flow_run_id}")
    return tags


def report_properties(report: Report) -> dict[str, str]:
    """What the registry lists without loading the report JSON."""
    props = {"title": report.title, "series": report.series, "created": report.created.isoformat(),
             "outcome": report.outcome, "cells": str(len(report.cells)), "schema": str(report.schema_version)}
    if report.flow_run_id:
        props["flow_run_id"] = report.flow_run_id
    if report.flow_run_url:
        props["flow_run_url"] = report.flow_run_url
    return props


def properties_section(props: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {k: {"section": PROPERTIES, "name": k, "value": v, "type": "str"} for k, v in props.items()}


def _scalar_events(task_id: str, report: Report) -> list[dict[str, Any]]:
    """Values comparable across nights in ClearML's compare view: title = value, series = model+scheme."""
    now_ms = int(time.time() * 1000)
    points: list[tuple[str, str, float]] = []
    for cell in report.cells:
        series = cell_label(cell)
        points += [(name, series, mv.value) for name, mv in cell.accuracy.items()]
        points += [(f"recovery {d.metric}", series, d.recovery) for d in cell.accuracy_gates
                   if d.recovery is not None]
        points += [(f"{cell.profile} {name}", series, v) for name, v in cell.performance.items()]
        score = {"pass": 1.0, "inconclusive": 0.5, "fail": 0.0}.get(cell.outcome)
        if score is not None:
            points.append(("outcome (1 pass, 0.5 inconclusive, 0 fail)", series, score))
    return [{"type": "training_stats_scalar", "task": task_id, "metric": title, "variant": series, "iter": 0,
             "value": value, "timestamp": now_ms} for title, series, value in points if math.isfinite(value)]


def plotly_figures(report: Report) -> dict[str, dict[str, Any]]:
    """The SVG's two charts as plotly figures (what ClearML's Plots tab renders)."""
    metrics, series, thresholds = _recovery_data(report)
    recovery = {
        "data": [{"type": "bar", "name": cell_label(c), "x": metrics, "y": vals} for c, vals in series]
        + [{"type": "scatter", "mode": "lines+markers", "name": "threshold", "x": metrics, "y": thresholds,
            "line": {"dash": "dash", "color": "#d62728"}}],
        "layout": {"title": "recovery (compressed / base)", "barmode": "group",
                   "xaxis": {"title": "metric"}, "yaxis": {"title": "recovery"}},
    }
    scatter = {
        "data": [{"type": "scatter", "mode": "markers+text", "name": cell_label(c), "x": [tps], "y": [ttft],
                  "text": [cell_label(c)], "textposition": "top center"} for c, tps, ttft in _scatter_points(report)],
        "layout": {"title": "latency vs throughput (lightest load)", "xaxis": {"title": "output tokens/s"},
                   "yaxis": {"title": "TTFT median (ms)"}},
    }
    return {"recovery": recovery, "latency vs throughput": scatter}


def _plot_events(task_id: str, report: Report) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return [{"type": "plot", "task": task_id, "metric": "report", "variant": name, "iter": 0,
             "plot_str": json.dumps(fig), "timestamp": now_ms} for name, fig in plotly_figures(report).items()]


async def add_events(client: ClearMLBackend, events: Sequence[Mapping[str, Any]]) -> int:
    """events.add_batch as the SDK sends it: one JSON object per line (application/json-lines)."""
    if not events:
        return 0
    client.endpoint_calls["events.add_batch"] = client.endpoint_calls.get("events.add_batch", 0) + 1
    body = "\n".join(json.dumps(e) for e in events)
    res = await client.post_raw("events.add_batch", "/events.add_batch", content=body.encode(),
                          headers={"Content-Type": "application/json-lines"})
    data = client.unwrap("events.add_batch", res)
    if data.get("errors"):
        log.warning("events.add_batch: %s events refused: %s", data["errors"], data.get("errors_info"))
    return int(data.get("added") or 0)


def _safe_path(text: str) -> str:
    return re.sub(r"[^\w.\-/]+", "_", text).strip("/")


async def upload_files(client: ClearMLBackend, files: Mapping[str, tuple[bytes, str]]) -> dict[str, str]:
    """One multipart POST to the file server (form field name = target path, as the SDK uploads);
    returns the download URL of each path."""
    host = client.settings.files_host
    parts = {path: (PurePosixPath(path).name, data, ctype) for path, (data, ctype) in files.items()}
    res = await client.post_raw("file upload", f"{host}/", files=parts)
    if res.status_code != 200:
        raise BackendError(f"file server {host} refused the upload (HTTP {res.status_code}): {res.text[:300]}")
    return {path: f"{host}/{quote(path)}" for path in files}


def _artifact_entry(key: str, url: str, data: bytes, content_type: str, preview: str) -> dict[str, Any]:
    return {"key": key, "type": "custom", "mode": "output", "uri": url, "content_size": len(data),
            "hash": hashlib.sha256(data).hexdigest(), "timestamp": int(time.time()),
            "type_data": {"preview": preview[:200], "content_type": content_type}}


async def publish_clearml(report: Report, client: ClearMLBackend, project: str) -> Report:
    """Store the report as a completed ClearML summary task; returns it with the task's id and URL.

    API cost: 5 calls (tasks.create, tasks.add_or_update_artifacts, events.add_batch, tasks.started,
    tasks.completed) + 1 file-server upload (SVG plot, report JSON and markdown in one POST), plus
    the project lookup (1 projects.get_all, cached per client) and auth.login on a fresh client.
    The task carries: tags `report`, `series:<series>`, `outcome:<outcome>` and
    `prefect-flow-run:<id>`; user properties (title, series, created, outcome, ...); the report JSON
    as configuration object `report` (one `tasks.get_all` reads it back); the markdown as its
    description; scalars per value and plotly plots; the three files as artifacts.
    """
    report = sanitize(report, _secrets(client))
    project_id = await client.project_id(project)
    name = summary_task_name(report)
    stored = report.model_copy(update={"summary_task_id": None, "summary_task_url": None, "plot_url": None})
    markdown = render_markdown(report)
    body = {
        "name": name,
        "project": project_id,
        "type": SUMMARY_TASK_TYPE,
        "comment": markdown[:MAX_COMMENT_CHARS],
        "tags": report_tags(report),
        "hyperparams": {PROPERTIES: properties_section(report_properties(report))},
        "configuration": {REPORT_CONFIG: {"name": REPORT_CONFIG, "value": stored.model_dump_json(), "type": "JSON",
                                          "description": "flows.report_model.Report (JSON)"}},
    }
    task_id = str((await client.call("tasks.create", body))["id"])
    url = client.web_url(task_id, project_id)
    try:
        folder = f"{_safe_path(project)}/{_safe_path(name)}.{task_id}/artifacts"
        svg = plot_svg(report).encode()
        report_json = stored.model_dump_json(indent=2).encode()
        files = {f"{folder}/{PLOT_ARTIFACT}/report.svg": (svg, "image/svg+xml"),
                 f"{folder}/{JSON_ARTIFACT}/report.json": (report_json, "application/json"),
                 f"{folder}/{MARKDOWN_ARTIFACT}/report.md": (markdown.encode(), "text/markdown")}
        urls = list((await upload_files(client, files)).values())
        artifacts = [_artifact_entry(PLOT_ARTIFACT, urls[0], svg, "image/svg+xml", "recovery and latency plot"),
                     _artifact_entry(JSON_ARTIFACT, urls[1], report_json, "application/json", report.title),
                     _artifact_entry(MARKDOWN_ARTIFACT, urls[2], markdown.encode(), "text/markdown", markdown)]
        await client.call("tasks.add_or_update_artifacts", {"task": task_id, "artifacts": artifacts})
        await add_events(client, [*_scalar_events(task_id, report), *_plot_events(task_id, report)])
        await client.call("tasks.started", {"task": task_id, "status_reason": "report publishing"})
        await client.call("tasks.completed", {"task": task_id, "status_reason": "report published",
                                              "status_message": f"outcome {report.outcome}"})
    except Exception:
        await _mark_failed(client, task_id)
        raise
    log.info("report %r published as ClearML task %s: %s", report.title, task_id, url)
    return report.model_copy(update={"summary_task_id": task_id, "summary_task_url": url, "plot_url": urls[0]})


async def _mark_failed(client: ClearMLBackend, task_id: str) -> None:
    # A half-published report must not look like a finished one to the registry.
    try:
        await client.call("tasks.failed", {"task": task_id, "force": True, "status_reason": "report publishing failed"},
                          retry_for_s=5)
    except BackendError as exc:
        log.warning("could not mark summary task %s failed: %s", task_id, exc)
