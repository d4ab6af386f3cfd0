"""Compress a model directory with llm-compressor `oneshot` and a rendered recipe."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from automation.errors import AcceleratorRequired, ModelInputError
from automation.scripts.lib import (
    dir_size_bytes,
    hub_access,
    peak_rss_mb,
    weights_size_bytes,
    write_json,
)
from automation.scripts.lib.calibration_data import load as load_calibration
from automation.scripts.lib.calibration_data import needs_hub
from automation.scripts.lib.model_tree import meta_model, model_class
from automation.scripts.lib.output_checks import check_output, recipe_modifiers
from automation.standards.calibration import CalibrationOptions


def device_check(requires_gpu: str, recipe: str) -> None:
    """Fail fast, before the model is read, when the recipe has no CPU path and there is no GPU."""
    if not requires_gpu:
        return
    import torch

    if not torch.cuda.is_available():
        raise AcceleratorRequired(f"recipe {recipe!r} needs a GPU ({requires_gpu}) and this host has none; "
                                  "send the step to a GPU queue")


def model_free_scheme(recipe_yaml: str) -> tuple[str, list[str]] | None:
    """(preset scheme, ignore list) when the recipe is one preset applied round-to-nearest to every
    Linear, which `model_free_ptq` does straight on the safetensors; else None."""
    modifiers = recipe_modifiers(recipe_yaml)
    if len(modifiers) != 1:
        return None
    name, args = modifiers[0]
    if name != "QuantizationModifier" or not isinstance(args.get("scheme"), str) or args.get("kv_cache_scheme"):
        return None
    if list(args.get("targets") or ["Linear"]) != ["Linear"] or set(args) - {"targets", "ignore", "scheme"}:
        return None
    return args["scheme"], list(args.get("ignore") or [])


def _model_free(model_dir: Path, out_dir: Path, scheme: str, ignore: list[str], model_class_name: str | None,
                trust_remote_code: bool) -> list[str]:
    """`model_free_ptq` with the recipe's `targets: [Linear]` kept: it quantizes every 2-D weight
    it finds (embeddings too, which then load back as garbage), so the weights of every other
    module are added to `ignore`. Returns what was added."""
    import torch
    from llmcompressor import model_free_ptq

    tree = meta_model(model_dir, model_class_name, trust_remote_code)
    others = [name for name, module in tree.named_modules() if name and not isinstance(module, torch.nn.Linear)
              and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2]
    model_free_ptq(str(model_dir), str(out_dir), scheme=scheme, ignore=[*ignore, *others], max_workers=1,
                   device="cuda" if torch.cuda.is_available() else "cpu")
    return others


def compress(
    model_dir: Path,
    recipe_yaml: str,
    out_dir: Path,
    calibration: str | None = "tiny",
    num_samples: int = 64,
    max_seq_length: int = 128,
    seed: int = 0,
    verify: bool = True,
    *,
    calibration_options: CalibrationOptions | None = None,
    model_class_name: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    model_free: bool = False,
    requires_gpu: str = "",
    recipe_name: str = "<inline>",
    check_prompt: str = "Q: What is the capital of France?\nA:",
) -> dict[str, Any]:
    """Apply `recipe_yaml` (already rendered, see automation.standards.recipes) and save compressed.

    `calibration=None` skips calibration data; a recipe that allows it (`model_free`) then runs
    through llm-compressor's `model_free_ptq` (weights quantized on the safetensors, the model is
    never built) unless a dtype change asks for the model to be loaded. With `verify`, the saved
    model goes through the output checks (output_checks.py), which raise BadArtifactError.
    The recipe text we were given is saved as recipe.yaml: llm-compressor's own dump of a
    SmoothQuant recipe holds `!!python/tuple` tags that safe YAML loaders refuse.
    """
    # The model is a local directory by now; only a calibration set that is not built in comes
    # from the hub. Run as a step, the script's main has decided already (a hub model too) and
    # this call keeps that decision.
    hub_access(needed=needs_hub(calibration))
    start = time.monotonic()
    options = calibration_options or CalibrationOptions()
    device_check(requires_gpu, recipe_name)
    cls = model_class(model_class_name)
    import torch

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    torch.manual_seed(seed)
    free = model_free_scheme(recipe_yaml) if model_free and calibration is None and dtype == "auto" else None
    calibration_info: dict[str, Any] = {"source": calibration}
    kept: list[str] = []
    if free is not None:
        from transformers import AutoTokenizer

        compute_start = time.monotonic()
        kept = _model_free(model_dir, out_dir, *free, model_class_name, trust_remote_code)
        compute_s = time.monotonic() - compute_start
        AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code).save_pretrained(out_dir)
        path = "model_free_ptq"
    else:
        from llmcompressor import oneshot
        from transformers import AutoTokenizer

        model = cls.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        dataset = None
        if calibration:
            try:
                dataset, calibration_info = load_calibration(calibration, options, tokenizer, num_samples,
                                                             max_seq_length, seed)
            except ValueError as exc:  # a column or template the spec could not check before the run
                raise ModelInputError(str(exc)) from None
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
        path = "oneshot"
    (out_dir / "recipe.yaml").write_text(recipe_yaml)
    config = json.loads((out_dir / "config.json").read_text())
    quant = config.get("quantization_config") or {}
    result: dict[str, Any] = {
        "model_dir": str(model_dir),
        "output_dir": str(out_dir),
        "path": path,
        "kept_unquantized": kept,
        "calibration": calibration,
        "calibration_data": calibration_info,
        "num_samples": calibration_info.get("samples", num_samples) if calibration else 0,
        "max_seq_length": max_seq_length,
        "dtype": dtype,
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
        result["output_checks"] = check_output(out_dir, recipe_yaml, check_prompt, model_class=model_class_name,
                                               trust_remote_code=trust_remote_code)
        result["load_check"] = result["output_checks"].get("generation", {})
    result["wall_s"] = round(time.monotonic() - start, 2)
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
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    from automation.standards.recipes import load_template, render_recipe

    source = Path(args.recipe).read_text() if Path(args.recipe).is_file() else args.recipe
    template = load_template(source)
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
        dtype=args.dtype,
        model_free=template.model_free,
        requires_gpu=template.requires_gpu,
        recipe_name=template.name,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
