"""`nightly_regression`: the sweep the nightly schedule runs, failing the run on a regression.

A sweep (flows/sweep.py: same validation, planning, queues by model size, caps, reuse) over the
configured matrix: the flow's `models` / `schemes` / `suites` / `profile` parameters, or where they
are left empty, settings `AUTOMATION_NIGHTLY_MATRIX`. Every night is one report of the series
`nightly`, so the report compares each cell with the previous night and with the accepted
baselines of the registry, and the run fails when a gate fails (`fail_on="regression"`): that is
what a Failed-run notification reports in the morning.
"""

import asyncio
from typing import Any

from prefect import flow, get_run_logger

from automation.errors import FlowInputError
from automation.regression.gates import PerformanceRule
from automation.regression.plan import BenchmarkOptions, CompressionOptions, EvaluationOptions, StepLimits, StepQueues
from automation.regression.report_model import Report
from automation.regression.settings import SizeRule, settings
from flows.bridge import BRIDGE_FLOW_HOOKS, ensure_queue_limits
from flows.compress_evaluate_benchmark import FailOn, Prepared, _summary
from flows.run import finish_run, run_and_join
from flows.sweep import prepare as prepare_sweep

NIGHTLY_SERIES = "nightly"


@flow(name="nightly-regression", log_prints=True, **BRIDGE_FLOW_HOOKS)
async def nightly_regression(
    models: list[str] = [],
    schemes: list[str] = [],
    suites: list[str] = [],
    profile: str | None = None,
    threshold: float = 0.95,
    metric_thresholds: dict[str, float] = {},
    suite_thresholds: dict[str, float] = {},
    confidence: float = 0.95,
    baseline_threshold: float = 0.98,
    gated_metrics: list[str] = [],
    performance_rules: list[PerformanceRule] | None = None,
    compression: CompressionOptions = CompressionOptions(),
    evaluation: EvaluationOptions = EvaluationOptions(),
    benchmarking: BenchmarkOptions = BenchmarkOptions(),
    step_queues: StepQueues = StepQueues(),
    step_limits: StepLimits = StepLimits(),
    size_rules: list[SizeRule] = [],
    queue_caps: dict[str, int] = {},
    hooks: list[str] = [],
    project: str | None = None,
    code: str | None = None,
    track: list[str] = [],
    series: str = NIGHTLY_SERIES,
    refresh: bool = False,
    publish: bool = True,
    fail_on: FailOn = "regression",
) -> Report:
    """Sweep the nightly matrix, compare every cell with the accepted baseline and the previous
    night, publish the report, and fail the run on a regression.

    Args:
        models: models to sweep; empty = settings AUTOMATION_NIGHTLY_MATRIX
        schemes: compression schemes; empty = the configured matrix
        suites: evaluation suites; empty = the configured matrix
        profile: GuideLLM workload profile; empty = the configured matrix
        threshold: minimum recovery per metric, in (0, 1]
        metric_thresholds: threshold per metric name (fnmatch patterns allowed)
        suite_thresholds: threshold per suite
        confidence: confidence of the noise interval of the recovery gates
        baseline_threshold: minimum ratio of a value to the same cell's accepted run (compare_history)
        gated_metrics: metrics that gate (fnmatch patterns); empty = all
        performance_rules: performance gate rules; empty = the defaults
        compression: calibration data and recipe arguments
        evaluation: lm-eval options
        benchmarking: inference server options
        step_queues: a fixed queue per step instead of the size rule
        step_limits: longest queue wait and run per step in seconds; empty = the kind's default
        size_rules: queue by model size (billions of parameters); empty = settings AUTOMATION_SIZE_RULES
        queue_caps: most concurrent ClearML tasks per queue (Prefect global concurrency limits)
        hooks: submit hooks by name
        project: ClearML project (default: settings)
        code: what the agents run: URL@COMMIT, URL@BRANCH (pinned to its commit now), or worktree
        track: libraries to follow, resolved now (name @ git+URL@BRANCH, name>=X): replace the kinds' pins
        series: what successive nights share for trends (keep "nightly" to compare night to night)
        refresh: recompute every step (by default unchanged cells are reused)
        publish: publish the report
        fail_on: "regression" (default: failed gates fail the run), "error", or "never"
    """
    parameters = with_matrix(dict(locals()))
    prep, caps = prepare(**parameters)
    get_run_logger().info("nightly: %s x %s on %s / %s (series %r)", parameters["models"], parameters["schemes"],
                          parameters["suites"], parameters["profile"], series)
    if caps:
        await ensure_queue_limits(caps)
    cells = await run_and_join(prep.plan, prep.accuracy, prep.performance, refresh)
    return await finish_run(
        cells, title=f"nightly regression: {prep.title.removeprefix('sweep: ')}", series=series,
        flow_name="nightly-regression", accuracy=prep.accuracy, performance=prep.performance, project=prep.project,
        compare_history=True, publish=publish, fail_on=fail_on, queues=prep.plan.queues,
        parameters=_summary(parameters), code=prep.plan.code, tracked=prep.plan.tracked)


def with_matrix(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters with the configured matrix where models / schemes / suites / profile are empty."""
    matrix = settings().nightly_matrix
    out = {**parameters, "models": parameters.get("models") or matrix.models,
           "schemes": parameters.get("schemes") or matrix.schemes, "suites": parameters.get("suites") or matrix.suites,
           "profile": parameters.get("profile") or matrix.profile}
    if not out["models"]:
        raise FlowInputError("models: none given and settings AUTOMATION_NIGHTLY_MATRIX lists none")
    return out


def prepare(**parameters: Any) -> tuple[Prepared, dict[str, int]]:
    """The nightly's validation and planning (the sweep's, over the configured matrix), callable on
    its own: `automation run nightly-regression` checks input this way before a flow run exists."""
    return prepare_sweep(**with_matrix(parameters))


def run_sync(**parameters: Any) -> Report:
    return asyncio.run(nightly_regression(**parameters))
