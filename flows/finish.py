"""What closes every flow of the product: run the plan, join the cells, compare with history,
build the report, publish it, and decide the flow run's final state."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import get_run_logger

from automation.specs.base import CodeRef
from automation.specs.benchmark import BENCHMARK_PACKAGES
from automation.specs.compress import COMPRESS_PACKAGES
from automation.specs.evaluate import EVALUATE_PACKAGES
from flows.bridge import backend
from flows.chain import Plan, check_plan, join_cells, run_plan
from flows.events import emit_regression
from flows.gates import AccuracyGateSettings, Outcome, PerformanceGateSettings
from flows.report_model import Report, ReportCell


class RunFailed(RuntimeError):
    """Raised at the very end (after the report is published) when `fail_on` says so."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


async def run_and_join(plan: Plan, accuracy: AccuracyGateSettings, performance: PerformanceGateSettings,
                       refresh: bool) -> list[ReportCell]:
    await check_plan(plan)  # queues and models: before anything is queued
    runs = await run_plan(plan, refresh=refresh)
    return join_cells(runs, plan.profile, accuracy, performance)


def report_outcome(cells: list[ReportCell]) -> Outcome | Literal["error"]:
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


def provenance(queues: set[str]) -> dict[str, str]:
    code = CodeRef()
    return {
        "packages": ", ".join(sorted({*COMPRESS_PACKAGES, *EVALUATE_PACKAGES, *BENCHMARK_PACKAGES})),
        "code": f"{code.repository}@{code.commit}" if code.repository
        else f"agent working tree (automation {_version()})",
        "queues": ", ".join(sorted(queues)),
        "started_by": os.environ.get("PREFECT__USER") or getpass.getuser(),
    }


async def finish_run(
    cells: list[ReportCell], *, title: str, series: str | None, flow_name: str,
    accuracy: AccuracyGateSettings, performance: PerformanceGateSettings, project: str,
    compare_history: bool, publish: bool, fail_on: str, parameters: dict[str, Any],
    queues: set[str] | None = None,
) -> Report:
    from flows import baselines
    from flows import report as reporting

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
        provenance=provenance(queues or {c.queue for c in cells if c.queue}),
    )
    if publish:
        try:
            report = await reporting.publish_clearml(report, client, project)
        except Exception as exc:
            log.error("could not publish the report to ClearML: %s", exc)
        await reporting.publish_prefect(report)
    log.info("report (%s):\n%s", report.outcome, reporting.render_markdown(report))
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
