"""The `benchmark` kind: a managed inference server under a GuideLLM workload profile."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from automation.errors import StandardError
from automation.specs.base import TaskSpec, added_field, volatile
from automation.specs.evaluate import EVALUATE_PACKAGES, ServedEvaluation
from automation.specs.model_ref import ModelRef
from automation.standards import Profile, inline_if_file, load_profile_model, profile_content

BENCHMARK_PACKAGES = ("guidellm==0.8.1",)


class BenchmarkSpec(TaskSpec):
    kind: ClassVar[str] = "benchmark"
    script_module: ClassVar[str] = "automation.scripts.benchmark"
    base_packages: ClassVar[tuple[str, ...]] = BENCHMARK_PACKAGES
    choice_packages: ClassVar[tuple[str, ...]] = EVALUATE_PACKAGES  # with `evaluation`
    reports: ClassVar[str] = ("RATE/METRIC/STAT for ttft_ms, itl_ms, tpot_ms, request_latency_s at median, p90, "
                              "p99; RATE/requests_per_s, RATE/output_tokens_per_s, RATE/requests_STATUS, "
                              "error_fraction; with SLOs RATE/slo_attainment and RATE/goodput_requests_per_s; with "
                              "saturation RATE/over_saturated; with repetitions a :spread of each; with evaluation "
                              "the evaluate kind's metrics; artifacts benchmark_result, guidellm_report, "
                              "guidellm_report_html, guidellm_scenario, server_log")
    task_type: ClassVar[str] = "testing"
    accepted_hooks: ClassVar[frozenset[str]] = frozenset({"server_arg"})
    max_run_s: ClassVar[float] = 4 * 3600.0  # a server start and a few profiles: hours only when stuck

    model: ModelRef = Field(description="model to serve: hf:org/name[@rev], a local path, clearml:<model id>")
    tokenizer: ModelRef | None = Field(None, description="tokenizer for GuideLLM's synthetic prompts "
                                                         "(default: the model's own)")
    profile: str = Field(description="workload profile: a standard name (smoke, chat, rag, summarization, "
                                     "code_completion, long_context), a file path, or inline YAML")
    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="server: auto = vllm with a GPU, else transformers serve")
    server_args: tuple[str, ...] = Field((), description="extra server command-line arguments")
    server_env: dict[str, str] = Field(default_factory=dict, description="extra server environment variables")
    gpus: int | None = Field(None, ge=0, le=64, description="GPUs for the server (tensor parallel); none = default")
    max_error_fraction: float | None = Field(None, ge=0, le=1, description="fail the task when more requests "
                                                                           "error (default: the profile's)")
    seed: int = Field(42, ge=0, description="GuideLLM data seed")
    repetitions: int = added_field(1, since="2026-12", ge=1, le=15,
                                   description="runs of the profile against one server start (odd: each value "
                                               "is their median, its spread kept as the gates' noise band)")
    evaluation: ServedEvaluation | None = added_field(
        None, since="2026-12", description="also evaluate with lm-eval against this server, before the "
                                          "benchmark (serve once: one server start, both results)")
    startup_timeout_s: float = volatile(900.0, gt=0, description="deadline for the server to become ready")
    benchmark_timeout_s: float | None = volatile(None, gt=0, description="deadline for GuideLLM itself")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        try:
            value = inline_if_file("profile", value)
            load_profile_model(value)
        except StandardError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_known(cls, value: ModelRef | None, info: ValidationInfo) -> ModelRef | None:
        source = value or info.data.get("model")
        if isinstance(source, ModelRef) and source.has_tokenizer() is False:
            raise ValueError(f"{source.id} holds no tokenizer files; give `tokenizer` (GuideLLM needs one to "
                             "build its prompts)")
        return value

    @field_validator("repetitions")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"{value} repetitions have no middle run: give an odd number (e.g. {value + 1})")
        return value

    @field_validator("gpus")
    @classmethod
    def _vllm_needs_a_gpu(cls, value: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("engine") == "vllm" and value is not None and value < 1:
            raise ValueError(f"engine 'vllm' needs at least one GPU, got {value} (use engine 'transformers' for "
                             "CPU serving, or leave gpus unset for all visible GPUs)")
        return value

    def standards_content(self) -> dict[str, Any]:
        content = {"profile": profile_content(self.resolved_profile())}
        if self.evaluation is not None:
            content.update({f"evaluation_{k}": v for k, v in self.evaluation.suite_standards().items()})
        return content

    def identity_payload(self) -> dict[str, Any]:
        payload = super().identity_payload()
        if self.evaluation is not None:
            payload["spec"]["evaluation"] = self.evaluation.identity_view()
        return payload

    def kind_packages(self) -> tuple[str, ...]:
        # lm-eval's pin (and transformers') only for a benchmark that also evaluates
        return (*self.base_packages, *self.choice_packages) if self.evaluation is not None else self.base_packages

    def resolved_profile(self) -> Profile:
        return load_profile_model(self.profile)

    def input_model_id(self) -> str | None:
        return self.model.clearml_model_id

    def task_name(self) -> str:
        return self.name or (f"benchmark-{self.model.short_name()}-{self.resolved_profile().name}-"
                             f"{self.identity()[:8]}")
