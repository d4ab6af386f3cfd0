"""The joined accuracy x performance report: the data (renderers: automation/regression/report/;
Prefect artifacts: flows/publish.py).

One `ReportCell` per (model, scheme, suite, profile); scheme "base" is the uncompressed model the
others are compared with. JSON-serialisable, small, stable keys: it is what `--json` writes, what
the ClearML summary task stores, and what the baseline registry keeps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from automation.regression.gates import AccuracyDecision, Outcome, PerformanceDecision
from automation.results import MetricValue, TaskResult

BASE_SCHEME = "base"
REPORT_SCHEMA = 1


# The steps of a cell: one ClearML task each.
Step = Literal["compress", "evaluate", "benchmark", "lighteval"]

class StepLink(BaseModel):
    """One ClearML task behind a cell."""

    model_config = ConfigDict(frozen=True)

    step: Step
    task_id: str
    status: str
    web_url: str
    reused: bool = False
    duration_s: float | None = None

    @classmethod
    def from_result(cls, step: Step, result: TaskResult) -> StepLink:
        return cls(step=step, task_id=result.task_id, status=result.status, web_url=result.web_url,
                   reused=result.reused, duration_s=result.duration_s)


class StepFailure(BaseModel):
    """A step that did not produce a result (the cell is then reported as failed, not dropped)."""

    model_config = ConfigDict(frozen=True)

    step: Step
    error: str
    task_id: str | None = None
    web_url: str | None = None
    timeout: Literal["queue", "run"] | None = Field(None, description="the step ran out of time waiting in its "
                                                                      "queue or running (step_limits)")


class ReportCell(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str = Field(description="the model reference as given (hf:..., a path, clearml:...)")
    scheme: str = Field(description="recipe name, or 'base' for the uncompressed model")
    suite: str
    profile: str
    queue: str | None = None
    output_model_id: str | None = Field(None, description="ClearML id of the compressed model")
    accuracy: dict[str, MetricValue] = Field(default_factory=dict, description="evaluate single values")
    performance: dict[str, float] = Field(default_factory=dict, description="benchmark single values")
    accuracy_gates: list[AccuracyDecision] = Field(default_factory=list, description="vs the base model")
    performance_gates: list[PerformanceDecision] = Field(default_factory=list, description="vs the base model")
    accepted_gates: list[PerformanceDecision] = Field(
        default_factory=list, description="performance vs the last accepted run of this cell (baseline registry)")
    accepted_accuracy_gates: list[AccuracyDecision] = Field(
        default_factory=list, description="accuracy vs the last accepted run of this cell (baseline registry)")
    stack_changed: bool = Field(False, description="the base model itself moved from its accepted run on this "
                                                   "suite: comparisons with accepted runs do not gate this cell")
    accepted_from: str | None = Field(None, description="report id of the accepted run compared with")
    trend_from: str | None = Field(None, description="report id of the previous run of the same series")
    trend: dict[str, float] = Field(default_factory=dict,
                                    description="relative change vs the previous run per headline value")
    environment: dict[str, str] = Field(
        default_factory=dict, description="per step (`compress/code`, `evaluate/lm_eval`, ...): what it declared "
                                          "and what its task recorded it ran in")
    changes_vs_accepted: list[str] = Field(default_factory=list,
                                           description="environment differences from the accepted run compared with")
    changes_vs_previous: list[str] = Field(default_factory=list,
                                           description="environment differences from the previous run of the series")
    outcome: Outcome | Literal["baseline", "error"] = "inconclusive"
    steps: list[StepLink] = Field(default_factory=list)
    failures: list[StepFailure] = Field(default_factory=list)

    @property
    def key(self) -> str:
        """What identifies a cell across runs (baselines, trends)."""
        return cell_key(self.model, self.scheme, self.suite, self.profile)


def cell_key(model: str, scheme: str, suite: str, profile: str) -> str:
    return f"{model}|{scheme}|{suite}|{profile}"


class TrendPoint(BaseModel):
    """One run of a series, for one cell: what the cross-run trend plots."""

    model_config = ConfigDict(frozen=True)

    created: datetime
    report_id: str | None = None
    recovery: float | None = Field(None, description="minimum recovery over the gated metrics vs the base")
    throughput: float | None = Field(None, description="output tokens/s at the lightest load")


class Report(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int = REPORT_SCHEMA
    title: str
    series: str = Field(description="what successive runs share (deployment or flow name); trends compare "
                                    "within a series")
    created: datetime
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    cells: list[ReportCell]
    outcome: Outcome | Literal["error"]
    settings: dict[str, object] = Field(default_factory=dict, description="gate settings the run used")
    provenance: dict[str, str] = Field(default_factory=dict,
                                       description="package versions, code ref, queues, who started it")
    history_error: str | None = Field(None, description="why the accepted baselines and the series could not be "
                                                        "read (their gates did not run)")
    trend_series: dict[str, list[TrendPoint]] = Field(
        default_factory=dict, description="per cell key, the series' recent runs, oldest first, this one last")
    stack_changes: list[str] = Field(default_factory=list,
                                     description="base models whose own scores moved from their accepted run "
                                                 "(the evaluation or serving stack changed, not the compression)")
    summary_task_id: str | None = Field(None, description="the ClearML summary task (= the report id)")
    summary_task_url: str | None = None
    plot_url: str | None = Field(None, description="the report's SVG plot on the ClearML file server")
