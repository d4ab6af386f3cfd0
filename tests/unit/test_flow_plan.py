"""Flow input validation, planning, hooks, size rules and joining: no servers involved.

Everything here must fail before anything could be queued, naming the parameter."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from automation.errors import FlowInputError, SecretError
from automation.regression.cells import CellRun, Outcome, join_cells
from automation.regression.gates import AccuracyGateSettings, PerformanceGateSettings
from automation.regression.hooks import apply_hooks
from automation.regression.plan import BenchmarkOptions, CompressionOptions, EvaluationOptions, StepQueues, plan_matrix
from automation.regression.report_model import StepFailure
from automation.regression.settings import SizeRule, params_billion, queue_for
from automation.results import MetricValue, TaskResult
from automation.secrets import check_reference, resolve
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.debug import DebugSpec
from automation.specs.model_ref import ModelRef
from flows.compress_evaluate_benchmark import gate_settings, model_ref
from flows.run import report_outcome


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A config-only model directory (enough for planning: dims, no weights)."""
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                                               "vocab_size": 512, "architectures": ["LlamaForCausalLM"]}))
    (d / "tokenizer.json").write_text("{}")
    return d


def plan(model: Path, **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "models": [(ModelRef.model_validate(str(model)), "cpu", ())], "schemes": ["w4a16", "fp8_dynamic"],
        "suites": ["tiny"], "profile": "smoke", "compression": CompressionOptions(calibration="tiny"),
        "evaluation": EvaluationOptions(), "benchmarking": BenchmarkOptions(), "step_queues": StepQueues(),
        "project": "unit", "hooks": [],
    }
    args.update(overrides)
    return plan_matrix(**args)


def test_plan_builds_every_spec_with_the_right_queues(model_dir: Path) -> None:
    p = plan(model_dir, step_queues=StepQueues(evaluate="gpu"))
    (mp,) = p.models
    assert set(mp.compress) == {"w4a16", "fp8_dynamic"}
    assert mp.compress["w4a16"].queue == "cpu" and mp.base_evals["tiny"].queue == "gpu"
    assert mp.base_bench.queue == "cpu" and p.queues == {"cpu", "gpu"}
    compressed = ModelRef(source="clearml", id="abcdef123456")
    assert mp.evaluate_for(compressed, "tiny").model == compressed
    assert mp.bench_for(compressed).profile == "smoke"


def test_compression_options_reach_every_compress_spec(model_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "calib.jsonl"
    rows.write_text('{"body": "one calibration sentence"}\n')
    options = CompressionOptions(calibration=str(rows), calibration_options={"text_column": "body", "shuffle": True},
                                 dtype="bfloat16", model_class="AutoModelForCausalLM", trust_remote_code=True)
    (mp,) = plan(model_dir, schemes=["w4a16", "nvfp4"], compression=options).models
    for spec in mp.compress.values():
        assert spec.calibration == "file:calib.jsonl" and spec.calibration_options.rows == rows.read_text()
        assert spec.calibration_options.text_column == "body" and spec.dtype == "bfloat16"
        assert spec.model_class == "AutoModelForCausalLM" and spec.trust_remote_code


@pytest.mark.parametrize(("overrides", "field"), [
    ({"schemes": []}, "schemes"),
    ({"schemes": ["w4a16", "w4a16"]}, "schemes"),
    ({"schemes": ["base"]}, "schemes"),
    ({"schemes": ["w3a9"]}, "schemes[0] (w3a9)"),
    ({"suites": ["no-such-suite"]}, "suite"),
    ({"profile": "no-such-profile"}, "profile"),
    ({"hooks": ["no_such_hook"]}, "hooks"),
    ({"compression": CompressionOptions(recipe_args={"w8a8": {}})}, "compression.recipe_args"),
    ({"compression": CompressionOptions(recipe_args={"w4a16": {"group_size": 100}})}, "schemes[0] (w4a16)"),
])
def test_bad_input_names_the_parameter(model_dir: Path, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(FlowInputError) as err:
        plan(model_dir, **overrides)
    assert str(err.value).startswith(field), str(err.value)


def test_bad_model_and_thresholds_name_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(FlowInputError, match=r"^model: .*does not exist"):
        model_ref("model", str(tmp_path / "missing"))
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(FlowInputError, match="threshold"):
            gate_settings(bad, {}, {}, 0.95, [], None)
    with pytest.raises(FlowInputError, match=r"tiny_mc/acc"):
        gate_settings(0.95, {"tiny_mc/acc": 95.0}, {}, 0.95, [], None)


def test_size_rules_pick_the_queue(model_dir: Path) -> None:
    rules = [SizeRule(max_params_b=80, queue="h100x2"), SizeRule(max_params_b=10, queue="a100x1")]
    tiny = ModelRef.model_validate(str(model_dir))
    assert params_billion(tiny) == pytest.approx(0.000459, rel=0.01)  # 2 x (4h^2 + 3hi) + 2vh
    assert queue_for(tiny, rules).queue == "a100x1"
    assert params_billion(ModelRef.model_validate("hf:meta-llama/Llama-3.1-70B-Instruct")) == 70
    assert params_billion(ModelRef.model_validate("hf:Qwen/Qwen2.5-0.5B")) == 0.5
    assert queue_for(ModelRef.model_validate("hf:meta-llama/Llama-3.1-70B"), rules).queue == "h100x2"
    with pytest.raises(ValueError, match="larger than every size rule"):
        queue_for(ModelRef.model_validate("hf:org/Big-405B"), rules)
    assert queue_for(ModelRef.model_validate("hf:org/no-size"), rules).queue == "h100x2"  # unknown: largest


def test_hooks_apply_once_and_show_in_spec_and_identity() -> None:
    spec = BenchmarkSpec(model=ModelRef(source="clearml", id="abcdef123456"), profile="smoke")
    out = asyncio.run(apply_hooks(spec, ["server_arg:--max-model-len=4096", "docker_args:--shm-size=8g",
                                         "hf_token_env"]))
    assert out.server_args == ("--max-model-len=4096",) and out.docker_args == "--shm-size=8g"
    assert out.secret_env == {"HF_TOKEN": "env:HF_TOKEN"}
    assert out.hooks == ("server_arg:--max-model-len=4096", "docker_args:--shm-size=8g", "hf_token_env")
    assert out.identity() != spec.identity()  # a server argument changes what is measured
    again = asyncio.run(apply_hooks(out, ["server_arg:--max-model-len=4096"]))
    assert again == out  # applied once
    # docker options and secret references do not change the output
    docker_only = asyncio.run(apply_hooks(DebugSpec(), ["docker_args:--shm-size=8g", "hf_token_env"]))
    assert docker_only.identity() == DebugSpec().identity()


def test_secret_values_are_refused_and_references_resolve() -> None:
    with pytest.raises(ValueError, match="not a secret reference"):
        DebugSpec(secret_env={"HF_TOKEN": "hf_abcdefghijklmnop"})
    check_reference("HF_TOKEN", "prefect-secret:hf-token")
    assert resolve({"TOKEN": "env:MY_TOKEN"}, environ={"MY_TOKEN": "s3cret"}) == {"TOKEN": "s3cret"}
    with pytest.raises(SecretError, match="no environment variable MY_TOKEN") as err:
        resolve({"TOKEN": "env:MY_TOKEN"}, environ={})
    assert "s3cret" not in str(err.value)
    with pytest.raises(SecretError, match="PREFECT_API_URL"):
        resolve({"TOKEN": "prefect-secret:hf-token"}, environ={})


def _result(kind: str, values: dict[str, MetricValue], task: str) -> TaskResult:
    now = datetime.now(UTC)
    return TaskResult(task_id=task, kind=kind, identity=task, status="completed", web_url=f"http://x/{task}",
                      values=values, started=now - timedelta(seconds=5), completed=now,
                      model_id="m" + task if kind == "compress" else None)


def test_join_gates_each_scheme_against_its_base() -> None:
    model = ModelRef(source="clearml", id="abcdef123456")
    acc = {"tiny_mc/acc": MetricValue(value=0.9, stderr=0.01, samples=1000)}
    bad = {"tiny_mc/acc": MetricValue(value=0.5, stderr=0.01, samples=1000)}
    perf = {"synchronous/output_tokens_per_s": MetricValue(value=100.0)}
    ok = Outcome(result=_result("benchmark", perf, "b"))
    runs = [
        CellRun(model, "base", "tiny", "cpu", None, Outcome(result=_result("evaluate", acc, "e0")), ok),
        CellRun(model, "w4a16", "tiny", "cpu", Outcome(result=_result("compress", {}, "c1")),
                Outcome(result=_result("evaluate", acc, "e1")), ok),
        CellRun(model, "w2", "tiny", "cpu", Outcome(result=_result("compress", {}, "c2")),
                Outcome(result=_result("evaluate", bad, "e2")), ok),
        CellRun(model, "w8a8", "tiny", "cpu",
                Outcome(failure=StepFailure(step="compress", error="CodeError: boom")),
                Outcome(failure=StepFailure(step="evaluate", error="not run")), Outcome(failure=None)),
    ]
    cells = join_cells(runs, "smoke", AccuracyGateSettings(), PerformanceGateSettings())
    outcome = {c.scheme: c.outcome for c in cells}
    assert outcome == {"base": "baseline", "w4a16": "pass", "w2": "fail", "w8a8": "error"}
    w2 = next(c for c in cells if c.scheme == "w2")
    assert w2.accuracy_gates[0].recovery == pytest.approx(0.5 / 0.9)
    assert [s.step for s in w2.steps] == ["compress", "evaluate", "benchmark"] and w2.output_model_id == "mc2"
    assert report_outcome(cells) == "error"
    assert report_outcome([c for c in cells if c.scheme != "w8a8"]) == "fail"
