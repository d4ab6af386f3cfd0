"""Shared vocabulary of every report renderer: formatting, headline choice, per-cell summaries.

Headline choice is deterministic so columns stay put night after night: accuracy columns are suite
averages (`suite/*`), then lm-eval group values (`tiny/acc` when `tiny_*` tasks exist), then gated
metrics, then the rest, each tier by name, at most `HEADLINE_ACCURACY_COLUMNS`; performance
headlines are TTFT median, ITL median and output tokens/s of the lightest-load benchmark of the
profile (`synchronous`, else the lowest rate), whose comparisons are the least noisy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from automation.regression.report_model import BASE_SCHEME, Report, ReportCell

HEADLINE_ACCURACY_COLUMNS = 4
PERF_HEADLINES: tuple[tuple[str, str], ...] = (
    ("ttft_ms/median", "TTFT med ms"),
    ("itl_ms/median", "ITL med ms"),
    ("output_tokens_per_s", "out tok/s"),
)
OUTCOME_WORDS = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "baseline": "BASELINE",
                 "error": "ERROR"}




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



# -- JSON ------------------------------------------------------------------------------------------
def write_json(report: Report, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report.model_dump_json(indent=2) + "\n")
    return target



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


def summary_headers(acc_names: Sequence[str]) -> list[str]:
    return ["Model", "Scheme", "Suite", "Profile", *acc_names, "Recovery (min)", "Accuracy",
            *(label for _, label in PERF_HEADLINES), "Performance", "Outcome"]


def summary_values(report: Report, cell: ReportCell, acc_names: Sequence[str]) -> list[str]:
    base = base_cell(report, cell)
    perf = []
    for name in perf_headline_names(cell.performance):
        value = cell.performance.get(name) if name else None
        perf.append(with_delta(value, perf_delta(cell, name, base) if name else None))
    acc = [fmt(cell.accuracy[n].value) if n in cell.accuracy else "-" for n in acc_names]
    return [short_model(cell.model), cell.scheme, cell.suite, cell.profile, *acc, fmt(recovery_min(cell)),
            outcome_word(accuracy_outcome(cell)), *perf, outcome_word(performance_outcome(cell)),
            outcome_word(cell.outcome)]


def interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def with_delta(value: float | None, change: float | None) -> str:
    return fmt(value) if change is None else f"{fmt(value)} ({fmt_change(change)})"
