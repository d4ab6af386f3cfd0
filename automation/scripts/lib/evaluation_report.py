"""An lm-eval summary reported on a ClearML task: each metric as a scalar (title = task, series =
metric) and as a single value `<task>/<metric>` with companions `:stderr` and `:n` (sample count);
lm-eval's group averages and the suite's own averages the same way. One home for the evaluate kind
and for a benchmark that also evaluates against its server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automation.results import SAMPLES_ARTIFACT, SAMPLES_SUFFIX, STDERR_SUFFIX
from automation.scripts.runtime import Reporter
from automation.standards import Suite, suite_averages


def report_metric(report: Reporter, task: str, metric: str, value: float, stderr: float | None,
                  n: int | None, values: dict[str, float]) -> None:
    name = f"{task}/{metric}"
    report.scalar(task, metric, value)
    report.single_value(name, value)
    values[name] = value
    if stderr is not None:
        report.single_value(name + STDERR_SUFFIX, stderr)
        values[name + STDERR_SUFFIX] = stderr
    if n is not None:
        report.single_value(name + SAMPLES_SUFFIX, float(n))
        values[name + SAMPLES_SUFFIX] = float(n)


def report_summary(report: Reporter, suite: Suite | None, summary: dict[str, Any]) -> tuple[dict[str, float],
                                                                                           dict[str, float]]:
    """Report every metric of `summary` (evaluate_core's); returns (all values, suite averages)."""
    values: dict[str, float] = {}
    for task, entry in sorted(summary["tasks"].items()):
        for metric, mv in sorted(entry["metrics"].items()):
            if mv["value"] is not None:
                report_metric(report, task, metric, float(mv["value"]), mv["stderr"], entry.get("n_samples"), values)
    for group, entry in sorted(summary["groups"].items()):
        n = sum(int(summary["tasks"].get(t, {}).get("n_samples") or 0) for t in entry.get("subtasks", [])) or None
        for metric, mv in sorted(entry["metrics"].items()):
            if mv["value"] is not None:
                report_metric(report, group, metric, float(mv["value"]), mv["stderr"], n, values)
    averages = suite_averages(suite, summary) if suite else {}
    for name, value in averages.items():
        report_metric(report, "suite", name, value, None, None, values)
    return values, averages


def upload_results(report: Reporter, summary: dict[str, Any], full_results: Path, samples: Path) -> None:
    """The summary as `eval_results`, lm-eval's full results as `lm_eval_results`, the per-document
    scores as `samples`."""
    report.artifact("eval_results", summary)
    if full_results.is_file():
        report.artifact("lm_eval_results", full_results)
    if samples.is_file():
        report.artifact(SAMPLES_ARTIFACT, samples)
