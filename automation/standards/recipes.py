"""Named llm-compressor recipe templates and their typed arguments.

A recipe file holds `description`, `arguments` (a small typed schema), optional `data` (lookup
tables, e.g. SmoothQuant mappings per architecture family) and `template`: Jinja2 text that
renders to an llm-compressor recipe. Values enter the template only through the `yaml` filter
(JSON, a subset of YAML), so an argument keeps its type and cannot inject YAML structure.

No ML library is imported here: a spec can be validated (unknown argument, bad type, a group size
that does not divide the model's dimensions) before anything is queued.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jinja2
import yaml

from automation.errors import RecipeError

BASES_DIR = Path(__file__).resolve().parent / "recipes" / "base"

# KV-cache quantization a recipe's `kv_cache_scheme` argument names: llm-compressor's
# QuantizationArgs for the cache, static per-tensor scales observed on calibration data (what
# vLLM reads as `kv_cache_dtype=fp8`).
KV_CACHE_SCHEMES: dict[str, dict[str, Any]] = {
    "fp8": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True},
}

# model_type (config.json) -> SmoothQuant family key used by the w8a8 template.
MODEL_TYPE_FAMILIES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen2_moe",
}


@dataclass(frozen=True)
class ArgSpec:
    name: str
    type: str
    default: Any = None
    nullable: bool = False
    choices: list[Any] | None = None
    min: float | None = None
    max: float | None = None
    divides: list[str] = field(default_factory=list)
    # Set by the recipe itself (a preset's group size, say): shown and checked, never given.
    fixed: bool = False
    help: str = ""


@dataclass(frozen=True)
class RecipeTemplate:
    name: str
    description: str
    arguments: dict[str, ArgSpec]
    data: dict[str, Any]
    template: str
    # False for data-free schemes (FP8_DYNAMIC): the core script then skips calibration data.
    needs_calibration: bool = True
    # The recipe is one compressed-tensors preset applied round-to-nearest, so without calibration
    # data it can run through llm-compressor's `model_free_ptq` (safetensors in, safetensors out).
    model_free: bool = False
    # Weight dtypes the compressed model can be loaded back in (FP4 schemes decompress to 16-bit
    # only); empty = any.
    model_dtypes: tuple[str, ...] = ()
    # Why this recipe cannot run without an accelerator, or "" when it can.
    requires_gpu: str = ""

    def calibration_needed(self, args: dict[str, Any]) -> bool:
        """Whether the rendered recipe observes data: the recipe's own algorithm, or a static
        KV-cache scale (observed on calibration activations)."""
        return self.needs_calibration or args.get("kv_cache_scheme") is not None

    def public_arguments(self) -> dict[str, ArgSpec]:
        return {name: spec for name, spec in self.arguments.items() if not spec.fixed}


# Parsing and rendering are pure functions of the text; specs call them for every identity(),
# and PyYAML's pure-Python parser is slow (~20 ms per recipe). Templates are only read.
@functools.lru_cache(maxsize=128)
def _parse_template(name: str, text: str) -> RecipeTemplate:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {name!r} is not valid YAML: {exc}") from exc
    if isinstance(doc, dict) and "template" not in doc and doc and all(isinstance(v, dict) for v in doc.values()):
        # A plain llm-compressor recipe (a mapping of stages): no arguments, taken verbatim.
        return RecipeTemplate(name=name, description="inline llm-compressor recipe", arguments={}, data={},
                              template="{% raw %}" + text + "{% endraw %}")
    if isinstance(doc, dict) and "extends" in doc:
        doc = _extend(name, doc)
    if not isinstance(doc, dict) or "template" not in doc:
        raise RecipeError(f"recipe {name!r} has no 'template' key (and is not a mapping of recipe stages)")
    extra = set(doc) - _TOP_LEVEL_KEYS
    if extra:
        raise RecipeError(f"recipe {name!r}: unknown top-level keys {sorted(extra)}")
    args = {}
    for arg_name, spec in (doc.get("arguments") or {}).items():
        if not isinstance(spec, dict):
            raise RecipeError(f"recipe {name!r}: argument {arg_name!r} must be a mapping (type, default, ...)")
        unknown = set(spec) - {"type", "default", "nullable", "choices", "min", "max", "divides", "help", "fixed"}
        if unknown:
            raise RecipeError(f"recipe {name!r}: argument {arg_name!r} has unknown keys {sorted(unknown)}")
        if "type" not in spec:
            raise RecipeError(f"recipe {name!r}: argument {arg_name!r} has no 'type'")
        args[arg_name] = ArgSpec(name=arg_name, **{**spec, "help": " ".join(str(spec.get("help", "")).split())})
    dtypes = doc.get("model_dtypes") or []
    if not isinstance(dtypes, list) or not set(dtypes) <= set(MODEL_DTYPES):
        raise RecipeError(f"recipe {name!r}: model_dtypes must be a list of {list(MODEL_DTYPES)}")
    return RecipeTemplate(
        name=name,
        description=str(doc.get("description", "")),
        arguments=args,
        data=doc.get("data") or {},
        template=str(doc["template"]),
        needs_calibration=bool(doc.get("needs_calibration", True)),
        model_free=bool(doc.get("model_free", False)),
        model_dtypes=tuple(dtypes),
        requires_gpu=" ".join(str(doc.get("requires_gpu") or "").split()),
    )


_TOP_LEVEL_KEYS = {"description", "arguments", "data", "template", "needs_calibration", "model_free",
                   "model_dtypes", "requires_gpu"}
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def _extend(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A recipe that `extends` a base template (recipes/base/<name>.yaml): the base's keys, then
    the recipe's; arguments and data merge key by key, so a recipe can fix one argument of the
    base (`scheme: {default: NVFP4, fixed: true}`) and keep the rest."""
    base_name = doc["extends"]
    path = BASES_DIR / f"{base_name}.yaml"
    if not isinstance(base_name, str) or "/" in base_name or not path.is_file():
        known = ", ".join(sorted(p.stem for p in BASES_DIR.glob("*.yaml")))
        raise RecipeError(f"recipe {name!r} extends {base_name!r}, which is not a base template (known: {known})")
    base = yaml.safe_load(path.read_text())
    merged: dict[str, Any] = {**base, **{k: v for k, v in doc.items() if k not in ("extends", "arguments", "data")}}
    arguments = {k: dict(v) for k, v in (base.get("arguments") or {}).items()}
    for arg_name, spec in (doc.get("arguments") or {}).items():
        arguments[arg_name] = {**arguments.get(arg_name, {}), **(spec or {})}
    merged["arguments"] = arguments
    merged["data"] = {**(base.get("data") or {}), **(doc.get("data") or {})}
    return merged


def load_template(name_or_text: str) -> RecipeTemplate:
    """A shipped recipe by name, a template file path, or template text (or a plain
    llm-compressor recipe) in the same file format."""
    from automation.errors import StandardError
    from automation.standards import resolve

    try:
        name, text = resolve("recipe", name_or_text)
    except StandardError as exc:
        raise RecipeError(str(exc)) from None
    return _parse_template(name, text)


_SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_value(recipe: str, spec: ArgSpec, value: Any) -> Any:
    where = f"recipe {recipe!r}: argument {spec.name!r}"
    if value is None:
        if not spec.nullable:
            raise RecipeError(f"{where} must not be null")
        return None
    base, _, item = spec.type.partition("[")
    if base == "list":
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where} must be a list, got {type(value).__name__}")
        if item.rstrip("]") == "str" and not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{where} must be a list of strings")
        value = list(value)
    elif base in _SCALARS:
        # bool is an int subclass in Python; reject it where a number is meant.
        if not isinstance(value, _SCALARS[base]) or (base != "bool" and isinstance(value, bool)):
            raise RecipeError(f"{where} must be {base}, got {type(value).__name__} {value!r}")
        if base == "float":
            value = float(cast(float, value))  # an int given for a float argument renders as 1.0, not 1
    else:
        raise RecipeError(f"{where} has unsupported type {spec.type!r}")
    if spec.choices is not None and value not in spec.choices:
        raise RecipeError(f"{where} must be one of {spec.choices}, got {value!r}")
    if spec.min is not None and value < spec.min:
        raise RecipeError(f"{where} must be >= {spec.min}, got {value!r}")
    if spec.max is not None and value > spec.max:
        raise RecipeError(f"{where} must be <= {spec.max}, got {value!r}")
    return value


def resolve_arguments(template: RecipeTemplate, args: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with `args`, each checked against its spec."""
    args = dict(args or {})
    unknown = sorted(set(args) - set(template.arguments))
    if unknown:
        raise RecipeError(
            f"recipe {template.name!r}: unknown argument(s) {unknown}; known: {sorted(template.public_arguments())}"
        )
    fixed = sorted(n for n in args if template.arguments[n].fixed and args[n] != template.arguments[n].default)
    if fixed:
        spec = template.arguments[fixed[0]]
        raise RecipeError(f"recipe {template.name!r}: argument {spec.name!r} is fixed at {spec.default!r} by the "
                          "recipe; choose another recipe (`automation standards list`) or give a recipe file")
    return {
        name: check_value(template.name, spec, args.get(name, spec.default))
        for name, spec in template.arguments.items()
    }


def _yaml_value(value: Any) -> str:
    # JSON is valid YAML flow syntax and quotes every string, so "re:.*" or "yes" stay strings.
    return json.dumps(value)


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
_ENV.filters["yaml"] = _yaml_value
_ENV.globals["kv_cache_schemes"] = KV_CACHE_SCHEMES


def render_recipe(name_or_text: str, args: dict[str, Any] | None = None) -> str:
    """Render a recipe template to llm-compressor recipe YAML text.

    Raises RecipeError for an unknown recipe or argument, a wrong type or value, or a template
    that does not render to a mapping of stages.
    """
    template = load_template(name_or_text)
    values = resolve_arguments(template, args)
    try:
        key = (json.dumps(template.data, sort_keys=True), json.dumps(values, sort_keys=True))
    except TypeError:  # data a YAML file holds but JSON cannot (dates): render uncached
        return _render(template.name, template.template, template.data, values)
    return _render_cached(template.name, template.template, *key)


@functools.lru_cache(maxsize=256)
def _render_cached(name: str, template: str, data_json: str, values_json: str) -> str:
    return _render(name, template, json.loads(data_json), json.loads(values_json))


def _render(name: str, template: str, data: dict[str, Any], values: dict[str, Any]) -> str:
    try:
        text = _ENV.from_string(template).render(**values, data=data)
    except jinja2.TemplateError as exc:
        raise RecipeError(f"recipe {name!r} failed to render: {exc}") from exc
    rendered = yaml.safe_load(text)
    if not isinstance(rendered, dict) or not all(isinstance(v, dict) for v in rendered.values()):
        raise RecipeError(f"recipe {name!r} did not render to a mapping of stages")
    return text


def check_recipe_applies(name_or_text: str, args: dict[str, Any] | None, model_dims: dict[str, int]) -> None:
    """Raise RecipeError if an argument does not fit the model.

    `model_dims` holds config.json sizes (e.g. {"hidden_size": 4096, "intermediate_size": 14336});
    arguments declared with `divides: [...]` must divide each of those that are given.
    """
    template = load_template(name_or_text)
    values = resolve_arguments(template, args)
    for name, spec in template.arguments.items():
        value = values[name]
        if value is None:
            continue
        for dim in spec.divides:
            size = model_dims.get(dim)
            if size is not None and size % value != 0:
                fix = ("it is fixed by the recipe: choose a recipe with a finer granularity" if spec.fixed
                       else f"give recipe_args.{name} a divisor of {size}")
                raise RecipeError(
                    f"recipe {template.name!r}: argument {name!r}={value} does not divide {dim}={size} ({fix})"
                )


def model_dims_from_config(config: dict[str, Any]) -> dict[str, int]:
    """The sizes `check_recipe_applies` needs, read from a model's config.json dict: the hidden
    and MLP widths (the input width of every Linear) and `kv_dim`, the output width of the k and v
    projections (a block scheme tiles outputs too)."""
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    dims = {k: int(text[k]) for k in ("hidden_size", "intermediate_size") if isinstance(text.get(k), int)}
    heads, kv_heads = text.get("num_attention_heads"), text.get("num_key_value_heads")
    head_dim = text.get("head_dim")
    if not isinstance(head_dim, int) and isinstance(heads, int) and heads and "hidden_size" in dims:
        head_dim = dims["hidden_size"] // heads
    if isinstance(head_dim, int):
        dims["kv_dim"] = int(kv_heads if isinstance(kv_heads, int) else heads or 0) * head_dim
    return dims


def model_weight_dtype(config: dict[str, Any]) -> str | None:
    """The dtype a model's config.json records for its weights (`dtype`, or the older `torch_dtype`)."""
    value = config.get("dtype") or config.get("torch_dtype")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("dtype") or config["text_config"].get("torch_dtype")
    return str(value) if value is not None else None


def check_model_dtype(name_or_text: str, dtype: str, config: dict[str, Any] | None) -> None:
    """Raise RecipeError when the recipe's scheme cannot be loaded back in the dtype the model
    will be compressed in (`dtype`, or the model's own when "auto")."""
    template = load_template(name_or_text)
    if not template.model_dtypes:
        return
    effective = dtype if dtype != "auto" else (model_weight_dtype(config) if config else None)
    if effective is not None and effective not in template.model_dtypes:
        raise RecipeError(
            f"recipe {template.name!r} needs a {' or '.join(template.model_dtypes)} model (its scheme "
            f"decompresses to 16-bit weights) but this one is {effective}: set dtype: {template.model_dtypes[0]}")


def family_for_model_type(model_type: str) -> str:
    try:
        return MODEL_TYPE_FAMILIES[model_type]
    except KeyError:
        raise RecipeError(
            f"no SmoothQuant family for model_type {model_type!r} (known: {', '.join(sorted(MODEL_TYPE_FAMILIES))}); "
            "set recipe_args.family to the closest architecture or give explicit recipe_args.mappings"
        ) from None


def effective_arguments(name_or_text: str, args: dict[str, Any] | None,
                        model_config: dict[str, Any] | None) -> dict[str, Any]:
    """`args` plus what the model implies: a template with a `family` argument (SmoothQuant
    mappings) gets the family of the model's `model_type` unless the caller chose one.

    An unknown `model_type` is an error rather than the template's default family: another
    architecture's layer names would smooth the wrong layers, or none, without a word.
    """
    out = dict(args or {})
    template = load_template(name_or_text)
    if "family" in template.arguments and "family" not in out and "mappings" not in out and model_config:
        model_type = model_config.get("model_type")
        if model_type is not None:
            out["family"] = family_for_model_type(str(model_type))
    return out
