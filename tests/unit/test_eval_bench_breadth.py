"""Evaluation and benchmark breadth without servers: the new evaluate options and their errors and
identities, the serve-once spec, GuideLLM profile types validated by GuideLLM's own scenario
model, the profile standards, the `lighteval` kind's spec and its place in a flow's plan."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from automation.errors import FlowInputError, ServerCannotScore, StandardError
from automation.regression.plan import BenchmarkOptions, CompressionOptions, EvaluationOptions, StepQueues, plan_matrix
from automation.scripts.lib.benchmark_core import build_scenario, summarise_benchmark
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.evaluate import EVALUATE_PACKAGES, VLLM_PACKAGE, EvaluateSpec
from automation.specs.lighteval import LightEvalSpec, task_file_digest
from automation.specs.model_ref import ModelRef
from automation.standards import load_profile_model, names, profile_content, suite_dir

REPO = Path(__file__).resolve().parents[2]
TWO_TASKS = f"include_path: {suite_dir('tiny')}\ntasks:\n  - task: tiny_mc\n  - task: tiny_gen\n"


def evaluate(**fields: Any) -> EvaluateSpec:
    return EvaluateSpec(model="hf:org/model", **{"suite": "tiny", **fields})


# -- evaluate options -------------------------------------------------------------------------------
def test_a_model_arg_the_spec_sets_itself_is_an_error_naming_its_field() -> None:
    with pytest.raises(ValidationError, match="model_args sets 'dtype', which the spec sets through its `dtype`"):
        evaluate(model_args={"dtype": "float16"})
    with pytest.raises(ValidationError, match=r"model_args sets 'pretrained'.*`model` field"):
        evaluate(model_args={"pretrained": "x"})
    with pytest.raises(ValidationError, match="model_args and vllm_args both set 'max_model_len'"):
        evaluate(model_args={"max_model_len": 1024}, vllm_args={"max_model_len": 2048})
    with pytest.raises(ValidationError, match="tensor_parallel_size applies to the vllm backend"):
        evaluate(backend="hf", tensor_parallel_size=2)


def test_a_secret_in_model_arguments_is_refused_before_it_becomes_a_task_parameter() -> None:
    for field, key in (("model_args", "token"), ("model_args", "api_key"), ("vllm_args", "hf_token")):
        with pytest.raises(ValidationError, match=rf"{field}\['{key}'\]: a secret must not be put in a spec"):
            evaluate(**{field: {key: "hf_abcdefgh"}})
    assert evaluate(model_args={"max_length": 8, "tokenizer_backend": "huggingface"}).model_args
    # from a flow: the error names the field, and its message does not repeat the value
    with pytest.raises(FlowInputError, match=r"model_args\['token'\]: a secret must not be put") as caught:
        plan(EvaluationOptions(model_args={"token": "hf_abcdefgh"}))
    assert "hf_abcdefgh" not in str(caught.value)


def test_per_task_few_shot_names_tasks_of_the_evaluation_and_yields_to_num_fewshot() -> None:
    with pytest.raises(ValidationError, match=r"task_fewshot names 'tiny_gen', not a task of this evaluation \(tiny\)"):
        evaluate(task_fewshot={"tiny_gen": 2})  # the shipped suite names the group
    spec = evaluate(suite=TWO_TASKS, task_fewshot={"tiny_gen": 2})
    assert spec.fewshot_by_task() == {"tiny_mc": None, "tiny_gen": 2}
    assert evaluate(suite=TWO_TASKS, task_fewshot={"tiny_gen": 2}, num_fewshot=1).fewshot_by_task() == \
        {"tiny_mc": 1, "tiny_gen": 1}
    with pytest.raises(ValidationError, match=r"task_fewshot\['tiny_gen'\]=101"):
        evaluate(suite=TWO_TASKS, task_fewshot={"tiny_gen": 101})


def test_every_option_that_can_change_a_score_is_in_the_identity_and_defaults_keep_old_ones() -> None:
    base = evaluate()
    # lm-eval 0.4.13's own default, passed explicitly: the same identity as before the field existed
    assert evaluate(fewshot_as_multiturn=True, apply_chat_template=False, gen_kwargs={}, model_args={}).identity() \
        == base.identity()
    changed = [evaluate(fewshot_as_multiturn=False), evaluate(apply_chat_template=True),
               evaluate(apply_chat_template="tool_use"), evaluate(system_instruction="Be brief."),
               evaluate(gen_kwargs={"temperature": 0.7}), evaluate(model_args={"max_length": 512}),
               evaluate(seed=1), evaluate(limit=4)]
    identities = {s.identity() for s in changed}
    assert len(identities) == len(changed) and base.identity() not in identities
    # and what the core is handed: the same values, defaults included
    kwargs = base.lm_eval_kwargs()
    assert kwargs["fewshot_as_multiturn"] is True and kwargs["apply_chat_template"] is False


def test_apply_chat_template_read_back_from_the_task_form() -> None:
    for text, value in (("true", True), ("False", False), ("", False), ("chatml", "chatml")):
        assert evaluate(apply_chat_template=text).apply_chat_template == value


def test_the_vllm_backend_lists_vllm_and_the_gpu_extra_pins_the_same() -> None:
    assert not any(r.startswith("vllm") for r in evaluate().requirements())
    assert VLLM_PACKAGE in evaluate(backend="vllm").requirements()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == [VLLM_PACKAGE]


def test_the_vllm_backend_without_vllm_fails_before_anything_loads(tmp_path: Path) -> None:
    import importlib.util

    from automation.errors import ToolError
    from automation.scripts.lib.evaluate_core import evaluate

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ToolError, match=r"backend 'vllm' needs vLLM.*`gpu` extra"):
        evaluate(tmp_path, ["tiny_mc"], backend="vllm")


def test_a_server_without_log_probabilities_is_said_plainly() -> None:
    """A stand-in for lm-eval raising what its OpenAI response parser raises on transformers serve
    (the real path is covered on the stack with a generative task; a log-likelihood one would need
    a server start only to see this error)."""
    from automation.scripts.lib.evaluate_core import _simple_evaluate

    class Harness:
        @staticmethod
        def simple_evaluate(**_: Any) -> None:
            raise KeyError("logprobs")

    with pytest.raises(ServerCannotScore, match="no log-probabilities, which log-likelihood tasks need"):
        _simple_evaluate(Harness, "local-completions", ["tiny_mc"], {})
    with pytest.raises(KeyError):
        _simple_evaluate(Harness, "hf", ["tiny_mc"], {})


# -- serve once -------------------------------------------------------------------------------------
def test_a_served_evaluation_adds_lm_eval_and_its_suite_to_the_benchmark_identity() -> None:
    plain = BenchmarkSpec(model="hf:org/model", profile="smoke")
    served = BenchmarkSpec(model="hf:org/model", profile="smoke", evaluation={"suite": "tiny", "limit": 4})
    assert served.identity() != plain.identity()
    def names_of(reqs: tuple[str, ...]) -> set[str]:
        return {r.split("[")[0].split("=")[0] for r in reqs}

    assert names_of(EVALUATE_PACKAGES) <= names_of(served.requirements())
    assert not names_of(EVALUATE_PACKAGES) & names_of(plain.requirements())
    assert "evaluation_suite" in served.standards_content()
    with pytest.raises(ValidationError, match=r"endpoint 'chat' sends messages.*apply_chat_template: true"):
        BenchmarkSpec(model="hf:org/model", profile="smoke", evaluation={"suite": "tiny", "endpoint": "chat"})
    # a file suite is identified by what it resolves to, not by its anchored text
    one = BenchmarkSpec(model="hf:org/model", profile="smoke", evaluation={"suite": TWO_TASKS})
    assert one.identity_payload()["spec"]["evaluation"]["suite"] == "<resolved suite>"


# -- benchmark profiles -----------------------------------------------------------------------------
SHAPE = {"prompt_tokens": 16, "output_tokens": 8, "max_requests": 6}


@pytest.mark.parametrize("profile", [
    {"rate_type": "synchronous"},
    {"rate_type": "throughput"},
    {"rate_type": "throughput", "max_concurrency": 16, "rampup_s": 2},
    {"rate_type": "concurrent", "rates": [1, 2]},
    {"rate_type": "constant", "rates": [1.5, 3], "max_concurrency": 8},
    {"rate_type": "poisson", "rates": [2]},
    {"rate_type": "sweep", "sweep_size": 4, "sweep_strategy": "poisson", "max_concurrency": 32},
    {"rate_type": "concurrent", "rates": [4], "slo": {"ttft_ms": 500, "tpot_ms": 50, "e2el_ms": 4000},
     "saturation": "enforce"},
])
def test_every_profile_type_builds_a_scenario_guidellm_accepts(profile: dict[str, Any], tmp_path: Path) -> None:
    from guidellm.schemas.benchmark.entrypoints import BenchmarkScenario

    model = load_profile_model("\n".join(f"{k}: {v}" for k, v in {**SHAPE, **profile}.items()).replace("'", '"'))
    scenario = build_scenario("http://127.0.0.1:1/v1", "m", tmp_path, model.model_dump(exclude_none=True),
                              tmp_path / "r.json", engine="transformers")
    checked = BenchmarkScenario.model_validate(scenario)  # GuideLLM 0.8.1's own schema
    assert checked.spec.profile.kind == profile["rate_type"]
    if "slo" in profile:
        assert scenario["spec"]["metrics"]["slo"] == {k: float(v) for k, v in profile["slo"].items()}
        assert {"kind": "over_saturation", "mode": "enforce"} in scenario["spec"]["constraints"]


@pytest.mark.parametrize(("profile", "message"), [
    ({"rate_type": "sweep", "rates": [1]}, "takes no 'rates'"),
    ({"rate_type": "concurrent", "rates": [1], "sweep_size": 3}, "sweep_size applies to rate_type 'sweep'"),
    ({"rate_type": "concurrent", "rates": [1], "max_concurrency": 3}, "max_concurrency does not apply"),
    ({"rate_type": "poisson", "rates": [1], "rampup_s": 3}, "rampup_s does not apply to rate_type 'poisson'"),
    ({"rate_type": "synchronous", "slo": {}}, "slo needs at least one of ttft_ms, tpot_ms, e2el_ms"),
])
def test_a_profile_that_guidellm_would_misread_is_refused(profile: dict[str, Any], message: str) -> None:
    text = "\n".join(f"{k}: {v}" for k, v in {**SHAPE, **profile}.items())
    with pytest.raises(StandardError, match=message):
        load_profile_model(text)


def test_the_replaced_tools_profiles_are_standards_that_fit_their_context() -> None:
    shipped = set(names("profile"))
    assert {"code_fixing", "docstring_generation", "long_rag", "long_context_16k", "long_context_32k",
            "long_context_64k", "long_context_128k"} <= shipped
    for k in (16, 32, 64, 128):
        profile = load_profile_model(f"long_context_{k}k")
        assert profile.prompt_tokens_max + profile.output_tokens_max <= k * 1024  # type: ignore[operator]
        assert profile.prompt_tokens_min > (k - 16) * 1024 * 0.8  # type: ignore[operator]
    # fields added later stay out of an old profile's identity content
    assert not {"slo", "saturation", "max_concurrency", "sweep_strategy", "rampup_s"} & set(profile_content(
        load_profile_model("chat")))


def test_goodput_and_saturation_are_read_from_guidellms_report() -> None:
    bench = {"config": {"strategy": {"type_": "concurrent", "streams": 2}},
             "metrics": {"slo_attainment": 0.75,
                         "request_goodput": {"successful": {"mean": 3.5}},
                         "request_totals": {"successful": 4, "errored": 0, "incomplete": 0, "total": 4}},
             "scheduler_state": {"scheduler_constraints": {"over_saturation": {"metadata": {"is_over_saturated":
                                                                                            True}}}}}
    summary = summarise_benchmark(bench)
    assert (summary["slo_attainment"], summary["goodput_requests_per_s"], summary["over_saturated"]) == (0.75, 3.5, 1.0)
    assert summarise_benchmark({"metrics": {}})["over_saturated"] is None


# -- the lighteval kind -----------------------------------------------------------------------------
def test_lighteval_tasks_and_task_files_are_checked_when_the_spec_is_built() -> None:
    with pytest.raises(ValidationError, match=r"'tiny_mc' is not TASK\|FEWSHOT"):
        LightEvalSpec(model="hf:org/model", tasks=("tiny_mc",))
    with pytest.raises(ValidationError, match=r"no shipped LightEval task file 'mine'.*task code runs from this "
                                              r"repository only"):
        LightEvalSpec(model="hf:org/model", tasks=("tiny_mc|0",), custom_tasks="mine")
    local = LightEvalSpec(model="hf:org/model", tasks=("tiny_mc|0", "tiny_gen|2"), custom_tasks="tiny")
    assert local.is_local() and local.task_names() == ["tiny_mc", "tiny_gen"]
    assert not LightEvalSpec(model="hf:org/model", tasks=("tiny_mc|0", "gsm8k|5"), custom_tasks="tiny").is_local()
    assert local.standards_content() == {"custom_tasks": task_file_digest("tiny")}
    assert "lighteval==0.13.0" in local.requirements()


def test_the_task_files_digest_covers_the_data_its_card_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import automation.specs.lighteval as lighteval_spec

    (tmp_path / "t").mkdir()
    (tmp_path / "data.jsonl").write_text('{"q": 1}\n')
    (tmp_path / "t.py").write_text("TASKS_TABLE = []\n")
    (tmp_path / "t" / "README.md").write_text("---\nconfigs:\n- config_name: a\n  data_files:\n  - split: test\n"
                                              "    path: ../data.jsonl\n---\n")
    monkeypatch.setattr(lighteval_spec, "TASKS_DIR", tmp_path)
    before = task_file_digest("t")
    (tmp_path / "data.jsonl").write_text('{"q": 2}\n')
    assert task_file_digest("t") != before


def plan(evaluation: EvaluationOptions) -> Any:
    return plan_matrix([(ModelRef.model_validate("hf:org/model"), "gpu", ())], ["w4a16"], ["tiny"], "smoke",
                       CompressionOptions(), evaluation, BenchmarkOptions(), StepQueues(), "proj", [])


def test_a_flow_evaluates_every_cell_with_lighteval_when_asked() -> None:
    assert plan(EvaluationOptions()).models[0].base_lighteval is None
    mp = plan(EvaluationOptions(lighteval_tasks=["tiny_mc|0"], lighteval_custom_tasks="tiny",
                                lighteval_max_samples=8, apply_chat_template=True)).models[0]
    assert mp.base_lighteval is not None and mp.base_lighteval.use_chat_template
    other = mp.lighteval_for(ModelRef.model_validate("clearml:0123456789abcdef"))
    assert other is not None and other.tasks == ("tiny_mc|0",) and other.max_samples == 8
    with pytest.raises(FlowInputError, match=r"(?s)evaluation.lighteval_tasks: .*'tiny_mc' is not TASK\|FEWSHOT"):
        plan(EvaluationOptions(lighteval_tasks=["tiny_mc"]))


def test_a_flows_prompt_options_reach_every_evaluation() -> None:
    mp = plan(EvaluationOptions(system_instruction="Be brief.", fewshot_as_multiturn=False,
                                gen_kwargs={"max_gen_toks": 8})).models[0]
    spec = mp.evaluate_for(ModelRef.model_validate("clearml:0123456789abcdef"), "tiny")
    assert (spec.system_instruction, spec.fewshot_as_multiturn, spec.gen_kwargs) == ("Be brief.", False,
                                                                                     {"max_gen_toks": 8})


def test_readmes_table_says_what_each_kind_reports() -> None:
    from automation.specs.registry import kinds

    readme = (REPO / "README.md").read_text()
    for name, cls in kinds().items():
        assert cls.reports, f"kind {name} says nothing of what it reports"
        assert f"| `{name}` | {cls.reports} |" in readme, f"README's task-kind table lacks {name}'s line"


def test_a_search_keeps_its_study_name_and_refuses_lighteval() -> None:
    from flows.recipe_search import _evaluation_inputs

    assert _evaluation_inputs(EvaluationOptions()) == {"limit": None, "batch_size": 8, "num_fewshot": None,
                                                      "backend": "auto"}
    assert _evaluation_inputs(EvaluationOptions(system_instruction="x"))["system_instruction"] == "x"  # type: ignore[index]
    from flows.recipe_search import prepare

    with pytest.raises(FlowInputError, match=r"evaluation\.lighteval_tasks: a search scores its trials"):
        prepare(model="hf:org/model", evaluation=EvaluationOptions(lighteval_tasks=["tiny_mc|0"]))


def test_backend_vllm_on_a_host_without_a_gpu_fails_at_once(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "evaluate", "model": str(model), "suite": "tiny", "backend": "vllm"}))
    proc = subprocess.run([sys.executable, "-m", "automation.scripts.evaluate", "--spec", str(spec), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "AcceleratorRequired: backend 'vllm' needs a GPU and this host has none" in proc.stderr
    assert "lm_eval" not in proc.stderr  # before lm-eval was imported, let alone the model loaded
