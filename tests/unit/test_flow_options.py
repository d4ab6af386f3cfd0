"""`automation run` options come from the flows' signatures: every parameter has one, values parse
with the parameter's own type, and the demo's command line gives the flow exactly its parameters."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from typer.testing import CliRunner

from automation.cli.flow_options import cli_arguments, flow_options, flow_parameters, typer_parameters
from automation.devstack.defaults import local_parameters
from automation.devstack.demo import demo_parameters
from automation.regression.plan import CompressionOptions, StepQueues
from flows.compress_evaluate_benchmark import compress_evaluate_benchmark
from flows.sweep import sweep


def _parse(fn: Any, argv: list[str]) -> tuple[int, dict[str, Any], str]:
    """Run only the option parsing of `fn`'s derived command; returns exit code, parameters, output."""
    options = flow_options(fn)
    seen: dict[str, Any] = {}

    def command(**given: Any) -> None:
        seen.update(flow_parameters(fn, options, given))

    command.__signature__ = inspect.Signature(typer_parameters(options))  # type: ignore[attr-defined]
    app = typer.Typer()
    app.command()(command)
    res = CliRunner().invoke(app, argv)
    return res.exit_code, seen, res.output


@pytest.mark.parametrize("flow_obj", [compress_evaluate_benchmark, sweep])
def test_every_flow_parameter_has_an_option(flow_obj: Any) -> None:
    targets = {opt.target[0] for opt in flow_options(flow_obj.fn)}
    assert targets == set(inspect.signature(flow_obj.fn).parameters)
    flags = {opt.flag for opt in flow_options(flow_obj.fn)}
    # the names users know (README, the demo)
    assert {"--schemes", "--profile", "--threshold", "--metric-threshold", "--calibration", "--num-samples",
            "--evaluate-queue", "--hooks", "--refresh", "--publish"} <= flags


@pytest.mark.parametrize(("flow_obj", "name"), [(compress_evaluate_benchmark, "compress-evaluate-benchmark"),
                                                (sweep, "sweep")])
def test_the_local_defaults_round_trip_through_the_command_line(flow_obj: Any, name: str, tmp_path: Path) -> None:
    params = local_parameters(tmp_path / "tiny")[name]
    code, parsed, out = _parse(flow_obj.fn, cli_arguments(flow_obj.fn, params))
    assert code == 0, out
    assert set(parsed) == set(params)
    assert parsed["compression"] == CompressionOptions(**params["compression"])
    assert parsed["step_queues"] == StepQueues(**params["step_queues"]) != StepQueues()
    assert [r.model_dump(mode="json") for r in parsed["performance_rules"]] == params["performance_rules"]
    assert parsed["profile"] == "smoke"


def test_the_demo_runs_the_local_deployment_defaults(tmp_path: Path) -> None:
    params = demo_parameters(tmp_path / "tiny", refresh=True)
    assert params["refresh"] is True and params["project"] == "automation-demo"
    assert {k: v for k, v in params.items() if k not in ("project", "series", "refresh")} == \
        local_parameters(tmp_path / "tiny")["compress-evaluate-benchmark"]


def test_only_given_options_reach_the_flow_and_values_are_typed() -> None:
    code, parsed, out = _parse(sweep.fn, ["--models", "hf:a/b,hf:c/d", "--queue-cap", "a100x1=4", "--limit", "0.5",
                                          "--batch-size", "auto", "--calibration", "none", "--no-publish"])
    assert code == 0, out
    assert parsed == {"models": ["hf:a/b", "hf:c/d"], "queue_caps": {"a100x1": 4}, "publish": False,
                      "evaluation": parsed["evaluation"], "compression": CompressionOptions(calibration=None)}
    assert parsed["evaluation"].limit == 0.5 and parsed["evaluation"].batch_size == "auto"


@pytest.mark.parametrize(("argv", "flag"), [(["--threshold", "high"], "--threshold"),
                                            (["--queue-cap", "a100x1"], "--queue-cap"),
                                            (["--fail-on", "sometimes"], "--fail-on"),
                                            (["--num-samples", "0"], "compression"),
                                            (["--limit", "-1"], "evaluation")])
def test_a_bad_value_is_a_usage_error_naming_the_option(argv: list[str], flag: str) -> None:
    code, _, out = _parse(compress_evaluate_benchmark.fn, ["--model", "hf:a/b", *argv])
    assert code == 2 and flag in out and "Traceback" not in out, out


def test_a_new_flow_parameter_is_one_edit() -> None:
    """A parameter added to a flow's signature (and its docstring) is an option with no other edit."""

    def flow_fn(model: str, new_knob: int = 3, mode: Literal["a", "b"] = "a", extra: list[str] = []) -> None:  # noqa: B006
        """A flow.

        Args:
            model: the model
            new_knob: a knob added later
        """

    options = {opt.flag: opt for opt in flow_options(flow_fn)}
    assert "a knob added later (default: 3)" in options["--new-knob"].help
    code, parsed, out = _parse(flow_fn, ["--model", "m", "--new-knob", "7", "--mode", "b", "--extra", "x,y"])
    assert code == 0, out
    assert parsed == {"model": "m", "new_knob": 7, "mode": "b", "extra": ["x", "y"]}


def _yaml_deployments() -> list[dict[str, Any]]:
    import yaml

    from testing import REPO

    return list(yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"])


@pytest.mark.parametrize("deployment", _yaml_deployments(), ids=lambda d: str(d["name"]))
def test_prefect_yaml_parameters_are_the_flows_own_and_validate(deployment: dict[str, Any]) -> None:
    """`prefect deploy` would only refuse these on a server; here they are checked against the flow:
    every key is a parameter of the entrypoint's flow, every value passes its types, `code` is offered."""
    import importlib

    path, name = deployment["entrypoint"].split(":")
    flow_obj = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    signature = inspect.signature(flow_obj.fn)
    for params in [deployment.get("parameters") or {},
                   *[s.get("parameters") or {} for s in deployment.get("schedules") or []]]:
        assert set(params) <= set(signature.parameters), set(params) - set(signature.parameters)
        flow_obj.validate_parameters(params)
    assert "code" in (deployment.get("parameters") or {})


def test_the_local_recipe_search_defaults_round_trip_through_the_command_line(tmp_path: Path) -> None:
    from flows.recipe_search import recipe_search

    params = local_parameters(tmp_path / "tiny")["recipe-search"]
    code, parsed, out = _parse(recipe_search.fn, cli_arguments(recipe_search.fn, params))
    assert code == 0, out
    assert set(parsed) == set(params) and parsed["space"] == params["space"]
    assert parsed["compression"] == CompressionOptions(**params["compression"])
    recipe_search.validate_parameters(params)
