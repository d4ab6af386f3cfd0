"""TaskSpec: validation, Args/configuration round trip, identity, package merge, HOCON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from automation.errors import HoconError, PackageError, SpecError
from automation.specs.base import CodeRef, decode_arg, encode_arg
from automation.specs.debug import DebugSpec
from automation.specs.hocon import dumps, loads
from automation.specs.packages import merge
from automation.specs.registry import get_kind, kinds


def test_registry_lists_kinds_and_names_unknown_ones() -> None:
    assert {"debug"} <= set(kinds())
    with pytest.raises(SpecError, match=r"unknown task kind 'nope' \(known: .*debug"):
        get_kind("nope")


@pytest.mark.parametrize(
    ("value", "annotation"),
    [
        (None, int | None), (3, int | None), (0.5, float), (True, bool), (False, bool),
        ("none", str), ("true", str), ("3", str), ("", str), (None, str | None), ("none", str | None),
        ("", str | None), (7, int), (-1.5e-9, float),
    ],
)
def test_args_round_trip_keeps_types(value: object, annotation: object) -> None:
    text, marker = encode_arg(value)
    assert isinstance(text, str)
    assert decode_arg("x", text, marker, annotation) == value
    assert type(decode_arg("x", text, marker, annotation)) is type(value)


def test_ui_edits_of_args_are_parsed_by_field_type() -> None:
    # A user edits the value in the ClearML UI; the stored type marker stays what it was.
    assert decode_arg("n", "12", "none", int | None) == 12
    assert decode_arg("n", "null", "int", int | None) is None
    assert decode_arg("f", "TRUE", "bool", bool) is True
    with pytest.raises(SpecError, match="Args/n: 'twelve'"):
        decode_arg("n", "twelve", "int", int)


# Kinds with required fields (compress, evaluate, benchmark, lighteval) round-trip with examples in test_kinds.py.
DEFAULT_CONSTRUCTIBLE = sorted(k for k, c in kinds().items()
                               if not any(info.is_required() for info in c.model_fields.values()))


def test_every_kind_has_a_round_trip_test() -> None:
    assert set(kinds()) == {*DEFAULT_CONSTRUCTIBLE, "compress", "evaluate", "benchmark", "lighteval"}


@pytest.mark.parametrize("kind", DEFAULT_CONSTRUCTIBLE)
def test_every_kind_round_trips_through_the_task_form(kind: str) -> None:
    cls = get_kind(kind)
    spec = cls(queue="cpu", tags=("a", "b"), packages=("tqdm",))
    back = cls.from_task_form(spec.to_args(), spec.to_configuration())
    assert back == spec
    assert back.identity() == spec.identity()


def test_debug_spec_round_trip_with_nested_and_odd_values() -> None:
    cls = DebugSpec
    spec = cls(sleep_s=0.25, oom_on_queues=("a100x1", "re:.*x$"), fail_message='quote " and\nnewline',
               salt="none", code=CodeRef(repository="https://example.org/r.git", commit="a" * 40))
    assert cls.from_task_form(spec.to_args(), spec.to_configuration()) == spec


def test_missing_and_mistyped_fields_are_named() -> None:
    cls = get_kind("debug")
    spec = cls()
    args = spec.to_args()
    args["sleep_s"] = ("soon", "float")
    with pytest.raises(SpecError, match="Args/sleep_s: 'soon'"):
        cls.from_task_form(args, spec.to_configuration())
    args = spec.to_args()
    args["sleeep_s"] = ("1", "float")
    with pytest.raises(SpecError, match=r"unknown parameter\(s\) \['sleeep_s'\]"):
        cls.from_task_form(args, spec.to_configuration())
    conf = spec.to_configuration()
    conf["oom_on_queues"] = "oom_on_queues = [ unclosed"
    with pytest.raises(SpecError, match="invalid HOCON in configuration 'oom_on_queues'"):
        cls.from_task_form(spec.to_args(), conf)


def test_a_field_missing_from_the_task_is_an_error_even_with_a_default() -> None:
    # Taking today's default for a missing field would run something other than the task records.
    spec = DebugSpec(steps=3)
    args = spec.to_args()
    del args["steps"], args["salt"]
    with pytest.raises(SpecError, match=r"Args/steps: missing from the task.*Args/salt: missing"):
        DebugSpec.from_task_form(args, spec.to_configuration())
    conf = spec.to_configuration()
    del conf["oom_on_queues"]
    with pytest.raises(SpecError, match=r"configuration 'oom_on_queues': missing from the task"):
        DebugSpec.from_task_form(spec.to_args(), conf)
    # what the backend writes is always complete
    assert set(spec.to_args()) == set(DebugSpec.arg_fields())
    assert set(spec.to_configuration()) >= set(DebugSpec.config_fields())


def test_validation_names_the_field() -> None:
    from automation.specs.base import build

    with pytest.raises(SpecError, match=r"sleep_s: Input should be greater than or equal to 0"):
        build(get_kind("debug"), {"sleep_s": -1})
    with pytest.raises(SpecError, match=r"sleeep: unknown field"):
        build(get_kind("debug"), {"sleeep": 1})


def test_code_ref_must_be_pinned() -> None:
    with pytest.raises(ValueError, match=r"code\.commit is required"):
        CodeRef(repository="https://example.org/r.git")
    with pytest.raises(ValueError, match="full 40-hex commit"):
        CodeRef(repository="https://example.org/r.git", commit="main")
    assert CodeRef().is_working_tree


def test_identity_ignores_volatile_fields_only() -> None:
    cls = DebugSpec
    base = cls(sleep_s=1.0)
    assert cls(sleep_s=1.0, queue="other", name="n", tags=("t",), project="elsewhere",
               queue_escalation=("x",)).identity() == base.identity()
    assert cls(sleep_s=2.0).identity() != base.identity()
    assert cls(sleep_s=1.0, packages=("tqdm==4.0",)).identity() != base.identity()
    pinned = CodeRef(repository="https://example.org/r.git", commit="b" * 40)
    assert cls(sleep_s=1.0, code=pinned).identity() != base.identity()


def test_identity_is_stable_across_processes() -> None:
    code = (
        "from automation.specs.registry import get_kind;"
        "print(get_kind('debug')(sleep_s=1.5, oom_on_queues=('g',), salt='x').identity())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout.strip()
        for seed in (1, 2)
    }
    here = DebugSpec(sleep_s=1.5, oom_on_queues=("g",), salt="x").identity()
    assert outs == {here}


def test_package_merge_pinned_wins() -> None:
    assert merge(["torch", "transformers>=4"], ["Torch==2.13.0", "transformers"]) == (
        "Torch==2.13.0", "transformers")
    assert merge(["numpy==2.0"], ["numpy"]) == ("numpy==2.0",)
    assert merge(["numpy==2.0"], ["numpy==2.0"]) == ("numpy==2.0",)
    with pytest.raises(PackageError, match="conflicting pins for numpy"):
        merge(["numpy==2.0"], ["numpy==2.1"])
    with pytest.raises(PackageError, match="not a valid pip requirement"):
        merge(["not a requirement!"])


def test_hocon_round_trip_of_awkward_keys_and_values() -> None:
    data = {"a.b": 1, "re:.*lm_head": "x\n\"q\"", "k": {"x y": 2, "$z": [1, "a,b", None, {"p.q": True}]},
            "e": "", "u": "é", "empty": {}, "none": None, "f": 0.1}
    assert loads(dumps(data)) == data
    assert loads(json.dumps(data, ensure_ascii=False)) == data  # JSON is HOCON too
    assert loads(dumps({"ctl": "a\x01b"})) == {"ctl": "a\x01b"}
    with pytest.raises(HoconError, match="invalid HOCON in recipe"):
        loads("a = [", what="recipe")
