"""The `automation` console command: one module per command group, one error -> exit path (errors.py)."""

from automation.cli.baseline import baseline_app
from automation.cli.errors import CommandGroup
from automation.cli.local import demo, local_app
from automation.cli.notify import notify_app
from automation.cli.run import run_app
from automation.cli.search import search_app
from automation.cli.task import standards_app, task_app

app = CommandGroup(help="LLM compression workflows: Prefect orchestration, ClearML execution.", no_args_is_help=True)
app.add_typer(local_app, name="local")
app.command("demo")(demo)
app.add_typer(task_app, name="task")
app.add_typer(standards_app, name="standards")
app.add_typer(baseline_app, name="baseline")
app.add_typer(run_app, name="run")
app.add_typer(search_app, name="search")
app.add_typer(notify_app, name="notify")

__all__ = ["app"]
