"""The flows for real: `compress_evaluate_benchmark` and `sweep` on the tiny model, through the
local stack (real agents, real llm-compressor / lm-eval / GuideLLM) and a real Prefect server.

One run compresses with w4a16 (a noise-level change) and with a deliberately damaging recipe
(2-bit weights, one scale per tensor, lm_head included, no calibration); the gates must fail the
second and not the first. The same run again, and a sweep over the same cell, reuse every step.
Performance is observation-only here: CPU timings of a tiny model on a shared 2-core host are noise.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from automation.clearml.admin import AdminClient
from automation.regression.gates import DEFAULT_PERFORMANCE_RULES
from automation.regression.plan import BenchmarkOptions, CompressionOptions, EvaluationOptions, StepQueues
from automation.regression.report_model import Report
from testing import REPO
from testing.prefect_server import PrefectServer
from testing.processes import OFFLINE
from testing.stacks import StackHandle, admin_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]  # the first run does the ML work

DAMAGING = Path(__file__).parent / "recipes" / "w2_per_tensor.yaml"
RUN = uuid.uuid4().hex[:6]
PROJECT = f"e2e-flows-{RUN}"
OBSERVE = [r.model_copy(update={"gating": False}) for r in DEFAULT_PERFORMANCE_RULES]


@pytest.fixture(scope="module")
def api(local_stack: StackHandle) -> AdminClient:
    return admin_client(local_stack.env)


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model


def chain_params(tiny: Path) -> dict[str, Any]:
    return {
        "model": str(tiny), "schemes": ["w4a16", str(DAMAGING)], "suite": "tiny", "profile": "smoke",
        "queue": "gpu", "step_queues": StepQueues(evaluate="cpu"),
        "compression": CompressionOptions(calibration="tiny", num_samples=16, max_seq_length=64),
        "benchmarking": BenchmarkOptions(startup_timeout_s=180), "performance_rules": OBSERVE,
        # every cell is also evaluated with LightEval (the fourth kind), on the shipped local tasks
        "evaluation": EvaluationOptions(lighteval_tasks=["tiny_mc|0", "tiny_gen|0"], lighteval_custom_tasks="tiny",
                                        lighteval_max_samples=16),
        "project": PROJECT, "series": f"e2e-{RUN}", "fail_on": "never",
    }


def project_tasks(api: AdminClient) -> list[dict[str, Any]]:
    projects = api.call("projects.get_all", {"name": f"^{PROJECT}$", "only_fields": ["id"]})["projects"]
    if not projects:
        return []
    return list(api.call("tasks.get_all", {"project": [projects[0]["id"]], "search_hidden": True,
                                           "only_fields": ["id", "type", "status", "started", "completed", "tags"]}
                         )["tasks"])


def work_tasks(api: AdminClient) -> list[dict[str, Any]]:
    """Tasks that did GPU work (not the report's summary task)."""
    return [t for t in project_tasks(api) if "report" not in (t.get("tags") or [])]


@pytest.fixture(scope="module")
def first(local_stack: StackHandle, prefect_server: PrefectServer, tiny: Path) -> tuple[Report, float]:
    from flows.compress_evaluate_benchmark import compress_evaluate_benchmark

    started = time.monotonic()
    report = asyncio.run(compress_evaluate_benchmark(**chain_params(tiny)))
    return report, time.monotonic() - started


def _when(stamp: Any) -> datetime:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


def test_baseline_evaluation_starts_before_compression_ends(first: tuple[Report, float],
                                                           api: AdminClient) -> None:
    report, wall = first
    print(f"\n[measure] first run: {wall:.0f} s")
    by_id = {t["id"]: t for t in work_tasks(api)}
    base = next(c for c in report.cells if c.scheme == "base")
    # the base model's evaluations (lm-eval and LightEval) share the one `cpu` agent: the first of
    # them to start shows that the base steps did not wait for any compression
    base_evals = [s for s in base.steps if s.step in ("evaluate", "lighteval")]
    compressions = [s for c in report.cells for s in c.steps if s.step == "compress"]
    assert len(compressions) == 2 and len(base_evals) == 2
    eval_started = min(_when(by_id[s.task_id]["started"]) for s in base_evals)
    for comp in compressions:
        assert eval_started < _when(by_id[comp.task_id]["completed"]), "base evaluation waited for compression"
    # each scheme's follow-ups start only after its own compression
    for cell in report.cells:
        steps = {s.step: s for s in cell.steps}
        if "compress" in steps:
            done = _when(by_id[steps["compress"].task_id]["completed"])
            for step in ("evaluate", "benchmark", "lighteval"):
                assert _when(by_id[steps[step].task_id]["started"]) >= done


def test_report_gates_a_damaging_recipe_and_passes_a_noise_level_change(first: tuple[Report, float]) -> None:
    report, _ = first
    cells = {c.scheme: c for c in report.cells}
    assert set(cells) == {"base", "w4a16", DAMAGING.stem}
    assert cells["base"].outcome == "baseline"
    w4 = cells["w4a16"]
    assert w4.accuracy_gates and all(d.recovery is not None for d in w4.accuracy_gates)
    assert all(d.outcome != "fail" for d in w4.accuracy_gates), [(d.metric, d.recovery) for d in w4.accuracy_gates]
    assert w4.outcome in ("pass", "inconclusive")
    bad = cells[DAMAGING.stem]
    failing = [d for d in bad.accuracy_gates if d.outcome == "fail"]
    assert bad.outcome == "fail" and failing, [(d.metric, d.recovery, d.outcome) for d in bad.accuracy_gates]
    assert all(d.recovery is not None and d.recovery < 0.95 for d in failing)
    assert report.outcome == "fail"
    # LightEval's scores are the cells' too, gated against the base like lm-eval's
    for cell in report.cells:
        assert {s.step for s in cell.steps} >= {"evaluate", "benchmark", "lighteval"}
        assert cell.accuracy["lighteval.tiny_mc/acc"].samples == 16
    assert {"lighteval.tiny_mc/acc", "lighteval.tiny_gen/em"} <= {d.metric for d in w4.accuracy_gates}
    assert cells["base"].accuracy["lighteval.tiny_mc/acc"].value >= 0.9
    # performance is joined in, against the base, observation-only
    assert w4.performance_gates and not any(d.gating for d in w4.performance_gates)
    assert w4.performance["synchronous/output_tokens_per_s"] > 0
    for cell in report.cells:
        assert all(s.web_url.startswith("http") and s.status == "completed" for s in cell.steps)


def test_report_is_published_to_clearml_and_prefect(first: tuple[Report, float], local_stack: StackHandle) -> None:
    report, _ = first
    assert report.summary_task_id and report.summary_task_url
    from automation.regression import baselines
    from flows.bridge import backend

    async def load() -> Report:
        return await baselines.load_report(backend(), str(report.summary_task_id))

    assert asyncio.run(load()).cells == report.cells

    async def artifacts() -> list[Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        async with get_client() as client:
            return list(await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[report.flow_run_id]))))

    found = asyncio.run(artifacts())
    kinds = {a.type for a in found}
    assert {"markdown", "table"} <= kinds, kinds
    markdown = next(a for a in found if a.type == "markdown" and "Summary" in str(a.data))
    assert "w4a16" in str(markdown.data) and "FAIL" in str(markdown.data)


def test_the_same_run_again_reuses_every_step(first: tuple[Report, float], tiny: Path, api: AdminClient) -> None:
    from flows.compress_evaluate_benchmark import compress_evaluate_benchmark

    before = len(work_tasks(api))
    started = time.monotonic()
    again = asyncio.run(compress_evaluate_benchmark(**chain_params(tiny)))
    wall = time.monotonic() - started
    print(f"\n[measure] second run: {wall:.1f} s, {len(work_tasks(api)) - before} new tasks")
    assert len(work_tasks(api)) == before
    assert all(s.reused for c in again.cells for s in c.steps)
    assert [c.outcome for c in again.cells] == [c.outcome for c in first[0].cells]


def test_sweep_places_by_size_caps_queues_and_reuses(first: tuple[Report, float], tiny: Path,
                                                     api: AdminClient) -> None:
    from automation.regression.settings import SizeRule
    from flows.bridge import QUEUE_LIMIT_PREFIX
    from flows.sweep import sweep

    before = len(work_tasks(api))
    params = chain_params(tiny)
    report = asyncio.run(sweep(
        models=[str(tiny)], schemes=["w4a16"], suites=["tiny"], profile="smoke",
        size_rules=[SizeRule(max_params_b=1, queue="cpu"), SizeRule(max_params_b=1000, queue="gpu")],
        queue_caps={"cpu": 1}, compression=params["compression"], benchmarking=params["benchmarking"],
        performance_rules=OBSERVE, project=PROJECT, series=f"e2e-sweep-{RUN}", fail_on="never"))
    assert len(work_tasks(api)) == before  # identity ignores the queue: every cell is reused
    assert {c.scheme for c in report.cells} == {"base", "w4a16"} and {c.queue for c in report.cells} == {"cpu"}

    async def limit() -> Any:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(f"{QUEUE_LIMIT_PREFIX}cpu")

    assert asyncio.run(limit()).limit == 1


def test_cli_bad_input_fails_before_anything_is_queued(tiny: Path, api: AdminClient, local_stack: StackHandle,
                                                       prefect_server: PrefectServer) -> None:
    before = len(project_tasks(api))
    env = {**os.environ, **OFFLINE, **prefect_server.env}  # now: the stack fixture has set CLEARML_*
    for args, field in ((["--schemes", "w3a9"], "schemes[0] (w3a9)"), (["--suite", "nope"], "suite"),
                        (["--threshold", "1.5"], "threshold"), (["--queue", "no-such-queue"], "queue"),
                        (["--hooks", f"hf_token:no-such-block-{RUN}"], "hooks: hf_token: no Prefect Secret block")):
        res = subprocess.run([sys.executable, "-m", "automation.cli", "run", "compress-evaluate-benchmark",
                              "--model", str(tiny), "--suite", "tiny", "--profile", "smoke", "--project", PROJECT,
                              *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert f"invalid input: {field}" in " ".join(out.split()), out
        assert "Traceback" not in out
    assert len(project_tasks(api)) == before
