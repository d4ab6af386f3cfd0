"""`TaskSpec`: the typed, frozen description of one unit of GPU work, and its ClearML form.

A spec has two kinds of fields:
- the envelope every kind shares (project, name, queue, docker, tags, packages, code ref),
  which maps onto the ClearML task's own fields;
- the kind's fields: scalars become ClearML **Args** (flat, overridable hyperparameters with
  a typed round trip), nested values become **configuration objects** (HOCON), as the tool we
  replace split them.

`identity()` hashes what changes the output and nothing that does not: fields declared with
`volatile(...)` (queue, names, tags, timeouts, ...) are left out.

Identity stability. Finished GPU work is found and reused by identity (stored ClearML tasks are
looked up by it), so an identity must not move unless the output would. Hence:
- **Every field added from now on** to a spec, or to a model nested in one (`CodeRef`,
  `ModelRef`, ...), is declared with `added_field(default, since=...)` (a spec field that never
  changes the output is `volatile(...)` instead). Such a field is left out of the identity while
  it holds its default, so the identities of existing specs, and the cached work behind them, stay
  what they were; a plain `Field(...)` would enter every identity of the kind and re-run all of
  it. Its default must therefore mean exactly what the code did before the field existed.
- The fields that existed before this rule keep the serialisation they always had (defaults
  included): switching them over would move today's identities.
- An **intended** identity change (a new meaning for a field, a different serialisation) bumps
  `SCHEMA_VERSION`, with a comment saying why, and regenerates tests/unit/identity_golden.json
  (`UPDATE_IDENTITY_GOLDEN=1 pytest tests/unit/test_identity_stability.py`); that test fails, naming
  the spec and the payload paths that moved, when an identity changes by accident.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar, Literal

from packaging.utils import canonicalize_name
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from automation.errors import PackageError, SpecError
from automation.specs import hocon
from automation.specs.packages import merge, parse
from automation.specs.runtime_packages import CORE_RUNTIME

ARGS_SECTION = "Args"
META_CONFIG = "automation_spec"  # configuration object holding kind + envelope
# Part of every identity: bump it only to move every identity on purpose, with a comment why (and
# regenerate tests/unit/identity_golden.json). A new field needs no bump: see `added_field`.
SCHEMA_VERSION = 1
IDENTITY_IGNORE_DEFAULT = "identity_ignore_default"  # json_schema_extra marker set by added_field


def volatile(default: Any = ..., **kwargs: Any) -> Any:
    """A field that never changes the task's output (excluded from `identity()`)."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra["volatile"] = True
    if "default_factory" in kwargs:
        return Field(json_schema_extra=extra, **kwargs)
    return Field(default, json_schema_extra=extra, **kwargs)


def added_field(default: Any = ..., *, since: str, **kwargs: Any) -> Any:
    """A field added to a spec (or a model nested in one) after identities were stored: left out
    of `identity()` while it holds its default, so existing identities do not move.

        new_knob: int = added_field(0, since="2025-12", ge=0, description="...")
        extra: dict[str, str] = added_field(default_factory=dict, since="2025-12", description="...")

    `since` records when it was added (a date or release; documentation only). The default must
    mean what the code did before the field existed: tasks stored under the old identity ran
    that way. Takes the other `Field` arguments."""
    if default is ... and "default_factory" not in kwargs:
        raise TypeError("added_field needs a default (or default_factory): the specs stored before the field "
                        "existed hold no value for it")
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[IDENTITY_IGNORE_DEFAULT] = True
    extra["added_since"] = since
    if "default_factory" in kwargs:
        return Field(json_schema_extra=extra, **kwargs)
    return Field(default, json_schema_extra=extra, **kwargs)


def _ignores_default(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(IDENTITY_IGNORE_DEFAULT))


def _canonical_json(value: Any) -> str:
    return json.dumps(to_jsonable_python(value), sort_keys=True, separators=(",", ":"))


def _holds_default(model: BaseModel, name: str, info: FieldInfo) -> bool:
    """The field's value serialises like its default. Compared as canonical JSON, not with `==`:
    1 == 1.0 == True in Python, and taking a different value for the default would give two
    different tasks one identity (the wrong direction to err in)."""
    default = info.get_default(call_default_factory=True, validated_data=dict(model))
    return _canonical_json(getattr(model, name)) == _canonical_json(default)


def _drop_added_defaults(value: Any, dumped: Any) -> Any:
    """`dumped` (the JSON-mode dump of `value`) without the `added_field` fields that hold their
    default, at any depth (nested models, in lists/tuples and dict values too). Everything else is
    returned exactly as dumped, so identities of specs without such fields do not change."""
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        fields = type(value).model_fields
        by_key = {info.serialization_alias or info.alias or name: name for name, info in fields.items()}
        by_key.update({name: name for name in fields})
        out: dict[str, Any] = {}
        for key, item in dumped.items():
            name = by_key.get(key)
            if name is None:  # computed field or extra: as dumped
                out[key] = item
                continue
            info = fields[name]
            if _ignores_default(info) and _holds_default(value, name, info):
                continue
            out[key] = _drop_added_defaults(getattr(value, name), item)
        return out
    if isinstance(value, list | tuple) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_drop_added_defaults(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, Mapping) and isinstance(dumped, dict):
        return {k: _drop_added_defaults(value[k], d) if k in value else d for k, d in dumped.items()}
    return dumped


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class CodeRef(BaseModel):
    """The code the agent runs: a repository at a pinned commit, or (local stack) the working
    tree of the environment the agent runs in. Never a moving branch head."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repository: str | None = Field(None, description="git URL; None = the agent's installed working tree")
    commit: str | None = Field(None, description="full 40-hex commit id; required with a repository")
    working_dir: str = Field(".", description="directory the module runs from, relative to the repo root")
    source_digest: str | None = added_field(
        None, since="2026-12", pattern=r"^[0-9a-f]{32}$",
        description="digest of the files the kind's core script runs (set at plan time, "
                    "regression/code_pin.py); when set, the identity covers it instead of repository and commit")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        """`URL@COMMIT` (the form the command line and the flows take); the last `@` splits, so
        `git@host:org/repo.git@<sha>` works."""
        if isinstance(value, str):
            repository, sep, commit = value.rpartition("@")
            if not sep or not repository:
                raise ValueError(f"code: '{value}' is not URL@COMMIT (e.g. https://git.example/org/repo.git@<40-hex>)")
            return {"repository": repository, "commit": commit}
        return value

    def __str__(self) -> str:
        return f"{self.repository}@{self.commit}" if self.repository else "agent working tree"

    @model_validator(mode="after")
    def _pinned(self) -> CodeRef:
        if self.repository and not self.commit:
            raise ValueError("code.commit is required with code.repository (pin the commit; a branch "
                             "head moves under a running sweep)")
        if self.commit and not _COMMIT.match(self.commit):
            raise ValueError(f"code.commit must be a full 40-hex commit id, got '{self.commit}' "
                             "(resolve it with `git rev-parse <ref>`)")
        if self.commit and not self.repository:
            raise ValueError("code.commit given without code.repository")
        return self

    @property
    def is_working_tree(self) -> bool:
        return self.repository is None


def _is_nested(annotation: Any) -> bool:
    """True for values that belong in a configuration object rather than flat Args."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_nested(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is typing.Annotated:
        return _is_nested(typing.get_args(annotation)[0])
    if origin in (Literal,):
        return False
    if origin is not None:  # list[...], dict[...], tuple[...]
        return True
    if isinstance(annotation, type):
        return issubclass(annotation, (BaseModel, Mapping, list, tuple, set))
    return False


def _allows(annotation: Any, kind: type) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_allows(a, kind) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _allows(typing.get_args(annotation)[0], kind)
    return annotation is kind


def encode_arg(value: Any) -> tuple[str, str]:
    """A scalar as ClearML parameter (text, type); the type makes None distinguishable."""
    if value is None:
        return "", "none"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, float):
        return repr(value), "float"
    return str(value), "str"


def decode_arg(name: str, text: str | None, type_marker: str | None, annotation: Any) -> Any:
    """Inverse of encode_arg, driven by the field's annotation (a UI edit may change the text
    but leaves the type marker as it was)."""
    text = "" if text is None else str(text)
    allows_none = _allows(annotation, type(None))
    if allows_none and (
        (text == "" and type_marker == "none")
        or (text.strip().lower() in ("none", "null") and not _allows(annotation, str))
        or (text == "" and not _allows(annotation, str))
    ):
        return None
    if _allows(annotation, str) and not any(_allows(annotation, t) for t in (int, float, bool)):
        return text
    try:
        return TypeAdapter(annotation).validate_python(text)
    except ValidationError as exc:
        msg = exc.errors()[0].get("msg", str(exc))
        raise SpecError(f"Args/{name}: '{text}' is not a valid value ({msg})") from exc


class TaskSpec(BaseModel):
    """Base of every task kind. Subclasses set `kind` and `script_module` and add fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    kind: ClassVar[str] = ""
    script_module: ClassVar[str] = ""
    base_packages: ClassVar[tuple[str, ...]] = ()
    # Packages a choice in a spec adds to `base_packages` (see `kind_packages`): a backend's engine,
    # a second library a combined step runs.
    choice_packages: ClassVar[tuple[str, ...]] = ()
    # What a task of the kind reports, in one line (`automation task fields KIND`, README's table).
    reports: ClassVar[str] = ""
    # The ClearML task type the task is created with (ClearML's UI filters and icons use it).
    task_type: ClassVar[str] = "custom"
    # Kind-specific submit hooks this kind takes (regression/hooks.py; other kinds are left alone).
    accepted_hooks: ClassVar[frozenset[str]] = frozenset()
    # Kind-specific fields that never reach the task's Args/configuration (rare).
    local_only: ClassVar[frozenset[str]] = frozenset()
    # How long a step of the kind may wait in its queue and run on an agent before the flows stop
    # it and report a timeout (seconds; the flows' `step_limits` parameter overrides). A night must
    # end: a task hung on a GPU or a queue nobody serves otherwise holds the run for ever.
    max_queue_s: ClassVar[float] = 8 * 3600.0
    max_run_s: ClassVar[float] = 12 * 3600.0

    project: str = volatile("llm-automation", description="ClearML project (a/b for nesting)",
                            min_length=3)
    name: str | None = volatile(None, description="ClearML task name (default: kind-<identity>)")
    queue: str = volatile("gpu", description="ClearML queue the task is enqueued on", min_length=1)
    queue_escalation: tuple[str, ...] = volatile(
        (), description="queues to retry on, in order, when the task runs out of memory")
    # In the identity when set: the image decides CUDA, torch and vLLM. Give a digest
    # (`repo@sha256:...`) for a nightly: a tag can move under the same identity.
    docker_image: str | None = added_field(None, since="2026-12",
                                           description="container image the agent runs the task in")
    docker_args: str | None = volatile(None, description="extra `docker run` arguments")
    tags: tuple[str, ...] = volatile((), description="extra ClearML tags")
    packages: tuple[str, ...] = Field((), description="extra pip requirements (a pinned one wins)")
    package_overrides: tuple[str, ...] = added_field(
        (), since="2026-12", description="requirements that replace the kind's own pin of the same package "
                                         "(a tracked library resolved at plan time: name==X or name @ URL@commit)")
    code: CodeRef = Field(default_factory=CodeRef, description="code the agent runs (pinned)")
    secret_env: dict[str, str] = volatile(
        default_factory=dict, description="environment variables the core script gets from a secret, by "
                                          "reference only: NAME -> 'env:VAR' (the agent host's variable) or "
                                          "'prefect-secret:BLOCK' (a Prefect Secret block); never a value")
    hooks: tuple[str, ...] = volatile((), description="submit hooks applied to this spec, in order")

    ENVELOPE: ClassVar[tuple[str, ...]] = (
        "project", "name", "queue", "queue_escalation", "docker_image", "docker_args", "tags",
        "packages", "package_overrides", "code", "secret_env", "hooks",
    )

    @field_validator("secret_env")
    @classmethod
    def _secret_refs_only(cls, value: dict[str, str]) -> dict[str, str]:
        from automation.secrets import check_reference

        for name, ref in value.items():
            check_reference(name, ref)
        return value

    @field_validator("packages", "package_overrides")
    @classmethod
    def _valid_packages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return merge(value)
        except PackageError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _packages_merge_with_the_kind(self) -> TaskSpec:
        # The kind's own pins are only merged in at identity/submission time; a conflict found
        # there would surface as a raw PackageError after validation said the spec was fine.
        try:
            self.requirements()
        except PackageError as exc:
            pinned = ", ".join(self.kind_packages())
            raise ValueError(f"{exc} (the {self.kind} kind itself requires {pinned})") from None
        try:
            self.task_requirements()
        except PackageError as exc:
            raise ValueError(f"{exc} (the core scripts themselves run with {', '.join(CORE_RUNTIME)})") from None
        return self

    # -- derived ---------------------------------------------------------------------------
    def requirements(self) -> tuple[str, ...]:
        """The kind's own packages (less those `package_overrides` replace), the overrides, then
        the spec's `packages` (a pinned requirement wins)."""
        replaced = {canonicalize_name(parse(r, "package_overrides").name) for r in self.package_overrides}
        own = [r for r in self.kind_packages() if canonicalize_name(parse(r).name) not in replaced]
        return merge(own, self.package_overrides, self.packages)

    def kind_packages(self) -> tuple[str, ...]:
        """The kind's own pins for this spec: `base_packages`, plus what a choice in the spec needs
        (a kind whose backend brings its own engine adds it here)."""
        return self.base_packages

    def task_requirements(self) -> tuple[str, ...]:
        """Everything the core script needs in a fresh environment (what the ClearML task lists):
        the core scripts' own runtime packages, then `requirements()`."""
        return merge(CORE_RUNTIME, self.requirements())

    def input_model_id(self) -> str | None:
        """The ClearML model this task consumes (connected as its input model for lineage)."""
        return None

    def expected_duration_s(self) -> float | None:
        """A hint for the poller (poll faster near the expected end); None when unknown."""
        return None

    def task_name(self) -> str:
        return self.name or f"{self.kind}-{self.identity()[:8]}"

    @classmethod
    def kind_fields(cls) -> list[str]:
        return [n for n in cls.model_fields if n not in cls.ENVELOPE and n not in cls.local_only]

    @classmethod
    def arg_fields(cls) -> list[str]:
        return [n for n in cls.kind_fields() if not _is_nested(cls.model_fields[n].annotation)]

    @classmethod
    def config_fields(cls) -> list[str]:
        return [n for n in cls.kind_fields() if _is_nested(cls.model_fields[n].annotation)]

    @classmethod
    def volatile_fields(cls) -> set[str]:
        out = set()
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and extra.get("volatile"):
                out.add(name)
        return out

    def standards_content(self) -> dict[str, Any]:
        """The resolved content of the standards the spec names (rendered recipe, suite and
        profile definitions), as plain JSON data. A spec stores a shipped standard by name, so
        without this an edited YAML would keep the old identity and reuse stale results."""
        return {}

    def identity_payload(self) -> dict[str, Any]:
        data = _drop_added_defaults(self, self.model_dump(mode="json", exclude=self.volatile_fields()))
        data["packages"] = sorted(self.requirements())
        if self.code.source_digest:  # the content the kind runs, wherever it is hosted and whatever commit holds it
            data["code"] = {"source_digest": self.code.source_digest}
        payload: dict[str, Any] = {"kind": self.kind, "schema": SCHEMA_VERSION, "spec": data}
        standards = self.standards_content()
        if standards:  # kinds without standards (debug) keep the identities they always had
            payload["standards"] = standards
        return payload

    def environment(self) -> dict[str, str]:
        """What the step declares it runs with, readable, for a report's "what changed": the code
        (and the digest of the kind's files), requirements, image, input model, and a digest per
        named standard (the rendered recipe, the suite, the profile)."""
        out = {"code": str(self.code), "packages": ", ".join(sorted(self.requirements())) or "-",
               "docker_image": self.docker_image or "-"}
        if self.code.source_digest:  # the files are what counts: a commit that did not touch them is no suspect
            out["code"] = self.code.repository or "agent working tree"
            out["code_files"] = self.code.source_digest
            if self.code.commit:
                out["code_commit"] = self.code.commit
        model = getattr(self, "model", None)
        if model is not None:
            out["model"] = str(model)
        for name, content in sorted(self.standards_content().items()):
            out[name] = hashlib.sha256(_canonical_json(content).encode()).hexdigest()[:12]
        return out

    def identity(self) -> str:
        """Stable across processes and machines: sha256 of canonical JSON, 32 hex chars."""
        canonical = json.dumps(self.identity_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    # -- ClearML form ------------------------------------------------------------------------
    def to_args(self) -> dict[str, tuple[str, str]]:
        return {name: encode_arg(getattr(self, name)) for name in self.arg_fields()}

    def to_configuration(self) -> dict[str, str]:
        """Configuration objects (HOCON text) by name: one per nested field, plus the envelope."""
        dumped = self.model_dump(mode="json")
        out = {name: hocon.dumps({name: dumped[name]}) for name in self.config_fields()}
        # Fields added later are left out while they hold their default: a core script of a commit
        # from before they existed refuses fields it does not know.
        fields = type(self).model_fields
        envelope = {name: dumped[name] for name in self.ENVELOPE
                    if not (_ignores_default(fields[name]) and _holds_default(self, name, fields[name]))}
        # The digest is the orchestrator's (identity only; the script never reads it), and a core
        # script of a commit from before the field existed refuses fields it does not know.
        envelope["code"] = {k: v for k, v in envelope["code"].items() if k != "source_digest"}
        out[META_CONFIG] = hocon.dumps({"kind": self.kind, "schema": SCHEMA_VERSION, "envelope": envelope})
        return out

    @classmethod
    def from_task_form(
        cls,
        args: Mapping[str, tuple[str | None, str | None]],
        configuration: Mapping[str, str],
    ) -> TaskSpec:
        """Rebuild the spec from Args (text, type) and configuration texts; errors name fields."""
        values: dict[str, Any] = {}
        meta = hocon.loads(configuration.get(META_CONFIG, "{}"), what=f"configuration '{META_CONFIG}'")
        if meta.get("kind") not in (None, cls.kind):
            raise SpecError(f"this task holds a '{meta.get('kind')}' spec, not '{cls.kind}'")
        values.update(meta.get("envelope") or {})
        problems: list[str] = []
        # Every field must be present, defaults included: a task is always created with all of
        # them, so a missing one means an edited or foreign task, and silently taking today's
        # default would run something other than what the task records.
        for name in cls.arg_fields():
            if name not in args:
                problems.append(f"Args/{name}: missing from the task (every field is written at creation)")
                continue
            text, marker = args[name]
            try:
                values[name] = decode_arg(name, text, marker, cls.model_fields[name].annotation)
            except SpecError as exc:
                problems.append(str(exc))
        for name in cls.config_fields():
            if name not in configuration:
                problems.append(f"configuration '{name}': missing from the task (every field is written "
                                "at creation)")
                continue
            try:
                parsed = hocon.loads(configuration[name], what=f"configuration '{name}'")
            except hocon.HoconError as exc:
                problems.append(str(exc))
                continue
            values[name] = parsed.get(name, parsed)
        unknown = sorted(set(args) - set(cls.arg_fields()))
        if unknown:
            problems.append(f"Args: unknown parameter(s) {unknown} for kind '{cls.kind}' "
                            f"(known: {cls.arg_fields()})")
        if problems:
            raise SpecError("; ".join(problems))
        return build(cls, values)


def build(cls: type[TaskSpec], values: Mapping[str, Any]) -> TaskSpec:
    """Validate values into a spec, turning pydantic errors into one SpecError naming fields."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as exc:
        raise SpecError(format_validation_error(cls.kind or cls.__name__, exc)) from exc


def format_validation_error(kind: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check the spelling; `automation task fields KIND` lists them)"
        if not loc:
            # Whole-spec checks name their fields in the message itself ("packages: ...").
            parts.append(msg.removeprefix("Value error, "))
            continue
        parts.append(f"{loc}: {msg}")
    return f"invalid {kind} spec: " + "; ".join(parts)
