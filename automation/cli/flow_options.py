"""Command-line options derived from a flow's signature, so a flow parameter is stated once.

Each parameter of the flow function becomes an option named after it (`queue_escalation` ->
`--queue-escalation`) with the help text of the flow docstring's `Args:` section; a parameter
that is a small pydantic model (`compression`, `step_queues`, ...) gives one option per field
(`--num-samples`; the model may add a suffix: `StepQueues` -> `--evaluate-queue`). How a value is
written follows its type:

    str, int, float, Literal, X | None   --name VALUE          ('none' for None where None is allowed)
    bool                                 --name / --no-name
    list[str]                            --name a,b,c
    dict[str, scalar]                    --singular KEY=VALUE  (repeatable: --metric-threshold m=0.9)
    anything else                        --name JSON           (validated against the parameter's type)

Only the options given reach the flow: every default stays the flow's own. Values are validated
with the parameter's own type (pydantic), so a bad one is a usage error naming the option.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from rich.markup import escape

Style = Literal["value", "flag", "csv", "pairs", "json"]
_SCALARS = (str, int, float)


@dataclass(frozen=True)
class FlowOption:
    """One command-line option and where its value goes in the flow's parameters."""

    name: str  # python identifier of the option (unique in the command)
    flag: str
    target: tuple[str, ...]  # ("threshold",) or ("compression", "num_samples")
    annotation: Any
    style: Style
    help: str
    required: bool = False

    def parse(self, raw: Any) -> Any:
        try:
            return TypeAdapter(self.annotation).validate_python(self._decode(raw))
        except (ValidationError, ValueError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise typer.BadParameter(f"{raw!r}: {detail}", param_hint=self.flag) from None

    def _decode(self, raw: Any) -> Any:
        if self.style == "flag":
            return raw
        if self.style == "csv":
            return [item.strip() for item in str(raw).split(",") if item.strip()]
        if self.style == "pairs":
            out: dict[str, str] = {}
            for item in raw:
                key, sep, value = str(item).rpartition("=")
                if not sep or not key:
                    raise ValueError(f"write KEY=VALUE, e.g. {self.flag} tiny_mc/acc=0.9")
                out[key.strip()] = value.strip()
            return out
        if self.style == "json":
            return json.loads(raw)
        if _allows_none(self.annotation) and str(raw).strip().lower() in ("none", "null"):
            return None
        return raw


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation) or annotation is type(None)


def _without_none(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _is_scalar(annotation: Any) -> bool:
    bare = _without_none(annotation)
    if bare in (*_SCALARS, bool) or typing.get_origin(bare) is Literal:
        return True
    if typing.get_origin(bare) in (typing.Union, types.UnionType):
        return all(_is_scalar(a) for a in typing.get_args(bare))
    return False


def _style(annotation: Any) -> Style:
    bare = _without_none(annotation)
    origin, args = typing.get_origin(bare), typing.get_args(bare)
    if bare is bool:
        return "flag"
    if _is_scalar(bare):
        return "value"
    if origin is list and args and args[0] is str:
        return "csv"
    if origin is dict and len(args) == 2 and args[0] is str and _is_scalar(args[1]):
        return "pairs"
    return "json"


def _model(annotation: Any) -> type[BaseModel] | None:
    bare = _without_none(annotation)
    return bare if isinstance(bare, type) and issubclass(bare, BaseModel) else None


def docstring_args(fn: Callable[..., Any]) -> dict[str, str]:
    """`name: text` lines of a Google-style `Args:` section (continuation lines joined)."""
    doc = inspect.getdoc(fn) or ""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^\s{4}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current and line.startswith(" " * 8):
            out[current] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flow_options(fn: Callable[..., Any]) -> list[FlowOption]:
    """The options of `fn`'s parameters (see the module docstring for the rules)."""
    helps = docstring_args(fn)
    hints = typing.get_type_hints(fn)
    options: list[FlowOption] = []
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name, Any)
        model = _model(annotation)
        if model is not None and _style(annotation) == "json":
            prefix, suffix = getattr(model, "cli_affix", ("", ""))
            for field_name, field in model.model_fields.items():
                name = f"{prefix}{field_name}{suffix}"
                field_type = field.annotation
                options.append(FlowOption(name=name, flag=_flag(name), target=(param.name, field_name),
                                          annotation=field_type, style=_style(field_type),
                                          help=field.description or ""))
            continue
        style = _style(annotation)
        name = param.name.removesuffix("s") if style == "pairs" else param.name
        default = param.default
        unset = default is inspect.Parameter.empty or default in ([], {}, None)
        shown = "" if unset else f" (default: {_show(default)})"
        options.append(FlowOption(name=name, flag=_flag(name), target=(param.name,), annotation=annotation,
                                  style=style, help=helps.get(param.name, "") + shown,
                                  required=default is inspect.Parameter.empty))
    names = [o.name for o in options]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{fn.__name__}: parameters give the same option twice: {clashes}")
    return options


def _show(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list):
        return ",".join(map(str, value)) if all(isinstance(v, str) for v in value) else json.dumps(value)
    return str(value)


_METAVARS: dict[Style, str | None] = {"value": "VALUE", "flag": None, "csv": "A,B,...", "pairs": "KEY=VALUE",
                                     "json": "JSON"}


def typer_parameters(options: list[FlowOption]) -> list[inspect.Parameter]:
    """The options as typer takes them from a signature (every value typed as text, parsed by us)."""
    out = []
    for opt in options:
        if opt.style == "flag":
            kind: Any = bool | None
            decls = [f"{opt.flag}/--no-{opt.flag[2:]}"]
        elif opt.style == "pairs":
            kind, decls = list[str] | None, [opt.flag]
        else:
            kind, decls = (str if opt.required else str | None), [opt.flag]
        info = typer.Option(*decls, help=escape(opt.help), show_default=False, metavar=_METAVARS[opt.style])
        default = inspect.Parameter.empty if opt.required else None
        out.append(inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=typing.Annotated[kind, info]))
    return out


def flow_parameters(fn: Callable[..., Any], options: list[FlowOption], given: Mapping[str, Any]) -> dict[str, Any]:
    """The flow's keyword arguments from what was given on the command line (nothing else)."""
    hints = typing.get_type_hints(fn)
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for opt in options:
        raw = given.get(opt.name)
        if raw is None or (opt.style == "pairs" and not raw):
            continue
        value = opt.parse(raw)
        if len(opt.target) == 1:
            top[opt.target[0]] = value
        else:
            nested.setdefault(opt.target[0], {})[opt.target[1]] = value
    for param, fields in nested.items():
        model = _model(hints[param])
        assert model is not None
        try:
            top[param] = model(**fields)
        except ValidationError as exc:
            raise typer.BadParameter(str(exc.errors()[0]["msg"]), param_hint=param) from None
    return top


def cli_arguments(fn: Callable[..., Any], parameters: Mapping[str, Any]) -> list[str]:
    """The command line that gives `fn` these parameters (the inverse of `flow_parameters`)."""
    options = {opt.target: opt for opt in flow_options(fn)}
    argv: list[str] = []
    for key, value in parameters.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_unset=True)
        if (key,) in options:
            argv += _arguments(options[(key,)], value)
        elif isinstance(value, Mapping) and all((key, f) in options for f in value):
            for field_name, field_value in value.items():
                argv += _arguments(options[(key, field_name)], field_value)
        else:
            raise TypeError(f"{fn.__name__} has no parameter '{key}' that the command line can give")
    return argv


def _arguments(opt: FlowOption, value: Any) -> list[str]:
    if isinstance(value, BaseModel) or (isinstance(value, list) and any(isinstance(v, BaseModel) for v in value)):
        value = TypeAdapter(Any).dump_python(value, mode="json")
    if opt.style == "flag":
        return [opt.flag if value else f"--no-{opt.flag[2:]}"]
    if opt.style == "csv":
        return [opt.flag, ",".join(value)]
    if opt.style == "pairs":
        return [arg for k, v in value.items() for arg in (opt.flag, f"{k}={v}")]
    if opt.style == "json":
        return [opt.flag, json.dumps(value)]
    return [opt.flag, "none" if value is None else str(value)]
