"""The compress / evaluate / benchmark kinds: validation, task-form round trip, identity, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from automation.cli.task import parse_overrides, spec_from_cli, standards_app, task_app
from automation.errors import SpecError
from automation.results import TaskResult
from automation.specs.base import TaskSpec, build
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec
from automation.specs.evaluate import EvaluateSpec
from automation.specs.lighteval import LightEvalSpec
from automation.specs.model_ref import ModelRef

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory as far as validation looks: config.json and tokenizer files."""
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 128,
                                               "intermediate_size": 256}))
    (d / "tokenizer.json").write_text("{}")
    return d


def examples(model_dir: Path) -> dict[str, TaskSpec]:
    return {
        "compress": CompressSpec(model=str(model_dir), recipe="w4a16", recipe_args={"group_size": 64},
                                 calibration="tiny", num_samples=16, queue="cpu"),
        "evaluate": EvaluateSpec(model="clearml:0123456789abcdef", suite="tiny", limit=8, batch_size="auto",
                                 vllm_args={"max_model_len": 2048}),
        "benchmark": BenchmarkSpec(model="hf:org/model@main", tokenizer=str(model_dir), profile="smoke",
                                   server_args=("--max-num-seqs", "8"), server_env={"A": "1"}, gpus=2),
        "evaluate_options": EvaluateSpec(
            model="hf:org/model", suite="tiny", apply_chat_template=True, fewshot_as_multiturn=False,
            system_instruction="Be brief.", gen_kwargs={"temperature": 0.0, "max_gen_toks": 32},
            model_args={"max_length": 2048}, num_fewshot=None, seed=3),
        "served": BenchmarkSpec(model="hf:org/model", profile="smoke",
                                evaluation={"suite": "tiny", "limit": 4, "endpoint": "chat",
                                            "apply_chat_template": "chatml"}),
        "lighteval": LightEvalSpec(model="hf:org/model", tasks=("tiny_mc|0", "gsm8k|5"), custom_tasks="tiny",
                                   max_samples=8, use_chat_template=True),
    }


@pytest.mark.parametrize("kind", ["compress", "evaluate", "benchmark", "evaluate_options", "served", "lighteval"])
def test_round_trip_through_the_task_form(kind: str, model_dir: Path) -> None:
    spec = examples(model_dir)[kind]
    cls = type(spec)
    args, conf = spec.to_args(), spec.to_configuration()
    assert "model" in conf and "model" not in args  # nested -> configuration object
    back = cls.from_task_form(args, conf)
    assert back == spec and back.identity() == spec.identity()
    # the direct-run path reads the same form
    assert build(cls, json.loads(spec.model_dump_json())) == spec


def test_args_and_configuration_split(model_dir: Path) -> None:
    assert set(CompressSpec.arg_fields()) >= {"recipe", "calibration", "num_samples", "max_seq_length", "seed"}
    assert set(CompressSpec.config_fields()) == {"model", "recipe_args", "calibration_options"}
    assert set(EvaluateSpec.config_fields()) == {"model", "tasks", "vllm_args", "gen_kwargs", "model_args",
                                                 "task_fewshot"}
    assert set(BenchmarkSpec.config_fields()) == {"model", "tokenizer", "server_args", "server_env", "evaluation"}
    spec = examples(model_dir)["evaluate"]
    assert spec.to_args()["batch_size"] == ("auto", "str") and spec.to_args()["limit"] == ("8.0", "float")


def test_identity_ignores_queue_and_names_but_not_recipe_arguments(model_dir: Path) -> None:
    spec = examples(model_dir)["compress"]
    assert spec.model_copy(update={"queue": "gpu", "name": "x", "tags": ("t",)}).identity() == spec.identity()
    other = CompressSpec(**{**spec.model_dump(), "recipe_args": {"group_size": 32}})
    assert other.identity() != spec.identity()
    assert "llmcompressor==0.14.0.1" in spec.identity_payload()["spec"]["packages"]


def test_identity_is_stable_across_processes(model_dir: Path) -> None:
    spec = examples(model_dir)["compress"]
    code = ("import json,sys; from automation.specs.compress import CompressSpec; "
            "print(CompressSpec.model_validate(json.loads(sys.argv[1])).identity())")
    out = subprocess.run([sys.executable, "-c", code, spec.model_dump_json()], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == spec.identity()


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"recipe": "w4a17"}, r"recipe: .*unknown recipe 'w4a17'; known: autoround_w4a16, awq_w4a16, fp8, "),
        ({"recipe_args": {"group_sz": 64}}, r"recipe_args: .*unknown argument\(s\) \['group_sz'\]"),
        ({"recipe_args": {"group_size": "64"}}, r"recipe_args: .*'group_size' must be int"),
        ({"recipe_args": {"group_size": 96}}, r"recipe_args: .*'group_size'=96 does not divide hidden_size=128"),
        ({"model": "/does/not/exist"}, r"model: .*model path '/does/not/exist' does not exist"),
        ({"calibration": "not a dataset"}, r"calibration: .*unknown calibration dataset"),
        ({"num_samples": 0}, r"num_samples: "),
        ({"recipe": "a: [\n b"}, r"recipe: .*not valid YAML"),
    ],
)
def test_compress_validation_names_the_field(values: dict[str, Any], match: str, model_dir: Path) -> None:
    base = {"model": str(model_dir), "recipe": "w4a16", "calibration": "tiny"}
    with pytest.raises(SpecError, match=match):
        build(CompressSpec, {**base, **values})


def test_group_size_is_only_checked_when_the_config_is_readable() -> None:
    spec = CompressSpec(model="hf:nobody/not-cached", recipe="w4a16", recipe_args={"group_size": 96})
    assert spec.recipe_name() == "w4a16"


def test_recipe_file_is_stored_inline(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text((REPO / "automation/standards/recipes/fp8_dynamic.yaml").read_text())
    spec = CompressSpec(model=str(model_dir), recipe=str(path), calibration=None)
    assert spec.recipe.startswith("# Recipe template") and not spec.needs_calibration()
    assert spec.recipe_name() == "<inline>"


def test_evaluate_and_benchmark_validation(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"suite: .*unknown suite 'opnellm'; known: leaderboard, openllm, tiny"):
        build(EvaluateSpec, {"model": str(model_dir), "suite": "opnellm"})
    with pytest.raises(SpecError, match="give a suite or tasks"):
        build(EvaluateSpec, {"model": str(model_dir)})
    assert EvaluateSpec(model=str(model_dir), tasks=("arc_easy",)).resolved_suite() is None
    with pytest.raises(SpecError, match=r"profile: Field required"):
        build(BenchmarkSpec, {"model": str(model_dir)})
    with pytest.raises(SpecError, match=r"profile: .*unknown profile 'smok'"):
        build(BenchmarkSpec, {"model": str(model_dir), "profile": "smok"})
    bare = tmp_path / "weights-only"
    bare.mkdir()
    with pytest.raises(SpecError, match=r"tokenizer: .*holds no tokenizer files"):
        build(BenchmarkSpec, {"model": str(bare), "profile": "smoke"})
    assert BenchmarkSpec(model=str(bare), tokenizer=str(model_dir), profile="smoke").tokenizer is not None


def test_invalid_hocon_in_the_task_form_is_named(model_dir: Path) -> None:
    spec = examples(model_dir)["compress"]
    conf = spec.to_configuration()
    conf["recipe_args"] = "recipe_args { group_size = "
    with pytest.raises(SpecError, match="invalid HOCON in configuration 'recipe_args'"):
        CompressSpec.from_task_form(spec.to_args(), conf)
    args = spec.to_args()
    args["num_samples"] = ("many", "int")
    with pytest.raises(SpecError, match="Args/num_samples: 'many'"):
        CompressSpec.from_task_form(args, spec.to_configuration())


def test_model_ref_forms(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ModelRef.model_validate("hf:org/name@v1") == ModelRef(source="hf", id="org/name", revision="v1")
    assert ModelRef.model_validate("org/name").source == "hf"
    assert ModelRef.model_validate("clearml:abcdef123456").clearml_model_id == "abcdef123456"
    monkeypatch.chdir(model_dir.parent)
    ref = ModelRef.model_validate("./tiny")
    assert ref.source == "path" and ref.id == str(model_dir.resolve()) and ref.config() is not None
    result = TaskResult(task_id="t1", kind="compress", identity="i", status="completed", web_url="u",
                        model_id="m0123456789")
    from_result = ModelRef.from_result(result)
    assert from_result.clearml_model_id == "m0123456789" and from_result.upstream_task == "t1"
    spec = EvaluateSpec(model=from_result, suite="tiny")
    assert spec.input_model_id() == "m0123456789"
    with pytest.raises(ValueError, match="no output model"):
        ModelRef.from_result(result.model_copy(update={"model_id": None}))
    with pytest.raises(ValueError, match="revision applies"):
        ModelRef(source="clearml", id="abcdef123456", revision="x")


def test_cli_parses_dotted_overrides_by_field_type(model_dir: Path) -> None:
    values = parse_overrides(CompressSpec, [
        "--model", str(model_dir), "--recipe", "w4a16", "--recipe_args.group_size", "64",
        "--recipe-args.ignore", '["lm_head", "re:.*gate"]', "--num-samples=8", "--calibration", "none",
        "--tags", "a,b", "--code.working_dir", "sub", "--verify", "false"])
    assert values["recipe_args"] == {"group_size": 64, "ignore": ["lm_head", "re:.*gate"]}
    assert values["num_samples"] == 8 and values["verify"] is False
    # "none" is no calibration data, which GPTQ cannot do without:
    with pytest.raises(SpecError, match=r"calibration: recipe 'w4a16' observes calibration data; set calibration"):
        build(CompressSpec, values)
    assert build(CompressSpec, {**values, "calibration": "tiny"}).calibration == "tiny"  # type: ignore[attr-defined]
    assert values["tags"] == ["a", "b"] and values["code"] == {"working_dir": "sub"}
    spec = spec_from_cli("evaluate", ["--model", str(model_dir), "--tasks", '["x","y"]', "--limit", "4",
                                      "--batch-size", "auto", "--vllm_args.max_model_len", "4096"])
    assert isinstance(spec, EvaluateSpec)
    assert spec.tasks == ("x", "y") and spec.limit == 4.0 and spec.batch_size == "auto"
    assert spec.vllm_args == {"max_model_len": 4096}
    with pytest.raises(SpecError, match=r"--num-samples: 'x' is not a valid value"):
        parse_overrides(CompressSpec, ["--num-samples", "x"])
    with pytest.raises(SpecError, match=r"--recipee: unknown field"):
        parse_overrides(CompressSpec, ["--recipee", "w4a16"])


def test_cli_commands(model_dir: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(standards_app, ["list", "--json"])
    assert out.exit_code == 0, out.output
    assert set(json.loads(out.output)) == {"recipes", "suites", "profiles"}
    out = runner.invoke(task_app, ["fields", "benchmark"], terminal_width=200)
    assert out.exit_code == 0 and "max_error_fraction" in out.output and "configuration" in out.output
    out = runner.invoke(task_app, ["submit", "compress", "--model", str(model_dir), "--recipe", "w4a16",
                                   "--recipe_args.group_size", "96", "--dry-run"], terminal_width=200)
    assert out.exit_code == 2 and "does not divide hidden_size=128" in out.output
    out = runner.invoke(task_app, ["submit", "compress", "--model", str(model_dir), "--recipe", "w8a8",
                                   "--calibration", "tiny", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["recipe"] == "w8a8"
    out = runner.invoke(task_app, ["fields", "compress"], terminal_width=200)
    assert out.exit_code == 0 and "--calibration_options.messages_column" in out.output, out.output
    assert "--model_class" in out.output and "CalibrationOptions() (keys below)" in out.output
    out = runner.invoke(task_app, ["fields", "nope"])
    assert out.exit_code == 2


def test_a_package_that_conflicts_with_the_kind_is_a_validation_error(model_dir: Path) -> None:
    with pytest.raises(SpecError, match=r"packages: conflicting pins for transformers: 'transformers==5\.17\.0' "
                                        r"and 'transformers==4\.0'.*compress kind itself requires"):
        build(CompressSpec, {"model": str(model_dir), "recipe": "w4a16", "packages": ["transformers==4.0"]})
    ok = CompressSpec(model=str(model_dir), recipe="w4a16", packages=("transformers", "tqdm==4.67.1"))
    assert "transformers==5.17.0" in ok.requirements() and ok.identity()
    out = CliRunner().invoke(task_app, ["submit", "compress", "--model", str(model_dir), "--recipe", "w4a16",
                                        "--packages", "transformers==4.0", "--dry-run"], terminal_width=300)
    assert out.exit_code == 2, out.output
    assert "packages: conflicting pins" in out.output and "Traceback" not in out.output


def test_cli_keeps_the_text_of_string_typed_targets(model_dir: Path) -> None:
    values = parse_overrides(BenchmarkSpec, [
        "--server_env.OMP_NUM_THREADS", "1", "--server_env.FLAG", "on", "--server_env.EMPTY=",
        "--code.working_dir", "010", "--code.repository", "none"])
    assert values["server_env"] == {"OMP_NUM_THREADS": "1", "FLAG": "on", "EMPTY": ""}
    assert values["code"] == {"working_dir": "010", "repository": None}
    # untyped targets (recipe arguments) are still parsed, so group sizes stay numbers
    assert parse_overrides(CompressSpec, ["--recipe_args.group_size", "64"])["recipe_args"] == {"group_size": 64}
    out = CliRunner().invoke(task_app, ["submit", "benchmark", "--model", str(model_dir), "--profile", "smoke",
                                        "--server_env.OMP_NUM_THREADS", "1", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["server_env"] == {"OMP_NUM_THREADS": "1"}


def test_a_suite_file_with_a_relative_include_path(tmp_path: Path, model_dir: Path) -> None:
    suites = tmp_path / "my-suites"
    shutil.copytree(REPO / "automation/standards/suites/tiny", suites / "tasks")
    path = suites / "mine.yaml"
    path.write_text("# my suite\ninclude_path: tasks\ntasks: [tiny_mc]\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    spec = EvaluateSpec(model=str(model_dir), suite=str(path))
    suite = spec.resolved_suite()
    assert suite is not None and suite.include_dir() == (suites / "tasks").resolve()
    back = EvaluateSpec.from_task_form(spec.to_args(), spec.to_configuration())
    assert back == spec and back.identity() == spec.identity()


def test_a_suite_file_has_the_same_identity_wherever_it_sits(tmp_path: Path, model_dir: Path) -> None:
    """The spec keeps the absolute include_path for the run, but the identity is the suite's content."""
    def suite_file(where: Path) -> Path:
        shutil.copytree(REPO / "automation/standards/suites/tiny", where / "tasks")
        path = where / "mine.yaml"
        path.write_text("# my suite\ndescription: mine\ninclude_path: tasks\ntasks: [tiny_mc, tiny_gen]\n")
        return path

    first, second = suite_file(tmp_path / "a"), suite_file(tmp_path / "b/c")
    one = EvaluateSpec(model=str(model_dir), suite=str(first))
    two = EvaluateSpec(model=str(model_dir), suite=str(second))
    assert one.suite != two.suite  # each run reads its own directory...
    identity = one.identity()
    assert two.identity() == identity  # ...but it is the same evaluation
    back = EvaluateSpec.from_task_form(two.to_args(), two.to_configuration())
    assert back.identity() == identity
    # the suite's settings are still in the identity
    assert EvaluateSpec(model=str(model_dir), suite=str(first), num_fewshot=1).identity() != identity
    # and so is what its task files hold (the identity is computed from the files as they are now)
    data = second.parent / "tasks/mc.jsonl"
    data.write_text(data.read_text() + data.read_text().splitlines(keepends=True)[0])
    assert two.identity() != identity and one.identity() == identity
    task = first.parent / "tasks/tiny_mc.yaml"
    task.write_text(task.read_text().replace("Q: {{question}}", "Question: {{question}}"))
    assert one.identity() != identity
    # a shipped name still identifies by its name (and its content)
    assert EvaluateSpec(model=str(model_dir), suite="tiny").identity_payload()["spec"]["suite"] == "tiny"


@pytest.mark.parametrize(("model_type", "family"), [("llama", "llama"), ("qwen2", "qwen2"), ("mixtral", "mixtral")])
def test_w8a8_takes_the_family_of_the_model_type(model_type: str, family: str) -> None:
    from automation.standards.recipes import effective_arguments

    assert effective_arguments("w8a8", {}, {"model_type": model_type})["family"] == family
    assert "family" not in effective_arguments("w8a8", {"mappings": [[["a"], "b"]]}, {"model_type": model_type})


def test_w8a8_on_an_unknown_model_type_names_the_fields_to_set(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "phi3"}))
    with pytest.raises(SpecError, match=r"recipe_args: .*no SmoothQuant family for model_type 'phi3'.*"
                                        r"recipe_args\.family.*recipe_args\.mappings"):
        build(CompressSpec, {"model": str(model_dir), "recipe": "w8a8", "calibration": "tiny"})
    assert CompressSpec(model=str(model_dir), recipe="w8a8", recipe_args={"family": "llama"})
    assert CompressSpec(model=str(model_dir), recipe="w4a16")  # no SmoothQuant, no family needed


def test_vllm_needs_at_least_one_gpu(model_dir: Path) -> None:
    with pytest.raises(SpecError, match=r"gpus: .*engine 'vllm' needs at least one GPU"):
        build(BenchmarkSpec, {"model": str(model_dir), "profile": "smoke", "engine": "vllm", "gpus": 0})
    assert BenchmarkSpec(model=str(model_dir), profile="smoke", engine="vllm", gpus=1).gpus == 1
    assert BenchmarkSpec(model=str(model_dir), profile="smoke", engine="transformers", gpus=0).gpus == 0


def test_identity_follows_the_content_of_shipped_standards(model_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec names a shipped standard; editing that YAML must not reuse results of the old one."""
    import automation.standards as standards

    def specs() -> dict[str, TaskSpec]:
        return {"compress": CompressSpec(model=str(model_dir), recipe="w4a16", calibration="tiny"),
                "evaluate": EvaluateSpec(model=str(model_dir), suite="tiny"),
                "benchmark": BenchmarkSpec(model=str(model_dir), profile="smoke")}

    before = {kind: spec.identity() for kind, spec in specs().items()}
    assert {kind: spec.identity() for kind, spec in specs().items()} == before  # deterministic
    shipped = REPO / "automation/standards"
    edited = tmp_path / "standards"
    shutil.copytree(shipped, edited, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setattr(standards, "SUITES_DIR", edited / "suites")
    monkeypatch.setitem(standards._DIRS, "recipe", edited / "recipes")
    monkeypatch.setitem(standards._DIRS, "suite", edited / "suites")
    monkeypatch.setitem(standards._DIRS, "profile", edited / "profiles")
    # an identical copy elsewhere: same content, same identities (no install path in them)
    assert {kind: spec.identity() for kind, spec in specs().items()} == before
    # a description or a comment changes nothing the task does
    smoke = edited / "profiles/smoke.yaml"
    smoke.write_text("# another comment\n" + smoke.read_text().replace("Tiny synchronous", "Small synchronous"))
    assert specs()["benchmark"].identity() == before["benchmark"]

    recipe = edited / "recipes/w4a16.yaml"
    recipe.write_text(recipe.read_text().replace("num_bits: 4", "num_bits: 3"))
    smoke.write_text(smoke.read_text().replace("max_requests: 6", "max_requests: 7"))
    data = edited / "suites/tiny/mc.jsonl"
    data.write_text(data.read_text() + data.read_text().splitlines(keepends=True)[0])
    after = {kind: spec.identity() for kind, spec in specs().items()}
    assert all(after[kind] != before[kind] for kind in before), (before, after)
