"""Prefect events for what happens on the ClearML side, so it shows in the Prefect event feed and
can trigger automations.

- `clearml.task.<status>` (queued, in_progress, completed, failed, stopped, ...) on every ClearML
  status transition the bridge's poller sees. Resource `clearml.task.<task id>` (labels: name,
  kind, queue, status, ClearML URL, identity); related: the Prefect flow run (role `flow-run`) and
  task run (role `task-run`) that await it; payload: status, message, reason, progress, worker.
- `automation.regression.detected` when a report has a cell that failed its gates, and
  `automation.report.published` for every finished report. Resource: the ClearML summary task (or,
  before it is published, `automation.report.<flow run id or series>`); related: the flow run;
  payload: title, series, outcome, report URL and the failing cells with their failing metrics.

The emitters never raise and cost one in-memory hand-off to Prefect's per-process events worker
(which sends over the API's websocket in its own thread); they are no-ops when events are off, and
when no Prefect API is configured outside a run (no ephemeral server is started for them). The
builders (`task_event`, `report_events`) are pure.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from automation.clearml.records import TaskRecord
from automation.regression.report_model import Report, ReportCell

log = logging.getLogger("flows.events")

TASK_EVENT_PREFIX = "clearml.task."
TASK_RESOURCE_PREFIX = "clearml.task."
REGRESSION_EVENT = "automation.regression.detected"
REPORT_EVENT = "automation.report.published"
MAX_CELLS = 50  # keeps the event far below Prefect's maximum event size
MAX_METRICS = 20
_TRACKED = 10_000  # task ids whose last emitted transition is remembered (oldest forgotten first)


def _status_word(status: Any) -> str:
    word = re.sub(r"[^a-z0-9_]+", "_", str(status or "unknown").strip().lower()).strip("_")
    return word or "unknown"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text else None


def run_related(flow_run_id: str | None, task_run_id: str | None = None,
                flow_run_name: str | None = None) -> list[dict[str, str]]:
    """Related resources for a Prefect flow run and task run (in Prefect's own id scheme)."""
    related: list[dict[str, str]] = []
    if flow_run_id:
        flow = {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}
        if flow_run_name:
            flow["prefect.resource.name"] = flow_run_name
        related.append(flow)
    if task_run_id:
        related.append({"prefect.resource.id": f"prefect.task-run.{task_run_id}", "prefect.resource.role": "task-run"})
    return related


def task_event(
    record: TaskRecord, *, task_id: str, kind: str | None = None, identity: str | None = None,
    queue: str | None = None, web_url: str | None = None, flow_run_id: str | None = None,
    task_run_id: str | None = None, name: str | None = None,
) -> dict[str, Any]:
    """The `emit_event` arguments for one ClearML status record (pure)."""
    status = _status_word(record.status)
    resource: dict[str, str] = {
        "prefect.resource.id": f"{TASK_RESOURCE_PREFIX}{task_id}",
        "prefect.resource.name": name or _text(record.name) or f"{kind or 'clearml'} task {task_id}",
        "clearml.task.id": str(task_id),
        "clearml.task.status": status,
    }
    for key, value in (("clearml.task.kind", kind), ("clearml.queue", queue or record.queue_id),
                       ("clearml.url", web_url), ("clearml.identity", identity)):
        if value:
            resource[key] = str(value)
    payload: dict[str, Any] = {"status": status, "task_id": str(task_id)}
    for key in ("status_message", "status_reason", "last_worker", "started", "completed", "status_changed"):
        field = getattr(record, key)
        text = _text(field.isoformat() if isinstance(field, datetime) else field)
        if text is not None:
            payload[key] = text
    if record.progress is not None:
        payload["progress"] = record.progress
    if web_url:
        payload["url"] = web_url
    return {"event": f"{TASK_EVENT_PREFIX}{status}", "resource": resource,
            "related": run_related(flow_run_id, task_run_id), "payload": payload}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def failing_cell(cell: ReportCell) -> dict[str, Any]:
    """One regressed cell: its failing accuracy gates (recovery < threshold) and performance gates."""
    acc = [(d, "base") for d in cell.accuracy_gates if d.outcome == "fail"]
    perf = [(d, "base") for d in cell.performance_gates if d.outcome == "fail" and d.gating]
    if not cell.stack_changed:  # then the accepted comparisons are shown, not blamed on the compression
        acc += [(d, "accepted") for d in cell.accepted_accuracy_gates if d.outcome == "fail"]
        perf += [(d, "accepted") for d in cell.accepted_gates if d.outcome == "fail" and d.gating]
    acc = acc[:MAX_METRICS]
    perf = perf[:MAX_METRICS]
    accuracy = [{"metric": d.metric, "recovery": _round(d.recovery), "threshold": d.threshold,
                 "low": _round(d.low), "high": _round(d.high), "reference": ref} for d, ref in acc]
    performance = [{"metric": d.metric, "change": _round(d.change), "tolerance": d.tolerance, "reference": ref}
                   for d, ref in perf]
    parts = [f"{d.metric} recovery {_fmt(d.recovery)} < {d.threshold:g} vs {ref}" for d, ref in acc]
    parts += [f"{d.metric} {d.change * 100:+.1f}% vs {ref} (tolerance {d.tolerance * 100:.0f}%)"
              if d.change is not None else f"{d.metric} worse than {ref}" for d, ref in perf]
    summary = f"{cell.model} {cell.scheme} ({cell.suite}/{cell.profile}): " + ("; ".join(parts) or "gates failed")
    return {"model": cell.model, "scheme": cell.scheme, "suite": cell.suite, "profile": cell.profile,
            "accuracy": accuracy, "performance": performance, "summary": summary,
            "changed": (cell.changes_vs_accepted or cell.changes_vs_previous)[:MAX_METRICS]}


def report_url(report: Report) -> str | None:
    return report.summary_task_url or report.flow_run_url


def report_events(report: Report) -> list[dict[str, Any]]:
    """The `emit_event` arguments for a finished report (pure): `automation.report.published`
    always, then `automation.regression.detected` when a cell failed its gates (whatever else the
    report holds: a run with an errored cell and a regressed one is still a regression)."""
    if report.summary_task_id:
        resource_id = f"{TASK_RESOURCE_PREFIX}{report.summary_task_id}"
    else:
        resource_id = f"automation.report.{report.flow_run_id or report.series}"
    resource = {"prefect.resource.id": resource_id, "prefect.resource.name": report.title,
                "automation.series": report.series, "automation.outcome": report.outcome}
    url = report_url(report)
    if url:
        resource["clearml.url" if report.summary_task_url else "automation.url"] = url
    related = run_related(report.flow_run_id)
    regressed = [c for c in report.cells if c.outcome == "fail"]
    counts: dict[str, int] = {}
    for cell in report.cells:
        counts[cell.outcome] = counts.get(cell.outcome, 0) + 1
    base_payload: dict[str, Any] = {
        "title": report.title, "series": report.series, "outcome": report.outcome, "report_url": url,
        "flow_run_url": report.flow_run_url, "summary_task_id": report.summary_task_id, "cell_outcomes": counts,
    }
    events: list[dict[str, Any]] = [
        {"event": REPORT_EVENT, "resource": dict(resource), "related": related, "payload": base_payload}]
    if regressed:
        cells = [failing_cell(c) for c in regressed[:MAX_CELLS]]
        events.append({"event": REGRESSION_EVENT, "resource": dict(resource), "related": related,
                       "payload": {**base_payload, "regressed": len(regressed), "cells": cells}})
    return events


# -- emitting ------------------------------------------------------------------------------------

_last_lock = threading.Lock()
_last: OrderedDict[str, tuple[tuple[str, str], Any]] = OrderedDict()  # task id -> (transition, Event)


def _events_wanted() -> bool:
    """A Prefect API is configured, or this runs inside a flow/task run (whose ephemeral server is
    then already up). Outside both, Prefect's `emit_event` would start an ephemeral server (seconds)."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value()) or FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _context_run_ids() -> tuple[str | None, str | None]:
    """(flow run id, task run id) of the current Prefect run context, without any API call."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    flow_ctx = FlowRunContext.get()
    task_run_id = str(task_ctx.task_run.id) if task_ctx is not None else None
    flow_run_id = None
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        flow_run_id = str(task_ctx.task_run.flow_run_id)
    elif flow_ctx is not None and flow_ctx.flow_run is not None:
        flow_run_id = str(flow_ctx.flow_run.id)
    return flow_run_id, task_run_id


def _emit(spec: dict[str, Any], follows: Any = None) -> Any:
    from prefect.events import emit_event

    if not _events_wanted():
        return None
    return emit_event(spec["event"], resource=spec["resource"], related=spec["related"],
                      payload=spec["payload"], follows=follows)


def emit_task_event(
    record: TaskRecord, *, task_id: str, kind: str | None = None, identity: str | None = None,
    queue: str | None = None, web_url: str | None = None, flow_run_id: str | None = None,
    task_run_id: str | None = None, name: str | None = None,
) -> bool:
    """Emit `clearml.task.<status>` for a status record, once per transition of (status, message):
    progress-only updates are not events (they are in the next transition's payload). Safe from any
    thread (the bridge calls it from the poller's thread, inside a copy of the task run's context,
    which Prefect also uses to relate the event to the run). Without `flow_run_id`/`task_run_id`,
    they are read from the current run context. Never raises; True when emitted."""
    try:
        if flow_run_id is None and task_run_id is None:
            flow_run_id, task_run_id = _context_run_ids()
        spec = task_event(record, task_id=task_id, kind=kind, identity=identity, queue=queue, web_url=web_url,
                          flow_run_id=flow_run_id, task_run_id=task_run_id, name=name)
        transition = (spec["payload"]["status"], str(spec["payload"].get("status_message", "")))
        with _last_lock:
            previous = _last.get(str(task_id))
            if previous is not None and previous[0] == transition:
                return False
        event = _emit(spec, follows=previous[1] if previous is not None else None)
        with _last_lock:
            _last[str(task_id)] = (transition, event)
            _last.move_to_end(str(task_id))
            while len(_last) > _TRACKED:
                _last.popitem(last=False)
        return event is not None
    except Exception as exc:  # events are a side channel: never fail the task for them
        log.warning("could not emit the ClearML task event for %s: %s", task_id, exc)
        return False


def emit_regression(report: Report) -> list[str]:
    """Emit `automation.report.published` and, when a cell regressed, `automation.regression.detected`.
    Never raises; returns the names of the events emitted."""
    emitted: list[str] = []
    try:
        for spec in report_events(report):
            if _emit(spec) is not None:
                emitted.append(spec["event"])
    except Exception as exc:
        log.warning("could not emit the report events of %s: %s", report.title, exc)
    return emitted
