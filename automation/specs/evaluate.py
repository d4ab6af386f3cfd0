"""The `evaluate` kind: lm-eval on a suite (or an explicit task list)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from automation.errors import StandardError
from automation.specs.base import TaskSpec, added_field, volatile
from automation.specs.model_ref import ModelRef
from automation.standards import Suite, inline_if_file, load_suite, names, suite_content

EVALUATE_PACKAGES = ("lm-eval[hf,api]==0.4.13", "transformers==5.17.0")
# The vLLM backend's engine (the `gpu` extra); only a task with backend `vllm` lists it, so an agent
# without a GPU never builds it.
VLLM_PACKAGE = "vllm==0.33.0"
# lm-eval model arguments the spec sets itself, by the field that sets them: `model_args` may not
# set them again (one value, one place).
OWN_MODEL_ARGS = {"pretrained": "model", "dtype": "dtype", "device": "device", "batch_size": "batch_size",
                  "tensor_parallel_size": "tensor_parallel_size"}
# What a file or inline suite is in the identity's spec part; its content is in the standards part.
INLINE_SUITE = "<resolved suite>"


class PromptOptions(BaseModel):
    """How lm-eval prompts: chat template, few-shot turns, system instruction, generation
    arguments. Part of the `evaluate` kind, of a benchmark's served evaluation, and of the flows'
    `evaluation` parameter (stated once, here)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    # Options that change a score. Each is passed to lm-eval explicitly, its default included, so an
    # upstream default change (fewshot_as_multiturn became true in lm-eval 0.4.10) cannot move a
    # score under an unchanged identity.
    apply_chat_template: bool | str = added_field(
        False, since="2026-12", description="format prompts with the model's chat template: true, or the name "
                                            "of one of the tokenizer's templates")
    fewshot_as_multiturn: bool = added_field(
        True, since="2026-12", description="with a chat template, few-shot examples as alternating user and "
                                           "assistant turns (lm-eval 0.4.13's default)")
    system_instruction: str | None = added_field(None, since="2026-12", min_length=1,
                                                 description="system prompt put before every request")
    gen_kwargs: dict[str, str | int | float | bool] = added_field(
        default_factory=dict, since="2026-12",
        description="generation arguments for generative tasks, over the tasks' own (e.g. temperature, "
                    "max_gen_toks, do_sample)")

    @field_validator("apply_chat_template", mode="before")
    @classmethod
    def _flag_or_name(cls, value: Any) -> Any:
        # A task form (ClearML Args, the CLI) carries text: "true"/"false" are the flag, the rest a name.
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, str) and not value.strip():
            return False
        return value

    def prompt_kwargs(self) -> dict[str, Any]:
        return {"apply_chat_template": self.apply_chat_template, "fewshot_as_multiturn": self.fewshot_as_multiturn,
                "system_instruction": self.system_instruction, "gen_kwargs": dict(self.gen_kwargs)}


class LmEvalOptions(PromptOptions):
    """What lm-eval runs and how it prompts: the suite or tasks, few-shot, limit, seed, and the
    prompt options. One set of fields for the `evaluate` kind and for an evaluation served by a
    benchmark's server (`benchmark.evaluation`)."""

    suite: str | None = Field(None, description="evaluation suite: a standard name (tiny, openllm, leaderboard), "
                                                "a file path, or inline YAML")
    tasks: tuple[str, ...] = Field((), description="explicit lm-eval task names (instead of, or on top of, a suite)")
    num_fewshot: int | None = Field(None, ge=0, le=100, description="few-shot count for every task "
                                                                    "(default: the suite's per-task settings)")
    limit: float | None = Field(None, gt=0, description="samples per task (>= 1) or a fraction (< 1); for smoke runs")
    seed: int = Field(0, ge=0, description="random seed (few-shot sampling, generation)")
    task_fewshot: dict[str, int] = added_field(
        default_factory=dict, since="2026-12",
        description="few-shot count per task, over the suite's (TASK=N); num_fewshot, when set, wins for all")

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

    @field_validator("task_fewshot")
    @classmethod
    def _shots_in_range(cls, value: dict[str, int]) -> dict[str, int]:
        for task, shots in value.items():
            if not 0 <= shots <= 100:
                raise ValueError(f"task_fewshot[{task!r}]={shots}: a few-shot count is 0 to 100")
        return value

    @model_validator(mode="after")
    def _something_to_run(self) -> LmEvalOptions:
        if self.suite is None and not self.tasks:
            raise ValueError("give a suite or tasks (nothing to evaluate)")
        unknown = sorted(set(self.task_fewshot) - set(self.task_names()))
        if unknown:
            raise ValueError(f"task_fewshot names {', '.join(map(repr, unknown))}, not a task of this evaluation "
                             f"({', '.join(self.task_names())})")
        return self

    def resolved_suite(self) -> Suite | None:
        return load_suite(self.suite) if self.suite else None

    def task_names(self) -> list[str]:
        """The tasks evaluated: the suite's, then the explicit ones it does not hold."""
        suite = self.resolved_suite()
        own = suite.task_names() if suite else []
        return [*own, *(t for t in self.tasks if t not in own)]

    def fewshot_by_task(self) -> dict[str, int | None]:
        """Each task's few-shot count: `num_fewshot` for all when set, else `task_fewshot`, else the
        suite's per-task setting, else None (the task's own default)."""
        suite = self.resolved_suite()
        from_suite = {t.task: t.num_fewshot for t in suite.tasks} if suite else {}
        return {task: self.num_fewshot if self.num_fewshot is not None
                else self.task_fewshot.get(task, from_suite.get(task)) for task in self.task_names()}

    def lm_eval_kwargs(self) -> dict[str, Any]:
        """The prompting options as `evaluate_core.evaluate` takes them."""
        limit: int | float | None = self.limit
        if limit is not None and limit >= 1:
            limit = int(limit)
        return {"num_fewshot": self.num_fewshot, "task_fewshot": self.fewshot_by_task(), "limit": limit,
                "seed": self.seed, **self.prompt_kwargs()}

    def suite_standards(self) -> dict[str, Any]:
        suite = self.resolved_suite()
        return {"suite": suite_content(suite)} if suite else {}

    def what(self) -> str:
        suite = self.resolved_suite()
        return suite.name if suite else "+".join(self.tasks)[:40]


class EvaluateSpec(TaskSpec, LmEvalOptions):
    kind: ClassVar[str] = "evaluate"
    script_module: ClassVar[str] = "automation.scripts.evaluate"
    base_packages: ClassVar[tuple[str, ...]] = EVALUATE_PACKAGES
    choice_packages: ClassVar[tuple[str, ...]] = (VLLM_PACKAGE,)  # with backend 'vllm'
    reports: ClassVar[str] = ("TASK/METRIC for every task, group and suite average (suite/NAME), each with "
                              ":stderr and :n; artifacts eval_results, lm_eval_results (configs, versions, n-shot, "
                              "task hashes, chat template, first prompts), samples; the metrics on the input model")
    task_type: ClassVar[str] = "testing"
    accepted_hooks: ClassVar[frozenset[str]] = frozenset({"vllm_arg"})

    model: ModelRef = Field(description="model to evaluate: hf:org/name[@rev], a local path, clearml:<model id>")
    batch_size: int | Literal["auto"] = Field(8, description="batch size, or 'auto'")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="auto = vllm on a GPU host that has vLLM, else hf; vllm lists vLLM in the task's "
                            "requirements")
    device: str | None = Field(None, description="device for the hf backend (default: cuda if present, else cpu)")
    dtype: str = Field("auto", description="model dtype")
    vllm_args: dict[str, Any] = Field(default_factory=dict, description="extra vLLM model arguments")
    model_args: dict[str, str | int | float | bool] = added_field(
        default_factory=dict, since="2026-12",
        description="extra lm-eval model arguments for the backend, merged with the spec's own (a key the "
                    "spec sets through a field is an error naming that field)")
    tensor_parallel_size: int | None = added_field(
        None, since="2026-12", ge=1, le=64,
        description="vLLM tensor parallel size (default: every GPU the task sees)")
    attach_to_model: bool = volatile(True, description="write the metrics into the input ClearML model's metadata")

    @field_validator("model_args", "vllm_args")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from automation.errors import SecretError
        from automation.secrets import check_no_secret_keys

        try:
            check_no_secret_keys(str(info.field_name), value)
        except SecretError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("model_args")
    @classmethod
    def _not_set_twice(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in OWN_MODEL_ARGS:
                raise ValueError(f"model_args sets {key!r}, which the spec sets through its "
                                 f"`{OWN_MODEL_ARGS[key]}` field: set it there")
        return value

    @model_validator(mode="after")
    def _backend_options(self) -> EvaluateSpec:
        twice = sorted(set(self.model_args) & set(self.vllm_args))
        if twice:
            raise ValueError(f"model_args and vllm_args both set {', '.join(map(repr, twice))}: set each once")
        if self.backend == "hf" and self.tensor_parallel_size not in (None, 1):
            raise ValueError("tensor_parallel_size applies to the vllm backend; with backend 'hf' leave it unset")
        return self

    def kind_packages(self) -> tuple[str, ...]:
        return (*self.base_packages, *self.choice_packages) if self.backend == "vllm" else self.base_packages

    def standards_content(self) -> dict[str, Any]:
        return self.suite_standards()

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
        return self.name or f"evaluate-{self.model.short_name()}-{self.what()}-{self.identity()[:8]}"


class ServedEvaluation(LmEvalOptions):
    """lm-eval against the benchmark's own inference server (lm-eval's `local-completions`, or
    `local-chat-completions` for the chat endpoint): one server start serves the accuracy run and
    the GuideLLM run. Log-likelihood tasks (multiple choice, perplexity) need a server that returns
    prompt log-probabilities (vLLM); `transformers serve` runs generative tasks only."""

    endpoint: Literal["completions", "chat"] = Field(
        "completions", description="OpenAI endpoint lm-eval calls: completions (prompt text) or chat "
                                   "(messages; needs apply_chat_template)")
    num_concurrent: int = Field(1, ge=1, le=256, description="requests lm-eval keeps in flight")

    @model_validator(mode="after")
    def _chat_needs_a_template(self) -> ServedEvaluation:
        if self.endpoint == "chat" and self.apply_chat_template is False:
            raise ValueError("endpoint 'chat' sends messages, which lm-eval builds from the chat template: set "
                             "apply_chat_template: true")
        return self

    def identity_view(self) -> dict[str, Any]:
        """Its part of a benchmark's identity: a file or inline suite by what it resolves to (the
        benchmark's `standards`), as for the evaluate kind."""
        data = self.model_dump(mode="json")
        if self.suite is not None and self.suite not in names("suite"):
            data["suite"] = INLINE_SUITE
        return data
