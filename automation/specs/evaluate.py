"""The `evaluate` kind: lm-eval on a suite (or an explicit task list)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from automation.errors import StandardError
from automation.specs.base import TaskSpec, volatile
from automation.specs.model_ref import ModelRef
from automation.standards import Suite, inline_if_file, load_suite, names, suite_content

EVALUATE_PACKAGES = ("lm-eval[hf,api]==0.4.13", "transformers==5.17.0")
# What a file or inline suite is in the identity's spec part; its content is in the standards part.
INLINE_SUITE = "<resolved suite>"


class EvaluateSpec(TaskSpec):
    kind: ClassVar[str] = "evaluate"
    script_module: ClassVar[str] = "automation.scripts.evaluate"
    base_packages: ClassVar[tuple[str, ...]] = EVALUATE_PACKAGES
    task_type: ClassVar[str] = "testing"
    accepted_hooks: ClassVar[frozenset[str]] = frozenset({"vllm_arg"})

    model: ModelRef = Field(description="model to evaluate: hf:org/name[@rev], a local path, clearml:<model id>")
    suite: str | None = Field(None, description="evaluation suite: a standard name (tiny, openllm, leaderboard), "
                                                "a file path, or inline YAML")
    tasks: tuple[str, ...] = Field((), description="explicit lm-eval task names (instead of, or on top of, a suite)")
    num_fewshot: int | None = Field(None, ge=0, le=100, description="few-shot count for every task "
                                                                    "(default: the suite's per-task settings)")
    limit: float | None = Field(None, gt=0, description="samples per task (>= 1) or a fraction (< 1); for smoke runs")
    batch_size: int | Literal["auto"] = Field(8, description="batch size, or 'auto'")
    backend: Literal["auto", "hf", "vllm"] = Field("auto", description="auto = vllm with a GPU, else hf")
    device: str | None = Field(None, description="device for the hf backend (default: cuda if present, else cpu)")
    dtype: str = Field("auto", description="model dtype")
    vllm_args: dict[str, Any] = Field(default_factory=dict, description="extra vLLM model arguments")
    seed: int = Field(0, ge=0, description="random seed (few-shot sampling, generation)")
    attach_to_model: bool = volatile(True, description="write the metrics into the input ClearML model's metadata")

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            value = inline_if_file("suite", value)
            load_suite(value)
        except StandardError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError("limit >= 1 is a sample count and must be a whole number")
        return value

    @model_validator(mode="after")
    def _something_to_run(self) -> EvaluateSpec:
        if self.suite is None and not self.tasks:
            raise ValueError("give a suite or tasks (nothing to evaluate)")
        return self

    def resolved_suite(self) -> Suite | None:
        return load_suite(self.suite) if self.suite else None

    def standards_content(self) -> dict[str, Any]:
        suite = self.resolved_suite()
        return {"suite": suite_content(suite)} if suite else {}

    def identity_payload(self) -> dict[str, Any]:
        """A suite given as a file or inline YAML is identified by what it resolves to (the
        `standards` part: tasks, settings, a digest of its task files), not by its text: a suite
        file's text holds the absolute include_path it was anchored to, so the same suite copied
        elsewhere would otherwise be another task. A shipped name stays as it is."""
        payload = super().identity_payload()
        if self.suite is not None and self.suite not in names("suite"):
            payload["spec"]["suite"] = INLINE_SUITE
        return payload

    def input_model_id(self) -> str | None:
        return self.model.clearml_model_id

    def task_name(self) -> str:
        what = self.resolved_suite().name if self.suite else "+".join(self.tasks)[:40]  # type: ignore[union-attr]
        return self.name or f"evaluate-{self.model.short_name()}-{what}-{self.identity()[:8]}"
