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
from typing import Any, cast

import jinja2
import yaml

from automation.errors import RecipeError

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


@dataclass(frozen=True)
class RecipeTemplate:
    name: str
    description: str
    arguments: dict[str, ArgSpec]
    data: dict[str, Any]
    template: str
    # False for data-free schemes (FP8_DYNAMIC): the core script then skips calibration data.
    needs_calibration: bool = True


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
    if not isinstance(doc, dict) or "template" not in doc:
        raise RecipeError(f"recipe {name!r} has no 'template' key (and is not a mapping of recipe stages)")
    extra = set(doc) - {"description", "arguments", "data", "template", "needs_calibration"}
    if extra:
        raise RecipeError(f"recipe {name!r}: unknown top-level keys {sorted(extra)}")
    args = {}
    for arg_name, spec in (doc.get("arguments") or {}).items():
        unknown = set(spec) - {"type", "default", "nullable", "choices", "min", "max", "divides", "help"}
        if unknown:
            raise RecipeError(f"recipe {name!r}: argument {arg_name!r} has unknown keys {sorted(unknown)}")
        spec = {k: v for k, v in spec.items() if k != "help"}
        args[arg_name] = ArgSpec(name=arg_name, **spec)
    return RecipeTemplate(
        name=name,
        description=str(doc.get("description", "")),
        arguments=args,
        data=doc.get("data") or {},
        template=str(doc["template"]),
        needs_calibration=bool(doc.get("needs_calibration", True)),
    )


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


def _check_value(recipe: str, spec: ArgSpec, value: Any) -> Any:
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
            f"recipe {template.name!r}: unknown argument(s) {unknown}; known: {sorted(template.arguments)}"
        )
    return {
        name: _check_value(template.name, spec, args.get(name, spec.default))
        for name, spec in template.arguments.items()
    }


def _yaml_value(value: Any) -> str:
    # JSON is valid YAML flow syntax and quotes every string, so "re:.*" or "yes" stay strings.
    return json.dumps(value)


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
_ENV.filters["yaml"] = _yaml_value


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
                raise RecipeError(
                    f"recipe {template.name!r}: argument {name!r}={value} does not divide {dim}={size}"
                )


def model_dims_from_config(config: dict[str, Any]) -> dict[str, int]:
    """The sizes `check_recipe_applies` needs, read from a model's config.json dict."""
    return {k: int(config[k]) for k in ("hidden_size", "intermediate_size") if isinstance(config.get(k), int)}


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
