"""The nightly for real, three nights on the local stack (real agents, real llm-compressor /
lm-eval / GuideLLM, a real Prefect server), with the code pinned to a git repository the way
production pins it (`code=URL@BRANCH`, resolved to its commit at plan time; the agents clone it):

1. night 1 at commit A (this checkout's files): every step runs; the run is accepted as baseline;
2. night 2, nothing changed: no ClearML task is created, every cell passes against its baseline;
3. night 3 at commit B, which changes only the compress core script (a bug that scrambles the
   weights it loads), started as a user would from the command line (`automation run
   nightly-regression`): exactly the compression and what depends on it (the compressed model's
   evaluation and benchmark) run again, the base model's steps are reused; the nightly fails
   against the accepted baseline (exit code 1), and "what changed" names the compress script's
   files.

Performance is observation-only: CPU timings of a tiny model on a shared host are noise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from automation.clearml.admin import AdminClient
from automation.regression.gates import DEFAULT_PERFORMANCE_RULES
from automation.regression.plan import BenchmarkOptions, CompressionOptions, EvaluationOptions, StepQueues
from automation.regression.report.markdown import render_markdown
from automation.regression.report_model import Report
from testing import REPO
from testing.prefect_server import PrefectServer
from testing.processes import OFFLINE
from testing.stacks import StackHandle, admin_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

RUN = uuid.uuid4().hex[:6]
PROJECT = f"e2e-nightly-{RUN}"
OBSERVE = [r.model_copy(update={"gating": False}) for r in DEFAULT_PERFORMANCE_RULES]
# Options no other test uses: the same specs elsewhere have the same identities (the code digest of
# commit A is the working tree's), and their finished tasks would be reused here, and ours there.
COMPRESSION = {"calibration": "tiny", "num_samples": 12, "max_seq_length": 64}
EVALUATION = {"batch_size": 4}
BENCHMARKING = {"engine": "transformers", "startup_timeout_s": 180}
CORE = "automation/scripts/lib/compress_core.py"
LOAD = "model = cls.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)\n"
BUG = ("        for _name, _weight in model.named_parameters():  # the regression night 3 brings\n"
       "            if _name.endswith('proj.weight'):\n"
       "                _weight.data.normal_(0.0, float(_weight.data.std()))\n")


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bare repository (what agents clone) whose `main` holds this checkout's files (commit A,
    uncommitted edits included, so the test runs the code under test), and commit B on a side
    branch: A plus the bug in the compress core script."""
    root = tmp_path_factory.mktemp("nightly-code")
    work = root / "work"
    work.mkdir()
    files = _git("ls-files", "-co", "--exclude-standard", cwd=REPO).splitlines()
    for name in files:
        src = REPO / name
        if src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "e2e@example.org"],
                 ["config", "user.name", "e2e"], ["add", "-A"], ["commit", "-qm", "A"]):
        _git(*args, cwd=work)
    a = _git("rev-parse", "HEAD", cwd=work)
    core = work / CORE
    text = core.read_text()
    assert LOAD in text, "the compress core script no longer loads the model where the bug is injected"
    core.write_text(text.replace(LOAD, LOAD + BUG))
    _git("commit", "-qam", "B: scramble the weights", cwd=work)
    b = _git("rev-parse", "HEAD", cwd=work)
    bare = root / "code.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    _git("update-ref", "refs/heads/main", a, cwd=bare)
    return {"url": f"file://{bare}", "bare": bare, "a": a, "b": b}


@pytest.fixture(scope="module")
def api(local_stack: StackHandle) -> AdminClient:
    return admin_client(local_stack.env)


def work_tasks(api: AdminClient) -> list[dict[str, Any]]:
    projects = api.call("projects.get_all", {"name": f"^{PROJECT}$", "only_fields": ["id"]})["projects"]
    if not projects:
        return []
    tasks = api.call("tasks.get_all", {"project": [projects[0]["id"]], "search_hidden": True,
                                       "only_fields": ["id", "name", "tags"]})["tasks"]
    return [t for t in tasks if "report" not in (t.get("tags") or [])]


def night(tiny: Path, code: str) -> Report:
    from automation.regression.settings import SizeRule
    from flows.nightly import nightly_regression

    return asyncio.run(nightly_regression(
        models=[str(tiny)], schemes=["w4a16"], suites=["tiny"], profile="smoke",
        size_rules=[SizeRule(max_params_b=1000, queue="gpu")], step_queues=StepQueues(evaluate="cpu"),
        compression=CompressionOptions(**COMPRESSION), evaluation=EvaluationOptions(**EVALUATION),
        benchmarking=BenchmarkOptions(**BENCHMARKING), performance_rules=OBSERVE, project=PROJECT,
        series=f"nightly-{RUN}", code=code))


def night_from_the_cli(tiny: Path, code: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automation.cli", "run", "nightly-regression", "--models", str(tiny),
         "--schemes", "w4a16", "--suites", "tiny", "--profile", "smoke",
         "--size-rules", json.dumps([{"max_params_b": 1000, "queue": "gpu"}]), "--evaluate-queue", "cpu",
         "--calibration", "tiny", "--num-samples", str(COMPRESSION["num_samples"]), "--max-seq-length", "64",
         "--batch-size", str(EVALUATION["batch_size"]), "--engine", "transformers", "--startup-timeout-s", "180",
         "--observe-performance", "--project", PROJECT, "--series", f"nightly-{RUN}", "--code", code,
         "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def nights(local_stack: StackHandle, prefect_server: PrefectServer, tiny_model: Path, repo: dict[str, Any],
           api: AdminClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from automation.regression import baselines
    from flows.bridge import backend

    out: dict[str, Any] = {}
    out["first"] = night(tiny_model, f"{repo['url']}@main")
    out["after_first"] = work_tasks(api)

    async def promote() -> None:
        await baselines.promote(backend(), str(out["first"].summary_task_id), by="e2e", note="night 1")

    asyncio.run(promote())
    out["second"] = night(tiny_model, f"{repo['url']}@main")
    out["after_second"] = work_tasks(api)
    _git("update-ref", "refs/heads/main", repo["b"], cwd=repo["bare"])  # upstream moves on
    report_json = tmp_path_factory.mktemp("night3") / "report.json"
    env = {**os.environ, **OFFLINE, **prefect_server.env}
    res = night_from_the_cli(tiny_model, f"{repo['url']}@main", report_json, env)
    out["third_rc"], out["third_output"] = res.returncode, res.stdout + res.stderr
    assert report_json.is_file(), out["third_output"][-4000:]
    out["third"] = Report.model_validate_json(report_json.read_text())
    out["after_third"] = work_tasks(api)
    print("\n[report of night 3]\n" + render_markdown(out["third"]))
    return out


def cells(report: Report) -> dict[str, Any]:
    return {c.scheme: c for c in report.cells}


def test_night_one_runs_every_step_from_the_pinned_commit(nights: dict[str, Any], repo: dict[str, Any]) -> None:
    first = nights["first"]
    assert first.outcome in ("pass", "inconclusive"), render_markdown(first)
    assert first.provenance["code"] == f"{repo['url']}@{repo['a']}"
    assert len(nights["after_first"]) == 5  # base evaluate + benchmark, compress, its evaluate + benchmark
    w4 = cells(first)["w4a16"]
    assert w4.environment["compress/code"] == repo["url"] and w4.environment["compress/code_files"]
    assert w4.environment["compress/code_files"] != w4.environment["evaluate/code_files"]  # per kind
    # the evaluation logged its documents: the gate vs base is paired, with flip counts
    paired = [d for d in w4.accuracy_gates if d.paired is not None]
    assert paired, [(d.metric, d.reason) for d in w4.accuracy_gates]
    assert all(d.paired.documents > 0 for d in paired if d.paired)


def test_an_unchanged_night_creates_no_task_and_passes_against_its_baseline(nights: dict[str, Any]) -> None:
    second, first = nights["second"], nights["first"]
    assert len(nights["after_second"]) == len(nights["after_first"])
    assert all(s.reused for c in second.cells for s in c.steps)
    w4 = cells(second)["w4a16"]
    assert w4.accepted_from == first.summary_task_id
    assert w4.accepted_accuracy_gates and all(d.outcome == "pass" for d in w4.accepted_accuracy_gates)
    assert w4.changes_vs_accepted == [] and w4.changes_vs_previous == []
    assert second.stack_changes == []


def test_a_new_upstream_commit_recomputes_exactly_what_it_touches_and_fails_the_night(
        nights: dict[str, Any]) -> None:
    third, first = nights["third"], nights["first"]
    before = {t["id"] for t in nights["after_second"]}
    new = [t for t in nights["after_third"] if t["id"] not in before]
    kinds = sorted(str(t["name"]).split("-", 1)[0] for t in new)
    assert kinds == ["benchmark", "compress", "evaluate"], [t["name"] for t in new]
    base = cells(third)["base"]
    assert all(s.reused for s in base.steps)  # the base model's evaluation did not move
    assert base.changes_vs_accepted == [] and third.stack_changes == []
    w4 = cells(third)["w4a16"]
    assert not any(s.reused for s in w4.steps)
    assert w4.outcome == "fail"
    assert any(d.outcome == "fail" for d in w4.accepted_accuracy_gates), \
        [(d.metric, d.recovery, d.outcome) for d in w4.accepted_accuracy_gates]
    assert w4.accepted_from == first.summary_task_id
    suspects = " ".join(w4.changes_vs_accepted)
    assert "compress/code_files" in suspects and "evaluate/model" in suspects, w4.changes_vs_accepted
    assert "evaluate/code_files" not in suspects  # the evaluate kind's files did not change
    assert nights["third_rc"] == 1, nights["third_output"][-3000:]
    assert "failed their gates" in " ".join(nights["third_output"].split())
    assert "Traceback" not in nights["third_output"]
    md = render_markdown(third)
    assert "What changed vs accepted run" in md and "compress/code_files" in md
