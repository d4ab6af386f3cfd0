"""End to end on CPU: tiny model -> compress (3 recipes) -> lm-eval -> serve -> GuideLLM.

Every ML step runs in its own subprocess through the lib CLIs, as a core script would, so torch
never loads into the pytest process and each step's peak memory is its own.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from automation.errors import RecipeError, ServerError
from automation.serving import ManagedServer
from automation.standards import load_profile, suite_dir
from automation.standards.recipes import check_recipe_applies, render_recipe

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RECIPES = {"w4a16": "tiny", "w8a8": "tiny", "fp8_dynamic": "none"}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_lib(module: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    """Run `python -m automation.scripts.lib.<module> ...` and return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-m", f"automation.scripts.lib.{module}", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return dict(json.loads(last))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlcore")


@pytest.fixture(scope="module")
def tiny(work: Path) -> dict[str, Any]:
    return run_lib("tiny_model", "--out", str(work / "base"))


@pytest.fixture(scope="module")
def compressed(tiny: dict[str, Any], work: Path) -> dict[str, dict[str, Any]]:
    return {
        name: run_lib(
            "compress_core",
            "--model", tiny["model_dir"],
            "--recipe", name,
            "--out", str(work / name),
            "--calibration", calibration,
            "--num-samples", "32",
            "--max-seq-length", "64",
        )
        for name, calibration in RECIPES.items()
    }  # fmt: skip


def _evaluate(model_dir: str, out: Path) -> dict[str, Any]:
    return run_lib(
        "evaluate_core", "--model", model_dir, "--tasks", "tiny", "--suite", "tiny", "--out", str(out)
    )


@pytest.fixture(scope="module")
def evals(
    tiny: dict[str, Any], compressed: dict[str, dict[str, Any]], work: Path
) -> dict[str, dict[str, Any]]:
    return {
        "base": _evaluate(tiny["model_dir"], work / "eval_base.json"),
        "w8a8": _evaluate(compressed["w8a8"]["output_dir"], work / "eval_w8a8.json"),
    }


def metric(result: dict[str, Any], task: str, name: str) -> float:
    value = result["tasks"][task]["metrics"][name]["value"]
    assert isinstance(value, float | int) and math.isfinite(value), f"{task}/{name} = {value!r}"
    return float(value)


def test_tiny_model_builds_and_trains(tiny: dict[str, Any]) -> None:
    model_dir = Path(tiny["model_dir"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 2
    assert 256 < tiny["vocab_size"] <= 512
    assert tiny["final_loss"] < 1.0, "training did not converge"
    check_recipe_applies("w4a16", {}, {"hidden_size": 128, "intermediate_size": config["intermediate_size"]})


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_compress_saves_loadable_model(recipe: str, compressed: dict[str, dict[str, Any]]) -> None:
    result = compressed[recipe]
    out = Path(result["output_dir"])
    assert result["quant_method"] == "compressed-tensors"
    # Embeddings and lm_head stay 32-bit and dominate this tiny model; Linear weights shrink 4-8x.
    assert result["size_after_bytes"] < 0.6 * result["size_before_bytes"]
    assert result["compute_s"] > 0 and result["peak_rss_mb"] > 0
    # Our recipe text is what is saved, and it reads back with a safe loader.
    saved = (out / "recipe.yaml").read_text()
    assert saved == render_recipe(recipe, {})
    assert isinstance(yaml.safe_load(saved), dict)
    check = result["load_check"]
    assert check["new_tokens"] >= 1 and check["completion"].strip(), check


def test_base_model_scores_high(evals: dict[str, dict[str, Any]]) -> None:
    base = evals["base"]
    assert metric(base, "tiny_mc", "acc") >= 0.9
    assert metric(base, "tiny_mc", "acc_norm") >= 0.9
    assert metric(base, "tiny_gen", "exact_match,strip") >= 0.9
    assert 1.0 <= metric(base, "tiny_ppl", "word_perplexity") < 5.0
    for task in ("tiny_mc", "tiny_gen", "tiny_ppl"):
        assert base["tasks"][task]["n_samples"] == 32
    assert base["groups"]["tiny"]["metrics"]["acc"]["value"] == pytest.approx(metric(base, "tiny_mc", "acc"))


def test_full_lm_eval_results_are_kept(evals: dict[str, dict[str, Any]], work: Path) -> None:
    full = json.loads((work / "eval_base.lm_eval.json").read_text())
    assert {"results", "configs", "versions", "n-shot", "higher_is_better", "n-samples"} <= set(full)
    assert "samples" not in full and full["configs"]["tiny_mc"]["output_type"] == "multiple_choice"
    assert full["higher_is_better"]["tiny_ppl"]["word_perplexity"] is False


def test_compressed_model_recovers(evals: dict[str, dict[str, Any]]) -> None:
    base, w8a8 = evals["base"], evals["w8a8"]
    for task, name in (("tiny_mc", "acc"), ("tiny_gen", "exact_match,strip")):
        assert metric(w8a8, task, name) / metric(base, task, name) >= 0.95, (task, name)
    ppl_ratio = metric(w8a8, "tiny_ppl", "word_perplexity") / metric(base, "tiny_ppl", "word_perplexity")
    assert ppl_ratio <= 1.05


def test_serve_and_benchmark_smoke(compressed: dict[str, dict[str, Any]], work: Path) -> None:
    profile = load_profile("smoke")
    model_dir = compressed["w8a8"]["output_dir"]
    with ManagedServer(model_dir, engine="transformers", startup_timeout_s=120) as server:
        assert server.log_path.is_file()
        result = run_lib(
            "benchmark_core",
            "--target", server.base_url,
            "--model-name", server.model_name,
            "--tokenizer", model_dir,
            "--profile", "smoke",
            "--engine", "transformers",
            "--out", str(work / "bench"),
            timeout=120,
        )  # fmt: skip
        pid = server.pid
    assert pid is not None and not Path(f"/proc/{pid}").exists(), "server still running after exit"
    html = work / "bench" / "guidellm_report.html"
    assert html.is_file() and "<html" in html.read_text()[:2000].lower()
    (bench,) = result["benchmarks"]
    totals = bench["request_totals"]
    assert totals["errored"] == 0 and totals["incomplete"] == 0
    assert totals["successful"] == profile["max_requests"]
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "request_latency_s"):
        for stat in ("median", "p90", "p99"):
            assert bench[key][stat] is not None and bench[key][stat] > 0, (key, stat)
    assert bench["requests_per_s"] > 0 and bench["output_tokens_per_s"] > 0


def test_server_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerError, match="already in use"), ManagedServer(tmp_path, port=port):
            pass
    # No model there: the process exits and the error carries its log tail, long before the deadline.
    server = ManagedServer(tmp_path / "missing-model", startup_timeout_s=120)
    with pytest.raises(ServerError, match="exited with code") as info, server:
        pass
    assert str(server.log_path) in str(info.value)


def test_recipe_validation_names_the_culprit() -> None:
    with pytest.raises(RecipeError, match="'group_sz'"):
        render_recipe("w4a16", {"group_sz": 64})
    with pytest.raises(RecipeError, match="does not divide hidden_size"):
        check_recipe_applies("w4a16", {"group_size": 96}, {"hidden_size": 128})
    rendered = yaml.safe_load(render_recipe("w8a8", {"family": "mixtral", "smoothing_strength": 0.5}))
    smooth = rendered["default_stage"]["default_modifiers"]["SmoothQuantModifier"]
    assert smooth["smoothing_strength"] == 0.5 and len(smooth["mappings"]) == 1
    assert suite_dir("tiny").joinpath("tiny_mc.yaml").is_file()
