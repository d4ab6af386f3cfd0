"""The environment a task records at its start, and the check of the pins it declares."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from automation.clearml.failures import FailureKind, classify
from automation.scripts import runtime
from automation.scripts.runtime import (
    NOT_INSTALLED,
    environment_mismatch,
    environment_record,
    mismatch_message,
    pin_mismatches,
)
from automation.specs.compress import CompressSpec
from automation.specs.debug import DebugSpec

INSTALLED = {"llmcompressor": "0.13.1", "torch": "2.13.0+cu128", "transformers": "5.17.0", "weird": "1.0-custom"}


def _installed(name: str) -> str | None:
    return INSTALLED.get(name)


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("llmcompressor==0.14.0", ["llmcompressor==0.14.0 declared but 0.13.1 is installed"]),  # mismatch
        ("vllm==0.11.0", ["vllm==0.11.0 declared but it is not installed"]),  # missing
        ("vllm==0.11.0; sys_platform == 'no-such-platform'", []),  # marker does not apply
        ("vllm==0.11.0; extra == 'gpu'", []),  # an extra nobody asked for
        ("transformers==5.17.0", []),  # match
        ("lm-eval[hf,api]==0.4.13; python_version >= '3'", ["lm-eval==0.4.13 declared but it is not installed"]),
        ("torch==2.13.0", []),  # a local build label (+cu128) satisfies the plain pin
        ("torch==2.13.*", []),
        ("torch===2.13.0+cu128", []),
        ("weird===1.0-custom", []),  # not PEP 440: only the identical string holds it
        ("weird==1.0", ["weird==1.0 declared but 1.0-custom is installed"]),
        ("llmcompressor>=0.10", []),  # not a pin: not checked
        ("llmcompressor", []),
        ("notinstalled>=1", []),  # not a pin: a missing package is the agent's install step's business
    ],
)
def test_pin_mismatches(requirement: str, expected: list[str]) -> None:
    assert pin_mismatches([requirement], installed=_installed) == expected


def test_a_marker_is_evaluated_against_the_given_environment() -> None:
    req = "llmcompressor==0.14.0; sys_platform == 'no-such-platform'"
    assert pin_mismatches([req], installed=_installed) == []
    found = pin_mismatches([req], installed=_installed, environment={"sys_platform": "no-such-platform"})
    assert found == ["llmcompressor==0.14.0 declared but 0.13.1 is installed"]


def test_the_message_is_one_line_naming_both_versions_and_an_infrastructure_failure() -> None:
    mismatches = pin_mismatches(["llmcompressor==0.14.0", "vllm==0.11.0", "transformers==5.17.0"],
                                installed=_installed)
    message = mismatch_message(mismatches)
    assert message == ("environment: llmcompressor==0.14.0 declared but 0.13.1 is installed; vllm==0.11.0 declared "
                       "but it is not installed (the agent's environment does not match the task; rebuild it or "
                       "change the pin)")
    assert "\n" not in message
    # as the core script fails with it: the status message is the line, and so is the log
    assert classify("failed", message, message[:255], [message]) is FailureKind.INFRASTRUCTURE
    # the agent overwrites the status fields afterwards; the log still has the line
    assert classify("failed", "Changed by clearml-agent local-gpu", "", ["some output", message,
                                                                         "Process failed, exit code 1"]) \
        is FailureKind.INFRASTRUCTURE
    # a code error that merely mentions an environment is still a code error
    assert classify("failed", "RuntimeError: environment: bad", "", ["Traceback (most recent call last):",
                                                                    "RuntimeError: environment: bad"]) \
        is FailureKind.CODE


def test_this_checkouts_environment_holds_every_kinds_pins() -> None:
    """What the local stack's agents run tasks in (this .venv): every kind's declared pins hold,
    or every task there would fail."""
    from automation.specs.registry import kinds

    for kind, cls in kinds().items():
        pins = (*DebugSpec().task_requirements(), *cls.base_packages)
        assert pin_mismatches(pins) == [], kind
    assert environment_mismatch(DebugSpec().task_requirements()) is None
    line = environment_mismatch(DebugSpec(packages=("psutil==0.0.1",)).task_requirements())
    assert line == (f"environment: psutil==0.0.1 declared but {version('psutil')} is installed (the agent's "
                    "environment does not match the task; rebuild it or change the pin)")


def test_the_record_names_the_interpreter_the_declared_and_key_libraries_and_the_queue() -> None:
    spec = CompressSpec(model="hf:org/m-1B", recipe="w4a16", queue="gpu-a100", packages=("not-installed-pkg",))
    torch_loaded = "torch" in sys.modules
    started = time.perf_counter()
    record = environment_record(spec)
    spent = time.perf_counter() - started
    assert record["python"] == platform.python_version() and record["platform"] == platform.platform()
    assert record["queue"] == "gpu-a100"
    for name in ("llmcompressor", "compressed-tensors", "transformers", "clearml", "pydantic", "torch"):
        assert record[name] == version(name), name
    assert record["not-installed-pkg"] == NOT_INSTALLED  # declared, missing: said so
    assert "vllm" not in record or record["vllm"] == version("vllm")  # a key library: only when installed
    assert record["torch_cuda"] and ("torch" in sys.modules) == torch_loaded  # read without importing torch
    assert not any(key.startswith("env.") for key in record)
    assert spent < 1.0, spent  # no torch import, one subprocess at most (nvidia-smi)


def test_the_record_takes_the_worker_from_the_agents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLEARML_WORKER_ID", raising=False)
    monkeypatch.delenv("CLEARML_WORKER_NAME", raising=False)
    assert "worker" not in environment_record(DebugSpec())
    monkeypatch.setenv("CLEARML_WORKER_NAME", "host:gpu0")
    assert environment_record(DebugSpec())["worker"] == "host:gpu0"
    monkeypatch.setenv("CLEARML_WORKER_ID", "host:gpu1")
    assert environment_record(DebugSpec())["worker"] == "host:gpu1"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ('printf "550.54.15\\n550.54.15\\n"', "550.54.15"),  # one line per GPU: the version once
        ('printf "550.54.15\\n535.104.05\\n"', "550.54.15, 535.104.05"),
        ('echo "NVIDIA-SMI has failed" >&2; exit 9', None),  # a driver that is not loaded
        ("sleep 5", None),  # hangs: given up after the timeout
    ],
)
def test_the_driver_version_comes_from_nvidia_smi_when_there_is_one(
        script: str, expected: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(runtime, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    started = time.monotonic()
    record = environment_record(DebugSpec(), runtime.start_driver_query())
    assert record.get("nvidia_driver") == expected
    assert time.monotonic() - started < 3


def test_no_nvidia_smi_no_driver_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert runtime.start_driver_query() is None
    assert "nvidia_driver" not in environment_record(DebugSpec())
