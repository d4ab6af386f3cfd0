"""Running a plan: finalize it once (what needs a server: queues, models; submit hooks applied to
every spec), run its DAG through the bridge, join the cells, and close the flow run (history,
report, publishing, regression event, final state). Running never goes back to planning.

The DAG: per model, the base evaluations and benchmark start at once, concurrently with every
compression; each scheme's evaluations and benchmark start the moment its compression is done. A
step that fails is recorded in its cell (the report shows it) instead of cancelling its siblings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import logging
import os
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from prefect import get_run_logger

from automation.errors import (
    ApiCallError,
    AutomationError,
    FlowInputError,
    HookError,
    QueueNotFound,
    RunFailed,
    SpecError,
    TaskFailed,
    TaskTimeout,
)
from automation.regression import baselines
from automation.regression.cells import CellRun, Outcome, decide, join_cells
from automation.regression.gates import AccuracyGateSettings, PerformanceGateSettings
from automation.regression.gates import Outcome as GateOutcome
from automation.regression.hooks import apply_hooks
from automation.regression.plan import ModelPlan, Plan, scheme_label, with_model
from automation.regression.report.clearml import publish_clearml
from automation.regression.report.markdown import render_markdown
from automation.regression.report_model import BASE_SCHEME, Report, ReportCell, Step, StepFailure, TrendPoint
from automation.regression.tracking import Tracked
from automation.results import SAMPLES_ARTIFACT, DocumentScores, TaskResult
from automation.specs.base import CodeRef, TaskSpec
from automation.specs.lighteval import LightEvalSpec
from automation.specs.model_ref import ModelRef
from automation.specs.registry import all_base_packages
from flows.bridge import backend, run_task
from flows.events import emit_regression
from flows.publish import publish_prefect

log = logging.getLogger("flows.run")
S = TypeVar("S", bound=TaskSpec)


async def finalize(plan: Plan) -> Plan:
    """The plan as it will run: every queue exists, every input model can be found (a hub model
    pinned to its commit), and every spec has its submit hooks applied (once: hooks may look
    things up, e.g. a Secret block)."""
    client = backend()
    for queue in sorted(plan.queues):
        try:
            await client.queue_id(queue)
        except QueueNotFound as exc:
            raise FlowInputError(f"queue: {exc}") from None
    models = []
    for mp in plan.models:
        # The cell keeps the model as given (its key across nights); the specs get the pinned one.
        pinned = await check_model_available(mp.model)

        async def final(spec: S, pinned: ModelRef = pinned, given: ModelRef = mp.model) -> S:
            return await _hooked(with_model(spec, pinned) if pinned != given else spec, plan.hooks)

        models.append(dataclasses.replace(
            mp,
            base_evals={s: await final(spec) for s, spec in mp.base_evals.items()},
            base_bench=await final(mp.base_bench),
            compress={s: await final(spec) for s, spec in mp.compress.items()},
            base_lighteval=await final(mp.base_lighteval) if mp.base_lighteval else None,
        ))
    return dataclasses.replace(plan, models=models)


async def _hooked(spec: S, hooks: list[str]) -> S:
    try:
        return await apply_hooks(spec, hooks)
    except (HookError, SpecError) as exc:
        raise FlowInputError(f"hooks: {exc}".replace("hooks: hooks: ", "hooks: ")) from None


async def check_model_available(model: ModelRef) -> ModelRef:
    """A model that cannot be found fails here, not on a GPU an hour later; a hub model comes back
    pinned to the commit its revision names now (the hub's answer, else the local cache's), so
    the identity covers the weights that run and an upstream push recomputes. A network failure
    only warns (GPU hosts may reach the hub): the model then runs unpinned, as given."""
    if model.source == "clearml":
        try:
            await backend().get_model(model.id)
        except ApiCallError as exc:
            raise FlowInputError(f"model: ClearML model {model.id} not found ({exc})") from None
        return model
    if model.source != "hf" or model.pinned:
        return model
    cached = model.cached_commit()
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        if cached is None:
            raise FlowInputError(f"model: {model} is not in the local hub cache and HF_HUB_OFFLINE is set")
        return model.at_revision(cached)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = await asyncio.to_thread(HfApi().model_info, model.id, revision=model.revision, timeout=15)
    except GatedRepoError:
        return model.at_revision(cached) if cached else model  # exists; access is the agent's (hf_token hook)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise FlowInputError(f"model: {model} not found on the Hugging Face hub ({type(exc).__name__})") from None
    except Exception as exc:  # offline orchestrator host: the GPU host may still reach the hub
        if cached:
            log.warning("could not check %s on the hub (%s): pinned to the cached commit %s", model, exc, cached)
            return model.at_revision(cached)
        log.warning("could not check %s on the hub: %s (it runs unpinned)", model, exc)
        return model
    return model.at_revision(info.sha) if info.sha else model


async def run_step(step: Step, spec: TaskSpec, refresh: bool, label: str,
                   limits: tuple[float | None, float | None] = (None, None)) -> Outcome:
    """One step of a plan through the bridge, its end as an Outcome: a result, or the failure its
    cell reports (a timeout typed as such). `limits` = (max_queue_s, max_run_s)."""
    max_queue_s, max_run_s = limits
    try:
        runner: Any = run_task.with_options(task_run_name=label)
        result: TaskResult = await runner(spec, refresh=refresh, max_queue_s=max_queue_s, max_run_s=max_run_s)
        return Outcome(result=result, spec=spec)
    except TaskTimeout as exc:
        return Outcome(failure=StepFailure(step=step, error=str(exc).splitlines()[0][:500], task_id=exc.task_id,
                                           web_url=exc.url, timeout=exc.phase or "run"), spec=spec)
    except TaskFailed as exc:
        return Outcome(failure=StepFailure(step=step, error=str(exc).splitlines()[0][:500], task_id=exc.task_id,
                                           web_url=exc.url), spec=spec)
    except Exception as exc:
        return Outcome(failure=StepFailure(step=step, error=f"{type(exc).__name__}: {exc}"[:500]), spec=spec)


async def run_plan(plan: Plan, refresh: bool = False) -> list[CellRun]:
    """Run the DAG: base steps and compressions at once; each scheme's follow-ups as soon as its
    compression is done. Returns one CellRun per (model, scheme incl. base, suite)."""

    def step(kind: Step, spec: TaskSpec, label: str) -> Awaitable[Outcome]:
        return run_step(kind, spec, refresh, label, plan.limits.for_spec(spec))

    async def model_cells(mp: ModelPlan) -> list[CellRun]:
        name = mp.model.short_name()

        async def extra(spec: LightEvalSpec | None, label: str) -> Outcome | None:
            """The cell's LightEval evaluation, when the run asks for one."""
            return await step("lighteval", spec, f"lighteval-{name}-{label}") if spec is not None else None

        async def base() -> list[CellRun]:
            evals = [step("evaluate", mp.base_evals[s], f"evaluate-{name}-base-{s}") for s in plan.suites]
            bench = step("benchmark", mp.base_bench, f"benchmark-{name}-base")
            (*ev, bn), lt = await asyncio.gather(asyncio.gather(*evals, bench), extra(mp.base_lighteval, "base"))
            return [CellRun(mp.model, BASE_SCHEME, s, mp.queue, None, e, bn, lt) for s, e in zip(plan.suites, ev,
                                                                                                     strict=True)]

        async def scheme(s: str) -> list[CellRun]:
            label = scheme_label(s)
            comp = await step("compress", mp.compress[s], f"compress-{name}-{label}")
            if comp.result is None:
                skipped = Outcome(failure=StepFailure(step="evaluate", error="not run: compression failed"))
                skipped_b = Outcome(failure=StepFailure(step="benchmark", error="not run: compression failed"))
                skipped_l = (Outcome(failure=StepFailure(step="lighteval", error="not run: compression failed"))
                             if mp.base_lighteval else None)
                return [CellRun(mp.model, label, suite, mp.queue, comp, skipped, skipped_b, skipped_l)
                        for suite in plan.suites]
            out_model = ModelRef.from_result(comp.result)
            evals = [step("evaluate", mp.evaluate_for(out_model, suite), f"evaluate-{name}-{label}-{suite}")
                     for suite in plan.suites]
            bench = step("benchmark", mp.bench_for(out_model), f"benchmark-{name}-{label}")
            (*ev, bn), lt = await asyncio.gather(asyncio.gather(*evals, bench),
                                                 extra(mp.lighteval_for(out_model), label))
            return [CellRun(mp.model, label, suite, mp.queue, comp, e, bn, lt) for suite, e in zip(plan.suites, ev,
                                                                                                  strict=True)]

        groups = await asyncio.gather(base(), *(scheme(s) for s in plan.schemes))
        return [cell for group in groups for cell in group]

    per_model = await asyncio.gather(*(model_cells(mp) for mp in plan.models))
    return [cell for cells in per_model for cell in cells]


SAMPLES_MAX_BYTES = 256 * 1024 * 1024


async def document_scores(runs: list[CellRun]) -> dict[str, DocumentScores]:
    """The per-document scores of every evaluation of the run (by task id), for the paired gates.
    An evaluation without them (a task from before they were logged) or one that cannot be read
    is left out: its cell is gated on the aggregate values, with a warning."""
    client = backend()
    results = {r.evaluate.result.task_id: r.evaluate.result for r in runs if r.evaluate.result}

    async def one(result: TaskResult) -> DocumentScores | None:
        url = result.artifacts.get(SAMPLES_ARTIFACT)
        if not url:
            return None
        try:
            data = json.loads(await client.download(url, SAMPLES_MAX_BYTES))
        except (AutomationError, ValueError) as exc:
            get_run_logger().warning("per-document scores of ClearML task %s unreadable (%s): its gates use the "
                                     "aggregate values", result.task_id, exc)
            return None
        return DocumentScores.from_artifact(data)

    found = await asyncio.gather(*(one(r) for r in results.values()))
    return {task_id: scores for task_id, scores in zip(results, found, strict=True) if scores is not None}


async def run_and_join(plan: Plan, accuracy: AccuracyGateSettings, performance: PerformanceGateSettings,
                       refresh: bool) -> list[ReportCell]:
    plan = await finalize(plan)  # queues, models, hooks: before anything is queued
    runs = await run_plan(plan, refresh=refresh)
    return join_cells(runs, plan.profile, accuracy, performance, await document_scores(runs))


def report_outcome(cells: list[ReportCell], history_error: str | None = None) -> GateOutcome | Literal["error"]:
    """The worst cell outcome; a run whose accepted baselines could not be read is at best
    inconclusive (its baseline gates did not run: it must not read as a pass)."""
    outcomes = {c.outcome for c in cells}
    if "error" in outcomes:
        return "error"
    if "fail" in outcomes:
        return "fail"
    if "inconclusive" in outcomes or history_error:
        return "inconclusive"
    return "pass"


def _runtime() -> dict[str, str | None]:
    from prefect.runtime import deployment, flow_run

    out: dict[str, str | None] = {"flow_run_id": None, "flow_run_url": None, "deployment": None}
    try:
        out["flow_run_id"] = str(flow_run.id) if flow_run.id else None
        url = str(flow_run.ui_url or "")
        out["flow_run_url"] = url if url.startswith("http") else None  # no UI configured: "None/flow-runs/..."
        out["deployment"] = str(deployment.name) if deployment.name else None
    except Exception:  # outside a run
        pass
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-automation")
    except PackageNotFoundError:
        return "unknown"


def provenance(queues: set[str], code: CodeRef | None = None, tracked: list[Tracked] | None = None,
               ) -> dict[str, str]:
    code = code or CodeRef()
    out = {
        "packages": ", ".join(all_base_packages()),
        "code": str(code) if code.repository else f"agent working tree (automation {_version()})",
        "queues": ", ".join(sorted(queues)),
        "started_by": os.environ.get("PREFECT__USER") or getpass.getuser(),
    }
    if tracked:
        out["tracked"] = "; ".join(f"{t.given} -> {t.resolved}" for t in tracked)
    return out


async def finish_run(
    cells: list[ReportCell], *, title: str, series: str | None, flow_name: str,
    accuracy: AccuracyGateSettings, performance: PerformanceGateSettings, project: str,
    compare_history: bool, publish: bool, fail_on: str, parameters: dict[str, Any],
    queues: set[str] | None = None, code: CodeRef | None = None, tracked: list[Tracked] | None = None,
) -> Report:
    log = get_run_logger()
    runtime = _runtime()
    series = series or runtime["deployment"] or flow_name
    client = backend()
    now = datetime.now(UTC)
    trends: dict[str, list[TrendPoint]] = {}
    history_error: str | None = None
    if compare_history:
        try:
            accepted = await baselines.accepted_for(client, [c.key for c in cells])
            history = await baselines.series_history(client, series, now)
            cells = baselines.apply_history(cells, accepted, history[-1] if history else None, performance, accuracy)
        except Exception as exc:  # a registry that cannot be read must not lose the run's own gates
            log.warning("could not compare with the baseline registry / previous run: %s", exc)
            history, history_error = [], f"{type(exc).__name__}: {exc}"[:300]
    cells, stack_changes = decide(cells)
    if compare_history:
        trends = baselines.trend_series(history, cells, now)
    report = Report(
        title=title, series=series, created=now, flow_run_id=runtime["flow_run_id"],
        flow_run_url=runtime["flow_run_url"], cells=cells, outcome=report_outcome(cells, history_error),
        settings={"accuracy": accuracy.model_dump(mode="json"), "performance": performance.model_dump(mode="json"),
                  "parameters": parameters},
        provenance=provenance(queues or {c.queue for c in cells if c.queue}, code, tracked),
        stack_changes=stack_changes,
        trend_series=trends, history_error=history_error,
    )
    if publish:
        try:
            report = await publish_clearml(report, client, project)
        except Exception as exc:
            log.error("could not publish the report to ClearML: %s", exc)
        await publish_prefect(report)
    log.info("report (%s):\n%s", report.outcome, render_markdown(report))
    emit_regression(report)  # the notification automation listens for it
    failed = [c for c in cells if c.outcome == "error"]
    regressed = [c for c in cells if c.outcome == "fail"]
    if fail_on in ("error", "regression") and failed:
        raise RunFailed(f"{len(failed)} cell(s) have failed steps: "
                        + "; ".join(f"{c.model} {c.scheme}: {c.failures[0].error if c.failures else 'no base'}"
                                    for c in failed), report)
    if fail_on == "regression" and regressed:
        raise RunFailed(f"{len(regressed)} cell(s) failed their gates: "
                        + ", ".join(f"{c.model} {c.scheme}" for c in regressed), report)
    return report
