"""The compress -> evaluate -> benchmark matrix behind both flows: planning, running, joining.

Planning builds and validates EVERY spec (and checks queues, hooks and models) before anything is
queued, so bad input fails naming its parameter and leaves nothing behind. Running starts, per
model, the base evaluations and benchmark at once, concurrently with every compression; each
scheme's evaluations and benchmark start the moment its compression is done. A step that fails
is recorded in its cell (the report shows it) instead of cancelling its siblings.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from automation.backend import ApiCallError, QueueNotFound
from automation.results import TaskResult
from automation.specs.base import SpecError, TaskSpec
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec
from automation.specs.evaluate import EvaluateSpec
from automation.specs.model_ref import ModelRef
from automation.standards import StandardError, load_profile_model, load_suite
from flows.bridge import backend, run_task
from flows.errors import ClearMLTaskError
from flows.gates import (
    AccuracyGateSettings,
    PerformanceGateSettings,
    accuracy_gates,
    overall,
    performance_gates,
)
from flows.hooks import HookError, apply_hooks, check_hooks
from flows.report_model import BASE_SCHEME, ReportCell, StepFailure, StepLink

Step = Literal["compress", "evaluate", "benchmark"]


def scheme_label(scheme: str) -> str:
    """How a scheme shows in task names and reports: a standard name as it is, a recipe file by
    its stem, inline YAML by a short hash."""
    text = scheme.strip()
    if "\n" in text or (":" in text and " " in text):
        import hashlib

        return "inline-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    if "/" in text or text.endswith((".yaml", ".yml")):
        return Path(text).stem
    return text


class FlowInputError(ValueError):
    """Bad flow input, found before anything was queued; the message names the parameter."""


# -- parameters shared by the flows (each is ONE top-level flow parameter: overrides are shallow) --
class CompressionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calibration: str | None = Field("open_platypus", description="calibration dataset ('tiny' = built in; "
                                                                 "none for data-free schemes)")
    num_samples: int = Field(512, ge=1, description="calibration samples")
    max_seq_length: int = Field(2048, ge=8, description="calibration sequence length")
    recipe_args: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                   description="recipe template arguments per scheme")


class EvaluationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: float | None = Field(None, gt=0, description="samples per task (>= 1) or a fraction; none = all")
    batch_size: int | Literal["auto"] = Field(8, description="batch size or 'auto'")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot override for every task")
    backend: Literal["auto", "hf", "vllm"] = Field("auto", description="auto = vllm with a GPU, else hf")


class BenchmarkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "vllm", "transformers"] = Field("auto", description="auto = vllm with a GPU")
    gpus: int | None = Field(None, ge=0, description="GPUs for the server; none = default")
    server_args: list[str] = Field(default_factory=list, description="extra server arguments")
    startup_timeout_s: float = Field(900.0, gt=0, description="deadline for the server to become ready")


class StepQueues(BaseModel):
    """Queue per step; empty = the model's queue (the `queue` parameter or the size rule)."""

    model_config = ConfigDict(extra="forbid")

    compress: str | None = Field(None, description="queue for compression")
    evaluate: str | None = Field(None, description="queue for evaluations")
    benchmark: str | None = Field(None, description="queue for benchmarks")


# -- the plan ---------------------------------------------------------------------------------
@dataclass
class ModelPlan:
    model: ModelRef
    queue: str
    escalation: tuple[str, ...]
    base_evals: dict[str, EvaluateSpec]  # by suite
    base_bench: BenchmarkSpec
    compress: dict[str, CompressSpec]  # by scheme
    evaluate_for: Callable[[ModelRef, str], EvaluateSpec]  # compressed model, suite -> spec
    bench_for: Callable[[ModelRef], BenchmarkSpec]


@dataclass
class Plan:
    models: list[ModelPlan]
    schemes: list[str]
    suites: list[str]
    profile: str
    hooks: list[str]
    queues: set[str] = field(default_factory=set)


def _spec(field_name: str, make: Callable[[], TaskSpec]) -> Any:
    try:
        return make()
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

    plans: list[ModelPlan] = []
    queues: set[str] = set()
    for model, queue, escalation in models:
        unknown = set(compression.recipe_args) - set(schemes)
        if unknown:
            raise FlowInputError(f"compression.recipe_args: {sorted(unknown)} are not among the schemes {schemes}")
        mp = _plan_model(model, queue, escalation, schemes, suites, profile, compression, evaluation, benchmarking,
                         step_queues, {"project": project, "tags": tags, "queue_escalation": escalation})
        queues |= {step_queues.compress or queue, step_queues.evaluate or queue, step_queues.benchmark or queue,
                   *escalation}
        plans.append(mp)
    return Plan(models=plans, schemes=schemes, suites=suites, profile=profile, hooks=hooks, queues=queues)


def _plan_model(model: ModelRef, queue: str, escalation: tuple[str, ...], schemes: list[str], suites: list[str],
                profile: str, compression: CompressionOptions, evaluation: EvaluationOptions,
                benchmarking: BenchmarkOptions, step_queues: StepQueues, envelope: dict[str, Any]) -> ModelPlan:
    q_compress = step_queues.compress or queue
    q_eval = step_queues.evaluate or queue
    q_bench = step_queues.benchmark or queue

    def evaluate_for(m: ModelRef, suite: str) -> EvaluateSpec:
        return EvaluateSpec(model=m, suite=suite, queue=q_eval, limit=evaluation.limit,
                            batch_size=evaluation.batch_size, num_fewshot=evaluation.num_fewshot,
                            backend=evaluation.backend, **envelope)

    def bench_for(m: ModelRef) -> BenchmarkSpec:
        return BenchmarkSpec(model=m, profile=profile, queue=q_bench, engine=benchmarking.engine,
                             gpus=benchmarking.gpus, server_args=tuple(benchmarking.server_args),
                             startup_timeout_s=benchmarking.startup_timeout_s, **envelope)

    def compress_for(scheme: str) -> CompressSpec:
        return CompressSpec(model=model, recipe=scheme, recipe_args=compression.recipe_args.get(scheme, {}),
                            calibration=compression.calibration, num_samples=compression.num_samples,
                            max_seq_length=compression.max_seq_length, queue=q_compress, **envelope)

    return ModelPlan(
        model=model, queue=queue, escalation=escalation,
        base_evals={s: _spec("evaluation", partial(evaluate_for, model, s)) for s in suites},
        base_bench=_spec("benchmarking", partial(bench_for, model)),
        compress={s: _spec(f"schemes[{i}] ({s})", partial(compress_for, s)) for i, s in enumerate(schemes)},
        evaluate_for=evaluate_for, bench_for=bench_for)


async def check_plan(plan: Plan) -> None:
    """What needs a server: every queue exists, every input model can be found, every hook applies."""
    client = backend()
    for queue in sorted(plan.queues):
        try:
            await client.queue_id(queue)
        except QueueNotFound as exc:
            raise FlowInputError(f"queue: {exc}") from None
    for mp in plan.models:
        await check_model_available(mp.model)
        # Hooks may look things up (a Secret block): run them once on every planned spec now.
        for spec in (mp.base_bench, *mp.base_evals.values(), *mp.compress.values()):
            try:
                await apply_hooks(spec, plan.hooks)
            except (HookError, SpecError) as exc:
                raise FlowInputError(f"hooks: {exc}".replace("hooks: hooks: ", "hooks: ")) from None


async def check_model_available(model: ModelRef) -> None:
    """A model that cannot be found fails here, not on a GPU an hour later. Hub models are looked
    up in the local cache, else on the hub (a network failure only warns: GPU hosts may reach it)."""
    if model.source == "clearml":
        try:
            await backend().call("models.get_by_id", {"model": model.id})
        except ApiCallError as exc:
            raise FlowInputError(f"model: ClearML model {model.id} not found ({exc})") from None
        return
    if model.source != "hf" or model.config() is not None:
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FlowInputError(f"model: {model} is not in the local hub cache and HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        await asyncio.to_thread(HfApi().model_info, model.id, revision=model.revision, timeout=15)
    except GatedRepoError:
        return  # exists; access is the agent's business (see the hf_token hook)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise FlowInputError(f"model: {model} not found on the Hugging Face hub ({type(exc).__name__})") from None
    except Exception as exc:  # offline orchestrator host: the GPU host may still reach the hub
        import logging

        logging.getLogger("flows.chain").warning("could not check %s on the hub: %s", model, exc)


# -- running ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    result: TaskResult | None = None
    failure: StepFailure | None = None


async def _step(step: Step, spec: TaskSpec, hooks: list[str], refresh: bool, label: str) -> Outcome:
    try:
        spec = await apply_hooks(spec, hooks)
        runner: Any = run_task.with_options(task_run_name=label)
        result: TaskResult = await runner(spec, refresh=refresh)
        return Outcome(result=result)
    except ClearMLTaskError as exc:
        return Outcome(failure=StepFailure(step=step, error=str(exc).splitlines()[0][:500], task_id=exc.task_id,
                                           web_url=exc.url))
    except Exception as exc:
        return Outcome(failure=StepFailure(step=step, error=f"{type(exc).__name__}: {exc}"[:500]))


@dataclass
class CellRun:
    model: ModelRef
    scheme: str
    suite: str
    queue: str
    compress: Outcome | None
    evaluate: Outcome
    benchmark: Outcome


async def run_plan(plan: Plan, refresh: bool = False) -> list[CellRun]:
    """Run the DAG: base steps and compressions at once; each scheme's follow-ups as soon as its
    compression is done. Returns one CellRun per (model, scheme incl. base, suite)."""

    async def model_cells(mp: ModelPlan) -> list[CellRun]:
        name = mp.model.short_name()

        async def base() -> list[CellRun]:
            evals = [_step("evaluate", mp.base_evals[s], plan.hooks, refresh, f"evaluate-{name}-base-{s}")
                     for s in plan.suites]
            bench = _step("benchmark", mp.base_bench, plan.hooks, refresh, f"benchmark-{name}-base")
            *ev, bn = await asyncio.gather(*evals, bench)
            return [CellRun(mp.model, BASE_SCHEME, s, mp.queue, None, e, bn) for s, e in zip(plan.suites, ev,
                                                                                                 strict=True)]

        async def scheme(s: str) -> list[CellRun]:
            label = scheme_label(s)
            comp = await _step("compress", mp.compress[s], plan.hooks, refresh, f"compress-{name}-{label}")
            if comp.result is None:
                skipped = Outcome(failure=StepFailure(step="evaluate", error="not run: compression failed"))
                skipped_b = Outcome(failure=StepFailure(step="benchmark", error="not run: compression failed"))
                return [CellRun(mp.model, label, suite, mp.queue, comp, skipped, skipped_b) for suite in plan.suites]
            out_model = ModelRef.from_result(comp.result)
            evals = [_step("evaluate", mp.evaluate_for(out_model, suite), plan.hooks, refresh,
                           f"evaluate-{name}-{label}-{suite}") for suite in plan.suites]
            bench = _step("benchmark", mp.bench_for(out_model), plan.hooks, refresh, f"benchmark-{name}-{label}")
            *ev, bn = await asyncio.gather(*evals, bench)
            return [CellRun(mp.model, label, suite, mp.queue, comp, e, bn) for suite, e in zip(plan.suites, ev,
                                                                                            strict=True)]

        groups = await asyncio.gather(base(), *(scheme(s) for s in plan.schemes))
        return [cell for group in groups for cell in group]

    per_model = await asyncio.gather(*(model_cells(mp) for mp in plan.models))
    return [cell for cells in per_model for cell in cells]


# -- joining ----------------------------------------------------------------------------------
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

