"""`automation task ...` and `automation standards ...`: every spec field from the command line.

    automation standards list
    automation standards recipe nvfp4
    automation task fields compress
    automation task submit compress --model ./tiny --recipe w4a16 --recipe_args.group_size 64 \\
        --calibration tiny --queue cpu --wait --json result.json

Field names take `-` or `_`; nested fields take dotted names (`--code.commit`, `--recipe_args.x`);
values are parsed by the field's type (lists comma-separated or JSON, mappings as JSON). Errors name
the field. Submission goes through `flows.bridge.execute` (find-or-create by identity, then await)
against the ClearML server of the environment / clearml.conf.
"""

from __future__ import annotations

import asyncio
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table

from automation.cli.errors import CommandGroup, console, err_console
from automation.errors import AutomationError, HookError, SpecError
from automation.regression.hooks import apply_hooks
from automation.regression.hooks import split as split_hook
from automation.specs.base import TaskSpec, _allows, _is_nested, build, decode_arg
from automation.specs.registry import get_kind, kinds

task_app = CommandGroup(help="Task kinds: list their fields, submit one as a ClearML task.", no_args_is_help=True)
standards_app = CommandGroup(help="Named recipes, evaluation suites and benchmark profiles.", no_args_is_help=True)


@standards_app.callback()
def _standards() -> None:
    """Named recipes, evaluation suites and benchmark profiles."""


@task_app.callback()
def _task() -> None:
    """Task kinds: list their fields, submit one as a ClearML task."""


# -- standards -------------------------------------------------------------------------------------
@standards_app.command("list")
def standards_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """All recipes, evaluation suites and benchmark profiles, with one-line descriptions."""
    from automation.standards import list_standards

    data = list_standards()
    if as_json:
        typer.echo(json.dumps({k: dict(v) for k, v in data.items()}, indent=2))
        return
    for kind, items in data.items():
        table = Table(title=kind, show_header=True, title_justify="left")
        table.add_column("name")
        table.add_column("description")
        for name, text in items:
            table.add_row(name, text)
        console.print(table)


@standards_app.command("recipe")
def standards_recipe(
    name: Annotated[str, typer.Argument(help="a recipe name (see `automation standards list`) or a file path")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """A recipe's typed arguments (type, default, range, help), what it needs, and its rendering."""
    from automation.standards.recipes import load_template, render_recipe

    template = load_template(name)
    needs = {"calibration": "required" if template.needs_calibration else
             "none needed (data-free" + (", model_free_ptq without it)" if template.model_free else ")"),
             "model dtypes": ", ".join(template.model_dtypes) or "any",
             "accelerator": f"GPU only: {template.requires_gpu}" if template.requires_gpu else "CPU or GPU"}
    arguments = {arg.name: {"type": arg.type, "default": arg.default, "fixed": arg.fixed, "choices": arg.choices,
                            "min": arg.min, "max": arg.max, "divides": arg.divides, "help": arg.help}
                 for arg in template.arguments.values()}
    if as_json:
        typer.echo(json.dumps({"name": template.name, "description": template.description, "needs": needs,
                               "arguments": arguments, "rendered": render_recipe(name, {})}, indent=2))
        return
    console.print(f"[bold]{template.name}[/bold]: {' '.join(template.description.split())}")
    for key, value in needs.items():
        console.print(f"  {key}: {value}")
    table = Table(title="arguments (recipe_args.NAME)", title_justify="left")
    for col in ("name", "type", "default", "allowed", "help"):
        table.add_column(col)
    for arg_name, arg in arguments.items():
        allowed = ("fixed by the recipe" if arg["fixed"] else
                   f"one of {arg['choices']}" if arg["choices"] else
                   " ".join(f"{k} {arg[k]}" for k in ("min", "max") if arg[k] is not None))
        if arg["divides"]:
            allowed = f"{allowed}; divides {', '.join(arg['divides'])}".lstrip("; ")
        table.add_row(*(escape(text) for text in (arg_name, arg["type"], json.dumps(arg["default"]), allowed,
                                                   arg["help"])))
    console.print(table)
    console.print("rendered with the defaults:")
    console.print(render_recipe(name, {}), markup=False, highlight=False)


# -- fields ----------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("automation.specs.model_ref.", "")
    return text.replace("<class '", "").replace("'>", "")


def _kind(name: str) -> type[TaskSpec]:
    return get_kind(name)


@task_app.command("kinds")
def task_kinds() -> None:
    """The registered task kinds."""
    for name, cls in kinds().items():
        typer.echo(f"{name:10s} {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else cls.script_module}")


@task_app.command("fields")
def task_fields(kind: Annotated[str, typer.Argument(help="task kind (see `automation task kinds`)")]) -> None:
    """Every field of KIND: type, default, description, and where it lands in ClearML."""
    cls = _kind(kind)
    args, config = set(cls.arg_fields()), set(cls.config_fields())
    typer.echo(f"{kind}: core script {cls.script_module}; Args are flat overridable parameters, configuration "
               "fields are HOCON objects (set their keys with --field.key value)")
    for name, info in cls.model_fields.items():
        default = "(required)" if info.is_required() else repr(info.get_default(call_default_factory=True))
        where = "Args" if name in args else "configuration" if name in config else "envelope"
        volatile = " [not in identity]" if name in cls.volatile_fields() else ""
        nested = _base_annotation(info.annotation)
        if isinstance(nested, type) and issubclass(nested, BaseModel) and not info.is_required():
            default = f"{nested.__name__}() (keys below)"
        typer.echo(f"  --{name:<20} {_type_name(info.annotation):<28} {where:<13} default {default}")
        typer.echo(f"      {info.description or ''}{volatile}")
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            for key, sub in nested.model_fields.items():
                sub_default = "(required)" if sub.is_required() else repr(sub.get_default(call_default_factory=True))
                typer.echo(f"    --{name}.{key:<16} {_type_name(sub.annotation):<24} default {sub_default}")
                if sub.description:
                    typer.echo(f"        {sub.description}")
    if cls.reports:
        typer.echo(f"reports: {cls.reports}")


# -- overrides -------------------------------------------------------------------------------------
def _base_annotation(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_annotation(args[0]) if len(args) == 1 else annotation
    return annotation


def _parse_nested(name: str, raw: str, annotation: Any) -> Any:
    base = _base_annotation(annotation)
    stripped = raw.strip()
    if stripped.lower() in ("none", "null") and _base_annotation(annotation) is not annotation:
        return None
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except ValueError:
            try:
                return yaml.safe_load(stripped)
            except yaml.YAMLError as exc:
                raise SpecError(f"--{name}: '{raw}' is neither JSON nor YAML ({exc})") from None
    origin = typing.get_origin(base) or base
    if isinstance(origin, type) and issubclass(origin, (list, tuple, set)):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return raw  # e.g. ModelRef's string form
    raise SpecError(f"--{name}: give a JSON object, or set its keys one by one (--{name}.KEY VALUE)")


def parse_overrides(cls: type[TaskSpec], tokens: list[str]) -> dict[str, Any]:
    """`--a 1 --b.c x --flag` -> field values typed by `cls`'s annotations; errors name the field."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise SpecError(f"unexpected argument '{token}' (fields are given as --name value)")
        key, eq, raw = token[2:].partition("=")
        if not eq:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                raw = tokens[i + 1]
                i += 1
            else:
                raw = "true"  # a bare flag
        i += 1
        path = [p.replace("-", "_") for p in key.split(".")]
        top = path[0]
        if top not in cls.model_fields or top in ("kind",):
            raise SpecError(f"--{key}: unknown field for kind '{cls.kind}' (known: {', '.join(cls.model_fields)})")
        annotation = cls.model_fields[top].annotation
        if len(path) == 1 and top in values:
            # a second value would silently replace the first: say how to give several
            raise SpecError(f"--{key} is given twice; give all its values once (comma-separated or JSON: "
                            f"--{key} a,b)")
        if len(path) == 1:
            if _is_nested(annotation):
                values[top] = _parse_nested(key, raw, annotation)
            else:
                try:
                    values[top] = decode_arg(top, raw, None, annotation)
                except SpecError as exc:
                    raise SpecError(str(exc).replace(f"Args/{top}", f"--{key}", 1)) from None
            continue
        current = values.get(top)
        if not isinstance(current, dict):
            current = {} if current is None or not isinstance(current, str) else {"__str__": current}
            if "__str__" in current:
                raise SpecError(f"--{key}: --{top} was already given as a whole value")
            values[top] = current
        target = current
        for part in path[1:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise SpecError(f"--{key}: '{part}' is not a mapping")
        target[path[-1]] = _parse_leaf(raw, _leaf_annotation(annotation, path[1:]))
    return values


def _leaf_annotation(annotation: Any, parts: list[str]) -> Any:
    """The declared type at a dotted path below a field (Any where the path leaves the schema)."""
    for part in parts:
        base = _base_annotation(annotation)
        origin = typing.get_origin(base)
        if origin is not None and isinstance(origin, type) and issubclass(origin, dict):
            args = typing.get_args(base)
            annotation = args[1] if len(args) == 2 else Any
        elif isinstance(base, type) and issubclass(base, BaseModel) and part in base.model_fields:
            annotation = base.model_fields[part].annotation
        else:
            return Any
    return annotation


def _parse_leaf(raw: str, annotation: Any) -> Any:
    # A value typed str stays the text given: YAML would turn "1" into 1 and "on" into True,
    # which a dict[str, str] (server_env) then refuses.
    if _allows(annotation, str) and not any(_allows(annotation, t) for t in (int, float, bool)):
        if _allows(annotation, type(None)) and raw.strip().lower() in ("none", "null"):
            return None
        return raw
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def spec_from_cli(kind: str, tokens: list[str], base: dict[str, Any] | None = None) -> TaskSpec:
    cls = get_kind(kind)
    values = {**(base or {}), **parse_overrides(cls, tokens)}
    return build(cls, values)


def pin_code_option(tokens: list[str]) -> list[str]:
    """`--code URL@BRANCH` becomes `--code URL@<its commit>` (resolved now, as the flows do);
    `--code worktree` is the agents' installed tree. Other forms are left to the spec to judge."""
    from automation.regression.code_pin import WORKTREE, resolve_code

    out = list(tokens)
    for i, token in enumerate(out):
        flag, eq, value = token.partition("=")
        if flag != "--code" or (not eq and i + 1 >= len(out)):
            continue
        value = value if eq else out[i + 1]
        if value == WORKTREE:
            resolved = None
        elif "@" in value:
            resolved = str(resolve_code(value, {}))
        else:
            continue
        if eq:
            out[i] = f"--code={resolved}" if resolved else ""
        else:
            out[i], out[i + 1] = ("--code", resolved) if resolved else ("", "")
    return [t for t in out if t]


def check_hooks_apply(spec: TaskSpec, entries: tuple[str, ...]) -> None:
    """A flow applies its hooks to every cell and a kind-specific hook leaves other kinds alone; one
    task named on the command line must be of a kind the hook is for (unknown names: apply_hooks)."""
    for entry in entries:
        name, _ = split_hook(entry)
        for_kinds = sorted(k for k, cls in kinds().items() if name in cls.accepted_hooks)
        if for_kinds and name not in spec.accepted_hooks:
            raise HookError(f"hooks: '{name}' does not apply to {spec.kind} tasks (it is for: {', '.join(for_kinds)})")


def load_spec_file(path: Path) -> dict[str, Any]:
    """The fields of a spec JSON/YAML file (its `kind`, if any, is the command's to say)."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"--spec: no file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"--spec: cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecError(f"--spec: {path} is not valid JSON or YAML{where}: {getattr(exc, 'problem', None) or exc}") \
            from None
    if not isinstance(loaded, dict):
        raise SpecError(f"--spec: {path} must hold a mapping of fields, e.g. {{\"model\": \"hf:org/name\"}}")
    loaded.pop("kind", None)
    return loaded


# -- submit ----------------------------------------------------------------------------------------
async def _submit(spec: TaskSpec, wait: bool) -> dict[str, Any]:
    input_model_id = spec.input_model_id()
    if wait:
        from flows.bridge import backend, execute

        try:
            result = await execute(spec, input_model_id=input_model_id)
        finally:
            await backend().aclose()
        return {"task_id": result.task_id, "url": result.web_url, "result": result.model_dump(mode="json")}
    from automation.clearml.client import ClearMLBackend
    from automation.clearml.records import TaskStatus

    client = ClearMLBackend()
    try:
        await client.queue_id(spec.queue)
        for record in await client.find_by_identity(spec.identity()):
            if record.succeeded or (record.active and record.status is not TaskStatus.CREATED):
                return {"task_id": record.id, "url": client.web_url(record.id), "status": str(record.status),
                        "reused": True}
        task_id = await client.create(spec, input_model_id=input_model_id)
        await client.enqueue(task_id, spec.queue)
        return {"task_id": task_id, "url": client.web_url(task_id), "status": "queued", "reused": False}
    finally:
        await client.aclose()


@task_app.command(
    "submit",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def task_submit(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="task kind (see `automation task kinds`)")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the task and print its result.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the submission/result JSON here.")] = None,
    spec_file: Annotated[Path | None, typer.Option("--spec", help="Start from a spec JSON/YAML file.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the spec; submit nothing.")] = False,
) -> None:
    """Submit KIND with fields given as `--field value` (dotted names for nested fields)."""
    base = load_spec_file(spec_file) if spec_file is not None else {}
    spec = spec_from_cli(kind, pin_code_option(list(ctx.args)), base)
    # Hooks named on the command line or in the file are applied here, as the flows apply theirs:
    # checked before anything is queued, and recorded in `hooks` once applied.
    requested = spec.hooks
    check_hooks_apply(spec, requested)
    spec = asyncio.run(apply_hooks(build(type(spec), {**spec.model_dump(), "hooks": ()}), requested))
    if dry_run:
        typer.echo(json.dumps({"kind": spec.kind, "identity": spec.identity(), **spec.model_dump(mode="json")},
                              indent=2))
        return
    try:
        out = asyncio.run(_submit(spec, wait))
    except AutomationError:
        raise  # one line, by the command group
    except Exception as exc:
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"task {out['task_id']}  {out['url']}")
    if wait:
        typer.echo(json.dumps(out["result"], indent=2))
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=2))
