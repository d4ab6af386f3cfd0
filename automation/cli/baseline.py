"""`automation baseline ...`: the baseline registry (accepted runs), kept in ClearML.

    automation baseline list [--series S] [--accepted] [--json]
    automation baseline show REPORT_ID [--json]
    automation baseline promote RUN [--by NAME] [--note TEXT] [--cell KEY ...] [--force]

RUN is a report id (the ClearML summary task id) or the Prefect flow-run id that produced it. The
server comes from CLEARML_* variables or clearml.conf (with the local stack: `source DIR/env`).
Every failure is one line on stderr and an exit code (automation/cli/errors.py), never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from automation.clearml.client import ClearMLBackend
from automation.cli.errors import CommandGroup, console

baseline_app = CommandGroup(help="Accepted runs (baselines): list and show reports, promote a run.",
                           no_args_is_help=True)
T = TypeVar("T")
CLI_RETRY_S = 10.0  # a person is waiting: give up on a hung server quickly


@baseline_app.callback()
def _baseline() -> None:
    """Accepted runs (baselines): list and show reports, promote a run."""


def _default_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return ""


def _run(work: Callable[[ClearMLBackend], Awaitable[T]]) -> T:
    """Run one registry operation against the configured server; errors become one stderr line."""
    async def go() -> T:
        client = ClearMLBackend(retry_for_s=CLI_RETRY_S)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


@baseline_app.command("list")
def list_reports(
    series: Annotated[str | None, typer.Option(help="Only reports of this series.")] = None,
    accepted: Annotated[bool, typer.Option("--accepted", help="Only accepted runs (baselines).")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Published reports, newest first."""
    from automation.regression.baselines import find_reports

    refs = _run(lambda c: find_reports(c, series=series, accepted=True if accepted else None, limit=limit))
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in refs], indent=2))
        return
    if not refs:
        console.print("no reports" + (f" in series {series}" if series else "") + (" accepted" if accepted else ""))
        return
    table = Table(title="reports", title_justify="left")
    table.add_column("report id", no_wrap=True, min_width=32)  # ids are what the user copies
    for header in ("created", "series", "title", "outcome", "accepted"):
        table.add_column(header, overflow="fold")
    table.add_column("link", overflow="fold")
    for ref in refs:
        created = f"{ref.created:%Y-%m-%d %H:%M}" if ref.created else "-"
        acc = f"by {ref.promoted_by} {ref.promoted_at:%Y-%m-%d}" if ref.accepted and ref.promoted_at else \
            ("yes" if ref.accepted else "")
        table.add_row(ref.report_id, created, ref.series, ref.title, ref.outcome.upper(), acc, ref.web_url)
    console.print(table)


@baseline_app.command("show")
def show(
    report_id: Annotated[str, typer.Argument(help="Report id (ClearML summary task id) or Prefect flow-run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """One report: the joined accuracy x performance table and every gate decision."""
    from automation.regression.baselines import resolve
    from automation.regression.report.console import render_console

    ref, report = _run(lambda c: resolve(c, report_id))
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    console.print(render_console(report))
    if ref.accepted:
        console.print(f"accepted by {ref.promoted_by or '?'} at {ref.promoted_at or '?'}"
                      + (f": {ref.note}" if ref.note else "") + f" ({len(ref.accepted_cells)} cells)")
    else:
        console.print("not accepted (promote with `automation baseline promote "
                      f"{ref.report_id}`)")


@baseline_app.command("promote")
def promote(
    run: Annotated[str, typer.Argument(help="Report id (ClearML summary task id) or Prefect flow-run id.")],
    by: Annotated[str, typer.Option("--by", help="Who accepts the run (default: $USER).")] = "",
    note: Annotated[str, typer.Option("--note", help="Why it is accepted.")] = "",
    cell: Annotated[list[str] | None, typer.Option("--cell", help="Accept only this cell key "
                                                   "(model|scheme|suite|profile); repeatable.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Accept even an errored run or failed cells.")] = False,
) -> None:
    """Accept a run as the baseline of its cells (tag `baseline` on its ClearML summary task)."""
    from automation.regression.baselines import promote as do_promote

    who = by or _default_user()
    ref = _run(lambda c: do_promote(c, run, by=who, note=note, cells=cell or None, force=force))
    console.print(f"accepted report {ref.report_id} ({ref.title}, series {ref.series}) as baseline of "
                  f"{len(ref.accepted_cells)} cells, by {ref.promoted_by}: {ref.web_url}", highlight=False)
