"""Compress a model directory with llm-compressor `oneshot` and a rendered recipe."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from automation.scripts.lib import (
    dir_size_bytes,
    hub_access,
    peak_rss_mb,
    weights_size_bytes,
    write_json,
)
from automation.scripts.lib.tiny_model import tiny_corpus


def _tiny_calibration(num_samples: int) -> Any:
    from datasets import Dataset

    texts = tiny_corpus()
    # Cycle the ~100 facts so any requested sample count is honoured exactly.
    rows = [texts[i % len(texts)] for i in range(num_samples)]
    return Dataset.from_dict({"text": rows})


# Named calibration sets built locally. Any other name is handed to llm-compressor as a dataset id
# (its own aliases such as "open_platypus" or a hub id), which needs the network.
CALIBRATION_SETS: dict[str, Callable[[int], Any]] = {"tiny": _tiny_calibration}


def calibration_needs_hub(name: str | None) -> bool:
    return name is not None and name not in CALIBRATION_SETS


def calibration_dataset(name: str, num_samples: int) -> Any:
    builder = CALIBRATION_SETS.get(name)
    return builder(num_samples) if builder else name


def load_and_generate(
    model_dir: Path, prompt: str = "Q: What color is the brabel?\nA:", max_new_tokens: int = 4
) -> dict[str, Any]:
    """Load with plain transformers on CPU (no llm-compressor in the path) and generate greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Any: transformers' stubs type generate() on a mixin mypy cannot match to the Auto class.
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", device_map="cpu")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    completion = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {
        "prompt": prompt,
        "completion": completion,
        "new_tokens": int(out.shape[1] - inputs["input_ids"].shape[1]),
        "load_generate_s": round(time.monotonic() - start, 2),
    }


def compress(
    model_dir: Path,
    recipe_yaml: str,
    out_dir: Path,
    calibration: str | None = "tiny",
    num_samples: int = 64,
    max_seq_length: int = 128,
    seed: int = 0,
    verify: bool = True,
) -> dict[str, Any]:
    """Apply `recipe_yaml` (already rendered, see automation.standards.recipes) and save compressed.

    `calibration=None` skips calibration data (enough for data-free schemes such as FP8_DYNAMIC).
    The recipe text we were given is saved as recipe.yaml: llm-compressor's own dump of a
    SmoothQuant recipe holds `!!python/tuple` tags that safe YAML loaders refuse.
    """
    # The model is a local directory by now; only a calibration set that is not built in comes
    # from the hub. Run as a step, the script's main has decided already (a hub model too) and
    # this call keeps that decision.
    hub_access(needed=calibration_needs_hub(calibration))
    start = time.monotonic()
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = calibration_dataset(calibration, num_samples) if calibration else None
    compute_start = time.monotonic()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        recipe=recipe_yaml,
        dataset=dataset,
        num_calibration_samples=num_samples,
        max_seq_length=max_seq_length,
        shuffle_calibration_samples=False,
    )
    compute_s = time.monotonic() - compute_start
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "recipe.yaml").write_text(recipe_yaml)
    config = json.loads((out_dir / "config.json").read_text())
    quant = config.get("quantization_config", {})
    result: dict[str, Any] = {
        "model_dir": str(model_dir),
        "output_dir": str(out_dir),
        "calibration": calibration,
        "num_samples": num_samples if calibration else 0,
        "max_seq_length": max_seq_length,
        "quant_method": quant.get("quant_method"),
        "format": quant.get("format"),
        "compute_s": round(compute_s, 2),
        "wall_s": round(time.monotonic() - start, 2),
        "peak_rss_mb": peak_rss_mb(),
        "size_before_bytes": weights_size_bytes(model_dir),
        "size_after_bytes": weights_size_bytes(out_dir),
        "dir_size_after_bytes": dir_size_bytes(out_dir),
    }
    result["size_ratio"] = round(result["size_after_bytes"] / max(result["size_before_bytes"], 1), 4)
    if verify:
        result["load_check"] = load_and_generate(out_dir)
    write_json(out_dir / "compress_result.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--recipe", required=True, help="a shipped recipe name or a template file path")
    parser.add_argument("--recipe-args", default="{}", help="JSON object of template arguments")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calibration", default="tiny", help="'none' for data-free schemes")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args(argv)
    from automation.standards.recipes import render_recipe

    source = Path(args.recipe).read_text() if Path(args.recipe).is_file() else args.recipe
    recipe_text = render_recipe(source, json.loads(args.recipe_args))
    calibration = None if args.calibration == "none" else args.calibration
    result = compress(
        args.model,
        recipe_text,
        args.out,
        calibration,
        args.num_samples,
        args.max_seq_length,
        verify=not args.no_verify,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
