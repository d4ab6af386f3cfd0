"""The deployment the browser test (test_ui_browser.py) runs from the Prefect UI: `compress_evaluate_benchmark`
served with default parameters for the tiny model on the local stack.

    python -m tests.e2e.ui_flows serve NAME MODEL SERIES PROJECT

The defaults match tests/e2e/test_flows_on_stack.py's specs (suite tiny, profile smoke, tiny calibration,
evaluations on `cpu`, everything else on `gpu`), so a run that keeps w4a16 reuses that test's finished work;
performance rules are observation-only (CPU timings of a tiny model on a shared host are noise).
"""

from __future__ import annotations

import sys
from typing import Any

from automation.regression.gates import DEFAULT_PERFORMANCE_RULES
from automation.regression.plan import BenchmarkOptions, CompressionOptions, StepQueues

FLOW_NAME = "compress-evaluate-benchmark"
DEFAULT_SCHEMES = ["w4a16", "fp8_dynamic"]


def default_parameters(model: str, series: str, project: str) -> dict[str, Any]:
    """The deployment's defaults, JSON-shaped (what the UI form starts from)."""
    observe = [r.model_copy(update={"gating": False}) for r in DEFAULT_PERFORMANCE_RULES]
    return {
        "model": model,
        "schemes": list(DEFAULT_SCHEMES),
        "suite": "tiny",
        "profile": "smoke",
        "queue": "gpu",
        "threshold": 0.95,
        "compression": CompressionOptions(calibration="tiny", num_samples=16, max_seq_length=64).model_dump(
            mode="json"),
        "benchmarking": BenchmarkOptions(startup_timeout_s=180).model_dump(mode="json"),
        "step_queues": StepQueues(evaluate="cpu").model_dump(mode="json"),
        "performance_rules": [r.model_dump(mode="json") for r in observe],
        "project": project,
        "series": series,
        "fail_on": "never",
    }


def serve(name: str, model: str, series: str, project: str) -> None:
    """Serve by entrypoint: each run starts `python -m prefect.engine`, which imports the flow module, as a
    `prefect deploy`ed deployment's worker does. (`flow.serve()` instead cloudpickles the flow object into a
    spawned child; the function goes by value without the names its postponed annotations need, and
    parameter validation fails with "`Compress_Evaluate_BenchmarkModel` is not fully defined".)"""
    from prefect import serve as prefect_serve
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    from flows.compress_evaluate_benchmark import compress_evaluate_benchmark

    deployment = RunnerDeployment.from_flow(
        compress_evaluate_benchmark, name=name, parameters=default_parameters(model, series, project),
        entrypoint_type=EntrypointType.MODULE_PATH, description="browser test: the tiny model on the local stack",
        tags=["ui-test"])
    prefect_serve(deployment, print_starting_message=True)


def main(argv: list[str]) -> None:
    if len(argv) == 5 and argv[0] == "serve":
        serve(*argv[1:])
    else:
        raise SystemExit("usage: python -m tests.e2e.ui_flows serve NAME MODEL SERIES PROJECT")


if __name__ == "__main__":
    main(sys.argv[1:])
