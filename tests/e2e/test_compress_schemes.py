"""Every named recipe on the tiny model on CPU, with its output checks; and the checks catching
damaged outputs.

The recipes run in one subprocess (testing/scheme_matrix.py: torch and llm-compressor load once,
~35 s for all); torch never loads into the pytest process. A recipe without a CPU path
(`requires_gpu`: AWQ in llm-compressor 0.14) is validated only: on this host it must fail fast
with the GPU message, before the model is read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from automation.standards import names
from automation.standards.recipes import load_template
from testing.scheme_matrix import RUNS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PROMPT = "Q: What color is the brabel?\nA:"
DATA_FREE = {"int8", "fp8_dynamic", "fp8_block"}  # float32 model, no calibration: model_free_ptq


@pytest.fixture(scope="module")
def matrix(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("schemes")
    proc = subprocess.run([sys.executable, "-m", "testing.scheme_matrix", "--model", str(tiny_model),
                           "--out", str(out)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(proc.stdout)  # the table, for the log
    rows: dict[str, dict[str, Any]] = json.loads((out / "matrix.json").read_text())
    return rows


def test_the_matrix_covers_every_named_recipe() -> None:
    assert {how.get("recipe", label) for label, how in RUNS.items()} == set(names("recipe"))


@pytest.mark.parametrize("label", sorted(RUNS))
def test_recipe_runs_on_cpu_or_fails_fast_without_a_gpu(label: str, matrix: dict[str, dict[str, Any]]) -> None:
    row = matrix[label]
    template = load_template(row["recipe"])
    if template.requires_gpu:
        assert row["outcome"] == "validated only", row
        assert "needs a GPU" in row["error"] and "GPU queue" in row["error"] and row["seconds"] < 5
        return
    assert row["outcome"] == "ran", row.get("traceback", row)
    result = row["result"]
    checks = result["output_checks"]
    assert checks["problems"] == [] and checks["generation"]["new_tokens"] >= 1
    assert checks["generation"]["completion"].strip(), checks
    assert result["path"] == ("model_free_ptq" if label in DATA_FREE else "oneshot")
    if label in DATA_FREE:  # `targets: [Linear]` kept: model_free_ptq would quantize the embedding too
        assert result["kept_unquantized"] == ["model.embed_tokens"]
    assert result["compute_s"] > 0 and result["peak_rss_mb"] > 0 and result["wall_s"] >= result["compute_s"]
    out = Path(result["output_dir"])
    config = json.loads((out / "config.json").read_text())
    if label == "sparsegpt_2of4":  # dense storage, half the weights zero
        assert checks["sparsity"]["weights_checked"] == 14 and checks["sparsity"]["weights_not_sparse"] == 0
        return
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    # The tiny model's float32 embeddings and lm_head stay as they are; Linear weights shrink 2-8x.
    assert result["size_ratio"] < 0.5, result["size_ratio"]
    assert bool(quant.get("kv_cache_scheme")) == (label == "fp8+kv_cache")
    if row["dtype"] == "bfloat16":
        assert config["dtype"] == "bfloat16"


def _check(model_dir: Path, recipe: str) -> dict[str, Any]:
    """Run the output checks on `model_dir` in a subprocess; the BadArtifactError message, or 'ok'."""
    code = ("import sys, json\n"
            "from automation.errors import BadArtifactError\n"
            "from automation.scripts.lib.output_checks import check_output\n"
            "from automation.standards.recipes import render_recipe\n"
            "for d, r in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    try:\n"
            f"        check_output(d, render_recipe(r), {PROMPT!r}); print(json.dumps({{'dir': d, 'error': None}}))\n"
            "    except BadArtifactError as e:\n"
            "        print(json.dumps({'dir': d, 'error': str(e), 'problems': e.report['problems']}))\n")
    return {"code": code, "args": [str(model_dir), recipe]}


def test_output_checks_catch_damaged_models(matrix: dict[str, dict[str, Any]], tiny_model: Path,
                                           tmp_path: Path) -> None:
    good = Path(matrix["w4a16"]["result"]["output_dir"])
    cases: dict[str, tuple[Path, str]] = {}

    def damaged(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(good, target)
        return target

    no_tokenizer = damaged("no-tokenizer")
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / tokenizer_file).unlink()
    cases["no-tokenizer"] = (no_tokenizer, "w4a16")
    wrong_format = damaged("wrong-format")
    (wrong_format / "config.json").write_text(json.dumps([{"hidden_size": 128}]))
    cases["wrong-format"] = (wrong_format, "w4a16")
    no_weights = damaged("no-weights")
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    cases["no-weights"] = (no_weights, "w4a16")
    cases["other-scheme"] = (good, "w8a16")  # a W4A16 model is not what a W8A16 recipe makes
    cases["not-sparse"] = (tiny_model, "sparsegpt_2of4")  # the dense base model: nothing pruned
    zeroed = damaged("zeroed")  # loads, but every weight is NaN: nothing sensible comes out
    code = ("import sys, torch\nfrom safetensors.torch import load_file, save_file\n"
            "p = sys.argv[1]; t = load_file(p)\n"
            "nan = {k: (torch.full_like(v, float('nan')) if v.is_floating_point() else v) for k, v in t.items()}\n"
            "save_file(nan, p, metadata={'format': 'pt'})")
    subprocess.run([sys.executable, "-c", code, str(next(zeroed.glob("*.safetensors")))], env=ENV, check=True,
                   timeout=120)
    cases["nan-weights"] = (zeroed, "w4a16")
    # model_free_ptq as it is, without the recipe's targets: it quantizes the embedding as well
    embedding = tmp_path / "embedding-quantized"
    code = ("import sys\nfrom llmcompressor import model_free_ptq\n"
            "model_free_ptq(sys.argv[1], sys.argv[2], scheme='FP8_DYNAMIC', ignore=['lm_head'], max_workers=1, "
            "device='cpu')")
    subprocess.run([sys.executable, "-c", code, str(tiny_model), str(embedding)], env=ENV, check=True, timeout=180,
                   capture_output=True)
    cases["embedding-quantized"] = (embedding, "fp8_dynamic")
    cases["good"] = (good, "w4a16")

    probe = _check(good, "w4a16")
    args = [a for path, recipe in cases.values() for a in (str(path), recipe)]
    proc = subprocess.run([sys.executable, "-c", probe["code"], *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_case = dict(zip(cases, found, strict=True))
    assert by_case["good"]["error"] is None
    expect = {"no-tokenizer": "no tokenizer", "wrong-format": "config.json is not a JSON object",
              "no-weights": "no weight files", "other-scheme": "no group matching the recipe",
              "not-sparse": "are not 2:4 sparse", "nan-weights": "non-finite logits",
              "embedding-quantized": "modules the recipe does not target (Linear) are stored quantized: "
                                     "model.embed_tokens (Embedding)"}
    for case, needle in expect.items():
        error = by_case[case]["error"]
        assert error and needle in error and error.startswith("compressed model in"), (case, error)


def test_dataset_loader_takes_split_column_and_shuffle(tiny_model: Path, tmp_path: Path) -> None:
    """The hub loader's code path (datasets.load_dataset, split slicing, column, shuffle with the
    seed) on a dataset directory: no network here, and `load_dataset` reads `org/name` from a
    directory of that name when there is one."""
    data = tmp_path / "calib" / "facts"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("".join(json.dumps({"body": f"fact number {i}.", "id": i}) + "\n"
                                              for i in range(10)))
    code = ("import json, sys\n"
            "from transformers import AutoTokenizer\n"
            "from automation.scripts.lib.calibration_data import load\n"
            "from automation.standards.calibration import CalibrationOptions\n"
            "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
            "opts = CalibrationOptions(split='train[:6]', text_column='body', shuffle=True)\n"
            "ds, info = load('calib/facts', opts, tok, 4, 16, 3)\n"
            "info['n'] = len(ds); info['columns'] = ds.column_names\n"
            "print(json.dumps(info))\n"
            "try:\n"
            "    load('calib/facts', CalibrationOptions(text_column='text'), tok, 4, 16, 3)\n"
            "except ValueError as e:\n"
            "    print(json.dumps({'error': str(e)}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_model)], cwd=tmp_path,
                          env={**ENV, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info, bad = (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    assert info["kind"] == "hub" and info["rows_available"] == 6 and info["samples"] == info["n"] == 4
    assert info["columns"] == ["input_ids", "attention_mask"] and info["fingerprint"]
    assert info["first_sample"].startswith("fact number ") and info["first_sample"] != "fact number 0."
    assert info["split"] == "train[:6]" and info["text_column"] == "body" and info["truncated"] == 0
    assert "no column 'text' (columns: body, id)" in bad["error"]


def test_unknown_model_class_is_one_line_before_the_model_is_fetched(tmp_path: Path, tiny_model: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "compress", "model": str(tiny_model), "recipe": "fp8_dynamic",
                                "calibration": None, "model_class": "NoSuchModelClass"}))
    proc = subprocess.run([sys.executable, "-m", "automation.scripts.compress", "--spec", str(spec), "--out",
                           str(tmp_path / "out")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "error: model_class: transformers 5.17.0 has no model class 'NoSuchModelClass'" in proc.stderr
    assert "fetching model" not in proc.stdout and not (tmp_path / "out" / "compress").exists()
