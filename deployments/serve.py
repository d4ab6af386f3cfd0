"""The product's deployments, built in Python and served by this process (the local path).

    python -m deployments.serve                          # production-like defaults (placeholders)
    python -m deployments.serve --tiny-model DIR         # defaults that run on the local stack
    python -m deployments.serve --tiny-model DIR --nightly-every 30   # the nightly fires every 30 s

`automation local up` starts this with the stack's environment, so the Prefect UI lists the
deployments and can run them: each run is a subprocess of this process. Production registers the
same deployments on a `process` work pool with `prefect deploy --prefect-file
deployments/prefect.yaml` instead (README, "Production"); `build()` is what both describe.

Deployments (flow/deployment):
- `compress-evaluate-benchmark/compress-evaluate-benchmark`: one model x schemes, on demand.
- `sweep/sweep`: models x schemes x suites, on demand.
- `recipe-search/recipe-search`: a recipe search (Optuna study, resumable), on demand.
- `nightly-regression/nightly`: cron 02:00 Europe/Berlin; the schedule's own parameters put its
  runs in the series `nightly` and fail them on a regression, while runs started by hand from the
  same deployment go to `nightly-manual` (they never disturb the night-to-night trend); at most
  one run at a time, a night that would overlap the previous one is cancelled.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from automation.devstack.defaults import local_parameters

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Schedule

NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "Europe/Berlin"
TAGS = ["llm-automation"]
# What the nightly's schedule adds to every run it creates (schedule-level parameters).
NIGHTLY_SCHEDULE_PARAMETERS: dict[str, Any] = {"series": "nightly", "fail_on": "regression"}


def production_parameters() -> dict[str, dict[str, Any]]:
    """Placeholders for a real cluster (the same as deployments/prefect.yaml): replace the models
    and queues with yours, or set them per run."""
    return {
        "compress-evaluate-benchmark": {"model": "hf:meta-llama/Llama-3.1-8B-Instruct",
                                        "schemes": ["w4a16", "fp8_dynamic"], "suite": "openllm",
                                        "profile": "chat", "queue": "a100x1"},
        "sweep": {"models": ["hf:meta-llama/Llama-3.1-8B-Instruct"], "schemes": ["w4a16", "fp8_dynamic"],
                  "suites": ["openllm"], "profile": "chat"},
        "nightly": {"series": "nightly-manual", "fail_on": "error"},
        "recipe-search": {"model": "hf:meta-llama/Llama-3.1-8B-Instruct", "recipe": "w4a16",
                          "space": {"dampening_frac": "0.001:0.1:log", "actorder": "static,weight"},
                          "trials": 16, "objectives": ["recovery", "size"], "suite": "openllm", "queue": "a100x1"},
    }


def nightly_schedule(every_s: float | None = None) -> Schedule:
    """The nightly's schedule: the cron, or (for a local try-out or a test) every `every_s` seconds
    starting now; both carry the schedule-level parameters."""
    from prefect.schedules import Cron, Interval

    if every_s is not None:
        return Interval(timedelta(seconds=every_s), anchor_date=datetime.now(UTC) + timedelta(seconds=every_s),
                        timezone="UTC", parameters=NIGHTLY_SCHEDULE_PARAMETERS, slug="nightly")
    return Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE, parameters=NIGHTLY_SCHEDULE_PARAMETERS, slug="nightly")


def build(tiny_model: Path | None = None, nightly_every_s: float | None = None,
          only: list[str] | None = None) -> list[RunnerDeployment]:
    """The deployments: local defaults with `tiny_model`, else the production placeholders."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType

    from flows.compress_evaluate_benchmark import compress_evaluate_benchmark
    from flows.nightly import nightly_regression
    from flows.recipe_search import recipe_search
    from flows.sweep import sweep

    params = local_parameters(tiny_model) if tiny_model else production_parameters()
    # Module entrypoints: runs import the installed package, whatever the served process's cwd.
    common: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": list(TAGS)}
    deployments = {
        "compress-evaluate-benchmark": compress_evaluate_benchmark.to_deployment(
            "compress-evaluate-benchmark", parameters=params["compress-evaluate-benchmark"],
            description="Compress one model with each scheme, evaluate and benchmark base and compressed "
                        "models as ClearML tasks, gate recovery and performance, publish the report.",
            **{**common, "tags": [*TAGS, "on-demand"]}),
        "sweep": sweep.to_deployment(
            "sweep", parameters=params["sweep"],
            description="Models x schemes x suites, queues by model size, one joined report.",
            **{**common, "tags": [*TAGS, "on-demand"]}),
        "nightly": nightly_regression.to_deployment(
            "nightly", parameters=params["nightly"], schedules=[nightly_schedule(nightly_every_s)],
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            description="Nightly regression: sweep the configured matrix, compare with the accepted baselines "
                        "and the previous night, fail on a regression.",
            **{**common, "tags": [*TAGS, "nightly", "regression"]}),
        "recipe-search": recipe_search.to_deployment(
            "recipe-search", parameters=params["recipe-search"],
            description="Multi-objective search over a recipe's arguments (Optuna): every trial is compress -> "
                        "evaluate (-> benchmark) as ClearML tasks; resumable; Pareto report.",
            **{**common, "tags": [*TAGS, "on-demand", "search"]}),
    }
    unknown = set(only or []) - set(deployments)
    if unknown:
        raise SystemExit(f"unknown deployment(s) {sorted(unknown)}; known: {sorted(deployments)}")
    # to_deployment dispatches on the caller: from sync code it returns the deployment itself.
    return [cast("RunnerDeployment", d) for name, d in deployments.items() if not only or name in only]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny-model", type=Path, help="local stack: defaults run this tiny model")
    parser.add_argument("--nightly-every", type=_positive_seconds, metavar="SECONDS",
                        help="schedule the nightly every SECONDS from now instead of its cron (try-outs, tests)")
    parser.add_argument("--only", action="append", help="serve only this deployment (repeatable)")
    parser.add_argument("--limit", type=int, help="most concurrent runs of this process")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit: at least 1 concurrent run")
    if args.tiny_model is not None and not args.tiny_model.is_dir():
        parser.error(f"--tiny-model: no model folder {args.tiny_model}")

    from automation.errors import AutomationError
    from automation.prefect_api import check_prefect_api
    from automation.regression.settings import settings

    try:
        settings()  # a malformed AUTOMATION_NIGHTLY_MATRIX fails now, not when the nightly fires
        check_prefect_api()
    except AutomationError as exc:
        raise SystemExit(f"deployments.serve: {exc}") from None

    from prefect import serve

    deployments = build(args.tiny_model.resolve() if args.tiny_model else None, args.nightly_every, args.only)
    serve(*deployments, limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
