"""Orchestration settings (pydantic-settings): environment `AUTOMATION_*` or a JSON/env file.

    AUTOMATION_SIZE_RULES='[{"max_params_b": 10, "queue": "a100x1"}, {"max_params_b": 80, "queue": "h100x2"}]'
    AUTOMATION_QUEUE_CAPS='{"a100x1": 4, "h100x2": 1}'

Size rules pick a sweep cell's queue from the model's parameter count (first rule whose bound the
model is under); queue caps become Prefect global concurrency limits `clearml-queue:<queue>`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from automation.errors import FlowInputError
from automation.specs.model_ref import ModelRef


class SizeRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_params_b: float = Field(gt=0, description="models up to this many billion parameters")
    queue: str = Field(min_length=1)
    escalation: tuple[str, ...] = Field((), description="queues to retry on after out-of-memory")


class NightlyMatrix(BaseModel):
    """The nightly regression's matrix: every model x scheme x suite, one profile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str] = Field(default_factory=list, description="models (hf:org/name[@revision], paths)")
    schemes: list[str] = Field(default_factory=lambda: ["w4a16", "fp8_dynamic"])
    suites: list[str] = Field(default_factory=lambda: ["openllm"])
    profile: str = "chat"


class FlowSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOMATION_", extra="ignore")

    size_rules: list[SizeRule] = Field(
        default_factory=lambda: [SizeRule(max_params_b=1e9, queue="gpu")],
        description="queue per model size, smallest bound first")
    queue_caps: dict[str, int] = Field(default_factory=dict, description="concurrent ClearML tasks per queue")
    project: str = Field("llm-automation", description="default ClearML project")
    nightly_matrix: NightlyMatrix = Field(default_factory=lambda: NightlyMatrix(),
                                          description="what `nightly_regression` sweeps when its parameters "
                                                      "leave it open (AUTOMATION_NIGHTLY_MATRIX='{\"models\": [...]}')")


EXAMPLES = {
    "size_rules": '[{"max_params_b": 10, "queue": "a100x1"}]',
    "queue_caps": '{"a100x1": 4}',
    "nightly_matrix": '{"models": ["hf:org/name"], "schemes": ["w4a16"]}',
    "project": "my-project",
}


@lru_cache(maxsize=1)
def settings() -> FlowSettings:
    """The settings, or one line naming the variable that is malformed and what it should hold."""
    try:
        return FlowSettings()
    except SettingsError as exc:
        found = re.search(r'field "(\w+)"', str(exc))
        raise _settings_error(found.group(1) if found else "", "not valid JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        where = ".".join(loc[1:])
        raise _settings_error(loc[0] if loc else "", f"{where + ': ' if where else ''}{first['msg']}") from None


def _settings_error(field_name: str, problem: str) -> FlowInputError:
    var = f"AUTOMATION_{field_name.upper()}" if field_name else "an AUTOMATION_* setting"
    example = EXAMPLES.get(field_name)
    return FlowInputError(f"{var}: {problem}" + (f"; expected e.g. {var}='{example}'" if example else ""))


_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def params_billion(model: ModelRef) -> float | None:
    """The parameter count in billions: from config.json when it is readable here, else from the
    model's name (`Llama-3.1-8B` -> 8), else None."""
    config = model.config()
    if config:
        estimate = _from_config(config)
        if estimate is not None:
            return estimate
    matches = list(_SIZE_IN_NAME.finditer(model.id.split("/")[-1]))
    if not matches:
        return None
    match = matches[-1]  # "Qwen2.5-7B": the size, not the version
    value = float(match.group(1))
    return value / 1000 if match.group(2).lower() == "m" else value


def _from_config(config: dict[str, Any]) -> float | None:
    text = config.get("text_config")
    cfg: dict[str, Any] = text if isinstance(text, dict) else config
    try:
        h, layers, vocab = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    inter = int(cfg.get("intermediate_size") or 4 * h)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    per_layer = 4 * h * h + 3 * h * inter * experts  # attention + gated MLP (upper bound with GQA)
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return (layers * per_layer + embeddings) / 1e9


def queue_for(model: ModelRef, rules: list[SizeRule]) -> SizeRule:
    """The first rule the model fits under; an unknown size takes the largest rule."""
    ordered = sorted(rules, key=lambda r: r.max_params_b)
    size = params_billion(model)
    if size is None:
        return ordered[-1]
    for rule in ordered:
        if size <= rule.max_params_b:
            return rule
    raise ValueError(f"model {model} (~{size:.1f} B parameters) is larger than every size rule "
                     f"(largest: {ordered[-1].max_params_b} B on {ordered[-1].queue}); add a rule")
