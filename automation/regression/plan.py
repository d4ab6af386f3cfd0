"""Planning the compress -> evaluate -> benchmark matrix: every spec of a run, built and validated
before anything is queued, so bad input fails naming its parameter and leaves nothing behind.

A plan is pure data (the one thing it reads is the code each kind runs:
`code_pin.with_source_digests`). `flows.run.finalize` then checks what needs a server (queues, models) and
applies the submit hooks once to every spec; running a plan never comes back here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, cast

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from automation.errors import FlowInputError, HookError, SpecError, StandardError
from automation.regression.code_pin import with_source_digests
from automation.regression.hooks import check_hooks
from automation.regression.report_model import BASE_SCHEME
from automation.regression.tracking import Tracked
from automation.specs.base import CodeRef, TaskSpec, build, format_validation_error
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec, ModelDtype
from automation.specs.evaluate import EvaluateSpec, PromptOptions
from automation.specs.lighteval import LightEvalSpec
from automation.specs.model_ref import ModelRef
from automation.standards import load_profile_model, load_suite
from automation.standards.calibration import CalibrationOptions


def scheme_label(scheme: str) -> str:
    """How a scheme shows in task names and reports: a standard name as it is, a recipe file by
    its stem, inline YAML by a short hash."""
    text = scheme.strip()
    if "\n" in text or (":" in text and " " in text):
        return "inline-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    if "/" in text or text.endswith((".yaml", ".yml")):
        return Path(text).stem
    return text


# -- parameters shared by the flows (each is ONE top-level flow parameter: overrides are shallow) --
class CompressionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calibration: str | None = Field("open_platypus", description="calibration dataset ('tiny' = built in; "
                                                                 "none for data-free schemes)")
    num_samples: int = Field(512, ge=1, description="calibration samples")
    max_seq_length: int = Field(2048, ge=8, description="calibration sequence length")
    recipe_args: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                   description="recipe template arguments per scheme")
    calibration_options: CalibrationOptions = Field(
        default_factory=CalibrationOptions,
        description="subset, split, revision, text/messages column, chat template, shuffle (docs/compression.md)")
    dtype: ModelDtype = Field("auto", description="dtype the model is compressed in (bfloat16 for FP4 schemes "
                                                  "of a float32 model)")
    model_class: str | None = Field(None, description="transformers class that loads the model "
                                                      "(none = AutoModelForCausalLM)")
    trust_remote_code: bool = Field(False, description="run the model repository's own modelling code")


class EvaluationOptions(PromptOptions):
    """lm-eval's options for every evaluation of the run (the prompt options as the evaluate kind
    states them), and the LightEval tasks each cell is also evaluated on."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    limit: float | None = Field(None, gt=0, description="samples per task (>= 1) or a fraction; none = all")
    batch_size: int | Literal["auto"] = Field(8, description="batch size or 'auto'")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot override for every task")
    task_fewshot: dict[str, int] = Field(default_factory=dict, description="few-shot count per task of the suite")
    backend: Literal["auto", "hf", "vllm"] = Field("auto", description="auto = vllm with a GPU, else hf")
    model_args: dict[str, str | int | float | bool] = Field(default_factory=dict,
                                                            description="extra lm-eval model arguments")
    lighteval_tasks: list[str] = Field(default_factory=list, description="LightEval tasks (TASK|FEWSHOT) every "
                                                                        "cell is also evaluated on")
    lighteval_custom_tasks: str | None = Field(None, description="shipped LightEval task file (tiny)")
    lighteval_max_samples: int | None = Field(None, ge=1, description="LightEval samples per task")


class BenchmarkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "vllm", "transformers"] = Field("auto", description="auto = vllm with a GPU")
    gpus: int | None = Field(None, ge=0, description="GPUs for the server; none = default")
    server_args: list[str] = Field(default_factory=list, description="extra server arguments")
    startup_timeout_s: float = Field(900.0, gt=0, description="deadline for the server to become ready")
    repetitions: int = Field(1, ge=1, le=15, description="runs of each profile (odd): median reported, spread "
                                                         "used as the performance gates' noise band")


class StepQueues(BaseModel):
    """Queue per step; empty = the model's queue (the `queue` parameter or the size rule)."""

    model_config = ConfigDict(extra="forbid")
    cli_affix: ClassVar[tuple[str, str]] = ("", "_queue")  # command-line options --compress-queue, ...

    compress: str | None = Field(None, description="queue for compression")
    evaluate: str | None = Field(None, description="queue for evaluations")
    benchmark: str | None = Field(None, description="queue for benchmarks")



class StepLimits(BaseModel):
    """Longest wait in the queue and longest run per step, in seconds; empty = the kind's default
    (8 h in a queue; 12 h compressing or evaluating, 4 h benchmarking). A step past a limit is
    dequeued or stopped on its agent and reported as a timeout in its cell; the rest goes on."""

    model_config = ConfigDict(extra="forbid")

    compress_queue_s: float | None = Field(None, gt=0, description="queue wait limit of compressions")
    compress_run_s: float | None = Field(None, gt=0, description="run limit of compressions")
    evaluate_queue_s: float | None = Field(None, gt=0, description="queue wait limit of evaluations")
    evaluate_run_s: float | None = Field(None, gt=0, description="run limit of evaluations")
    benchmark_queue_s: float | None = Field(None, gt=0, description="queue wait limit of benchmarks")
    benchmark_run_s: float | None = Field(None, gt=0, description="run limit of benchmarks")

    def for_spec(self, spec: TaskSpec) -> tuple[float, float]:
        """(queue limit, run limit) of a step of this kind."""
        given = self.model_dump()
        queue_s = given.get(f"{spec.kind}_queue_s")
        run_s = given.get(f"{spec.kind}_run_s")
        return (queue_s or type(spec).max_queue_s, run_s or type(spec).max_run_s)


# -- the plan ---------------------------------------------------------------------------------
@dataclass
class ModelPlan:
    model: ModelRef
    queue: str
    escalation: tuple[str, ...]
    base_evals: dict[str, EvaluateSpec]  # by suite
    base_bench: BenchmarkSpec
    compress: dict[str, CompressSpec]  # by scheme
    base_lighteval: LightEvalSpec | None = None  # the extra evaluation of every cell, when asked for

    def specs(self) -> list[TaskSpec]:
        extra = [self.base_lighteval] if self.base_lighteval else []
        return [self.base_bench, *self.base_evals.values(), *self.compress.values(), *extra]

    def lighteval_for(self, model: ModelRef) -> LightEvalSpec | None:
        return with_model(self.base_lighteval, model) if self.base_lighteval else None

    def evaluate_for(self, model: ModelRef, suite: str) -> EvaluateSpec:
        """The evaluation of a compressed model: the base model's, final as planned, on `model`."""
        return with_model(self.base_evals[suite], model)

    def bench_for(self, model: ModelRef) -> BenchmarkSpec:
        return with_model(self.base_bench, model)


S = TypeVar("S", bound=TaskSpec)


def with_model(spec: S, model: ModelRef) -> S:
    """`spec` on another input model (validated: frozen specs; `model_copy` would skip validation)."""
    return cast(S, build(type(spec), {**spec.model_dump(), "model": model}))


@dataclass
class Plan:
    models: list[ModelPlan]
    schemes: list[str]
    suites: list[str]
    profile: str
    hooks: list[str]
    queues: set[str] = field(default_factory=set)
    code: CodeRef = field(default_factory=CodeRef)
    limits: StepLimits = field(default_factory=StepLimits)
    tracked: list[Tracked] = field(default_factory=list)


def _spec(field_name: str, make: Callable[[], TaskSpec]) -> Any:
    try:
        return make()
    except ValidationError as exc:
        # pydantic's own text repeats the input values, which may hold what must not be logged
        raise FlowInputError(f"{field_name}: {format_validation_error(str(exc.title), exc)}") from None
    except (SpecError, ValueError) as exc:
        raise FlowInputError(f"{field_name}: {exc}") from None


def plan_matrix(
    models: list[tuple[ModelRef, str, tuple[str, ...]]],
    schemes: list[str],
    suites: list[str],
    profile: str,
    compression: CompressionOptions,
    evaluation: EvaluationOptions,
    benchmarking: BenchmarkOptions,
    step_queues: StepQueues,
    project: str,
    hooks: list[str],
    tags: tuple[str, ...] = (),
    code: CodeRef | None = None,
    limits: StepLimits | None = None,
    tracked: list[Tracked] | None = None,
) -> Plan:
    """Every spec of the run, validated. `models` = (model, queue, OOM escalation) triples."""
    if not models:
        raise FlowInputError("models: give at least one model")
    if not schemes:
        raise FlowInputError("schemes: give at least one compression scheme (e.g. w4a16)")
    if len(set(schemes)) != len(schemes):
        raise FlowInputError(f"schemes: {schemes} lists a scheme twice")
    labels = [scheme_label(s) for s in schemes]
    if len(set(labels)) != len(labels):
        raise FlowInputError(f"schemes: {labels} name two schemes alike (rename a recipe file)")
    if BASE_SCHEME in labels:
        raise FlowInputError(f"schemes: '{BASE_SCHEME}' is the uncompressed model and is always included")
    if not suites:
        raise FlowInputError("suite: give an evaluation suite (e.g. openllm, or tiny on CPU)")
    for suite in suites:
        try:
            load_suite(suite)
        except StandardError as exc:
            raise FlowInputError(f"suite: {exc}") from None
    try:
        load_profile_model(profile)
    except StandardError as exc:
        raise FlowInputError(f"profile: {exc}") from None
    try:
        hooks = check_hooks(hooks)
    except HookError as exc:
        raise FlowInputError(str(exc)) from None

    # Each kind runs its own files of the code, and its own tracked libraries: a change to one recomputes
    # that kind (and what depends on its output) only.
    kinds = (CompressSpec, EvaluateSpec, BenchmarkSpec, LightEvalSpec)
    codes = with_source_digests(code or CodeRef(), {spec.kind: spec.script_module for spec in kinds})
    per_kind = {spec.kind: {"code": codes[spec.kind], **_tracked_for(spec, kinds, tracked or [])} for spec in kinds}
    plans: list[ModelPlan] = []
    queues: set[str] = set()
    for model, queue, escalation in models:
        unknown = set(compression.recipe_args) - set(schemes)
        if unknown:
            raise FlowInputError(f"compression.recipe_args: {sorted(unknown)} are not among the schemes {schemes}")
        mp = _plan_model(model, queue, escalation, schemes, suites, profile, compression, evaluation, benchmarking,
                         step_queues, {"project": project, "tags": tags, "queue_escalation": escalation}, per_kind)
        queues |= {step_queues.compress or queue, step_queues.evaluate or queue, step_queues.benchmark or queue,
                   *escalation}
        plans.append(mp)
    return Plan(models=plans, schemes=schemes, suites=suites, profile=profile, hooks=hooks, queues=queues,
                code=code or CodeRef(), limits=limits or StepLimits(), tracked=list(tracked or []))


def _declared(kind: type[TaskSpec]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in kind.base_packages}


def _tracked_for(kind: type[TaskSpec], kinds: tuple[type[TaskSpec], ...], tracked: list[Tracked]) -> dict[str, Any]:
    """A kind's share of the tracked libraries: those it declares replace its pins; those no kind
    declares are extra packages of every kind."""
    anyone = set().union(*(_declared(k) for k in kinds))
    return {"package_overrides": tuple(t.resolved for t in tracked if t.name in _declared(kind)),
            "packages": tuple(t.resolved for t in tracked if t.name not in anyone)}


def _plan_model(model: ModelRef, queue: str, escalation: tuple[str, ...], schemes: list[str], suites: list[str],
                profile: str, compression: CompressionOptions, evaluation: EvaluationOptions,
                benchmarking: BenchmarkOptions, step_queues: StepQueues, envelope: dict[str, Any],
                per_kind: dict[str, dict[str, Any]]) -> ModelPlan:
    q_compress = step_queues.compress or queue
    q_eval = step_queues.evaluate or queue
    q_bench = step_queues.benchmark or queue

    def evaluate_for(m: ModelRef, suite: str) -> EvaluateSpec:
        return EvaluateSpec(model=m, suite=suite, queue=q_eval, limit=evaluation.limit,
                            batch_size=evaluation.batch_size, num_fewshot=evaluation.num_fewshot,
                            task_fewshot=evaluation.task_fewshot, backend=evaluation.backend,
                            model_args=evaluation.model_args, **evaluation.prompt_kwargs(),
                            **per_kind[EvaluateSpec.kind], **envelope)

    def lighteval_for(m: ModelRef) -> LightEvalSpec:
        return LightEvalSpec(model=m, tasks=tuple(evaluation.lighteval_tasks), queue=q_eval,
                             custom_tasks=evaluation.lighteval_custom_tasks,
                             max_samples=evaluation.lighteval_max_samples,
                             use_chat_template=evaluation.apply_chat_template is not False,
                             system_prompt=evaluation.system_instruction,
                             **per_kind.get(LightEvalSpec.kind, {}), **envelope)

    def bench_for(m: ModelRef) -> BenchmarkSpec:
        return BenchmarkSpec(model=m, profile=profile, queue=q_bench, engine=benchmarking.engine,
                             gpus=benchmarking.gpus, server_args=tuple(benchmarking.server_args),
                             startup_timeout_s=benchmarking.startup_timeout_s, repetitions=benchmarking.repetitions,
                             **per_kind[BenchmarkSpec.kind], **envelope)

    def compress_for(scheme: str) -> CompressSpec:
        return CompressSpec(model=model, recipe=scheme, recipe_args=compression.recipe_args.get(scheme, {}),
                            calibration=compression.calibration, num_samples=compression.num_samples,
                            max_seq_length=compression.max_seq_length, queue=q_compress,
                            calibration_options=compression.calibration_options, dtype=compression.dtype,
                            model_class=compression.model_class, trust_remote_code=compression.trust_remote_code,
                            **per_kind[CompressSpec.kind], **envelope)

    return ModelPlan(
        model=model, queue=queue, escalation=escalation,
        base_evals={s: _spec("evaluation", partial(evaluate_for, model, s)) for s in suites},
        base_bench=_spec("benchmarking", partial(bench_for, model)),
        compress={s: _spec(f"schemes[{i}] ({s})", partial(compress_for, s)) for i, s in enumerate(schemes)},
        base_lighteval=_spec("evaluation.lighteval_tasks", partial(lighteval_for, model))
        if evaluation.lighteval_tasks else None)
