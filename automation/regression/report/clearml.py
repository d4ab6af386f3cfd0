"""The report as a ClearML summary task (one per report): what the baseline registry
(automation/regression/baselines.py) reads back."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from automation.clearml.client import (
    FLOW_RUN_TAG,
    ClearMLBackend,
    artifact_entry,
    plot_event,
    scalar_event,
)
from automation.errors import BackendError
from automation.regression.report.format import cell_label
from automation.regression.report.markdown import render_markdown
from automation.regression.report.svg import plot_svg, recovery_data, scatter_points
from automation.regression.report_model import Report

log = logging.getLogger("automation.regression.report")

# -- how a report is stored in ClearML (read back by flows/baselines.py) ------------------------
REPORT_TAG = "report"
SERIES_TAG = "series:"
OUTCOME_TAG = "outcome:"
BASELINE_TAG = "baseline"
REPORT_CONFIG = "report"  # configuration object holding the report JSON
PLOT_ARTIFACT = "report_plot"
JSON_ARTIFACT = "report_json"
MARKDOWN_ARTIFACT = "report_markdown"
SUMMARY_TASK_TYPE = "qc"
MAX_COMMENT_CHARS = 100_000

_SECRET_NAME = re.compile(r"(^|[_\-.])(secret|password|passwd|token|api_?key|access_?key|credentials?)($|[_\-.])",
                          re.IGNORECASE)


# -- ClearML summary task --------------------------------------------------------------------------
def _secrets(client: ClearMLBackend) -> list[str]:
    values = [client.settings.secret_key.get_secret_value(), client.settings.access_key]
    return [v for v in values if v and len(v) >= 6]


def sanitize(report: Report, secrets: Sequence[str] = ()) -> Report:
    """The report without credentials: secret-looking provenance/settings entries masked, and any
    occurrence of a known secret replaced, so a stored report never carries a key."""
    provenance = {k: ("***" if _SECRET_NAME.search(k) else v) for k, v in report.provenance.items()}
    settings = {k: ("***" if _SECRET_NAME.search(k) else v) for k, v in report.settings.items()}
    text = report.model_copy(update={"provenance": provenance, "settings": settings}).model_dump_json()
    for secret in secrets:
        text = text.replace(json.dumps(secret)[1:-1], "***")
    return Report.model_validate_json(text)


def summary_task_name(report: Report) -> str:
    return f"report {report.title} {report.created:%Y-%m-%d %H:%M}"


def report_tags(report: Report) -> list[str]:
    tags = [REPORT_TAG, f"{SERIES_TAG}{report.series}", f"{OUTCOME_TAG}{report.outcome}"]
    if report.flow_run_id:
        tags.append(f"{FLOW_RUN_TAG}{report.flow_run_id}")
    return tags


def report_properties(report: Report) -> dict[str, str]:
    """What the registry lists without loading the report JSON."""
    props = {"title": report.title, "series": report.series, "created": report.created.isoformat(),
             "outcome": report.outcome, "cells": str(len(report.cells)), "schema": str(report.schema_version)}
    if report.flow_run_id:
        props["flow_run_id"] = report.flow_run_id
    if report.flow_run_url:
        props["flow_run_url"] = report.flow_run_url
    return props



def _scalar_events(task_id: str, report: Report) -> list[dict[str, Any]]:
    """Values comparable across nights in ClearML's compare view: title = value, series = model+scheme."""
    now_ms = int(time.time() * 1000)
    points: list[tuple[str, str, float]] = []
    for cell in report.cells:
        series = cell_label(cell)
        points += [(name, series, mv.value) for name, mv in cell.accuracy.items()]
        points += [(f"recovery {d.metric}", series, d.recovery) for d in cell.accuracy_gates
                   if d.recovery is not None]
        points += [(f"{cell.profile} {name}", series, v) for name, v in cell.performance.items()]
        score = {"pass": 1.0, "inconclusive": 0.5, "fail": 0.0}.get(cell.outcome)
        if score is not None:
            points.append(("outcome (1 pass, 0.5 inconclusive, 0 fail)", series, score))
    return [scalar_event(task_id, title, series, value, now_ms) for title, series, value in points
            if math.isfinite(value)]


def plotly_figures(report: Report) -> dict[str, dict[str, Any]]:
    """The SVG's two charts as plotly figures (what ClearML's Plots tab renders)."""
    metrics, series, thresholds = recovery_data(report)
    recovery = {
        "data": [{"type": "bar", "name": cell_label(c), "x": metrics, "y": vals} for c, vals in series]
        + [{"type": "scatter", "mode": "lines+markers", "name": "threshold", "x": metrics, "y": thresholds,
            "line": {"dash": "dash", "color": "#d62728"}}],
        "layout": {"title": "recovery (compressed / base)", "barmode": "group",
                   "xaxis": {"title": "metric"}, "yaxis": {"title": "recovery"}},
    }
    scatter = {
        "data": [{"type": "scatter", "mode": "markers+text", "name": cell_label(c), "x": [tps], "y": [ttft],
                  "text": [cell_label(c)], "textposition": "top center"} for c, tps, ttft in scatter_points(report)],
        "layout": {"title": "latency vs throughput (lightest load)", "xaxis": {"title": "output tokens/s"},
                   "yaxis": {"title": "TTFT median (ms)"}},
    }
    figures: dict[str, dict[str, Any]] = {"recovery": recovery, "latency vs throughput": scatter}
    for name, attr, axis in (("trend: recovery", "recovery", "recovery (min over gated metrics)"),
                             ("trend: throughput", "throughput", "output tokens/s (lightest load)")):
        data = []
        for cell in report.cells:
            points = [(p.created.isoformat(), getattr(p, attr)) for p in report.trend_series.get(cell.key, [])]
            points = [(x, y) for x, y in points if y is not None]
            if len(points) >= 2:
                data.append({"type": "scatter", "mode": "lines+markers", "name": cell_label(cell),
                             "x": [x for x, _ in points], "y": [y for _, y in points]})
        if data:
            figures[name] = {"data": data, "layout": {"title": f"{name} across the runs of series {report.series}",
                                                      "xaxis": {"title": "run"}, "yaxis": {"title": axis}}}
    return figures


def _plot_events(task_id: str, report: Report) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return [plot_event(task_id, "report", name, fig, now_ms) for name, fig in plotly_figures(report).items()]



def _safe_path(text: str) -> str:
    return re.sub(r"[^\w.\-/]+", "_", text).strip("/")




async def publish_clearml(report: Report, client: ClearMLBackend, project: str) -> Report:
    """Store the report as a completed ClearML summary task; returns it with the task's id and URL.

    API cost: 5 calls (tasks.create, tasks.add_or_update_artifacts, events.add_batch, tasks.started,
    tasks.completed) + 1 file-server upload (SVG plot, report JSON and markdown in one POST), plus
    the project lookup (1 projects.get_all, cached per client) and auth.login on a fresh client.
    The task carries: tags `report`, `series:<series>`, `outcome:<outcome>` and
    `prefect-flow-run:<id>`; user properties (title, series, created, outcome, ...); the report JSON
    as configuration object `report` (one `tasks.get_all` reads it back); the markdown as its
    description; scalars per value and plotly plots; the three files as artifacts.
    """
    report = sanitize(report, _secrets(client))
    project_id = await client.project_id(project)
    name = summary_task_name(report)
    stored = report.model_copy(update={"summary_task_id": None, "summary_task_url": None, "plot_url": None})
    markdown = render_markdown(report)
    task_id = await client.create_record_task(
        name=name, project_id=project_id, task_type=SUMMARY_TASK_TYPE, comment=markdown[:MAX_COMMENT_CHARS],
        tags=report_tags(report), properties=report_properties(report),
        configuration={REPORT_CONFIG: (stored.model_dump_json(), "automation.regression.report_model.Report (JSON)")})
    url = client.web_url(task_id, project_id)
    try:
        folder = f"{_safe_path(project)}/{_safe_path(name)}.{task_id}/artifacts"
        svg = plot_svg(report).encode()
        report_json = stored.model_dump_json(indent=2).encode()
        files = {f"{folder}/{PLOT_ARTIFACT}/report.svg": (svg, "image/svg+xml"),
                 f"{folder}/{JSON_ARTIFACT}/report.json": (report_json, "application/json"),
                 f"{folder}/{MARKDOWN_ARTIFACT}/report.md": (markdown.encode(), "text/markdown")}
        urls = list((await client.upload_files(files)).values())
        artifacts = [artifact_entry(PLOT_ARTIFACT, urls[0], svg, "image/svg+xml", "recovery and latency plot"),
                     artifact_entry(JSON_ARTIFACT, urls[1], report_json, "application/json", report.title),
                     artifact_entry(MARKDOWN_ARTIFACT, urls[2], markdown.encode(), "text/markdown", markdown)]
        await client.add_artifacts(task_id, artifacts)
        await client.add_events([*_scalar_events(task_id, report), *_plot_events(task_id, report)])
        await client.mark_completed(task_id, f"outcome {report.outcome}", reason="report published")
    except Exception:
        await _mark_failed(client, task_id)
        raise
    log.info("report %r published as ClearML task %s: %s", report.title, task_id, url)
    return report.model_copy(update={"summary_task_id": task_id, "summary_task_url": url, "plot_url": urls[0]})


async def _mark_failed(client: ClearMLBackend, task_id: str) -> None:
    # A half-published report must not look like a finished one to the registry.
    try:
        await client.mark_failed(task_id, "report publishing failed", retry_for_s=5)
    except BackendError as exc:
        log.warning("could not mark summary task %s failed: %s", task_id, exc)

