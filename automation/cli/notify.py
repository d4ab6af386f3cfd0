"""`automation notify ...`: webhook notifications on failed runs and on regressions (Prefect automations).

    automation notify setup --webhook URL [--name NAME] [--on-failure/--no-on-failure]
                            [--on-regression/--no-on-regression]
    automation notify status [--name NAME] [--json]
    automation notify test [--name NAME] [--message TEXT]
    automation notify remove [--name NAME]

Everything is created on the Prefect server PREFECT_API_URL names (with the local stack: `source
DIR/env`); that server's automation services send the messages. The webhook gets a Slack-compatible
`{"text": ...}` POST. Every failure is one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from automation.cli.errors import CommandGroup, console, err_console
from automation.errors import AutomationError

notify_app = CommandGroup(help="Webhook notifications (Slack-compatible) on failed runs and regressions.",
                         no_args_is_help=True)
T = TypeVar("T")

NameOpt = Annotated[str, typer.Option("--name", help="Name of the webhook block; the automations are "
                                                      "NAME-flow-run-failed and NAME-regression.")]


@notify_app.callback()
def _notify() -> None:
    """Webhook notifications (Slack-compatible) on failed runs and regressions."""


def _run(work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except AutomationError:
        raise  # one line, by the command group
    except Exception as exc:  # unreachable Prefect server, refused request, bad webhook...
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc


def _print_state(state: Any) -> None:
    table = Table(title=f"notifications '{state.name}' on {state.api_url}")
    table.add_column("what")
    table.add_column("Prefect object")
    table.add_column("state")
    table.add_row("webhook block", f"custom-webhook/{state.name}",
                  "[green]saved[/green]" if state.block_id else "[red]missing[/red]")
    for kind, label in (("failure", "failed/crashed runs"), ("regression", "regressions")):
        found = state.automations.get(kind)
        if found:
            enabled = "[green]enabled[/green]" if found["enabled"] else "[yellow]paused[/yellow]"
            table.add_row(label, found["name"], enabled)
        else:
            table.add_row(label, "(no automation)", "off")
    console.print(table)


@notify_app.command("setup")
def setup(
    webhook: Annotated[str, typer.Option("--webhook", help="Webhook URL (a Slack incoming webhook or any "
                                                           "endpoint taking a JSON {\"text\": ...} POST).")],
    name: NameOpt = "llm-automation",
    on_failure: Annotated[bool, typer.Option("--on-failure/--no-on-failure",
                                             help="Notify when a flow run fails or crashes.")] = True,
    on_regression: Annotated[bool, typer.Option("--on-regression/--no-on-regression",
                                                help="Notify when a report's gates detect a regression.")] = True,
) -> None:
    """Create or update the webhook block and the automations (idempotent)."""
    from flows.notifications import setup_notifications

    state = _run(setup_notifications(webhook, name=name, on_failure=on_failure, on_regression=on_regression))
    _print_state(state)


@notify_app.command("status")
def status(
    name: NameOpt = "llm-automation",
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Whether the block and the automations exist (and are enabled)."""
    from flows.notifications import notification_status

    state = _run(notification_status(name))
    if as_json:
        typer.echo(json.dumps(state.as_dict(), indent=2))
    else:
        _print_state(state)
    if not state.block_id:
        raise typer.Exit(1)


@notify_app.command("test")
def send_test_message(
    name: NameOpt = "llm-automation",
    message: Annotated[str, typer.Option("--message", help="Text to send.")] = "Test notification from "
                                                                                "llm-automation",
) -> None:
    """Send one message through the saved webhook block."""
    from flows.notifications import send_test

    _run(send_test(name, message))
    console.print("sent")


@notify_app.command("remove")
def remove(name: NameOpt = "llm-automation") -> None:
    """Delete the automations and the webhook block."""
    from flows.notifications import remove_notifications

    removed = _run(remove_notifications(name))
    console.print(f"removed: {', '.join(removed) if removed else 'nothing was set up'}")
