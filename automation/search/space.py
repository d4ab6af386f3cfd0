"""The search space: ranges and choices over a recipe's typed template arguments.

Written as `NAME=LOW:HIGH` (a range; `LOW:HIGH:log` for a log scale, `LOW:HIGH:STEP` for a
stepped one, which a grid search needs) or `NAME=A,B,C` (choices); on the command line one
`--space NAME=...` per argument, in a deployment a mapping NAME -> "LOW:HIGH..." / "A,B,C".
A range takes the argument's type (int or float) from the recipe; choices are parsed as YAML
scalars (`true`, `0.01`, `group`). `num_samples` (calibration samples) is searchable too.
Checked against every recipe searched before anything is queued: an argument the recipe does not
have, a fixed one, a value of the wrong type or outside the argument's own min/max/choices is an
error naming it.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from automation.errors import FlowInputError, RecipeError
from automation.standards.recipes import ArgSpec, check_value, load_template

SPEC_FIELDS: dict[str, ArgSpec] = {
    # Compress spec fields a search may vary besides recipe arguments.
    "num_samples": ArgSpec(name="num_samples", type="int", min=1, max=1_000_000),
}
SCHEME = "scheme"  # the parameter that picks the recipe when several are searched


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["int", "float", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> Param:
        if self.kind == "choice":
            if not self.choices:
                raise ValueError(f"space {self.name}: no choices")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"space {self.name}: repeated choices")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"space {self.name}: a range needs LOW < HIGH, got {self.low}:{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"space {self.name}: a log range needs LOW > 0")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"space {self.name}: step must be > 0")
        return self

    def grid(self) -> list[Any]:
        """The values a grid search takes (choices, or a range with a step)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None:
            raise FlowInputError(f"space: {self.name} is a continuous range; a grid search needs a step "
                                 f"({self.name}={self.low:g}:{self.high:g}:STEP) or choices")
        assert self.low is not None and self.high is not None
        count = round((self.high - self.low) / self.step) + 1
        values = [self.low + i * self.step for i in range(count) if self.low + i * self.step <= self.high + 1e-12]
        return [round(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {self.choices}"
        extra = " (log)" if self.log else f" step {self.step:g}" if self.step else ""
        return f"{self.name} in [{self.low:g}, {self.high:g}]{extra}"


def _scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, dict | list) or (value is None and text.strip().lower() not in ("null", "none", "~")):
        raise FlowInputError(f"space: {text!r} is not a scalar choice")
    return value


def parse_param(name: str, body: str, arg: ArgSpec | None) -> Param:
    """One `NAME=...` entry, typed by the argument it searches (None: choices are free)."""
    text = f"{name}={body}"
    name, body = name.strip(), str(body).strip()
    if not name or not body:
        raise FlowInputError(f"space: {text!r} is not NAME=LOW:HIGH[:log|:STEP] or NAME=A,B,C")
    if ":" in body and "," not in body:
        low_text, high_text, *flags = body.split(":")
        kind = "int" if arg is not None and arg.type == "int" else "float"
        if arg is not None and arg.type not in ("int", "float"):
            raise FlowInputError(f"space: {name} is a {arg.type} argument; give choices ({name}=A,B), not a range")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise FlowInputError(f"space: {text!r}: LOW and HIGH must be numbers") from None
        log, step = False, None
        for flag in flags:
            if flag == "log":
                log = True
                continue
            try:
                step = float(flag)
            except ValueError:
                raise FlowInputError(f"space: {text!r}: {flag!r} is neither 'log' nor a step") from None
        if kind == "int" and (not low.is_integer() or not high.is_integer() or (step and not step.is_integer())):
            raise FlowInputError(f"space: {name} is an int argument; {body!r} is not a range of integers")
        return _param(name=name, kind=kind, low=low, high=high, log=log, step=step)
    return _param(name=name, kind="choice", choices=[_scalar(item) for item in body.split(",") if item.strip()])


def _param(**fields: Any) -> Param:
    from pydantic import ValidationError

    try:
        return Param(**fields)
    except ValidationError as exc:
        raise FlowInputError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None


def _check_against(param: Param, arg: ArgSpec, recipe: str) -> None:
    """The param's values are all values the argument accepts."""
    where = f"space: {param.name} (recipe {recipe!r})"
    if param.kind == "choice":
        for value in param.choices:
            try:
                check_value(recipe, arg, value)
            except RecipeError as exc:
                raise FlowInputError(f"{where}: {value!r}: {exc}") from None
        return
    assert param.low is not None and param.high is not None
    if arg.min is not None and param.low < arg.min:
        raise FlowInputError(f"{where}: LOW {param.low:g} is below the argument's minimum {arg.min:g}")
    if arg.max is not None and param.high > arg.max:
        raise FlowInputError(f"{where}: HIGH {param.high:g} is above the argument's maximum {arg.max:g}")
    if arg.choices is not None:
        raise FlowInputError(f"{where}: the argument takes one of {arg.choices}; give choices, not a range")


class SearchSpace(BaseModel):
    """The parameters of a search, checked against the recipes searched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipes: list[str]
    params: list[Param]

    @classmethod
    def parse(cls, recipes: list[str], entries: dict[str, str]) -> SearchSpace:
        if not recipes:
            raise FlowInputError("recipe: give a recipe to search (e.g. w4a16)")
        templates = {}
        for recipe in recipes:
            try:
                templates[recipe] = load_template(recipe)
            except RecipeError as exc:
                raise FlowInputError(f"recipe: {exc}") from None
        params: list[Param] = []
        for name, body in entries.items():
            if name == SCHEME:
                raise FlowInputError("space: search over recipes with the `schemes` parameter, not space")
            specs = {r: SPEC_FIELDS.get(name) or t.arguments.get(name) for r, t in templates.items()}
            missing = sorted(r for r, s in specs.items() if s is None)
            if missing:
                known = sorted({n for t in templates.values() for n in t.public_arguments()} | set(SPEC_FIELDS))
                raise FlowInputError(f"space: {name!r} is not an argument of recipe {missing[0]!r} "
                                     f"(searchable: {', '.join(known)})")
            fixed = sorted(r for r, s in specs.items() if s is not None and s.fixed)
            if fixed:
                raise FlowInputError(f"space: {name!r} is fixed by recipe {fixed[0]!r}; it cannot be searched")
            first = next(iter(specs.values()))
            param = parse_param(name, body, first)
            for recipe, spec in specs.items():
                assert spec is not None
                _check_against(param, spec, recipe)
            params.append(param)
        if len(recipes) > 1:
            params.insert(0, Param(name=SCHEME, kind="choice", choices=list(recipes)))
        return cls(recipes=list(recipes), params=params)

    def recipe_args(self, values: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(recipe, its template arguments, compress spec fields) of a trial's parameter values."""
        recipe = str(values.get(SCHEME, self.recipes[0]))
        args = {k: v for k, v in values.items() if k != SCHEME and k not in SPEC_FIELDS}
        fields = {k: v for k, v in values.items() if k in SPEC_FIELDS}
        return recipe, args, fields

    def check_model(self, config: dict[str, Any] | None) -> None:
        """Every value of an argument that must divide the model's widths does (when the model's
        config is readable here; the core script checks again before compressing)."""
        from automation.standards.recipes import check_recipe_applies, model_dims_from_config

        for recipe in self.recipes:
            template = load_template(recipe)
            for param in self.params:
                arg = template.arguments.get(param.name)
                if arg is None or not arg.divides:
                    continue
                if param.kind != "choice":
                    raise FlowInputError(f"space: {param.name} must divide the model's widths; give choices "
                                         f"({param.name}=32,64,128), not a range")
                for value in param.choices if config else ():
                    try:
                        check_recipe_applies(recipe, {param.name: value}, model_dims_from_config(config or {}))
                    except RecipeError as exc:
                        raise FlowInputError(f"space: {param.name}={value}: {exc}") from None

    def grid(self) -> dict[str, list[Any]]:
        return {p.name: p.grid() for p in self.params}
