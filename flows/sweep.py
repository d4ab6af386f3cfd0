"""`sweep`: models x schemes x suites, one joined report for the whole matrix.

Each model's queue comes from the size rule table (settings `AUTOMATION_SIZE_RULES`, or the
`size_rules` parameter), so a 1B model does not wait behind 70B work for an 8-GPU queue; per-queue
caps (`queue_caps`, plus settings `AUTOMATION_QUEUE_CAPS`) become Prefect global concurrency limits
`clearml-queue:<queue>` that every step takes a slot of before it is enqueued. Every spec of the
matrix is validated before the first task is queued; unchanged cells are reused, not recomputed.
"""

import asyncio
from typing import Any

from prefect import flow, get_run_logger

from automation.errors import FlowInputError
from automation.regression.code_pin import resolve_code
from automation.regression.gates import PerformanceRule
from automation.regression.plan import (
    BenchmarkOptions,
    CompressionOptions,
    EvaluationOptions,
    StepLimits,
    StepQueues,
    plan_matrix,
)
from automation.regression.report_model import Report
from automation.regression.settings import SizeRule, queue_for, settings
from automation.regression.tracking import resolve_tracked
from automation.specs.model_ref import ModelRef
from flows.bridge import BRIDGE_FLOW_HOOKS, ensure_queue_limits
from flows.compress_evaluate_benchmark import FailOn, Prepared, _summary, gate_settings, model_ref
from flows.run import finish_run, run_and_join


@flow(name="sweep", log_prints=True, **BRIDGE_FLOW_HOOKS)
async def sweep(
    models: list[str],
    schemes: list[str] = ["w4a16", "fp8_dynamic"],
    suites: list[str] = ["openllm"],
    profile: str = "chat",
    size_rules: list[SizeRule] = [],
    queue_caps: dict[str, int] = {},
    threshold: float = 0.95,
    metric_thresholds: dict[str, float] = {},
    suite_thresholds: dict[str, float] = {},
    compression: CompressionOptions = CompressionOptions(),
    evaluation: EvaluationOptions = EvaluationOptions(),
    benchmarking: BenchmarkOptions = BenchmarkOptions(),
    step_queues: StepQueues = StepQueues(),
    step_limits: StepLimits = StepLimits(),
    confidence: float = 0.95,
    baseline_threshold: float = 0.98,
    gated_metrics: list[str] = [],
    performance_rules: list[PerformanceRule] | None = None,
    hooks: list[str] = [],
    project: str | None = None,
    code: str | None = None,
    track: list[str] = [],
    series: str | None = None,
    refresh: bool = False,
    compare_history: bool = True,
    publish: bool = True,
    fail_on: FailOn = "error",
) -> Report:
    """Compress, evaluate and benchmark every model with every scheme on every suite; gate each
    compressed model against its base; publish one joined report.

    Args:
        models: models (hf:org/name[@revision], local paths, clearml:MODEL_ID)
        schemes: compression schemes (w4a16, w8a8, fp8_dynamic, or recipe files)
        suites: evaluation suites
        profile: GuideLLM workload profile
        size_rules: queue by model size (billions of parameters); empty = settings AUTOMATION_SIZE_RULES
        queue_caps: most concurrent ClearML tasks per queue (Prefect global concurrency limits)
        threshold: minimum recovery per metric, in (0, 1]
        metric_thresholds: threshold per metric name (fnmatch patterns allowed)
        suite_thresholds: threshold per suite
        compression: calibration data and recipe arguments
        evaluation: lm-eval options
        benchmarking: inference server options
        step_queues: a fixed queue per step instead of the size rule
        step_limits: longest queue wait and run per step in seconds; empty = the kind's default
        confidence: confidence of the noise interval of the recovery gates
        baseline_threshold: minimum ratio of a value to the same cell's accepted run (compare_history)
        gated_metrics: metrics that gate (fnmatch patterns); empty = all
        performance_rules: performance gate rules; empty = the defaults
        hooks: submit hooks by name
        project: ClearML project (default: settings)
        code: what the agents run: URL@COMMIT, URL@BRANCH (pinned to its commit now), or worktree
        track: libraries to follow, resolved now (name @ git+URL@BRANCH, name>=X): replace the kinds' pins
        series: what successive runs share for trends (default: the deployment or flow name)
        refresh: recompute every step
        compare_history: compare with the baseline registry and the previous run of the series
        publish: publish the report
        fail_on: fail the flow run on step errors ("error"), also on failed gates ("regression"), or never
    """
    parameters = dict(locals())
    prep, caps = prepare(**parameters)
    log = get_run_logger()
    log.info("sweep: %d model(s) x %d scheme(s) x %d suite(s); queues %s", len(models), len(schemes), len(suites),
             {str(m.model): m.queue for m in prep.plan.models})
    if caps:
        await ensure_queue_limits(caps)
    cells = await run_and_join(prep.plan, prep.accuracy, prep.performance, refresh)
    return await finish_run(
        cells, title=prep.title, series=series, flow_name="sweep", accuracy=prep.accuracy,
        performance=prep.performance, project=prep.project, compare_history=compare_history, publish=publish,
        fail_on=fail_on, queues=prep.plan.queues, parameters=_summary(parameters),
        code=prep.plan.code, tracked=prep.plan.tracked)


def prepare(models: list[str], schemes: list[str], suites: list[str], profile: str = "chat",
            size_rules: list[SizeRule] | None = None, queue_caps: dict[str, int] | None = None,
            threshold: float = 0.95, metric_thresholds: dict[str, float] | None = None,
            suite_thresholds: dict[str, float] | None = None, compression: CompressionOptions | None = None,
            evaluation: EvaluationOptions | None = None, benchmarking: BenchmarkOptions | None = None,
            step_queues: StepQueues | None = None, confidence: float = 0.95, gated_metrics: list[str] | None = None,
            performance_rules: list[PerformanceRule] | None = None, hooks: list[str] | None = None,
            project: str | None = None, code: str | None = None, baseline_threshold: float = 0.98,
            step_limits: StepLimits | None = None, track: list[str] | None = None,
            **_: Any) -> tuple[Prepared, dict[str, int]]:
    """Validation and planning of the sweep (see compress_evaluate_benchmark.prepare); also the
    queue caps to set."""
    if not models:
        raise FlowInputError("models: give at least one model")
    refs = [model_ref(f"models[{i}]", m) for i, m in enumerate(models)]
    rules = list(size_rules or []) or settings().size_rules
    placed: list[tuple[ModelRef, str, tuple[str, ...]]] = []
    for i, ref in enumerate(refs):
        try:
            rule = queue_for(ref, rules)
        except ValueError as exc:
            raise FlowInputError(f"models[{i}]: {exc}") from None
        placed.append((ref, rule.queue, rule.escalation))
    caps = {**settings().queue_caps, **(queue_caps or {})}
    for name, cap in caps.items():
        if cap < 1:
            raise FlowInputError(f"queue_caps[{name}]: {cap} must be >= 1 (leave a queue out for no cap)")
    accuracy, performance = gate_settings(threshold, metric_thresholds or {}, suite_thresholds or {}, confidence,
                                          gated_metrics or [], performance_rules, baseline_threshold)
    project = project or settings().project
    plan = plan_matrix(placed, schemes, suites, profile, compression or CompressionOptions(),
                       evaluation or EvaluationOptions(), benchmarking or BenchmarkOptions(),
                       step_queues or StepQueues(), project, hooks or [], code=resolve_code(code),
                       limits=step_limits, tracked=resolve_tracked(track or []))
    title = f"sweep: {len(refs)} model(s) x {', '.join(schemes)}"
    return Prepared(plan, accuracy, performance, project, title), caps


def run_sync(**parameters: Any) -> Report:
    return asyncio.run(sweep(**parameters))
