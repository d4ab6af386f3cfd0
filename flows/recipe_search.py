"""`recipe_search`: a multi-objective search over a recipe's arguments, every trial ordinary work.

    automation run hpo --model hf:org/m --recipe w4a16 --space dampening_frac=0.001:0.1:log \\
        --space actorder=static,group --trials 16 --objectives recovery,size --suite openllm --json out.json
    report = await recipe_search(model=..., recipe="w4a16", space=[...], trials=16)

Each trial is compress -> evaluate (-> benchmark when a speed objective is asked for) through the
bridge, so trials are ClearML tasks on the GPU queues with reuse by identity (a configuration that
already ran costs nothing), retries, cancellation and queue caps; up to `concurrency` trials run at
once. The study lives in Optuna's storage (automation/search/study.py) under a name derived from
the inputs: started again after a crash or a cancel, the search continues the same study, and a
trial that was in flight is asked again with the same parameters (its finished steps are reused).
The report (every trial, the Pareto front, the best trial per objective) becomes Prefect artifacts,
a ClearML summary task and the returned model (`--json`).

No `from __future__ import annotations` in flow modules (see compress_evaluate_benchmark.py).
"""

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger

from automation.errors import FlowInputError, RunFailed
from automation.regression.code_pin import resolve_code
from automation.regression.plan import (
    BenchmarkOptions,
    CompressionOptions,
    EvaluationOptions,
    Plan,
    StepQueues,
    plan_matrix,
)
from automation.regression.settings import settings
from automation.search import study as studies
from automation.search.objectives import DIRECTIONS, NEEDS_BENCHMARK, check_objectives, objective_values, recoveries
from automation.search.report import SearchReport
from automation.search.space import SearchSpace
from automation.specs.base import build
from automation.specs.compress import CompressSpec
from automation.specs.model_ref import ModelRef
from flows.bridge import BRIDGE_FLOW_HOOKS, backend, ensure_queue_limits
from flows.compress_evaluate_benchmark import _summary, model_ref
from flows.run import finalize, run_step

STATE_ATTR = "published"  # study user attribute: digest of the trials last published, and the report URL


@flow(name="recipe-search", log_prints=True, **BRIDGE_FLOW_HOOKS)
async def recipe_search(
    model: str,
    recipe: str = "w4a16",
    space: dict[str, str] = {},
    schemes: list[str] = [],
    trials: int = 8,
    objectives: list[str] = ["recovery", "size"],
    sampler: studies.Sampler = "auto",
    concurrency: int = 2,
    suite: str = "openllm",
    profile: str = "chat",
    queue: str = "gpu",
    gated_metrics: list[str] = [],
    compression: CompressionOptions = CompressionOptions(),
    evaluation: EvaluationOptions = EvaluationOptions(),
    benchmarking: BenchmarkOptions = BenchmarkOptions(),
    step_queues: StepQueues = StepQueues(),
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    hooks: list[str] = [],
    project: str | None = None,
    code: str | None = None,
    publish: bool = True,
) -> SearchReport:
    """Search a recipe's arguments for the trade-off between accuracy recovery, speed and size.

    Args:
        model: the model: hf:org/name[@revision], a local path, or clearml:MODEL_ID
        recipe: the recipe whose arguments are searched (a standard name or a file)
        space: NAME=LOW:HIGH[:log|:STEP] or NAME=A,B,C, one per searched argument (num_samples too)
        schemes: several recipes to search over as a choice (each must take every argument of space)
        trials: how many trials the study should have finished
        objectives: recovery, recovery_mean, size, throughput, ttft (speed ones add a benchmark step)
        sampler: auto (NSGA-II for several objectives, TPE for one), nsga2, tpe, random, grid
        concurrency: trials in flight at once
        suite: evaluation suite whose metrics give recovery (openllm, leaderboard, tiny, or a file)
        profile: GuideLLM workload profile for throughput / ttft
        queue: ClearML queue for every step (see step_queues to split)
        gated_metrics: metrics recovery is taken over (fnmatch patterns); empty = every metric both report
        compression: calibration data, model options and fixed recipe arguments of every trial
        evaluation: lm-eval options (limit, batch size, few-shot)
        benchmarking: inference server options
        step_queues: a queue per step (compress / evaluate / benchmark); empty = `queue`
        storage: Optuna storage URL (sqlite:///..., postgresql+psycopg://user@host/db; no password); none = data dir
        study_name: the study to create or continue; empty = derived from the search's inputs
        seed: sampler seed
        hooks: submit hooks by name, e.g. hf_token
        project: ClearML project (default: settings)
        code: what the agents run: URL@COMMIT, URL@BRANCH (pinned to its commit now), or worktree
        publish: publish the report (Prefect artifacts and a ClearML summary task)
    """
    parameters = dict(locals())
    prep = prepare(**parameters)
    log = get_run_logger()
    plan = await finalize(prep.plan)
    if settings().queue_caps:  # AUTOMATION_QUEUE_CAPS: the same caps the sweeps hold to
        await ensure_queue_limits(dict(settings().queue_caps))
    mp = plan.models[0]
    study = studies.open_study(prep.storage, prep.study_name, prep.objectives,
                               studies.make_sampler(sampler, prep.space, prep.objectives, seed))
    resumed = studies.interrupted(study)
    remaining = max(0, trials - studies.finished_count(study))
    log.info("study %s in %s: %d finished, %d to run (%d of them interrupted earlier, run again)",
             prep.study_name, studies.masked(prep.storage), trials - remaining, remaining, len(resumed))
    base_tasks: dict[str, str] = {}
    base_failed: str | None = None
    if remaining:
        needs_bench = bool(NEEDS_BENCHMARK & set(prep.objectives))
        steps = [run_step("evaluate", mp.base_evals[suite], False, "evaluate-base")]
        if needs_bench:
            steps.append(run_step("benchmark", mp.base_bench, False, "benchmark-base"))
        outcomes = await asyncio.gather(*steps)
        for step, outcome in zip(("evaluate", "benchmark"), outcomes, strict=False):
            if outcome.result is not None:
                base_tasks[step] = outcome.result.web_url
            elif base_failed is None:
                base_failed = f"the base model's {step} step failed, so no trial can be scored: " + (
                    outcome.failure.error if outcome.failure else "unknown")
        base_result = outcomes[0].result
        if base_failed is None and base_result is not None:
            gate = asyncio.Semaphore(concurrency)
            base_values = base_result.values
            # The interrupted trials first (they count toward `trials`), then new ones.
            earlier = resumed[:remaining] + [None] * max(0, remaining - len(resumed))
            await asyncio.gather(*(_trial(study, prep, plan, base_values, gate, ft) for ft in earlier))
    report = _report(study, prep, trials, sampler, base_tasks)
    if publish:
        report = await _publish(study, report, prep.project)
    if base_failed:
        raise RunFailed(base_failed, report)
    return report


async def _trial(study: Any, prep: "Prepared", plan: Plan, base_values: Any, gate: asyncio.Semaphore,
                 earlier: Any = None) -> None:
    """One trial: asked when a slot is free (so the sampler sees every trial told so far), or an
    interrupted one (`earlier`, a FrozenTrial still RUNNING) run again under its own number."""
    from optuna.trial import TrialState

    log = get_run_logger()
    mp = plan.models[0]
    async with gate:
        trial = earlier if earlier is not None else study.ask(studies.distributions(prep.space))
        recipe, args, fields = prep.space.recipe_args(trial.params)
        record: dict[str, Any] = {"recipe": recipe, "recipe_args": args, "tasks": {}, "task_ids": {},
                                  "identities": {}}
        steps: list[Any] = []
        try:
            base = mp.compress[recipe]
            spec = build(CompressSpec, {**base.model_dump(), "recipe_args": {**base.recipe_args, **args}, **fields})
            steps.append(await run_step("compress", spec, False, f"trial-{trial.number}-compress"))
            compressed = _result(steps[-1], record, "compress")
            record.update(model_id=compressed.model_id, model_url=compressed.model_url)
            out_model = ModelRef.from_result(compressed)
            follow = [run_step("evaluate", mp.evaluate_for(out_model, prep.suite), False,
                               f"trial-{trial.number}-evaluate")]
            if NEEDS_BENCHMARK & set(prep.objectives):
                follow.append(run_step("benchmark", mp.bench_for(out_model), False, f"trial-{trial.number}-benchmark"))
            steps += await asyncio.gather(*follow)
            evaluated = _result(steps[1], record, "evaluate")
            bench = _result(steps[2], record, "benchmark").values if len(steps) > 2 else None
            by_metric = recoveries(base_values, evaluated.values, prep.gated_metrics)
            size = compressed.values.get("size/after_mb")
            values = objective_values(prep.objectives, by_metric, size.value if size else None, bench)
        except Exception as exc:
            record["error"] = str(exc).splitlines()[0][:500]
            record["reused"] = False
            studies.save_record(study, trial.number, record)
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning("trial %d (%s %s) failed: %s", trial.number, recipe, args, record["error"])
            return
        record.update(values=values, recoveries=by_metric, reused=all(s.result.reused for s in steps))
        studies.save_record(study, trial.number, record)
        study.tell(trial.number, [values[o] for o in prep.objectives])
        log.info("trial %d (%s %s): %s", trial.number, recipe, trial.params, values)


def _result(outcome: Any, record: dict[str, Any], step: str) -> Any:
    if outcome.result is None:
        failure = outcome.failure
        if failure is not None and failure.web_url:
            record["tasks"][step] = failure.web_url
        raise RuntimeError(f"{step}: {failure.error if failure else 'failed'}")
    result = outcome.result
    record["tasks"][step] = result.web_url
    record["task_ids"][step] = result.task_id
    record["identities"][step] = result.identity
    return result


def _report(study: Any, prep: "Prepared", trials: int, sampler: str, base_tasks: dict[str, str]) -> SearchReport:
    from prefect.context import FlowRunContext

    records = studies.records(study)
    context = FlowRunContext.get()
    flow_run = context.flow_run if context else None
    return SearchReport(
        title=prep.title, study_name=prep.study_name, storage=studies.masked(prep.storage), model=prep.model,
        recipes=prep.space.recipes, space=[p.describe() for p in prep.space.params],
        objectives={o: DIRECTIONS[o] for o in prep.objectives}, sampler=sampler, trials_requested=trials,
        trials=records, pareto=sorted(t.number for t in records if t.pareto),
        best=studies.best_per_objective(records, prep.objectives), base_tasks=base_tasks,
        flow_run_id=str(flow_run.id) if flow_run else None)


async def _publish(study: Any, report: SearchReport, project: str) -> SearchReport:
    """Prefect artifacts every run; a ClearML summary task only when the trials changed since the
    last one (a rerun of a finished search creates no ClearML task)."""
    from automation.search.publish import publish_clearml
    from flows.publish import publish_search_prefect

    await publish_search_prefect(report)
    digest = hashlib.sha256(json.dumps([t.model_dump(mode="json") for t in report.trials],
                                       sort_keys=True).encode()).hexdigest()
    last = study.user_attrs.get(STATE_ATTR) or {}
    if last.get("digest") == digest and last.get("url"):
        return report.model_copy(update={"summary_task_id": last.get("task_id"), "summary_task_url": last["url"],
                                         "plot_url": last.get("plot_url")})
    published = await publish_clearml(report, backend(), project)
    study.set_user_attr(STATE_ATTR, {"digest": digest, "url": published.summary_task_url,
                                     "task_id": published.summary_task_id, "plot_url": published.plot_url})
    return published


@dataclass
class Prepared:
    """Everything validated before anything is queued."""

    plan: Plan
    space: SearchSpace
    objectives: list[str]
    storage: str
    study_name: str
    suite: str
    gated_metrics: list[str]
    project: str
    model: str
    title: str


def prepare(model: str, recipe: str = "w4a16", space: dict[str, str] | None = None, schemes: list[str] | None = None,
            trials: int = 8, objectives: list[str] | None = None, sampler: studies.Sampler = "auto",
            concurrency: int = 2, suite: str = "openllm", profile: str = "chat", queue: str = "gpu",
            gated_metrics: list[str] | None = None, compression: CompressionOptions | None = None,
            evaluation: EvaluationOptions | None = None, benchmarking: BenchmarkOptions | None = None,
            step_queues: StepQueues | None = None, storage: str | None = None, study_name: str | None = None,
            seed: int = 0, hooks: list[str] | None = None, project: str | None = None, code: str | None = None,
            **_: Any) -> Prepared:
    """The search's validation and planning, callable on its own (the CLI checks input this way)."""
    if evaluation is not None and evaluation.lighteval_tasks:
        raise FlowInputError("evaluation.lighteval_tasks: a search scores its trials on the lm-eval suite; leave "
                             "it empty (run LightEval on the chosen recipe with compress-evaluate-benchmark)")
    ref = model_ref("model", model)
    if trials < 1:
        raise FlowInputError("trials: at least 1")
    if concurrency < 1:
        raise FlowInputError("concurrency: at least 1 trial in flight")
    objectives = check_objectives(list(objectives if objectives is not None else ["recovery", "size"]))
    recipes = list(schemes) if schemes else [recipe]
    searched = SearchSpace.parse(recipes, dict(space or {}))
    searched.check_model(ref.config())
    studies.check_sampler(sampler, searched.params, trials)
    if storage:
        studies.check_storage(storage)
    compression = compression or CompressionOptions()
    project = project or settings().project
    # Planned with the recipes' defaults: every spec is built (and so checked) before anything runs.
    plan = plan_matrix([(ref, queue, ())], recipes, [suite], profile, compression, evaluation or EvaluationOptions(),
                       benchmarking or BenchmarkOptions(), step_queues or StepQueues(), project, hooks or [],
                       code=resolve_code(code))
    inputs = {"model": str(ref), "recipes": recipes, "space": [p.model_dump() for p in searched.params],
              "objectives": objectives, "suite": suite, "profile": profile,
              "gated_metrics": sorted(gated_metrics or []),
              "compression": compression.model_dump(mode="json"), "evaluation": _evaluation_inputs(evaluation),
              "sampler": sampler, "seed": seed}
    return Prepared(plan=plan, space=searched, objectives=objectives, storage=storage or studies.default_storage(),
                    study_name=study_name or studies.study_name(inputs), suite=suite,
                    gated_metrics=list(gated_metrics or []), project=project, model=str(ref),
                    title=f"{ref.short_name()}: {', '.join(recipes)} x {trials} trials")


# The evaluation options a study was named by before the prompt and LightEval options existed: a
# later option at its default stays out of the name, so an existing study is found again.
_FIRST_EVALUATION_OPTIONS = frozenset({"limit", "batch_size", "num_fewshot", "backend"})


def _evaluation_inputs(evaluation: EvaluationOptions | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    data = _summary({"e": evaluation})["e"]
    defaults = EvaluationOptions().model_dump(mode="json")
    return {k: v for k, v in data.items() if k in _FIRST_EVALUATION_OPTIONS or v != defaults.get(k)}


def run_sync(**parameters: Any) -> SearchReport:
    """The flow from synchronous code (scripts, notebooks without a running loop)."""
    return asyncio.run(recipe_search(**parameters))
