"""`automation run ...`: the flows from the command line (in this process, against the Prefect API
in PREFECT_API_URL, or an ephemeral one), printing the joined report."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from automation.cli.errors import CommandGroup, console, err_console, one_line
from automation.cli.flow_options import flow_options, flow_parameters, typer_parameters


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


class _RunFailedWithoutTraceback(logging.Filter):
    """Prefect's engine logs the exception that ends a flow run with its traceback. A run that
    failed its gates is an outcome, said in one line below the report, not a crash to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        from automation.errors import RunFailed

        if record.exc_info and isinstance(record.exc_info[1], RunFailed):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_run_failures() -> None:
    # Prefect's console handler is the root logger's; its API handler (the UI's log) sits on
    # `prefect.flow_runs` and sees the record first, traceback and all.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RunFailedWithoutTraceback) for f in handler.filters):
            handler.addFilter(_RunFailedWithoutTraceback())


def _run(flow_fn: Any, prepare: Any, parameters: dict[str, Any], json_out: Path | None) -> None:
    from automation.errors import RunFailed
    from automation.prefect_api import check_prefect_api
    from automation.regression.report.console import render_console
    from automation.regression.report.format import write_json
    from automation.regression.report_model import Report

    check_prefect_api()  # an unreachable PREFECT_API_URL: one line, before any server is asked anything
    asyncio.run(_check(prepare, parameters))  # bad input: one line, by the command group
    _quiet_run_failures()  # the console's copy only: the run's log in the Prefect UI keeps the traceback
    try:
        report = asyncio.run(flow_fn(**parameters))
        code = 0
    except RunFailed as exc:  # the report is still printed
        report, code = exc.report, 1
        err_console.print(f"[red]run failed:[/red] {exc}")
    if not isinstance(report, Report):  # a recipe search
        _print_search(report, json_out)
        raise typer.Exit(code)
    console.print(render_console(report))
    if report.summary_task_url:
        console.print(f"ClearML summary task: {report.summary_task_url}")
    if report.flow_run_url:
        console.print(f"Prefect flow run: {report.flow_run_url}")
    if json_out:
        write_json(report, json_out)
        console.print(f"report JSON: {json_out}")
    raise typer.Exit(code)


def _print_search(report: Any, json_out: Path | None) -> None:
    from automation.search.report import render_markdown

    console.print(render_markdown(report), markup=False, highlight=False)
    if report.summary_task_url:
        console.print(f"ClearML summary task: {report.summary_task_url}")
    if json_out:
        json_out.write_text(report.model_dump_json(indent=2))
        console.print(f"search JSON: {json_out}")


JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")]
ObservePerf = Annotated[bool, typer.Option("--observe-performance", help="Report performance changes without "
                                           "gating on them (CPU runs, noisy hosts).")]

# The flows the command runs, by command name: module, flow. Their options come from the flow's own
# signature (flow_options.py), built when the command is asked for: `automation --help` imports no flow.
FLOWS: dict[str, tuple[str, str]] = {
    "compress-evaluate-benchmark": ("flows.compress_evaluate_benchmark", "compress_evaluate_benchmark"),
    "sweep": ("flows.sweep", "sweep"),
    "nightly-regression": ("flows.nightly", "nightly_regression"),
    "hpo": ("flows.recipe_search", "recipe_search"),
}


def flow_command(name: str) -> Any:  # typer's (vendored) click Command
    """`automation run NAME`: every parameter of the flow as an option, plus `--json` and
    `--observe-performance`; only the options given reach the flow."""
    module_name, attr = FLOWS[name]
    module = importlib.import_module(module_name)
    flow_obj = getattr(module, attr)
    fn = flow_obj.fn
    options = flow_options(fn)

    def command(**given: Any) -> None:
        from automation.regression.gates import DEFAULT_PERFORMANCE_RULES

        json_out, observe = given.pop("json_out"), given.pop("observe_performance")
        parameters = flow_parameters(fn, options, given)
        if observe:
            if "performance_rules" in parameters:
                raise typer.BadParameter("give --performance-rules or --observe-performance, not both",
                                         param_hint="--observe-performance")
            parameters["performance_rules"] = [r.model_copy(update={"gating": False})
                                               for r in DEFAULT_PERFORMANCE_RULES]
        # The flow's own defaults for the rest: its validation (prepare) sees every parameter.
        bound = inspect.signature(fn).bind_partial(**parameters)
        bound.apply_defaults()
        _run(flow_obj, module.prepare, dict(bound.arguments), json_out)

    extras = [
        inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=JsonOpt),
        inspect.Parameter("observe_performance", inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=ObservePerf),
    ]
    command.__signature__ = inspect.Signature([*typer_parameters(options), *extras])  # type: ignore[attr-defined]
    command.__doc__ = (inspect.getdoc(fn) or "").split("\n\n")[0]
    single = typer.Typer()
    single.command(name, context_settings={"help_option_names": ["-h", "--help"]})(one_line(command))
    return typer.main.get_command(single)


class FlowCommands(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        return list(FLOWS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return flow_command(cmd_name) if cmd_name in FLOWS else None


run_app = CommandGroup(cls=FlowCommands, help="Run a flow now and print its report.", no_args_is_help=True)
