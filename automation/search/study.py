"""The Optuna study behind a recipe search: storage, sampler, and the trials' records.

The study lives in an Optuna RDB storage (`sqlite:///...` by default, under the local data
directory; PostgreSQL in production: AUTOMATION_SEARCH_STORAGE or the flow's `storage`), named
after what the search is (model, recipes, space, objectives, suite, profile, options), so a search
that is started again with the same inputs continues the same study: finished trials stay
finished, and a trial left running by a crash or a cancel is run again under its own number with
its own parameters (its finished ClearML steps are found by identity and cost nothing; one still
queued or running is attached to), then told.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from automation.errors import FlowInputError
from automation.search.objectives import DIRECTIONS
from automation.search.report import TrialRecord
from automation.search.space import Param, SearchSpace

Sampler = Literal["auto", "nsga2", "tpe", "random", "grid"]
RECORD_PREFIX = "trial-"  # study user attribute per trial number: its TrialRecord JSON (tasks, values, recipe)


def default_storage() -> str:
    from automation.devstack.layout import default_data_dir

    configured = os.environ.get("AUTOMATION_SEARCH_STORAGE")
    if configured:
        return configured
    path = default_data_dir() / "studies.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def masked(storage: str) -> str:
    """The storage URL without its password (reports and logs)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def check_storage(storage: str) -> None:
    """A storage URL given as a flow parameter must not carry a password: flow parameters are
    stored by Prefect and shown in its UI. The workers' AUTOMATION_SEARCH_STORAGE may."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError:
        raise FlowInputError("storage: not a database URL (sqlite:///PATH, postgresql://user@host/db)") from None
    if url.password:
        raise FlowInputError("storage: the URL carries a password, which would be stored with the flow run's "
                             "parameters; set AUTOMATION_SEARCH_STORAGE on the workers instead (or use the "
                             "database's own credential file, e.g. ~/.pgpass)")


def study_name(inputs: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"search-{digest}"


def distributions(space: SearchSpace) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in space.params:
        if p.kind == "choice":
            out[p.name] = CategoricalDistribution(p.choices)
        elif p.kind == "int":
            assert p.low is not None and p.high is not None
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            assert p.low is not None and p.high is not None
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def make_sampler(kind: Sampler, space: SearchSpace, objectives: list[str], seed: int) -> Any:
    import optuna

    if kind == "grid":
        return _AskTellGrid(space.grid(), seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe" or (kind == "auto" and len(objectives) == 1):
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _grid_class() -> Any:
    from optuna.samplers import GridSampler

    class AskTellGrid(GridSampler):
        """Optuna's grid sampler without its stop: it ends an `optimize` loop when the grid is
        exhausted by calling `study.stop()`, which raises under ask-and-tell (there is no loop; the
        trial count is checked against the grid's size before anything runs)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGrid


def _AskTellGrid(*args: Any, **kwargs: Any) -> Any:
    return _grid_class()(*args, **kwargs)


def check_sampler(kind: Sampler, params: list[Param], trials: int) -> None:
    if kind == "grid":
        size = 1
        for p in params:
            size *= len(p.grid())
        if size < trials:
            raise FlowInputError(f"trials: the grid has {size} points; ask for at most {size} trials")


def open_study(storage: str, name: str, objectives: list[str], sampler: Any) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True, sampler=sampler,
                                    directions=[DIRECTIONS[o] for o in objectives])
    except (ValueError, ImportError) as exc:
        raise FlowInputError(f"storage: cannot open study {name!r} in {masked(storage)} ({exc})") from None
    if [d.name.lower() for d in study.directions] != [DIRECTIONS[o] for o in objectives]:
        raise FlowInputError(f"study_name: study {name!r} exists with other objectives; give another study_name")
    return study


def interrupted(study: Any) -> list[Any]:
    """Trials left RUNNING by an earlier run (a crash, a cancel): to be run again and told under
    their own numbers, so the sampler's bookkeeping (a grid's points) stays whole."""
    from optuna.trial import TrialState

    return list(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def save_record(study: Any, number: int, record: dict[str, Any]) -> None:
    study.set_user_attr(f"{RECORD_PREFIX}{number}", json.dumps(record))


def finished_count(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


_STATES: dict[str, str] = {"COMPLETE": "complete", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting",
                           "PRUNED": "pruned"}


def records(study: Any) -> list[TrialRecord]:
    """Every trial as a record (the flow stores the record on the trial when it ends)."""
    pareto = {t.number for t in study.best_trials} if any(
        t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) else set()
    out = []
    saved = study.user_attrs
    for trial in study.get_trials(deepcopy=False):
        stored = saved.get(f"{RECORD_PREFIX}{trial.number}")
        base: dict[str, Any] = json.loads(stored) if stored else {}
        base.update(number=trial.number, state=_STATES.get(trial.state.name, "failed"), params=dict(trial.params),
                    pareto=trial.number in pareto)
        out.append(TrialRecord.model_validate(base))
    return out


def best_per_objective(trials: list[TrialRecord], objectives: list[str]) -> dict[str, int]:
    out = {}
    for objective in objectives:
        done = [t for t in trials if t.state == "complete" and objective in t.values]
        if done:
            pick = max if DIRECTIONS[objective] == "maximize" else min
            out[objective] = pick(done, key=lambda t: t.values[objective]).number
    return out


def sqlite_path(storage: str) -> Path | None:
    return Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") else None
