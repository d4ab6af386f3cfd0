"""Named standards shipped with the package: recipes, evaluation suites, benchmark profiles.

Each standard is one YAML file, looked up by **name** (a shipped file), **file path**, or **inline
YAML** text. An unknown name is an error that lists the known ones. Specs store the resolved form
(a name, or the inline text of a file they were given), so a task never depends on a file that
exists only on the submitting machine.

Pure data + loaders: nothing here imports an ML library, so specs and flows can validate names
and arguments before any work is queued.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from automation.errors import StandardError, StandardNotFoundError

STANDARDS_DIR = Path(__file__).resolve().parent
SUITES_DIR = STANDARDS_DIR / "suites"
PROFILES_DIR = STANDARDS_DIR / "profiles"
RECIPES_DIR = STANDARDS_DIR / "recipes"

StandardKind = Literal["recipe", "suite", "profile"]
_DIRS: dict[str, Path] = {"recipe": RECIPES_DIR, "suite": SUITES_DIR, "profile": PROFILES_DIR}


# -- lookup ---------------------------------------------------------------------------------------
def names(kind: StandardKind) -> list[str]:
    return sorted(p.stem for p in _DIRS[kind].glob("*.yaml"))


def is_inline(value: str) -> bool:
    """Inline YAML rather than a name or a path: several lines, a flow mapping, or `key: value`."""
    stripped = value.strip()
    return "\n" in stripped or stripped.startswith("{") or ": " in stripped


def resolve(kind: StandardKind, value: str) -> tuple[str, str]:
    """(name, YAML text) of a standard given by name, file path, or inline YAML.

    The name of a file or inline text is `<file stem>` / `<inline>`.
    """
    if not isinstance(value, str) or not value.strip():
        raise StandardError(f"a {kind} is required: a name ({', '.join(names(kind))}), a file path, or YAML")
    value = value.strip() if not is_inline(value) else value
    if is_inline(value):
        return "<inline>", value
    shipped = _DIRS[kind] / f"{value}.yaml"
    if "/" not in value and shipped.is_file():
        return value, shipped.read_text()
    path = Path(value).expanduser()
    if path.suffix in (".yaml", ".yml", ".json") or "/" in value:
        if path.is_file():
            return path.stem, path.read_text()
        raise StandardNotFoundError(f"{kind} file {value!r} does not exist")
    raise StandardNotFoundError(f"unknown {kind} {value!r}; known: {', '.join(names(kind))} "
                                "(or give a file path or inline YAML)")


def inline_if_file(kind: StandardKind, value: str) -> str:
    """What a spec stores: a shipped name stays a name; a file path becomes its text.

    A suite file's relative `include_path` is made absolute first: once inlined, the text no
    longer knows which directory it came from.
    """
    name, text = resolve(kind, value)
    if name == value.strip() and name in names(kind):
        return value.strip()
    if kind == "suite" and name != "<inline>":
        text = _anchor_include_path(text, Path(value.strip()).expanduser().resolve().parent)
    return text


def _anchor_include_path(text: str, base: Path) -> str:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # load_suite reports it, naming the suite
    include = data.get("include_path") if isinstance(data, dict) else None
    if not isinstance(include, str) or Path(include).expanduser().is_absolute():
        return text
    data["include_path"] = str((base / include).resolve())
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _yaml_mapping(kind: str, name: str, text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StandardError(f"{kind} {name!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise StandardError(f"{kind} {name!r} must be a YAML mapping, got {type(data).__name__}")
    return data


def _validation(kind: str, name: str, exc: ValidationError) -> StandardError:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
    return StandardError(f"{kind} {name!r} is invalid: " + "; ".join(parts))


def description(kind: StandardKind, name: str) -> str:
    data = _yaml_mapping(kind, name, resolve(kind, name)[1])
    return " ".join(str(data.get("description", "")).split())


def list_standards() -> dict[str, list[tuple[str, str]]]:
    """Every shipped standard with its one-line description, by kind."""
    return {f"{kind}s": [(n, description(kind, n)) for n in names(kind)] for kind in ("recipe", "suite", "profile")}


# -- evaluation suites ----------------------------------------------------------------------------
class SuiteTask(BaseModel):
    """One lm-eval task or group of a suite."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    num_fewshot: int | None = Field(None, ge=0, description="None = the task's own default")
    metrics: list[str] = Field(default_factory=list, description="the metrics that matter (reporting only)")


class AverageMember(BaseModel):
    """One benchmark inside a suite average: a task/group metric, or the mean of its subtasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    metric: str | None = None
    metrics: list[str] = Field(default_factory=list, description="averaged together (e.g. IFEval)")
    weight: float = Field(1.0, gt=0)
    random_score: float = Field(0.0, ge=0, lt=1, description="chance level, for normalisation")
    subtasks: dict[str, float] = Field(
        default_factory=dict,
        description="subtask -> random score: normalise each subtask, then average them (unweighted)")

    @model_validator(mode="after")
    def _one_metric(self) -> AverageMember:
        if bool(self.metric) == bool(self.metrics):
            raise ValueError(f"member {self.task!r}: give exactly one of 'metric' or 'metrics'")
        return self

    def metric_names(self) -> list[str]:
        return [self.metric] if self.metric else list(self.metrics)


class SuiteAverage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    normalize: bool = Field(False, description="(score - random) / (1 - random), clipped at 0")
    members: list[AverageMember]


class Suite(BaseModel):
    """An evaluation suite: lm-eval tasks, their few-shot settings, and averages over them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "<inline>"
    description: str = ""
    include_path: str | None = Field(None, description="directory of local task YAMLs, relative to the suite file")
    tasks: list[SuiteTask] = Field(min_length=1)
    averages: list[SuiteAverage] = Field(default_factory=list)
    base_dir: str | None = Field(None, description="set by the loader: where include_path is relative to")

    def include_dir(self) -> Path | None:
        if not self.include_path:
            return None
        path = Path(self.include_path)
        if not path.is_absolute():
            path = Path(self.base_dir or SUITES_DIR) / path
        return path

    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]


def load_suite(value: str) -> Suite:
    name, text = resolve("suite", value)
    data = _yaml_mapping("suite", name, text)
    if isinstance(data.get("tasks"), list):
        data["tasks"] = [{"task": t} if isinstance(t, str) else t for t in data["tasks"]]
    data.setdefault("name", name)
    shipped = name in names("suite") and value.strip() == name
    base = SUITES_DIR if shipped or name == "<inline>" else Path(value).expanduser().resolve().parent
    data["base_dir"] = str(base)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise _validation("suite", name, exc) from exc
    include = suite.include_dir()
    if include is not None and not include.is_dir():
        raise StandardError(f"suite {name!r}: include_path {str(include)!r} is not a directory")
    return suite


class _AnyTagLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs, whose `!function module.fn` tags a plain safe loader refuses."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)

# datasets loaders that read local files (lm-eval's `dataset_path`); anything else is a hub dataset.
LOCAL_DATASET_LOADERS = frozenset({"json", "csv", "parquet", "text", "arrow"})


def suite_is_local(suite: Suite) -> bool:
    """True when every task of the suite is defined in its include directory and reads local
    files only, so evaluating it needs nothing from the Hugging Face hub."""
    include = suite.include_dir()
    return include is not None and tasks_are_local(include, suite.task_names())


def _task_yamls(include: Path) -> list[Path]:
    return sorted([*include.rglob("*.yaml"), *include.rglob("*.yml")])


def tasks_dir_is_local(include: Path) -> bool:
    """True when every lm-eval task YAML under `include` reads its data with a file loader."""
    scan = _scan_tasks_dir(include)
    return scan is not None and scan[0]


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _scan_tasks_dir(include: Path) -> tuple[bool, set[str], set[str]] | None:
    """(every YAML reads local files, names defined there, group members named there), or None
    when the directory or one of its YAMLs cannot be read."""
    if not include.is_dir():
        return None
    files_local = True
    defined: set[str] = set()
    members: set[str] = set()
    for path in _task_yamls(include):
        try:
            doc = yaml.load(path.read_text(), Loader=_AnyTagLoader)  # a SafeLoader subclass
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(doc, dict):
            continue
        if "dataset_path" in doc and doc["dataset_path"] not in LOCAL_DATASET_LOADERS:
            files_local = False
        defined.update(_names(doc.get("group")), _names(doc.get("tag")))
        task = doc.get("task")
        if isinstance(task, str):
            defined.add(task)
            continue
        for member in task if isinstance(task, list) else []:
            if isinstance(member, str):
                members.add(member)
            elif isinstance(member, dict):  # an inline task config, or a member with overrides
                if "dataset_path" in member:
                    files_local = files_local and member["dataset_path"] in LOCAL_DATASET_LOADERS
                    defined.update(_names(member.get("task")))
                else:
                    members.update(_names(member.get("task")) or _names(member.get("group")))
    return files_local, defined, members


def tasks_defined_in(include: Path, tasks: Sequence[str]) -> bool:
    """True when every name in `tasks`, and every member a group under `include` lists, is a task,
    group or tag defined by a YAML under `include` (so lm-eval's own tasks are not needed)."""
    scan = _scan_tasks_dir(include)
    return scan is not None and (set(tasks) | scan[2]) <= scan[1]


def tasks_are_local(include: Path, tasks: Sequence[str]) -> bool:
    """True when the lm-eval `tasks` need nothing from the hub with `include` as the task directory.

    Every YAML under `include` must read its data with a file loader, and every name in `tasks`
    must be a task, group or tag defined there, and so must every member a group there lists (a
    group of local tasks may still name one of lm-eval's own, which downloads its dataset).
    """
    scan = _scan_tasks_dir(include)
    return scan is not None and scan[0] and (set(tasks) | scan[2]) <= scan[1]


def _dir_digest(directory: Path) -> str:
    """sha256 over the relative names and bytes of every file under `directory`: what a local
    suite's tasks are, independent of where the package is installed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def suite_content(suite: Suite) -> dict[str, Any]:
    """What the suite makes lm-eval do, for a spec's identity: tasks, few-shot settings and
    averages, and for local tasks a digest of their directory (not its machine-specific path)."""
    data = suite.model_dump(mode="json", exclude={"description", "base_dir", "include_path"})
    include = suite.include_dir()
    if include is not None:
        data["include_digest"] = _dir_digest(include) if include.is_dir() else f"missing:{suite.include_path}"
    return data


def profile_content(profile: Profile) -> dict[str, Any]:
    """The workload a profile describes, for a spec's identity (its description changes nothing)."""
    data = profile.model_dump(mode="json", exclude={"description"})
    for name, default in Profile.ADDED.items():
        if data.get(name) == default:
            data.pop(name, None)
    return data


def suite_dir(name: str) -> Path:
    """Directory of lm-eval task YAMLs of a named suite with local tasks (lm-eval's `include_path`)."""
    include = load_suite(name).include_dir()
    if include is None:
        raise StandardError(f"suite {name!r} uses lm-eval's own tasks; it has no local task directory")
    return include


def _metric(summary: dict[str, Any], task: str, metric: str) -> float | None:
    for section in ("tasks", "groups"):
        entry = (summary.get(section) or {}).get(task)
        if entry is not None:
            value = (entry.get("metrics") or {}).get(metric, {}).get("value")
            return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
    return None


def _normalise(value: float, random_score: float) -> float:
    return max(0.0, (value - random_score) / (1.0 - random_score))


def suite_averages(suite: Suite, summary: dict[str, Any]) -> dict[str, float]:
    """The suite's averages from an evaluation summary (`{"tasks": {task: {"metrics": {m: {"value"}}}}}`).

    Per member: the mean of its metrics (or of its subtasks' metric, each normalised with its own
    random score, as the Open LLM Leaderboard v2 does for BBH and MuSR), normalised with the
    member's random score when the average normalises; then the weighted mean over members. An
    average with a missing member is left out (a partial average would mislead). Values in [0, 1].
    """
    out: dict[str, float] = {}
    for avg in suite.averages:
        total = weights = 0.0
        complete = True
        for member in avg.members:
            score: float | None
            if member.subtasks:
                values = [_metric(summary, sub, m) for sub in member.subtasks for m in member.metric_names()]
                if any(v is None for v in values):
                    complete = False
                    break
                randoms = [r for r in member.subtasks.values() for _ in member.metric_names()]
                score = sum(_normalise(v, r) if avg.normalize else v
                            for v, r in zip(values, randoms, strict=True) if v is not None) / len(values)
            else:
                vals = [_metric(summary, member.task, m) for m in member.metric_names()]
                if any(v is None for v in vals):
                    complete = False
                    break
                score = sum(v for v in vals if v is not None) / len(vals)
                if avg.normalize:
                    score = _normalise(score, member.random_score)
            total += member.weight * score
            weights += member.weight
        if complete and weights:
            out[avg.name] = total / weights
    return out


# -- benchmark profiles ---------------------------------------------------------------------------
RateType = Literal["synchronous", "throughput", "concurrent", "constant", "poisson", "async", "sweep"]


class Slo(BaseModel):
    """Service-level objectives a request must meet to count toward goodput (GuideLLM 0.8's
    `metrics.slo`, milliseconds; `tpot_ms` is compared with the inter-token latency)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_ms: float | None = Field(None, gt=0, description="time to first token")
    tpot_ms: float | None = Field(None, gt=0, description="time per output token after the first")
    e2el_ms: float | None = Field(None, gt=0, description="end-to-end request latency")

    @model_validator(mode="after")
    def _one_objective(self) -> Slo:
        if self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None:
            raise ValueError("slo needs at least one of ttft_ms, tpot_ms, e2el_ms")
        return self


class Profile(BaseModel):
    """A GuideLLM workload: synthetic token shapes, rate type and rates, and when to stop."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields added after benchmark identities were stored: out of `profile_content` at their default.
    ADDED: ClassVar[dict[str, Any]] = {"max_concurrency": None, "sweep_strategy": "constant", "rampup_s": None,
                                       "slo": None, "saturation": None}

    name: str = "<inline>"
    description: str = ""
    request_format: str = "/v1/completions"
    rate_type: RateType = "synchronous"
    rates: list[float] | None = None
    sweep_size: int | None = Field(None, ge=2)
    prompt_tokens: int = Field(ge=1)
    prompt_tokens_stdev: int | None = Field(None, ge=0)
    prompt_tokens_min: int | None = Field(None, ge=1)
    prompt_tokens_max: int | None = Field(None, ge=1)
    output_tokens: int = Field(ge=1)
    output_tokens_stdev: int | None = Field(None, ge=0)
    output_tokens_min: int | None = Field(None, ge=1)
    output_tokens_max: int | None = Field(None, ge=1)
    max_requests: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    request_timeout_s: float = Field(120, gt=0)
    max_error_fraction: float = Field(0.0, ge=0, le=1)
    # GuideLLM's limit on requests in flight for throughput, constant/poisson/async rates and sweeps
    # (its default: none for rates, 512 for a sweep's throughput run).
    max_concurrency: int | None = Field(None, ge=1)
    sweep_strategy: Literal["constant", "poisson"] = "constant"
    rampup_s: float | None = Field(None, gt=0)
    slo: Slo | None = None
    # Over-saturation detection (rising concurrency and TTFT): `monitor` reports it per benchmark,
    # `enforce` also stops a benchmark that saturates.
    saturation: Literal["monitor", "enforce"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if not self.max_requests and not self.max_seconds:
            raise ValueError("give max_requests and/or max_seconds, or the benchmark never ends")
        if self.rate_type in ("concurrent", "constant", "poisson", "async") and not self.rates:
            raise ValueError(f"rate_type {self.rate_type!r} needs 'rates'")
        if self.rates and self.rate_type in ("synchronous", "throughput", "sweep"):
            raise ValueError(f"rate_type {self.rate_type!r} takes no 'rates' (a sweep finds its own: set "
                             "sweep_size)")
        if self.sweep_size is not None and self.rate_type != "sweep":
            raise ValueError(f"sweep_size applies to rate_type 'sweep', not {self.rate_type!r}")
        if self.sweep_strategy != "constant" and self.rate_type != "sweep":
            raise ValueError(f"sweep_strategy applies to rate_type 'sweep', not {self.rate_type!r}")
        if self.max_concurrency is not None and self.rate_type in ("synchronous", "concurrent"):
            raise ValueError(f"max_concurrency does not apply to rate_type {self.rate_type!r} (concurrent: its "
                             "rates are the stream counts)")
        if self.rampup_s is not None and self.rate_type == "poisson":
            raise ValueError("rampup_s does not apply to rate_type 'poisson' (GuideLLM ignores it there)")
        return self


def load_profile_model(value: str) -> Profile:
    name, text = resolve("profile", value)
    data = _yaml_mapping("profile", name, text)
    data.setdefault("name", name)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise _validation("profile", name, exc) from exc


def load_profile(name: str) -> dict[str, Any]:
    """A benchmark profile (workload shape, rate, limits) as a plain dict (validated)."""
    return load_profile_model(name).model_dump(exclude_none=True)


# -- calibration data: automation/standards/calibration.py -----------------------------------------
from automation.standards.calibration import (  # noqa: E402 (re-exported: the specs' import path)
    CALIBRATION_SETS,
    LLMCOMPRESSOR_DATASETS,
    check_calibration,
)

__all__ = ["CALIBRATION_SETS", "LLMCOMPRESSOR_DATASETS", "check_calibration"]
