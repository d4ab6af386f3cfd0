"""`automation search ...`: a recipe search's study, read back from its storage.

    automation run hpo --model ./tiny --trials 3 --suite tiny --queue cpu --json out.json
    automation search show --study search-1a2b3c4d5e6f [--storage URL] [--json]
    automation search promote --study search-1a2b3c4d5e6f --trial 2 --name w4a16_tuned [--out DIR]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from automation.cli.errors import CommandGroup, console
from automation.errors import FlowInputError
from automation.search.report import TrialRecord

search_app = CommandGroup(help="Recipe searches: show a study, promote a trial's recipe.", no_args_is_help=True)

StudyOpt = Annotated[str, typer.Option("--study", help="the study name (in the search's report)")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna storage URL; default: "
                                                "AUTOMATION_SEARCH_STORAGE or the data directory's studies.db")]


@search_app.callback()
def _search() -> None:
    """Recipe searches: show a study, promote a trial's recipe."""


def _trials(study_name: str, storage: str | None) -> list[TrialRecord]:
    import optuna

    from automation.search import study as studies

    url = storage or studies.default_storage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except KeyError:
        raise FlowInputError(f"study: no study {study_name!r} in {studies.masked(url)}") from None
    return studies.records(study)


@search_app.command("show")
def search_show(study: StudyOpt, storage: StorageOpt = None,
                as_json: Annotated[bool, typer.Option("--json", help="Print the trials as JSON.")] = False) -> None:
    """Every trial of a study: parameters, objective values, Pareto membership, tasks."""
    trials = _trials(study, storage)
    if as_json:
        typer.echo(json.dumps([t.model_dump(mode="json") for t in trials], indent=2))
        return
    from rich.table import Table

    table = Table(title=f"study {study}")
    for col in ("trial", "state", "recipe", "parameters", "objectives", "Pareto"):
        table.add_column(col)
    for t in trials:
        table.add_row(str(t.number), t.state, t.recipe or "-", ", ".join(f"{k}={v}" for k, v in t.params.items()),
                      ", ".join(f"{k}={v:.4g}" for k, v in t.values.items()) or (t.error or "-"),
                      "yes" if t.pareto else "")
    console.print(table)


@search_app.command("promote")
def search_promote(
    study: StudyOpt,
    trial: Annotated[int, typer.Option("--trial", help="the trial number")],
    name: Annotated[str, typer.Option("--name", help="name of the new recipe (its file is NAME.yaml)")],
    storage: StorageOpt = None,
    out: Annotated[Path, typer.Option("--out", help="directory to write NAME.yaml into")] = Path("."),
) -> None:
    """Write a trial's recipe (the searched recipe, the trial's arguments as defaults) as a recipe file."""
    from automation.search.promote import promote

    found = [t for t in _trials(study, storage) if t.number == trial]
    if not found:
        raise FlowInputError(f"trial: study {study!r} has no trial {trial}")
    path = promote(found[0], study, name, out)
    console.print(f"recipe {name}: {path}  (use it as --recipe {path})")
