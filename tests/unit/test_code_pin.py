"""Which code the agents run: decided once at plan time (a branch becomes its commit), carried by
every spec of the run and recorded in the report; bad references are one error naming `code`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from automation.errors import FlowInputError
from automation.regression.code_pin import LOCAL_STACK_ENV, checkout_head, resolve_code
from automation.specs.base import CodeRef
from testing.git import git, one_commit_repo

SHA = "0123456789abcdef0123456789abcdef01234567"




@pytest.fixture()
def upstream(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository with one commit on `main` and a tag; returns (its path, the commit)."""
    work = tmp_path / "work"
    one_commit_repo(work)
    git(work, "tag", "v1")
    bare = tmp_path / "upstream.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(work), str(bare))
    return bare, git(work, "rev-parse", "HEAD")


def test_explicit_forms(upstream: tuple[Path, str]) -> None:
    bare, head = upstream
    url = f"file://{bare}"
    assert resolve_code("worktree", {}) == CodeRef()
    assert resolve_code(f"{url}@{SHA}", {}) == CodeRef(repository=url, commit=SHA)  # a commit is taken as is
    assert resolve_code(f"{url}@main", {}) == CodeRef(repository=url, commit=head)  # a branch: its commit now
    assert resolve_code(f"{url}@v1", {}) == CodeRef(repository=url, commit=head)
    assert resolve_code(None, {"AUTOMATION_CODE": f"{url}@main"}) == CodeRef(repository=url, commit=head)
    assert resolve_code(None, {LOCAL_STACK_ENV: "1"}) == CodeRef()  # the local stack's agents: their tree


@pytest.mark.parametrize(("text", "said"), [
    ("no-at-sign", "is not URL@COMMIT or URL@BRANCH"),
    ("{url}@no-such-branch", "no branch or tag 'no-such-branch'"),
    ("file:///nonexistent/repo.git@main", "code: cannot read file:///nonexistent/repo.git"),
    ("{url}@abc123", "no branch or tag 'abc123'"),  # a short sha is not a commit id
])
def test_bad_references_are_one_line_naming_code(upstream: tuple[Path, str], text: str, said: str) -> None:
    with pytest.raises(FlowInputError) as caught:
        resolve_code(text.format(url=f"file://{upstream[0]}"), {})
    assert said in str(caught.value) and str(caught.value).startswith("code: ") and "\n" not in str(caught.value)


def test_the_default_off_the_local_stack_is_a_clean_pushed_head(upstream: tuple[Path, str], tmp_path: Path) -> None:
    bare, head = upstream
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(bare), str(clone))
    assert checkout_head(clone) == CodeRef(repository=str(bare), commit=head)
    assert resolve_code(None, {}, checkout=clone) == CodeRef(repository=str(bare), commit=head)

    (clone / "a.txt").write_text("changed\n")
    with pytest.raises(FlowInputError, match="uncommitted changes"):
        resolve_code(None, {}, checkout=clone)
    git(clone, "commit", "--quiet", "-am", "local only")
    with pytest.raises(FlowInputError, match=r"is on no branch of origin \(push it\)"):
        resolve_code(None, {}, checkout=clone)
    git(clone, "remote", "remove", "origin")
    with pytest.raises(FlowInputError, match="no remote 'origin'"):
        resolve_code(None, {}, checkout=clone)
    with pytest.raises(FlowInputError, match="not a git checkout"):
        resolve_code(None, {}, checkout=tmp_path / "nowhere")


def test_a_spec_takes_url_at_commit_as_text() -> None:
    assert CodeRef.model_validate(f"git@git.example:org/repo.git@{SHA}") == CodeRef(
        repository="git@git.example:org/repo.git", commit=SHA)
    with pytest.raises(ValueError, match="is not URL@COMMIT"):
        CodeRef.model_validate("just-a-url")
    with pytest.raises(ValueError, match="full 40-hex commit id"):
        CodeRef.model_validate("https://git.example/r.git@main")
    assert str(CodeRef(repository="u", commit=SHA)) == f"u@{SHA}" and str(CodeRef()) == "agent working tree"


def test_every_spec_of_a_plan_runs_the_resolved_code_and_the_report_says_which() -> None:
    from automation.regression.plan import (
        BenchmarkOptions,
        CompressionOptions,
        EvaluationOptions,
        StepQueues,
        plan_matrix,
    )
    from automation.specs.model_ref import ModelRef
    from flows.run import provenance

    code = CodeRef(repository="https://git.example/org/automation.git", commit=SHA)
    args: dict[str, Any] = {
        "models": [(ModelRef.model_validate("hf:org/m-1B"), "gpu", ())], "schemes": ["w4a16"], "suites": ["tiny"],
        "profile": "smoke", "compression": CompressionOptions(), "evaluation": EvaluationOptions(),
        "benchmarking": BenchmarkOptions(), "step_queues": StepQueues(), "project": "proj", "hooks": []}
    pinned, tree = plan_matrix(**args, code=code), plan_matrix(**args)
    specs = [*pinned.models[0].base_evals.values(), pinned.models[0].base_bench, *pinned.models[0].compress.values()]
    assert {s.code for s in specs} == {code} and pinned.code == code
    assert pinned.models[0].base_bench.identity() != tree.models[0].base_bench.identity()  # the code is identity
    assert provenance({"gpu"}, code)["code"] == f"https://git.example/org/automation.git@{SHA}"
    assert provenance({"gpu"})["code"].startswith("agent working tree")


def test_task_submit_pins_a_branch_to_its_commit(upstream: tuple[Path, str]) -> None:
    import json

    from typer.testing import CliRunner

    from automation.cli import app

    bare, head = upstream
    res = CliRunner().invoke(app, ["task", "submit", "debug", "--code", f"file://{bare}@main", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["code"] == {"repository": f"file://{bare}", "commit": head, "working_dir": ".",
                                              "source_digest": None}
    res = CliRunner().invoke(app, ["task", "submit", "debug", f"--code=file://{bare}@gone", "--dry-run"])
    assert res.exit_code == 2 and "no branch or tag 'gone'" in res.output


# -- which files a kind runs: the identity covers them, not the commit --------------------------------
def _package(root: Path) -> None:
    """A miniature product: two kinds sharing a runtime, each with its own core module."""
    files = {
        "automation/__init__.py": "",
        "automation/scripts/__init__.py": "",
        "automation/scripts/runtime.py": "import json\n",
        "automation/scripts/lib/__init__.py": "",
        "automation/scripts/lib/compress_core.py": "def compress():\n    return 1\n",
        "automation/scripts/lib/evaluate_core.py": "X = 1\n",
        "automation/scripts/compress.py": ("from automation.scripts.runtime import json\n"
                                           "def main():\n    from .lib import compress_core\n"),
        "automation/scripts/evaluate.py": "import automation.scripts.lib.evaluate_core\nimport torch\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


KINDS = {"compress": "automation.scripts.compress", "evaluate": "automation.scripts.evaluate"}


def test_a_kinds_files_are_its_module_and_what_it_imports_of_the_product(tmp_path: Path) -> None:
    from automation.regression.code_pin import source_files, worktree_reader

    _package(tmp_path)
    compress = set(source_files(KINDS["compress"], worktree_reader(tmp_path)))
    evaluate = set(source_files(KINDS["evaluate"], worktree_reader(tmp_path)))
    shared = {"automation/__init__.py", "automation/scripts/__init__.py", "automation/scripts/lib/__init__.py"}
    assert compress == shared | {"automation/scripts/compress.py", "automation/scripts/runtime.py",
                                 "automation/scripts/lib/compress_core.py"}  # a lazy relative import too
    assert evaluate == shared | {"automation/scripts/evaluate.py", "automation/scripts/lib/evaluate_core.py"}
    # this product's real kinds: the compress core is the compress kind's alone
    real = worktree_reader(Path(__file__).resolve().parents[2])
    assert "automation/scripts/lib/compress_core.py" in source_files("automation.scripts.compress", real)
    assert "automation/scripts/lib/compress_core.py" not in source_files("automation.scripts.evaluate", real)


def test_a_commit_that_changes_one_core_script_moves_that_kinds_identity_only(tmp_path: Path) -> None:
    from automation.regression.code_pin import with_source_digests
    from automation.specs.compress import CompressSpec
    from automation.specs.evaluate import EvaluateSpec

    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    _package(work)
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "A")
    a = git(work, "rev-parse", "HEAD")
    (work / "automation/scripts/lib/compress_core.py").write_text("def compress():\n    return 2\n")
    (work / "README").write_text("docs only\n")
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "B")
    b = git(work, "rev-parse", "HEAD")
    url = f"file://{work}"
    at_a = with_source_digests(CodeRef(repository=url, commit=a), KINDS, checkout=tmp_path / "nowhere")
    at_b = with_source_digests(CodeRef(repository=url, commit=b), KINDS, checkout=tmp_path / "nowhere")
    assert at_a["compress"].source_digest and at_a["evaluate"].source_digest
    assert at_a["compress"].source_digest != at_b["compress"].source_digest
    assert at_a["evaluate"].source_digest == at_b["evaluate"].source_digest
    model = "hf:org/m@" + SHA

    def ids(codes: dict[str, CodeRef]) -> tuple[str, str]:
        return (CompressSpec(model=model, recipe="w4a16", code=codes["compress"]).identity(),
                EvaluateSpec(model=model, suite="tiny", code=codes["evaluate"]).identity())

    assert ids(at_a)[0] != ids(at_b)[0] and ids(at_a)[1] == ids(at_b)[1]
    # the same files from a fork, or from the working tree, are the same work
    fork = {k: v.model_copy(update={"repository": "https://fork.example/r.git"}) for k, v in at_a.items()}
    assert ids(fork) == ids(at_a)
    tree = with_source_digests(CodeRef(), KINDS, checkout=work)
    assert tree["compress"].source_digest == at_b["compress"].source_digest


def test_code_this_host_cannot_read_keeps_the_commit_in_the_identity(tmp_path: Path) -> None:
    from automation.regression.code_pin import with_source_digests
    from automation.specs.debug import DebugSpec

    remote = CodeRef(repository="https://git.example/org/automation.git", commit=SHA)
    codes = with_source_digests(remote, KINDS, checkout=tmp_path)
    assert codes["compress"] == remote and codes["compress"].source_digest is None
    other = CodeRef(repository=remote.repository, commit="f" * 40)
    assert DebugSpec(code=remote).identity() != DebugSpec(code=other).identity()


def test_the_digest_stays_on_the_orchestrator_side() -> None:
    """A core script of a commit from before the field existed refuses unknown fields: the task's
    envelope must not carry it."""
    from automation.specs.debug import DebugSpec

    spec = DebugSpec(code=CodeRef(repository="https://git.example/r.git", commit=SHA, source_digest="a" * 32))
    envelope = spec.to_configuration()["automation_spec"]
    assert "source_digest" not in envelope and SHA in envelope
    assert spec.environment()["code_files"] == "a" * 32 and spec.environment()["code"] == "https://git.example/r.git"


def test_a_kinds_pin_bump_moves_that_kind_only() -> None:
    """The runtime imports every kind's spec (the registry); another kind's pins are not this one's."""
    from automation.regression.code_pin import kind_digests, worktree_reader

    root = Path(__file__).resolve().parents[2]
    real = worktree_reader(root)
    spec = "automation/specs/compress.py"

    def bumped(path: str) -> bytes | None:
        data = real(path)
        return data.replace(b"llmcompressor==", b"llmcompressor==9") if path == spec and data else data

    kinds = {k: f"automation.scripts.{k}" for k in ("compress", "evaluate", "benchmark")}
    before, after = kind_digests(real, kinds), kind_digests(bumped, kinds)
    assert before["compress"] != after["compress"]
    assert before["evaluate"] == after["evaluate"] and before["benchmark"] == after["benchmark"]
