"""Compression breadth at plan time: every named recipe validates as a compress spec from the
command line; fixed preset granularities, dtypes, the KV-cache argument, model options and
calibration loaders are checked before anything is queued, with errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from automation.cli import app
from automation.errors import RecipeError, SpecError
from automation.specs.base import build
from automation.specs.compress import CompressSpec
from automation.standards import names
from automation.standards.calibration import CalibrationOptions
from automation.standards.recipes import (
    check_recipe_applies,
    load_template,
    model_dims_from_config,
    render_recipe,
)

# What "Compression breadth" asks for, by name.
NAMED_RECIPES = ("w4a16", "w4a16_asym", "w8a16", "w8a8", "int8", "fp8", "fp8_dynamic", "fp8_block", "nvfp4",
                 "nvfp4a16", "mxfp4", "mxfp4a16", "w4afp8", "awq_w4a16", "autoround_w4a16", "sparsegpt_2of4")
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 4, "dtype": "float32"}))
    (d / "tokenizer.json").write_text("{}")
    return d


def _dry_run(*argv: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["task", "submit", "compress", *argv, "--dry-run"])
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.output


def test_every_named_recipe_is_shipped() -> None:
    assert set(NAMED_RECIPES) == set(names("recipe"))
    for name in NAMED_RECIPES:
        template = load_template(name)
        assert template.description and yaml.safe_load(render_recipe(name, {}))


@pytest.mark.parametrize("name", NAMED_RECIPES)
def test_named_recipe_validates_as_a_compress_spec_from_the_cli(name: str, model_dir: Path) -> None:
    template = load_template(name)
    argv = ["--model", str(model_dir), "--recipe", name, "--calibration",
            "tiny" if template.calibration_needed({}) else "none"]
    if template.model_dtypes:
        argv += ["--dtype", "bfloat16"]
    code, out = _dry_run(*argv)
    assert code == 0, out
    spec = json.loads(out)
    assert spec["recipe"] == name and len(spec["identity"]) == 32


def test_presets_agree_with_compressed_tensors() -> None:
    """The granularity a recipe fixes (for the model check) is the preset's own."""
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    for name in names("recipe"):
        template = load_template(name)
        scheme = template.arguments.get("scheme")
        if scheme is None:
            continue
        weights = PRESET_SCHEMES[scheme.default]["weights"]
        if "group_size" in template.arguments:
            assert template.arguments["group_size"].default == weights.group_size, name
        if "block" in template.arguments:
            assert weights.block_structure == [template.arguments["block"].default] * 2, name


def test_fixed_arguments_and_granularity_are_checked() -> None:
    with pytest.raises(RecipeError, match="argument 'scheme' is fixed at 'NVFP4'"):
        render_recipe("nvfp4", {"scheme": "W4A16"})
    with pytest.raises(RecipeError, match=r"'group_size'=16 does not divide hidden_size=100 \(it is fixed"):
        check_recipe_applies("nvfp4", {}, {"hidden_size": 100})
    with pytest.raises(RecipeError, match=r"'block'=128 does not divide kv_dim=64"):
        check_recipe_applies("fp8_block", {}, model_dims_from_config(
            {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 8, "num_key_value_heads": 2}))
    with pytest.raises(RecipeError, match=r"unknown argument\(s\) \['grup_size'\]"):
        render_recipe("w8a16", {"grup_size": 64})


def test_kv_cache_scheme_renders_and_needs_data() -> None:
    plain = yaml.safe_load(render_recipe("fp8_dynamic", {}))
    assert "kv_cache_scheme" not in plain["default_stage"]["default_modifiers"]["QuantizationModifier"]
    for name in ("fp8_dynamic", "w4a16", "w8a8", "nvfp4", "w8a16"):
        stage = yaml.safe_load(render_recipe(name, {"kv_cache_scheme": "fp8"}))["default_stage"]
        (kv,) = [m["kv_cache_scheme"] for m in stage["default_modifiers"].values() if "kv_cache_scheme" in m]
        assert kv == {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
    assert load_template("fp8_dynamic").calibration_needed({"kv_cache_scheme": "fp8"})
    with pytest.raises(RecipeError, match=r"'kv_cache_scheme' must be one of \['fp8'\]"):
        render_recipe("fp8", {"kv_cache_scheme": "int4"})


def test_spec_errors_name_the_field(model_dir: Path) -> None:
    base: dict[str, Any] = {"model": str(model_dir)}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"recipe": "nvfp4", "calibration": "tiny"}, r"dtype: recipe 'nvfp4' needs a bfloat16 or float16 model .* "
                                                      r"this one is float32: set dtype: bfloat16"),
        ({"recipe": "w4a16", "calibration": None}, r"calibration: recipe 'w4a16' observes calibration data"),
        ({"recipe": "fp8_dynamic", "calibration": None, "recipe_args": {"kv_cache_scheme": "fp8"}},
         r"calibration: recipe 'fp8_dynamic' observes calibration data"),
        ({"recipe": "w4a16", "calibration": "tiny", "model_class": "auto model"},
         r"model_class: .*'auto model' is not a transformers class name"),
        ({"recipe": "w4a16", "calibration": "tiny", "dtype": "float64"}, r"dtype: Input should be 'auto'"),
        ({"recipe": "w4a16", "calibration": "open_platypus", "calibration_options": {"text_column": "x"}},
         r"calibration_options: calibration_options \['text_column'\] do not apply to llm-compressor's alias"),
        ({"recipe": "w4a16", "calibration": "tiny", "calibration_options": {"subset": "x"}},
         r"do not apply to the built-in set 'tiny'"),
        ({"recipe": "w4a16", "calibration": "org/data", "calibration_options": {"apply_chat_template": True}},
         r"apply_chat_template needs messages_column"),
        ({"recipe": "w4a16", "calibration": "file:x.jsonl"}, r"carries no rows: give the path of a local .jsonl"),
    ]
    for values, match in cases:
        with pytest.raises(SpecError, match=match):
            build(CompressSpec, {**base, **values})
    assert CompressSpec(**base, recipe="nvfp4", calibration="tiny", dtype="bfloat16").dtype == "bfloat16"


def test_hub_calibration_options_enter_the_identity(model_dir: Path) -> None:
    def spec(**options: Any) -> CompressSpec:
        return CompressSpec(model=str(model_dir), recipe="w4a16", calibration="HuggingFaceH4/ultrachat_200k",
                            calibration_options=CalibrationOptions(**options))

    plain = spec()
    assert plain.identity() == CompressSpec(model=str(model_dir), recipe="w4a16",
                                            calibration="HuggingFaceH4/ultrachat_200k").identity()
    pinned = spec(split="train_sft[:512]", revision="a" * 40, messages_column="messages", apply_chat_template=True)
    assert len({plain.identity(), pinned.identity(), spec(split="train_sft[:512]").identity()}) == 3


def test_local_jsonl_travels_in_the_spec_and_its_content_is_the_identity(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "red"}]}
            for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options: dict[str, Any] = {"messages_column": "messages", "apply_chat_template": True,
                               "chat_template": CHAT_TEMPLATE}
    spec = CompressSpec(model=str(model_dir), recipe="w4a16", calibration=str(path), calibration_options=options)
    assert spec.calibration == "file:chat.jsonl" and spec.calibration_options.rows == path.read_text()
    # Read back from the task form (what an agent on another host gets): the same rows, no file needed.
    path.unlink()
    again = CompressSpec.from_task_form(spec.to_args(), spec.to_configuration())
    assert isinstance(again, CompressSpec)
    assert again.identity() == spec.identity() and again.calibration_options.rows == spec.calibration_options.rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    assert CompressSpec(model=str(model_dir), recipe="w4a16", calibration=str(path),
                        calibration_options=options).identity() != spec.identity()
    path.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n{"text": "no messages"}\n')
    with pytest.raises(SpecError, match=r"line 2: column 'messages' must hold a non-empty list of "
                                        r"\{role, content\} messages"):
        build(CompressSpec, {"model": str(model_dir), "recipe": "w4a16", "calibration": str(path),
                             "calibration_options": options})
    with pytest.raises(SpecError, match=r"calibration file '.*missing.jsonl' cannot be read"):
        build(CompressSpec, {"model": str(model_dir), "recipe": "w4a16",
                             "calibration": str(tmp_path / "missing.jsonl")})


def test_cli_takes_calibration_options_and_model_options(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "text.jsonl"
    path.write_text('{"body": "a calibration sentence"}\n')
    code, out = _dry_run("--model", str(model_dir), "--recipe", "w8a16", "--calibration", str(path),
                         "--calibration-options.text-column", "body", "--calibration-options.shuffle", "true",
                         "--model-class", "AutoModelForCausalLM", "--trust-remote-code", "true", "--dtype", "float16")
    assert code == 0, out
    spec = json.loads(out)
    assert spec["calibration"] == "file:text.jsonl" and spec["calibration_options"]["text_column"] == "body"
    assert spec["calibration_options"]["shuffle"] is True and spec["trust_remote_code"] is True
    assert spec["dtype"] == "float16" and spec["model_class"] == "AutoModelForCausalLM"


def test_standards_recipe_shows_arguments_and_needs() -> None:
    res = CliRunner().invoke(app, ["standards", "recipe", "nvfp4", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["needs"]["model dtypes"] == "bfloat16, float16" and shown["needs"]["calibration"] == "required"
    assert shown["arguments"]["group_size"] == {"type": "int", "default": 16, "fixed": True, "choices": None,
                                                "min": None, "max": None,
                                                "divides": ["hidden_size", "intermediate_size"],
                                                "help": "the preset's group size (scales per group of input columns)"}
    assert shown["rendered"] == render_recipe("nvfp4", {})
    res = CliRunner().invoke(app, ["standards", "recipe", "awq_w4a16"])
    assert res.exit_code == 0 and "GPU only" in res.output and "list[str]" in res.output, res.output
    res = CliRunner().invoke(app, ["standards", "recipe", "nope"])
    assert res.exit_code == 2 and "unknown recipe 'nope'" in res.output and "Traceback" not in res.output
