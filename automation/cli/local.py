"""`automation local ...` (the local stack: up, status, down) and `automation demo`."""

from __future__ import annotations

import json
import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from automation.cli.errors import CommandGroup, console, err_console
from automation.devstack.stack import PREFECT_DBS, LocalStack

# The choices of --prefect-db, spelled once (in the stack).
PrefectDb = Enum("PrefectDb", {name: name for name in PREFECT_DBS}, type=str)  # type: ignore[misc]

local_app = CommandGroup(help="The local ClearML stand-in, its agents and its data directory.",
                        no_args_is_help=True)


DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory of the local stack (default: $AUTOMATION_DATA_DIR "
                 "or ~/.local/share/llm-automation/local)."),
]


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks (stack down, task stop) still run."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


@local_app.command("up")
def local_up(
    data_dir: DataDirOpt = None,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues, one agent each "
                                                     "(default: gpu,cpu).")] = None,
    no_agents: Annotated[bool, typer.Option("--no-agents", help="Start the stand-in only.")] = False,
    allow_faults: Annotated[bool, typer.Option("--allow-faults", hidden=True)] = False,
    validate: Annotated[bool, typer.Option("--validate", hidden=True)] = False,
    no_prefect: Annotated[bool, typer.Option("--no-prefect", help="No Prefect server and no served "
                                                                  "deployments (ClearML side only).")] = False,
    prefect_db: Annotated[PrefectDb | None, typer.Option(
        "--prefect-db",
        help="Where the Prefect server keeps its data: sqlite (the default) or postgres (a PostgreSQL cluster "
             "in DIR/postgres from this machine's server binaries; Prefect's recommendation for concurrent "
             "runs). Remembered for the data directory.")] = None,
) -> None:
    """Start the stand-in, one clearml-agent per queue, a Prefect server and the served deployments;
    print the env to use them."""
    stack = LocalStack(data_dir)
    if not no_prefect:
        from automation.regression.settings import settings

        settings()  # the served nightly reads AUTOMATION_NIGHTLY_MATRIX: a malformed one fails here, not at 02:00
    report = stack.up(queues=_split(queues), allow_faults=allow_faults, validate=validate,
                      agents=not no_agents, prefect=not no_prefect,
                      prefect_db=prefect_db.value if prefect_db else None)
    env_file = shlex.quote(str(stack.data.env_file))
    for key, value in report.env.items():
        if "SECRET" in key:
            # The secret stays in DIR/env (mode 0600), never on a terminal or in a CI log. A masked
            # `export` line would make `eval "$(automation local up)"` set a wrong key, so say
            # where it is instead, as a comment that eval ignores.
            typer.echo(f"# {key} is not printed: run `source {env_file}` (it sets every variable)")
            continue
        typer.echo(f"export {key}={shlex.quote(value)}")
    what = ", ".join(report.started) or "nothing new"
    err_console.print(f"[green]started:[/green] {what}"
                      + (f"; already running: {', '.join(report.already_running)}"
                         if report.already_running else ""))
    err_console.print(f"env written to {stack.data.env_file} (source it in your shell)")
    if report.env.get("PREFECT_UI_URL"):
        err_console.print(f"Prefect UI (deployments served from this stack): {report.env['PREFECT_UI_URL']}")


@local_app.command("status")
def local_status(
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """What runs, on which ports, with which queues, agents and task counts."""
    status = LocalStack(data_dir).status()
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    if not status.get("configured"):
        console.print(f"no local stack in {status['data_dir']} (run `automation local up`)")
        raise typer.Exit(1)
    server = status["server"]
    table = Table(title=f"local stack in {status['data_dir']}")
    table.add_column("component")
    table.add_column("state")
    table.add_column("detail")
    state = "[green]running[/green]" if server["running"] else "[red]stopped[/red]"
    table.add_row("stand-in", state, f"api {server['api']}  files {server['files']}  web {server['web']}")
    for queue, agent in status["agents"].items():
        astate = "[green]running[/green]" if agent["running"] else "[red]stopped[/red]"
        table.add_row(f"agent {queue}", astate, f"pid {agent['pid']}" if agent["pid"] else "")
    if "prefect" in status:
        pf = status["prefect"]
        pstate = "[green]running[/green]" if pf["running"] else "[red]stopped[/red]"
        table.add_row("prefect server", pstate, f"ui {pf['ui']}  home {pf['home']}  db {pf.get('db', 'sqlite')}")
        if "postgres" in pf:
            pg = pf["postgres"]
            table.add_row("postgres", "[green]running[/green]" if pg["running"] else "[red]stopped[/red]",
                          f"port {pg['port']}" + (f"  pid {pg['pid']}" if pg["pid"] else ""))
        sstate = "[green]running[/green]" if pf["serve"]["running"] else "[red]stopped[/red]"
        table.add_row("deployments served", sstate, f"pid {pf['serve']['pid']}" if pf["serve"]["pid"] else "")
    for q in status.get("queues", []):
        table.add_row(f"queue {q['name']}", "", f"{q['queued']} queued")
    if "tasks" in status:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(status["tasks"].items())) or "none"
        table.add_row("tasks", "", counts)
    if "workers" in status:
        table.add_row("workers", "", ", ".join(status["workers"]) or "none registered")
    if "api_error" in status:
        table.add_row("api", "[red]error[/red]", status["api_error"])
    console.print(table)


def demo(
    data_dir: DataDirOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every step instead of reusing finished work.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the stack running afterwards (ClearML pages, Prefect "
                                                      "UI); `automation local down` stops it.")] = False,
) -> None:
    """The main job: compress -> evaluate -> benchmark the tiny model on the local stack (brought
    up for the run unless it already runs), with gates and the joined report."""
    from automation.devstack.demo import run_demo

    _exit_on_sigterm()
    outcome = run_demo(data_dir, json_out=json_out, refresh=refresh, keep=keep)
    report = outcome.report
    dir_opt = f" --data-dir {shlex.quote(str(outcome.data_dir))}"
    console.print(f"\ndemo finished in {outcome.wall_s:.0f} s: report outcome [bold]{report.get('outcome', '?')}"
                  f"[/bold] over {len(report.get('cells', []))} cells")
    if outcome.running:
        console.print("where to see it (the stack is running):")
    else:
        console.print(f"where to see it: the stack is stopped; `automation local up{dir_opt}` brings it back with "
                      "this run, then:")
    if report.get("flow_run_url"):
        console.print(f"  Prefect flow run: {report['flow_run_url']}")
    elif outcome.prefect_ui_url:
        console.print(f"  Prefect UI: {outcome.prefect_ui_url}")
    if report.get("summary_task_url"):
        console.print(f"  ClearML summary task: {report['summary_task_url']}")
    console.print(f"  ClearML pages: {outcome.web_url or 'see automation local status'}")
    if json_out:
        console.print(f"  report JSON: {json_out}")
    if outcome.running:
        console.print(f"stop it with `automation local down{dir_opt}`")
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


@local_app.command("down")
def local_down(data_dir: DataDirOpt = None) -> None:
    """Stop exactly what `up` started (served deployments and their runs, agents and their task
    processes, the Prefect server, the stand-in)."""
    stopped = LocalStack(data_dir).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")

