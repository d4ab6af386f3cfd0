"""Joining: the outcomes of a plan's steps into report cells, each gated against the base model of
the same (model, suite)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from automation.regression.gates import (
    AccuracyGateSettings,
    PerformanceGateSettings,
    accuracy_gates,
    overall,
    performance_gates,
)
from automation.regression.report_model import BASE_SCHEME, ReportCell, StepFailure, StepLink
from automation.results import TaskResult
from automation.specs.model_ref import ModelRef


@dataclass
class Outcome:
    result: TaskResult | None = None
    failure: StepFailure | None = None


@dataclass
class CellRun:
    model: ModelRef
    scheme: str
    suite: str
    queue: str
    compress: Outcome | None
    evaluate: Outcome
    benchmark: Outcome


def _links(run: CellRun) -> tuple[list[StepLink], list[StepFailure]]:
    links: list[StepLink] = []
    failures: list[StepFailure] = []
    for step, outcome in (("compress", run.compress), ("evaluate", run.evaluate), ("benchmark", run.benchmark)):
        if outcome is None:
            continue
        if outcome.result is not None:
            links.append(StepLink.from_result(step, outcome.result))  # type: ignore[arg-type]
        if outcome.failure is not None:
            failures.append(outcome.failure)
    return links, failures


def join_cells(runs: list[CellRun], profile: str, accuracy: AccuracyGateSettings,
               performance: PerformanceGateSettings) -> list[ReportCell]:
    """Cells with their gates vs the base model of the same (model, suite)."""
    base = {(str(r.model), r.suite): r for r in runs if r.scheme == BASE_SCHEME}
    cells: list[ReportCell] = []
    for run in runs:
        links, failures = _links(run)
        values = run.evaluate.result.values if run.evaluate.result else {}
        perf = {k: v.value for k, v in run.benchmark.result.values.items()} if run.benchmark.result else {}
        cell: dict[str, Any] = {
            "model": str(run.model), "scheme": run.scheme, "suite": run.suite, "profile": profile,
            "queue": run.queue, "accuracy": dict(values), "performance": perf, "steps": links, "failures": failures,
            "output_model_id": run.compress.result.model_id if run.compress and run.compress.result else None,
        }
        if run.scheme == BASE_SCHEME:
            cell["outcome"] = "error" if failures else "baseline"
        else:
            ref = base.get((str(run.model), run.suite))
            ref_values = ref.evaluate.result.values if ref and ref.evaluate.result else {}
            ref_perf = ({k: v.value for k, v in ref.benchmark.result.values.items()}
                        if ref and ref.benchmark.result else {})
            acc = accuracy_gates(ref_values, values, accuracy, suite=run.suite) if values and ref_values else []
            prf = performance_gates(ref_perf, perf, performance) if perf and ref_perf else []
            cell.update(accuracy_gates=acc, performance_gates=prf,
                        outcome="error" if failures or not ref_values else overall(acc, prf))
        cells.append(ReportCell(**cell))
    return cells
