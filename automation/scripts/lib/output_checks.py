"""Is a compressed model a usable artifact? The checks llm-compressor's own e2e tests make.

1. files: config.json that parses, weights, and a tokenizer;
2. the quantization config matches what the recipe asked for (bits, type, strategy, group or
   block size of weights and activations, the KV-cache scheme), read with compressed-tensors' own
   preset definitions; some weight is actually stored quantized, and only weights of the modules
   the recipe targets are; a 2:4 pruning recipe leaves two zeros in every four weights;
3. it reloads with transformers alone (no llm-compressor in the path);
4. a greedy completion of a prompt is text (finite logits, not one token repeated, not empty).

A failed check raises BadArtifactError naming every failed check: the step fails as a bad
artifact (not retried) before any evaluation is queued on the model.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from automation.errors import BadArtifactError

WEIGHT_FIELDS = ("num_bits", "type", "strategy", "group_size", "block_structure", "symmetric")
ACTIVATION_FIELDS = ("num_bits", "type", "strategy", "dynamic")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def recipe_modifiers(recipe_yaml: str) -> list[tuple[str, dict[str, Any]]]:
    """(modifier name, its arguments) for every modifier of every stage of a rendered recipe."""
    doc = yaml.safe_load(recipe_yaml) or {}
    out = []
    for stage in doc.values():
        for group in (stage or {}).values():
            for name, args in (group or {}).items():
                out.append((str(name), dict(args or {})))
    return out


def _args_dict(args: Any) -> dict[str, Any] | None:
    if args is None:
        return None
    data = args.model_dump() if hasattr(args, "model_dump") else dict(args)
    return {k: (v.value if hasattr(v, "value") else v) for k, v in data.items()}


def expected_quantization(recipe_yaml: str) -> dict[str, Any]:
    """{"groups": [{"weights": {...}, "input_activations": {...}|None}], "kv_cache": bool,
    "sparsity": "2:4"|None} from the rendered recipe."""
    from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme

    groups: list[dict[str, Any]] = []
    kv = False
    sparsity = None
    for _name, args in recipe_modifiers(recipe_yaml):
        if "mask_structure" in args:
            sparsity = str(args["mask_structure"])
        kv = kv or args.get("kv_cache_scheme") is not None
        scheme = args.get("scheme")
        if isinstance(scheme, str):
            preset = preset_name_to_scheme(scheme, list(args.get("targets") or ["Linear"]))
            groups.append({"weights": _args_dict(preset.weights),
                           "input_activations": _args_dict(preset.input_activations)})
        for group in (args.get("config_groups") or {}).values():
            weights = group.get("weights")
            activations = group.get("input_activations")
            groups.append({"weights": _args_dict(QuantizationArgs(**weights)) if weights else None,
                           "input_activations": _args_dict(QuantizationArgs(**activations)) if activations else None})
    return {"groups": groups, "kv_cache": kv, "sparsity": sparsity}


def _subset(args: dict[str, Any] | None, fields: tuple[str, ...]) -> dict[str, Any] | None:
    if args is None:
        return None
    out = {k: args.get(k) for k in fields}
    block = out.get("block_structure")
    if isinstance(block, tuple):
        out["block_structure"] = list(block)
    return out


def check_files(out_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """(config.json, problems) of a saved model directory."""
    problems: list[str] = []
    config: dict[str, Any] = {}
    try:
        loaded = json.loads((out_dir / "config.json").read_text())
        config = loaded if isinstance(loaded, dict) else {}
        if not config:
            problems.append("config.json is not a JSON object")
        elif "model_type" not in config:
            problems.append("config.json has no model_type (not a transformers config)")
    except (OSError, ValueError) as exc:
        problems.append(f"config.json missing or unreadable ({exc})")
    if not list(out_dir.glob("*.safetensors")) and not list(out_dir.glob("*.bin")):
        problems.append("no weight files (*.safetensors)")
    if not (out_dir / "tokenizer_config.json").is_file() or not any((out_dir / f).is_file() for f in TOKENIZER_FILES):
        problems.append(f"no tokenizer (tokenizer_config.json and one of {', '.join(TOKENIZER_FILES)})")
    return config, problems


def check_quantization_config(config: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    quant = config.get("quantization_config")
    if not expected["groups"]:
        return problems
    if not isinstance(quant, dict):
        return ["config.json has no quantization_config (the model was saved uncompressed)"]
    if quant.get("quant_method") != "compressed-tensors":
        problems.append(f"quantization_config.quant_method is {quant.get('quant_method')!r}, not 'compressed-tensors'")
    saved = [{"weights": _subset(g.get("weights"), WEIGHT_FIELDS),
              "input_activations": _subset(g.get("input_activations"), ACTIVATION_FIELDS)}
             for g in (quant.get("config_groups") or {}).values()]
    for group in expected["groups"]:
        want = {"weights": _subset(group["weights"], WEIGHT_FIELDS),
                "input_activations": _subset(group["input_activations"], ACTIVATION_FIELDS)}
        if want not in saved:
            problems.append(f"quantization_config has no group matching the recipe: expected {want}, saved {saved}")
    if expected["kv_cache"] and not quant.get("kv_cache_scheme"):
        problems.append("the recipe quantizes the KV cache but quantization_config.kv_cache_scheme is empty")
    return problems


def check_quantized_weights(out_dir: Path) -> list[str]:
    """At least one weight is stored quantized (compressed-tensors writes a `weight_scale` beside
    each): a config that names a scheme while every module was ignored is not a compressed model."""
    from safetensors import safe_open

    for path in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            if any(key.endswith(".weight_scale") for key in handle.keys()):  # noqa: SIM118 (not a dict)
                return []
    return ["no weight is stored quantized (no *.weight_scale tensors): every module was ignored or left out "
            "by `targets` / `ignore`"]


def check_targets(out_dir: Path, recipe_yaml: str, model_class: str | None, trust_remote_code: bool) -> list[str]:
    """Every weight stored quantized belongs to a module of a class the recipe targets (when its
    targets are class names): an embedding quantized by a `targets: [Linear]` recipe loads back as
    its raw FP8/int values, and the model still completes a prompt, badly."""
    from safetensors import safe_open

    from automation.scripts.lib.model_tree import meta_model

    targets: set[str] = set()
    for _name, args in recipe_modifiers(recipe_yaml):
        if args.get("scheme") is not None or args.get("config_groups"):
            targets.update(str(t) for t in (args.get("targets") or ["Linear"]))
    if not targets or any(t.startswith("re:") for t in targets):
        return []
    modules = dict(meta_model(out_dir, model_class, trust_remote_code).named_modules())
    wrong = []
    for path in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (not a dict)
                if not key.endswith(".weight_scale"):
                    continue
                name = key.removesuffix(".weight_scale")
                module = modules.get(name)
                classes = {c.__name__ for c in type(module).__mro__} if module is not None else set()
                if module is not None and not classes & targets:
                    wrong.append(f"{name} ({type(module).__name__})")
    if wrong:
        return [f"weights of modules the recipe does not target ({', '.join(sorted(targets))}) are stored quantized: "
                f"{', '.join(wrong[:5])}"]
    return []


_PRUNED = re.compile(r"layers\.\d+\..*(proj|fc\d*|dense\w*)\.weight$")


def check_sparsity(out_dir: Path, structure: str) -> tuple[dict[str, Any], list[str]]:
    """Every pruned Linear weight has at least N zeros in each block of M inputs (N:M)."""
    import torch
    from safetensors.torch import load_file

    zeros_needed, block = (int(x) for x in structure.split(":"))
    checked = bad = 0
    for path in sorted(out_dir.glob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            if not _PRUNED.search(name) or tensor.dim() != 2 or tensor.shape[1] % block:
                continue
            checked += 1
            groups = (tensor.reshape(-1, block) == 0).sum(dim=1)
            bad += int(torch.any(groups < zeros_needed))
    info = {"structure": structure, "weights_checked": checked, "weights_not_sparse": bad}
    problems = []
    if not checked:
        problems.append(f"no pruned Linear weights found to check for {structure} sparsity")
    elif bad:
        problems.append(f"{bad} of {checked} Linear weights are not {structure} sparse")
    return info, problems


def degenerate(token_ids: list[int], text: str) -> str | None:
    """Why a greedy completion is not text, or None."""
    if not token_ids:
        return "no tokens generated"
    if not re.search(r"\w", text):
        return f"the completion {text!r} has no letters or digits"
    if len(token_ids) >= 3 and len(set(token_ids)) == 1:
        return f"the completion repeats one token ({text[:40]!r})"
    return None


def load_and_generate(model_dir: Path, prompt: str, max_new_tokens: int = 8, model_class: str | None = None,
                      trust_remote_code: bool = False) -> dict[str, Any]:
    """Reload with plain transformers and complete `prompt` greedily."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    start = time.monotonic()
    cls = getattr(transformers, model_class or "AutoModelForCausalLM")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Any: transformers' stubs type generate() on a mixin mypy cannot match to the Auto class.
    model: Any = cls.from_pretrained(model_dir, dtype="auto", device_map=device, trust_remote_code=trust_remote_code)
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    special = set(tokenizer.all_special_ids)
    content = [t for t in new if t not in special]
    completion = tokenizer.decode(new, skip_special_tokens=True)
    return {"prompt": prompt, "completion": completion, "new_tokens": len(new),
            "finite_logits": bool(torch.isfinite(logits).all()), "content_tokens": content,
            "load_generate_s": round(time.monotonic() - start, 2)}


def check_output(out_dir: Path, recipe_yaml: str, prompt: str, model_class: str | None = None,
                 trust_remote_code: bool = False) -> dict[str, Any]:
    """Run every check; return what they found, or raise BadArtifactError naming the failures."""
    out_dir = Path(out_dir)
    report: dict[str, Any] = {}
    config, problems = check_files(out_dir)
    expected = expected_quantization(recipe_yaml)
    if config:
        problems += check_quantization_config(config, expected)
    if expected["groups"] and not problems:
        problems += check_quantized_weights(out_dir)
    if expected["groups"] and not problems:
        problems += check_targets(out_dir, recipe_yaml, model_class, trust_remote_code)
    if expected["sparsity"]:
        report["sparsity"], found = check_sparsity(out_dir, expected["sparsity"])
        problems += found
    if not problems:
        try:
            generated = load_and_generate(out_dir, prompt, model_class=model_class, trust_remote_code=trust_remote_code)
        except Exception as exc:  # any failure to load or run is the artifact's, reported as such
            problems.append(f"the model does not reload and generate with transformers: {type(exc).__name__}: {exc}")
        else:
            report["generation"] = {k: v for k, v in generated.items() if k != "content_tokens"}
            if not generated["finite_logits"]:
                problems.append("the reloaded model gives non-finite logits")
            why = degenerate(generated["content_tokens"], generated["completion"])
            if why:
                problems.append(f"greedy completion of {prompt!r} is degenerate: {why}")
    report["problems"] = problems
    if problems:
        raise BadArtifactError(f"compressed model in {out_dir} failed its output checks: " + "; ".join(problems),
                               report=report)
    return report
