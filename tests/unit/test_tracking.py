"""Tracked libraries: a branch or a version range resolved at plan time, entering exactly the
identities of the kinds that install the library."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from automation.errors import FlowInputError
from automation.regression.plan import BenchmarkOptions, CompressionOptions, EvaluationOptions, StepQueues, plan_matrix
from automation.regression.tracking import Tracked, resolve_tracked
from automation.specs.compress import CompressSpec
from automation.specs.model_ref import ModelRef
from testing.git import one_commit_repo

MODEL = "hf:org/m-1B@" + "0" * 40


def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel (all pip needs to pick a version from a find-links folder)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"", f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\n"
             f"Version: {version}\n".encode(), f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
             b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{dist}/RECORD", record)


def test_a_branch_becomes_its_commit_and_exact_pins_stay(tmp_path: Path) -> None:
    work = tmp_path / "lib"
    head = one_commit_repo(work)
    [branch, exact] = resolve_tracked([f"llmcompressor @ git+file://{work}@main", "lm-eval[hf]==0.4.13"])
    assert branch.resolved == f"llmcompressor @ git+file://{work}@{head}" and branch.name == "llmcompressor"
    assert exact.resolved == "lm-eval[hf]==0.4.13"
    with pytest.raises(FlowInputError, match=r"track\[0\]: cannot resolve 'nope'"):
        resolve_tracked([f"llmcompressor @ git+file://{work}@nope"])


def test_a_range_becomes_the_version_pip_picks_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = tmp_path / "wheels"
    links.mkdir()
    for version in ("1.0", "1.2", "2.0"):
        _wheel(links, "tinylib", version)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    assert resolve_tracked(["tinylib>=1,<2"])[0].resolved == "tinylib==1.2"
    _wheel(links, "tinylib", "1.3")  # upstream releases: the next night resolves anew
    assert resolve_tracked(["tinylib>=1,<2"])[0].resolved == "tinylib==1.3"
    with pytest.raises(FlowInputError, match=r"track\[0\]: pip cannot resolve 'tinylib>=3'"):
        resolve_tracked(["tinylib>=3"])


@pytest.mark.parametrize(("items", "said"), [
    (["not a requirement!"], r"track\[0\]: 'not a requirement!' is not a pip requirement"),
    (["guidellm==0.8.1", "GuideLLM==0.8.2"], r"track\[1\]: GuideLLM is tracked twice"),
])
def test_bad_tracking_is_one_line_naming_the_item(items: list[str], said: str) -> None:
    with pytest.raises(FlowInputError, match=said):
        resolve_tracked(items)


def _plan(tracked: list[Tracked]) -> Any:
    return plan_matrix([(ModelRef.model_validate(MODEL), "gpu", ())], ["w4a16"], ["tiny"], "smoke",
                       CompressionOptions(), EvaluationOptions(), BenchmarkOptions(), StepQueues(), "proj", [],
                       tracked=tracked)


def test_a_tracked_library_enters_the_identities_of_the_kinds_that_install_it_only() -> None:
    plain = _plan([])
    new_compressor = _plan([Tracked(given="llmcompressor>=0.14", resolved="llmcompressor==0.15.0")])
    a, b = plain.models[0], new_compressor.models[0]
    assert b.compress["w4a16"].identity() != a.compress["w4a16"].identity()
    assert "llmcompressor==0.15.0" in b.compress["w4a16"].task_requirements()
    assert "llmcompressor==0.14.0.1" not in b.compress["w4a16"].task_requirements()  # replaced, not merged
    assert b.base_evals["tiny"].identity() == a.base_evals["tiny"].identity()
    assert b.base_bench.identity() == a.base_bench.identity()
    extra = _plan([Tracked(given="accelerate>=1", resolved="accelerate==1.2.0")]).models[0]
    assert all("accelerate==1.2.0" in s.requirements() for s in extra.specs())  # no kind declares it: all get it
    assert "package_overrides" not in CompressSpec(model=MODEL, recipe="w4a16").to_configuration()["automation_spec"]
    assert "llmcompressor==0.15.0" in b.compress["w4a16"].to_configuration()["automation_spec"]
