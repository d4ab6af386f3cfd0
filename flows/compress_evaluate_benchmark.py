"""`compress_evaluate_benchmark`: one model, a list of schemes -> gates -> the joined report.

    report = await compress_evaluate_benchmark(model="hf:org/model", schemes=["w4a16", "fp8_dynamic"])
    report = run_sync(model=..., schemes=[...])                       # from plain Python
    automation run compress-evaluate-benchmark --model ... --schemes w4a16,fp8_dynamic

The base model's evaluation and benchmark start at once, next to the compressions; each scheme's
evaluation and benchmark start when its compression is done; gates, baselines and the report
close the run. Every parameter is top level or a small model, so deployment overrides (shallow
per top-level parameter) replace exactly what they name.

No `from __future__ import annotations` in flow modules: `flow.serve()` pickles the flow by value,
and string annotations would lose the parameter models in the serving process.
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel

from automation.errors import FlowInputError
from automation.regression.code_pin import resolve_code
from automation.regression.gates import AccuracyGateSettings, PerformanceGateSettings, PerformanceRule
from automation.regression.plan import (
    BenchmarkOptions,
    CompressionOptions,
    EvaluationOptions,
    Plan,
    StepLimits,
    StepQueues,
    plan_matrix,
)
from automation.regression.report_model import Report
from automation.regression.settings import settings
from automation.regression.tracking import resolve_tracked
from automation.specs.model_ref import ModelRef
from flows.bridge import BRIDGE_FLOW_HOOKS
from flows.run import finish_run, run_and_join

FailOn = Literal["error", "regression", "never"]


def model_ref(field: str, text: str) -> ModelRef:
    try:
        return ModelRef.model_validate(text)
    except ValueError as exc:
        raise FlowInputError(f"{field}: {exc}".replace("\n", " ")) from None


def gate_settings(threshold: float, metric_thresholds: dict[str, float], suite_thresholds: dict[str, float],
                  confidence: float, gated_metrics: list[str],
                  performance_rules: list[PerformanceRule] | None, baseline_threshold: float = 0.98,
                  ) -> tuple[AccuracyGateSettings, PerformanceGateSettings]:
    try:
        accuracy = AccuracyGateSettings(threshold=threshold, per_metric=metric_thresholds, per_suite=suite_thresholds,
                                        confidence=confidence, metrics=tuple(gated_metrics),
                                        baseline_threshold=baseline_threshold)
    except ValueError as exc:
        raise FlowInputError(f"threshold / metric_thresholds / baseline_threshold: {exc}".replace("\n", " ")) \
            from None
    performance = PerformanceGateSettings(rules=tuple(performance_rules)) if performance_rules \
        else PerformanceGateSettings()
    return accuracy, performance


@flow(name="compress-evaluate-benchmark", log_prints=True, **BRIDGE_FLOW_HOOKS)
async def compress_evaluate_benchmark(
    model: str,
    schemes: list[str] = ["w4a16", "fp8_dynamic"],
    suite: str = "openllm",
    profile: str = "chat",
    queue: str = "gpu",
    threshold: float = 0.95,
    metric_thresholds: dict[str, float] = {},
    compression: CompressionOptions = CompressionOptions(),
    evaluation: EvaluationOptions = EvaluationOptions(),
    benchmarking: BenchmarkOptions = BenchmarkOptions(),
    step_queues: StepQueues = StepQueues(),
    step_limits: StepLimits = StepLimits(),
    queue_escalation: list[str] = [],
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
    """Compress one model with each scheme, evaluate and benchmark the base and every compressed
    model, gate recovery and performance against the base, and publish one joined report.

    Args:
        model: the model: hf:org/name[@revision], a local path, or clearml:MODEL_ID
        schemes: compression schemes (standard recipes: w4a16, w8a8, fp8_dynamic; or a recipe file)
        suite: evaluation suite (openllm, leaderboard, tiny, or a file)
        profile: GuideLLM workload profile (chat, rag, summarization, code_completion, long_context, smoke)
        queue: ClearML queue for every step (see step_queues to split)
        threshold: minimum recovery (compressed / base) per metric, in (0, 1]
        metric_thresholds: threshold per metric name (fnmatch patterns allowed)
        compression: calibration data and recipe arguments
        evaluation: lm-eval options (limit, batch size, few-shot)
        benchmarking: inference server options
        step_queues: a queue per step (compress / evaluate / benchmark); empty = `queue`
        step_limits: longest queue wait and run per step in seconds; empty = the kind's default
        queue_escalation: queues to retry on after an out-of-memory failure, in order
        confidence: confidence of the noise interval of the recovery gates
        baseline_threshold: minimum ratio of a value to the same cell's accepted run (compare_history)
        gated_metrics: metrics that gate (fnmatch patterns); empty = every metric both runs report
        performance_rules: performance gate rules; empty = the defaults (throughput, median TTFT/ITL gate)
        hooks: submit hooks by name, e.g. hf_token, server_arg:--max-model-len=4096
        project: ClearML project (default: settings)
        code: what the agents run: URL@COMMIT, URL@BRANCH (pinned to its commit now), or worktree
        track: libraries to follow, resolved now (name @ git+URL@BRANCH, name>=X): replace the kinds' pins
        series: what successive runs share for trends (default: the deployment or flow name)
        refresh: recompute every step even when finished work with the same identity exists
        compare_history: compare with the baseline registry and the previous run of the series
        publish: publish the report (Prefect artifacts and a ClearML summary task)
        fail_on: fail the flow run on step errors ("error"), also on failed gates ("regression"), or never
    """
    parameters = dict(locals())
    prep = prepare(**parameters)
    log = get_run_logger()
    log.info("plan: %s x %s on %s / %s", model, schemes, suite, profile)
    cells = await run_and_join(prep.plan, prep.accuracy, prep.performance, refresh)
    return await finish_run(
        cells, title=prep.title, series=series, flow_name="compress-evaluate-benchmark", accuracy=prep.accuracy,
        performance=prep.performance, project=prep.project, compare_history=compare_history, publish=publish,
        fail_on=fail_on, parameters=_summary(parameters), code=prep.plan.code, tracked=prep.plan.tracked)


@dataclass
class Prepared:
    """Everything validated before anything is queued."""

    plan: Plan
    accuracy: AccuracyGateSettings
    performance: PerformanceGateSettings
    project: str
    title: str


def prepare(model: str, schemes: list[str], suite: str = "openllm", profile: str = "chat", queue: str = "gpu",
            threshold: float = 0.95, metric_thresholds: dict[str, float] | None = None,
            compression: CompressionOptions | None = None, evaluation: EvaluationOptions | None = None,
            benchmarking: BenchmarkOptions | None = None, step_queues: StepQueues | None = None,
            queue_escalation: list[str] | None = None, confidence: float = 0.95, gated_metrics: list[str] | None = None,
            performance_rules: list[PerformanceRule] | None = None, hooks: list[str] | None = None,
            project: str | None = None, code: str | None = None, baseline_threshold: float = 0.98,
            step_limits: StepLimits | None = None, track: list[str] | None = None, **_: Any) -> Prepared:
    """The flow's validation and planning, callable on its own (the CLI checks input this way
    before a flow run exists, so bad input never shows up as a failed run)."""
    ref = model_ref("model", model)
    accuracy, performance = gate_settings(threshold, metric_thresholds or {}, {}, confidence, gated_metrics or [],
                                          performance_rules, baseline_threshold)
    project = project or settings().project
    plan = plan_matrix([(ref, queue, tuple(queue_escalation or ()))], schemes, [suite], profile,
                       compression or CompressionOptions(), evaluation or EvaluationOptions(),
                       benchmarking or BenchmarkOptions(), step_queues or StepQueues(), project, hooks or [],
                       code=resolve_code(code), limits=step_limits, tracked=resolve_tracked(track or []))
    return Prepared(plan, accuracy, performance, project, f"{ref.short_name()}: {', '.join(schemes)}")


def _summary(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON for the report (pydantic models dumped)."""
    return {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else
            [x.model_dump(mode="json") if isinstance(x, BaseModel) else x for x in v] if isinstance(v, list) else v
            for k, v in parameters.items()}


def run_sync(**parameters: Any) -> Report:
    """The flow from synchronous code (scripts, notebooks without a running loop)."""
    return asyncio.run(compress_evaluate_benchmark(**parameters))
