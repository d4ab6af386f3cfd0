"""Typed results shared by the ClearML side (scripts, backend) and the Prefect side (flows).

What flows between steps is small JSON: ids, URLs, numbers. Never weights.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from automation.clearml.records import TaskStatus

# Single values reported by core scripts may carry their uncertainty in companion values named
# `<metric>:stderr` and `<metric>:n` (sample count); readers group them into MetricValue.
STDERR_SUFFIX = ":stderr"
SAMPLES_SUFFIX = ":n"
# Companion of a benchmark value measured over repetitions: half the range of the runs (the value
# itself is their median); the performance gates take it as their noise band.
SPREAD_SUFFIX = ":spread"
# Artifact of the evaluate kind: per-document scores, for paired comparisons (gates.paired_gate).
SAMPLES_ARTIFACT = "samples"



class MetricValue(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: float
    stderr: float | None = None
    samples: int | None = Field(None, description="number of samples the value was computed from")


class TaskResult(BaseModel):
    """What a finished ClearML task hands downstream."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    kind: str
    identity: str
    status: TaskStatus
    web_url: str
    queue: str | None = None
    status_message: str = ""
    scalars: dict[str, float] = Field(default_factory=dict, description="last value per 'title/series'")
    values: dict[str, MetricValue] = Field(default_factory=dict, description="single values with n/stderr")
    artifacts: dict[str, str] = Field(default_factory=dict, description="artifact URL by name")
    model_id: str | None = None
    model_url: str | None = None
    started: datetime | None = None
    completed: datetime | None = None
    reused: bool = Field(False, description="an earlier task with the same identity was returned")
    environment: dict[str, str] = Field(
        default_factory=dict, description="what the task ran with, from its `env.*` user properties (python, "
                                          "platform, library versions, torch_cuda, GPUs, driver, worker, queue)")

    @property
    def duration_s(self) -> float | None:
        if self.started and self.completed:
            return (self.completed - self.started).total_seconds()
        return None


def group_single_values(raw: dict[str, float]) -> dict[str, MetricValue]:
    """`{"acc": .9, "acc:stderr": .01, "acc:n": 100}` -> `{"acc": MetricValue(.9, .01, 100)}`."""
    out: dict[str, MetricValue] = {}
    for name, value in raw.items():
        if name.endswith((STDERR_SUFFIX, SAMPLES_SUFFIX)):
            continue
        stderr = raw.get(name + STDERR_SUFFIX)
        samples = raw.get(name + SAMPLES_SUFFIX)
        out[name] = MetricValue(value=float(value), stderr=None if stderr is None else float(stderr),
                                samples=None if samples is None else int(samples))
    return out


class DocumentScores(BaseModel):
    """The evaluate kind's `samples` artifact, read back: per single-value name (`task/metric`),
    each document's score; per task, a short target and response by document."""

    model_config = ConfigDict(frozen=True)

    scores: dict[str, dict[str, float]] = Field(default_factory=dict)
    examples: dict[str, dict[str, dict[str, str]]] = Field(default_factory=dict)

    @classmethod
    def from_artifact(cls, data: object) -> DocumentScores:
        """Tolerant of a foreign or newer artifact: what does not parse is left out."""
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
            return cls()
        scores: dict[str, dict[str, float]] = {}
        for task, metrics in data["tasks"].items():
            for metric, docs in (metrics if isinstance(metrics, dict) else {}).items():
                if isinstance(docs, dict):
                    scores[f"{task}/{metric}"] = {str(k): float(v) for k, v in docs.items()
                                                  if isinstance(v, int | float)}
        examples = data.get("examples")
        return cls(scores=scores, examples=examples if isinstance(examples, dict) else {})

    def example(self, metric: str, doc: str) -> dict[str, str]:
        return (self.examples.get(metric.split("/", 1)[0]) or {}).get(doc) or {}
