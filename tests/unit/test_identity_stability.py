"""Spec identities do not move by accident.

A spec's identity is how finished GPU work is found and reused (stored ClearML tasks are looked
up by it), so an identity that changes silently re-runs every cached task of that kind. The
golden file `identity_golden.json` holds the identities of a few specs per kind, computed once;
this test recomputes them.

When it fails:
- a field was added without `added_field(...)`, or a default/serialisation changed: declare the new
  field with `automation.specs.base.added_field`, or, if the change is meant to re-run the work,
  bump `SCHEMA_VERSION` in automation/specs/base.py with a comment why;
- a shipped standard (recipe, suite, profile) or a kind's package pins changed: that re-runs the
  work that uses it by design; regenerate if intended.

Regenerate (after deciding the change is intended):

    UPDATE_IDENTITY_GOLDEN=1 .venv/bin/pytest tests/unit/test_identity_stability.py

The golden specs name models by hub id (with a pinned revision) or ClearML model id, never a local
path: a local path is stored absolute and would put this checkout's location into the identity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from automation.specs import base
from automation.specs.base import CodeRef, TaskSpec, added_field
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec
from automation.specs.debug import DebugSpec
from automation.specs.evaluate import EvaluateSpec

GOLDEN = Path(__file__).with_name("identity_golden.json")
REPO = Path(__file__).resolve().parents[2]
UPDATE_ENV = "UPDATE_IDENTITY_GOLDEN"
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/pytest tests/unit/test_identity_stability.py"

REV = "0123456789abcdef0123456789abcdef01234567"
HF_MODEL = f"hf:example-org/tiny-llama@{REV}"
CLEARML_MODEL = "clearml:0123456789abcdef"
PINNED = CodeRef(repository="https://example.com/org/llm-automation.git",
                 commit="89abcdef0123456789abcdef0123456789abcdef")


def golden_specs() -> dict[str, TaskSpec]:
    """A few specs per kind, with field variations; nothing in them depends on this machine."""
    return {
        "compress/w4a16-defaults": CompressSpec(model=HF_MODEL, recipe="w4a16"),
        "compress/w4a16-tiny-args": CompressSpec(model=HF_MODEL, recipe="w4a16", recipe_args={"group_size": 64},
                                                 calibration="tiny", num_samples=16, max_seq_length=512, seed=3),
        "compress/w8a8-clearml": CompressSpec(model=CLEARML_MODEL, recipe="w8a8", calibration="tiny",
                                              recipe_args={"smoothing_strength": 0.5}, queue="cpu", verify=False),
        "compress/fp8-no-calibration-pinned": CompressSpec(model=HF_MODEL, recipe="fp8_dynamic", calibration=None,
                                                           packages=("tqdm==4.66.0",), code=PINNED),
        "evaluate/tiny-defaults": EvaluateSpec(model=HF_MODEL, suite="tiny"),
        "evaluate/tiny-options": EvaluateSpec(model=CLEARML_MODEL, suite="tiny", limit=8, batch_size="auto",
                                              num_fewshot=0, vllm_args={"max_model_len": 2048}, seed=1),
        "evaluate/tasks-hf-cpu": EvaluateSpec(model=HF_MODEL, tasks=("hellaswag", "arc_easy"), backend="hf",
                                              device="cpu", dtype="float32", limit=0.25, name="ignored"),
        "evaluate/openllm-pinned": EvaluateSpec(model=HF_MODEL, suite="openllm", code=PINNED,
                                                packages=("accelerate>=1.0",)),
        "benchmark/smoke-defaults": BenchmarkSpec(model=HF_MODEL, profile="smoke"),
        "benchmark/smoke-server": BenchmarkSpec(model=CLEARML_MODEL, tokenizer=HF_MODEL, profile="smoke",
                                                engine="vllm", gpus=2, server_args=("--max-num-seqs", "8"),
                                                server_env={"A": "1"}, startup_timeout_s=60.0),
        "benchmark/chat-options": BenchmarkSpec(model="hf:example-org/other-model", profile="chat",
                                                engine="transformers", max_error_fraction=0.1, seed=7),
        "debug/defaults": DebugSpec(),
        "debug/sleep-salt": DebugSpec(sleep_s=2.5, steps=3, salt="x", queue="cpu", tags=("t",)),
        "debug/fail-oom": DebugSpec(fail=True, fail_message="boom", value=-1.5, allocate_mb=128,
                                    oom_on_queues=("gpu",)),
        "debug/pinned-packages": DebugSpec(packages=("tqdm==4.66.0", "rich"), code=PINNED),
    }


def _canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _current() -> dict[str, dict[str, Any]]:
    return {key: {"identity": spec.identity(), "payload": spec.identity_payload()}
            for key, spec in golden_specs().items()}


def _differences(old: Any, new: Any, path: str = "") -> Iterator[str]:
    """Where two identity payloads differ, as `path: what` lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                yield f"{where}: new in the identity"
            elif key not in new:
                yield f"{where}: no longer in the identity"
            else:
                yield from _differences(old[key], new[key], where)
    elif isinstance(old, list) and isinstance(new, list) and old != new and all(
            isinstance(v, str) for v in old + new):
        added, removed = [v for v in new if v not in old], [v for v in old if v not in new]
        yield f"{path}: added {added}, removed {removed}" if added or removed else f"{path}: reordered"
    elif old != new or type(old) is not type(new):
        yield f"{path}: {_shown(old, new)} -> {_shown(new, old)}"


def _shown(value: Any, other: Any, width: int = 60) -> str:
    """A value for a difference line; a long string around where it first differs from `other`."""
    text = json.dumps(value)
    if not (isinstance(value, str) and isinstance(other, str)) or len(text) <= width:
        return text[:width] + ("..." if len(text) > width else "")
    at = next((i for i, (a, b) in enumerate(zip(value, other, strict=False)) if a != b), min(len(value), len(other)))
    start = max(0, at - width // 2)
    return ("..." if start else "") + json.dumps(value[start:start + width]) + "..."


def _advice(lines: list[str]) -> str:
    design = ("spec.packages", "standards")
    if any(line.startswith("schema:") for line in lines):
        return "SCHEMA_VERSION changed: if that is intended, regenerate the golden file"
    if any(line.startswith("spec.") and not line.startswith(design) for line in lines):
        return ("a spec field changed the identity. A field added to an existing spec (or to a model nested "
                "in one) must be declared with `added_field(default, since=...)` (automation/specs/base.py) "
                "so it stays out of the identity while it holds its default. If the change is meant to re-run "
                "the cached work, bump SCHEMA_VERSION in automation/specs/base.py with a comment why, and "
                "regenerate the golden file")
    return ("a shipped standard (recipe, suite, profile) or a kind's package pins changed: that re-runs the "
            "cached work using it by design; if intended, regenerate the golden file")


def test_identities_match_the_golden_file() -> None:
    current = _current()
    if os.environ.get(UPDATE_ENV):
        GOLDEN.write_text(json.dumps({"schema_version": base.SCHEMA_VERSION, "specs": current},
                                     indent=1, sort_keys=True) + "\n")
        pytest.skip(f"{UPDATE_ENV} set: wrote {len(current)} identities to {GOLDEN.name}")
    assert GOLDEN.is_file(), f"{GOLDEN} is missing; create it with `{REGENERATE}`"
    stored = json.loads(GOLDEN.read_text())["specs"]
    problems: list[str] = []
    for key in sorted(set(stored) - set(current)):
        problems.append(f"{key}: in {GOLDEN.name} but no longer built by golden_specs()")
    for key in sorted(set(current) - set(stored)):
        problems.append(f"{key}: no stored identity (a new golden spec)")
    for key in sorted(set(stored) & set(current)):
        old, new = stored[key], current[key]
        if old["identity"] == new["identity"]:
            continue
        lines = list(_differences(old["payload"], new["payload"]))
        detail = "\n      ".join(lines) or "(same payload: the identity's canonical form or hash changed)"
        problems.append(f"the identity of {key} moved: {old['identity']} -> {new['identity']}\n"
                        f"    {_advice(lines)}\n    differences:\n      {detail}")
    assert not problems, ("spec identities changed; finished work is found by identity, so this re-runs "
                          "it.\n  " + "\n  ".join(problems) + f"\nRegenerate (only if intended): {REGENERATE}")


def test_golden_specs_hold_nothing_machine_specific() -> None:
    """A fresh clone elsewhere must compute the same identities: no path of this checkout, no home."""
    for key, spec in golden_specs().items():
        text = _canonical(spec.identity_payload())
        for local in {str(REPO), str(Path.home()), os.environ.get("TMPDIR") or "/tmp"}:
            assert local not in text, f"{key}: its identity payload holds the local path {local}"


def test_a_local_model_path_would_put_the_checkout_into_the_identity(tmp_path: Path) -> None:
    """Why the golden specs name hub ids and ClearML ids: a local path is stored absolute."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    spec = BenchmarkSpec(model=str(tmp_path), profile="smoke")
    assert str(tmp_path.resolve()) in _canonical(spec.identity_payload())


# -- added_field: new fields leave existing identities alone -----------------------------------------------

class _DebugWithKnob(DebugSpec):
    knob: int = added_field(0, since="test", description="a field added after identities were stored")
    mode: str = added_field("off", since="test", description="another one")


class _DebugWithPlainKnob(DebugSpec):
    knob: int = Field(0, description="a field added without the helper")


class _CompressWithOption(CompressSpec):
    options: dict[str, Any] = added_field(default_factory=dict, since="test", description="a nested one")


class _CodeRefWithDepth(CodeRef):
    depth: int | None = added_field(None, since="test", description="a field added to a nested model")


class _DebugWithDeeperCode(DebugSpec):
    code: _CodeRefWithDepth = Field(default_factory=_CodeRefWithDepth, description="code the agent runs")


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    retries: int = added_field(0, since="test")


class _DebugWithSteps(DebugSpec):
    # Models nested in a container: their added fields are left out at their default too.
    plan: tuple[_Step, ...] = Field(())


@pytest.mark.parametrize("values", [{}, {"sleep_s": 2.0, "salt": "x"}, {"fail": True, "code": PINNED}])
def test_an_added_field_at_its_default_keeps_the_identity(values: dict[str, Any]) -> None:
    parent = DebugSpec(**values).identity()
    assert _DebugWithKnob(**values).identity() == parent
    assert _DebugWithKnob(**values, knob=0, mode="off").identity() == parent  # given explicitly: same
    assert _DebugWithKnob(**values, knob=1).identity() != parent
    assert _DebugWithKnob(**values, mode="on").identity() != parent
    assert _DebugWithKnob(**values, knob=1).identity() != _DebugWithKnob(**values, mode="on").identity()


def test_a_field_added_without_the_helper_moves_every_identity() -> None:
    """Why `added_field` exists: a plain field, even at its default, changes the identity."""
    assert _DebugWithPlainKnob().identity() != DebugSpec().identity()
    assert "knob" in _DebugWithPlainKnob().identity_payload()["spec"]
    assert "knob" not in _DebugWithKnob().identity_payload()["spec"]


def test_an_added_field_with_a_factory_default_in_a_kind_with_standards() -> None:
    parent = CompressSpec(model=HF_MODEL, recipe="w4a16", calibration="tiny")
    child = _CompressWithOption(model=HF_MODEL, recipe="w4a16", calibration="tiny")
    assert child.identity() == parent.identity()
    assert _CompressWithOption(model=HF_MODEL, recipe="w4a16", calibration="tiny",
                               options={"a": 1}).identity() != parent.identity()


def test_added_fields_of_nested_models_are_left_out_at_their_default() -> None:
    assert _DebugWithDeeperCode().identity() == DebugSpec().identity()
    pinned = _CodeRefWithDepth(**PINNED.model_dump())
    assert _DebugWithDeeperCode(code=pinned).identity() == DebugSpec(code=PINNED).identity()
    deeper = _CodeRefWithDepth(**PINNED.model_dump(), depth=1)
    assert _DebugWithDeeperCode(code=deeper).identity() != DebugSpec(code=PINNED).identity()
    # inside a container too
    with_steps = _DebugWithSteps(plan=(_Step(name="a"), _Step(name="b", retries=2)))
    assert with_steps.identity_payload()["spec"]["plan"] == [{"name": "a"}, {"name": "b", "retries": 2}]


def test_holding_the_default_means_the_same_value_not_an_equal_one() -> None:
    """1 == True == 1.0 in Python; only a value serialised like the default counts as the default."""

    class WithFlag(DebugSpec):
        level: int | bool = added_field(1, since="test")

    assert WithFlag(level=1).identity() == DebugSpec().identity()
    assert WithFlag(level=True).identity() != DebugSpec().identity()


@pytest.mark.parametrize("make", [lambda: added_field(since="test"), lambda: added_field(..., since="test")])
def test_an_added_field_needs_a_default(make: Callable[[], Any]) -> None:
    with pytest.raises(TypeError, match="needs a default"):
        make()
