"""`automation run ...`: the flows from the command line (in this process, against the Prefect API
in PREFECT_API_URL, or an ephemeral one), printing the joined report."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from automation.cli.errors import CommandGroup, console, err_console

run_app = CommandGroup(help="Run a flow now and print its report.", no_args_is_help=True)

JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")]


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _thresholds(values: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in values:
        name, sep, number = item.rpartition("=")
        if not sep or not name:
            raise typer.BadParameter(f"'{item}': write METRIC=THRESHOLD, e.g. tiny_mc/acc=0.9",
                                     param_hint="--metric-threshold")
        try:
            out[name] = float(number)
        except ValueError:
            raise typer.BadParameter(f"'{item}': {number!r} is not a number", param_hint="--metric-threshold") from None
    return out


def _common(suite_or_suites: dict[str, Any], profile: str, threshold: float, metric_threshold: list[str],
            calibration: str | None, num_samples: int, max_seq_length: int, limit: float | None,
            compress_queue: str | None, evaluate_queue: str | None, benchmark_queue: str | None,
            hooks: str | None, project: str | None, series: str | None, refresh: bool, publish: bool,
            fail_on: str, observe_performance: bool) -> dict[str, Any]:
    from automation.regression.gates import DEFAULT_PERFORMANCE_RULES
    from automation.regression.plan import CompressionOptions, EvaluationOptions, StepQueues

    calib = None if (calibration or "").lower() in ("", "none") else calibration
    return {
        **suite_or_suites, "profile": profile, "threshold": threshold,
        "metric_thresholds": _thresholds(metric_threshold),
        "compression": CompressionOptions(calibration=calib, num_samples=num_samples, max_seq_length=max_seq_length),
        "evaluation": EvaluationOptions(limit=limit),
        "step_queues": StepQueues(compress=compress_queue, evaluate=evaluate_queue, benchmark=benchmark_queue),
        "hooks": _csv(hooks), "project": project, "series": series, "refresh": refresh, "publish": publish,
        "fail_on": fail_on,
        "performance_rules": [r.model_copy(update={"gating": False}) for r in DEFAULT_PERFORMANCE_RULES]
        if observe_performance else None,
    }


async def _check(prepare: Any, parameters: dict[str, Any]) -> None:
    """The flow's own validation and server checks (queues, models), before a flow run exists."""
    from flows.bridge import backend
    from flows.run import finalize

    prepared = prepare(**parameters)
    plan = prepared[0].plan if isinstance(prepared, tuple) else prepared.plan
    try:
        await finalize(plan)
    finally:
        await backend().aclose()


def _run(flow_fn: Any, prepare: Any, parameters: dict[str, Any], json_out: Path | None) -> None:
    from automation.errors import RunFailed
    from automation.regression.report.console import render_console
    from automation.regression.report.format import write_json

    asyncio.run(_check(prepare, parameters))  # bad input: one line, by the command group
    try:
        report = asyncio.run(flow_fn(**parameters))
        code = 0
    except RunFailed as exc:  # the report is still printed
        report, code = exc.report, 1
        err_console.print(f"[red]run failed:[/red] {exc}")
    console.print(render_console(report))
    if report.summary_task_url:
        console.print(f"ClearML summary task: {report.summary_task_url}")
    if report.flow_run_url:
        console.print(f"Prefect flow run: {report.flow_run_url}")
    if json_out:
        write_json(report, json_out)
        console.print(f"report JSON: {json_out}")
    raise typer.Exit(code)


Profile = Annotated[str, typer.Option(help="GuideLLM workload profile.")]
Threshold = Annotated[float, typer.Option(help="Minimum recovery per metric, in (0, 1].")]
MetricThreshold = Annotated[list[str], typer.Option("--metric-threshold", help="METRIC=THRESHOLD (repeatable).")]
Calibration = Annotated[str | None, typer.Option(help="Calibration dataset ('tiny' built in; 'none').")]
Limit = Annotated[float | None, typer.Option(help="lm-eval samples per task (smoke runs).")]
StepQueue = Annotated[str | None, typer.Option(help="Queue for this step (default: the model's queue).")]
Hooks = Annotated[str | None, typer.Option(help="Comma-separated submit hooks, e.g. hf_token.")]
FailOnOpt = Annotated[str, typer.Option(help="error | regression | never: what fails the run.")]
ObservePerf = Annotated[bool, typer.Option("--observe-performance", help="Report performance changes without "
                                           "gating on them (CPU runs, noisy hosts).")]


@run_app.command("compress-evaluate-benchmark")
def run_ceb(
    model: Annotated[str, typer.Option(help="hf:org/name[@rev], a local path, or clearml:<model id>.")],
    schemes: Annotated[str, typer.Option(help="Comma-separated schemes.")] = "w4a16,fp8_dynamic",
    suite: Annotated[str, typer.Option(help="Evaluation suite.")] = "openllm",
    profile: Profile = "chat",
    queue: Annotated[str, typer.Option(help="ClearML queue for every step.")] = "gpu",
    threshold: Threshold = 0.95,
    metric_threshold: MetricThreshold = [],
    calibration: Calibration = "open_platypus",
    num_samples: Annotated[int, typer.Option(help="Calibration samples.")] = 512,
    max_seq_length: Annotated[int, typer.Option(help="Calibration sequence length.")] = 2048,
    limit: Limit = None,
    compress_queue: StepQueue = None,
    evaluate_queue: StepQueue = None,
    benchmark_queue: StepQueue = None,
    hooks: Hooks = None,
    project: Annotated[str | None, typer.Option(help="ClearML project.")] = None,
    series: Annotated[str | None, typer.Option(help="Series for trends.")] = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every step.")] = False,
    publish: Annotated[bool, typer.Option(help="Publish the report (Prefect + ClearML).")] = True,
    fail_on: FailOnOpt = "error",
    observe_performance: ObservePerf = False,
    json_out: JsonOpt = None,
) -> None:
    """One model x schemes: compress, evaluate, benchmark, gate, report."""
    from flows.compress_evaluate_benchmark import compress_evaluate_benchmark, prepare

    params = _common({"suite": suite}, profile, threshold, metric_threshold, calibration, num_samples,
                     max_seq_length, limit, compress_queue, evaluate_queue, benchmark_queue, hooks, project, series,
                     refresh, publish, fail_on, observe_performance)
    _run(compress_evaluate_benchmark, prepare, {"model": model, "schemes": _csv(schemes), "queue": queue, **params},
         json_out)


@run_app.command("sweep")
def run_sweep(
    models: Annotated[str, typer.Option(help="Comma-separated models.")],
    schemes: Annotated[str, typer.Option(help="Comma-separated schemes.")] = "w4a16,fp8_dynamic",
    suites: Annotated[str, typer.Option(help="Comma-separated suites.")] = "openllm",
    profile: Profile = "chat",
    queue_cap: Annotated[list[str], typer.Option("--queue-cap", help="QUEUE=N (repeatable).")] = [],
    threshold: Threshold = 0.95,
    metric_threshold: MetricThreshold = [],
    calibration: Calibration = "open_platypus",
    num_samples: Annotated[int, typer.Option(help="Calibration samples.")] = 512,
    max_seq_length: Annotated[int, typer.Option(help="Calibration sequence length.")] = 2048,
    limit: Limit = None,
    compress_queue: StepQueue = None,
    evaluate_queue: StepQueue = None,
    benchmark_queue: StepQueue = None,
    hooks: Hooks = None,
    project: Annotated[str | None, typer.Option(help="ClearML project.")] = None,
    series: Annotated[str | None, typer.Option(help="Series for trends.")] = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every step.")] = False,
    publish: Annotated[bool, typer.Option(help="Publish the report (Prefect + ClearML).")] = True,
    fail_on: FailOnOpt = "error",
    observe_performance: ObservePerf = False,
    json_out: JsonOpt = None,
) -> None:
    """Models x schemes x suites, queue per model size, one joined report."""
    from flows.sweep import prepare, sweep

    caps: dict[str, int] = {}
    for item in queue_cap:
        name, sep, number = item.partition("=")
        if not sep or not number.strip().isdigit():
            raise typer.BadParameter(f"'{item}': write QUEUE=N", param_hint="--queue-cap")
        caps[name.strip()] = int(number)
    params = _common({"suites": _csv(suites)}, profile, threshold, metric_threshold, calibration, num_samples,
                     max_seq_length, limit, compress_queue, evaluate_queue, benchmark_queue, hooks, project, series,
                     refresh, publish, fail_on, observe_performance)
    _run(sweep, prepare, {"models": _csv(models), "schemes": _csv(schemes), "queue_caps": caps, **params}, json_out)

