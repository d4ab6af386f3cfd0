"""Joining: the outcomes of a plan's steps into report cells, each gated against the base model of
the same (model, suite); and deciding each cell's outcome once the accepted runs are known.

Outcome of a compressed cell: every gating decision vs the base model of tonight (paired per
document where both evaluations logged their documents) AND vs the accepted run of the same cell
(accuracy with the baseline threshold, performance with the rules' tolerances). When the base
model itself moved from its accepted run on a suite, the evaluation or serving stack changed
under every cell of that (model, suite): that is reported once, as a stack change, and the
comparisons of those cells with their accepted runs are shown but do not gate (tonight's
base-vs-compressed gates, on the same stack, still do)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automation.regression.gates import (
    AccuracyGateSettings,
    PerformanceGateSettings,
    accuracy_gates,
    overall,
    performance_gates,
    with_paired,
)
from automation.regression.report.format import fmt
from automation.regression.report_model import BASE_SCHEME, ReportCell, StepFailure, StepLink
from automation.results import DocumentScores, MetricValue, TaskResult
from automation.specs.base import TaskSpec
from automation.specs.model_ref import ModelRef


@dataclass
class Outcome:
    result: TaskResult | None = None
    failure: StepFailure | None = None
    spec: TaskSpec | None = None

    def environment(self) -> dict[str, str]:
        """What the step declared, then what its task recorded it ran in."""
        return {**(self.spec.environment() if self.spec else {}), **(self.result.environment if self.result else {})}


@dataclass
class CellRun:
    model: ModelRef
    scheme: str
    suite: str
    queue: str
    compress: Outcome | None
    evaluate: Outcome
    benchmark: Outcome
    lighteval: Outcome | None = None  # the extra evaluation, when the run asks for one

    def steps(self) -> list[tuple[str, Outcome | None]]:
        return [("compress", self.compress), ("evaluate", self.evaluate), ("benchmark", self.benchmark),
                ("lighteval", self.lighteval)]

    def accuracy(self) -> dict[str, MetricValue]:
        """The cell's accuracy values: lm-eval's, then LightEval's (named `lighteval.<task>/...`)."""
        values = dict(self.evaluate.result.values) if self.evaluate.result else {}
        if self.lighteval is not None and self.lighteval.result is not None:
            values.update(self.lighteval.result.values)
        return values


def _links(run: CellRun) -> tuple[list[StepLink], list[StepFailure]]:
    links: list[StepLink] = []
    failures: list[StepFailure] = []
    for step, outcome in run.steps():
        if outcome is None:
            continue
        if outcome.result is not None:
            links.append(StepLink.from_result(step, outcome.result))  # type: ignore[arg-type]
        if outcome.failure is not None:
            failures.append(outcome.failure)
    return links, failures


def cell_environment(run: CellRun) -> dict[str, str]:
    """The environment of a cell, per step: `compress/code`, `evaluate/lm_eval`, ..."""
    out: dict[str, str] = {}
    for step, outcome in run.steps():
        if outcome is not None:
            out.update({f"{step}/{key}": value for key, value in outcome.environment().items()})
    return out


def join_cells(runs: list[CellRun], profile: str, accuracy: AccuracyGateSettings,
               performance: PerformanceGateSettings,
               scores: Mapping[str, DocumentScores] | None = None) -> list[ReportCell]:
    """Cells with their gates vs the base model of the same (model, suite); `scores` (by
    evaluate task id) makes the accuracy gates paired where both sides have them."""
    scores = scores or {}
    base = {(str(r.model), r.suite): r for r in runs if r.scheme == BASE_SCHEME}
    cells: list[ReportCell] = []
    for run in runs:
        links, failures = _links(run)
        values = run.accuracy()
        perf = {k: v.value for k, v in run.benchmark.result.values.items()} if run.benchmark.result else {}
        cell: dict[str, Any] = {
            "model": str(run.model), "scheme": run.scheme, "suite": run.suite, "profile": profile,
            "queue": run.queue, "accuracy": dict(values), "performance": perf, "steps": links, "failures": failures,
            "output_model_id": run.compress.result.model_id if run.compress and run.compress.result else None,
            "environment": cell_environment(run),
        }
        if run.scheme == BASE_SCHEME:
            cell["outcome"] = "error" if failures else "baseline"
        else:
            ref = base.get((str(run.model), run.suite))
            ref_values = ref.accuracy() if ref else {}
            ref_perf = ({k: v.value for k, v in ref.benchmark.result.values.items()}
                        if ref and ref.benchmark.result else {})
            acc = accuracy_gates(ref_values, values, accuracy, suite=run.suite) if values and ref_values else []
            mine = scores.get(run.evaluate.result.task_id) if run.evaluate.result else None
            theirs = scores.get(ref.evaluate.result.task_id) if ref and ref.evaluate.result else None
            if acc and mine and theirs:
                acc = with_paired(acc, theirs, mine, accuracy.confidence)
            prf = performance_gates(ref_perf, perf, performance) if perf and ref_perf else []
            cell.update(accuracy_gates=acc, performance_gates=prf,
                        outcome="error" if failures or not ref_values else overall(acc, prf))
        cells.append(ReportCell(**cell))
    return cells


def _drift(cell: ReportCell) -> list[str]:
    """What moved in a base cell vs its accepted run, one phrase per failed gating decision."""
    moved = [f"{d.metric} {fmt(d.base.value if d.base else None)} -> {fmt(d.candidate.value if d.candidate else None)}"
             for d in cell.accepted_accuracy_gates if d.outcome == "fail"]
    moved += [f"{d.metric} {fmt(d.reference)} -> {fmt(d.candidate)}" for d in cell.accepted_gates
              if d.gating and d.outcome == "fail"]
    return moved


def decide(cells: list[ReportCell]) -> tuple[list[ReportCell], list[str]]:
    """Each cell's outcome from all its comparisons (see the module docstring), and the stack
    changes found on base models."""
    changes: list[str] = []
    moved_bases: set[tuple[str, str]] = set()
    for cell in cells:
        if cell.scheme == BASE_SCHEME and cell.accepted_from:
            moved = _drift(cell)
            if moved:
                moved_bases.add((cell.model, cell.suite))
                changes.append(f"{cell.model} (base) on {cell.suite} / {cell.profile} vs accepted report "
                               f"{cell.accepted_from}: " + "; ".join(moved))
    out = []
    for cell in cells:
        if cell.scheme == BASE_SCHEME or cell.outcome == "error":
            out.append(cell.model_copy(update={"stack_changed": (cell.model, cell.suite) in moved_bases}))
            continue
        stack_changed = (cell.model, cell.suite) in moved_bases
        accuracy = list(cell.accuracy_gates)
        performance = list(cell.performance_gates)
        if not stack_changed:
            accuracy += cell.accepted_accuracy_gates
            performance += cell.accepted_gates
        out.append(cell.model_copy(update={"outcome": overall(accuracy, performance),
                                           "stack_changed": stack_changed}))
    return out, changes
