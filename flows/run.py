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
import logging
import os
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from prefect import get_run_logger

from automation.errors import ApiCallError, FlowInputError, HookError, QueueNotFound, RunFailed, SpecError, TaskFailed
from automation.regression import baselines
from automation.regression.cells import CellRun, Outcome, join_cells
from automation.regression.gates import AccuracyGateSettings, PerformanceGateSettings
from automation.regression.gates import Outcome as GateOutcome
from automation.regression.hooks import apply_hooks
from automation.regression.plan import ModelPlan, Plan, Step, scheme_label
from automation.regression.report.clearml import publish_clearml
from automation.regression.report.markdown import render_markdown
from automation.regression.report_model import BASE_SCHEME, Report, ReportCell, StepFailure
from automation.results import TaskResult
from automation.specs.base import CodeRef, TaskSpec
from automation.specs.model_ref import ModelRef
from automation.specs.registry import all_base_packages
from flows.bridge import backend, run_task
from flows.events import emit_regression
from flows.publish import publish_prefect

log = logging.getLogger("flows.run")
S = TypeVar("S", bound=TaskSpec)


async def finalize(plan: Plan) -> Plan:
    """The plan as it will run: every queue exists, every input model can be found, and every spec
    has its submit hooks applied (once: hooks may look things up, e.g. a Secret block)."""
    client = backend()
    for queue in sorted(plan.queues):
        try:
            await client.queue_id(queue)
        except QueueNotFound as exc:
            raise FlowInputError(f"queue: {exc}") from None
    models = []
    for mp in plan.models:
        await check_model_available(mp.model)
        models.append(dataclasses.replace(
            mp,
            base_evals={s: await _hooked(spec, plan.hooks) for s, spec in mp.base_evals.items()},
            base_bench=await _hooked(mp.base_bench, plan.hooks),
            compress={s: await _hooked(spec, plan.hooks) for s, spec in mp.compress.items()},
        ))
    return dataclasses.replace(plan, models=models)


async def _hooked(spec: S, hooks: list[str]) -> S:
    try:
        return await apply_hooks(spec, hooks)
    except (HookError, SpecError) as exc:
        raise FlowInputError(f"hooks: {exc}".replace("hooks: hooks: ", "hooks: ")) from None


async def check_model_available(model: ModelRef) -> None:
    """A model that cannot be found fails here, not on a GPU an hour later. Hub models are looked
    up in the local cache, else on the hub (a network failure only warns: GPU hosts may reach it)."""
    if model.source == "clearml":
        try:
            await backend().get_model(model.id)
        except ApiCallError as exc:
            raise FlowInputError(f"model: ClearML model {model.id} not found ({exc})") from None
        return
    if model.source != "hf" or model.config() is not None:
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FlowInputError(f"model: {model} is not in the local hub cache and HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        await asyncio.to_thread(HfApi().model_info, model.id, revision=model.revision, timeout=15)
    except GatedRepoError:
        return  # exists; access is the agent's business (see the hf_token hook)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise FlowInputError(f"model: {model} not found on the Hugging Face hub ({type(exc).__name__})") from None
    except Exception as exc:  # offline orchestrator host: the GPU host may still reach the hub
        log.warning("could not check %s on the hub: %s", model, exc)


async def _step(step: Step, spec: TaskSpec, refresh: bool, label: str) -> Outcome:
    try:
        runner: Any = run_task.with_options(task_run_name=label)
        result: TaskResult = await runner(spec, refresh=refresh)
        return Outcome(result=result)
    except TaskFailed as exc:
        return Outcome(failure=StepFailure(step=step, error=str(exc).splitlines()[0][:500], task_id=exc.task_id,
                                           web_url=exc.url))
    except Exception as exc:
        return Outcome(failure=StepFailure(step=step, error=f"{type(exc).__name__}: {exc}"[:500]))


async def run_plan(plan: Plan, refresh: bool = False) -> list[CellRun]:
    """Run the DAG: base steps and compressions at once; each scheme's follow-ups as soon as its
    compression is done. Returns one CellRun per (model, scheme incl. base, suite)."""

    async def model_cells(mp: ModelPlan) -> list[CellRun]:
        name = mp.model.short_name()

        async def base() -> list[CellRun]:
            evals = [_step("evaluate", mp.base_evals[s], refresh, f"evaluate-{name}-base-{s}")
                     for s in plan.suites]
            bench = _step("benchmark", mp.base_bench, refresh, f"benchmark-{name}-base")
            *ev, bn = await asyncio.gather(*evals, bench)
            return [CellRun(mp.model, BASE_SCHEME, s, mp.queue, None, e, bn) for s, e in zip(plan.suites, ev,
                                                                                                 strict=True)]

        async def scheme(s: str) -> list[CellRun]:
            label = scheme_label(s)
            comp = await _step("compress", mp.compress[s], refresh, f"compress-{name}-{label}")
            if comp.result is None:
                skipped = Outcome(failure=StepFailure(step="evaluate", error="not run: compression failed"))
                skipped_b = Outcome(failure=StepFailure(step="benchmark", error="not run: compression failed"))
                return [CellRun(mp.model, label, suite, mp.queue, comp, skipped, skipped_b) for suite in plan.suites]
            out_model = ModelRef.from_result(comp.result)
            evals = [_step("evaluate", mp.evaluate_for(out_model, suite), refresh,
                           f"evaluate-{name}-{label}-{suite}") for suite in plan.suites]
            bench = _step("benchmark", mp.bench_for(out_model), refresh, f"benchmark-{name}-{label}")
            *ev, bn = await asyncio.gather(*evals, bench)
            return [CellRun(mp.model, label, suite, mp.queue, comp, e, bn) for suite, e in zip(plan.suites, ev,
                                                                                            strict=True)]

        groups = await asyncio.gather(base(), *(scheme(s) for s in plan.schemes))
        return [cell for group in groups for cell in group]

    per_model = await asyncio.gather(*(model_cells(mp) for mp in plan.models))
    return [cell for cells in per_model for cell in cells]


async def run_and_join(plan: Plan, accuracy: AccuracyGateSettings, performance: PerformanceGateSettings,
                       refresh: bool) -> list[ReportCell]:
    plan = await finalize(plan)  # queues, models, hooks: before anything is queued
    runs = await run_plan(plan, refresh=refresh)
    return join_cells(runs, plan.profile, accuracy, performance)


def report_outcome(cells: list[ReportCell]) -> GateOutcome | Literal["error"]:
    outcomes = {c.outcome for c in cells}
    if "error" in outcomes:
        return "error"
    if "fail" in outcomes:
        return "fail"
    if "inconclusive" in outcomes:
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


def provenance(queues: set[str], code: CodeRef | None = None) -> dict[str, str]:
    code = code or CodeRef()
    return {
        "packages": ", ".join(all_base_packages()),
        "code": str(code) if code.repository else f"agent working tree (automation {_version()})",
        "queues": ", ".join(sorted(queues)),
        "started_by": os.environ.get("PREFECT__USER") or getpass.getuser(),
    }


async def finish_run(
    cells: list[ReportCell], *, title: str, series: str | None, flow_name: str,
    accuracy: AccuracyGateSettings, performance: PerformanceGateSettings, project: str,
    compare_history: bool, publish: bool, fail_on: str, parameters: dict[str, Any],
    queues: set[str] | None = None, code: CodeRef | None = None,
) -> Report:
    log = get_run_logger()
    runtime = _runtime()
    series = series or runtime["deployment"] or flow_name
    client = backend()
    if compare_history:
        try:
            accepted = await baselines.accepted_for(client, [c.key for c in cells])
            previous = await baselines.previous_in_series(client, series, datetime.now(UTC))
            cells = baselines.apply_history(cells, accepted, previous, performance)
        except Exception as exc:  # history is context; the run's own gates stand without it
            log.warning("could not compare with the baseline registry / previous run: %s", exc)
    report = Report(
        title=title, series=series, created=datetime.now(UTC), flow_run_id=runtime["flow_run_id"],
        flow_run_url=runtime["flow_run_url"], cells=cells, outcome=report_outcome(cells),
        settings={"accuracy": accuracy.model_dump(mode="json"), "performance": performance.model_dump(mode="json"),
                  "parameters": parameters},
        provenance=provenance(queues or {c.queue for c in cells if c.queue}, code),
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
