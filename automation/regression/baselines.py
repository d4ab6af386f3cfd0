"""The baseline registry, kept in ClearML itself (shared by every machine that talks to the server).

A report IS its summary task (written by `automation.regression.report.clearml.publish_clearml`): tags `report`,
`series:<series>`, `outcome:<outcome>`, `prefect-flow-run:<id>`; the report JSON in configuration
object `report`; a few user properties (title, series, created, outcome) so listings need no JSON.
A run is *accepted* when its summary task carries the tag `baseline`; who accepted it, when, why
and which cells live in its user properties (`promoted_by`, `promoted_at`, `promotion_note`,
`accepted_cells`, a JSON list of cell keys).

API cost: `load_report` 1 call; `find_reports` 1 per page; `promote` 1-2 lookups + 2 writes (user properties, tags);
`accepted_for` 1 listing (per 500 accepted reports) + 1 read of the chosen reports;
`previous_in_series` 1-2 listings + 1 read; `series_history` 1 listing (report JSON included).

"Newest accepted" means most recently promoted: promoting an older run again is how a team rolls
a baseline back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from automation.clearml.client import FLOW_RUN_TAG, ClearMLBackend, tag_value
from automation.clearml.client import PROPERTIES_SECTION as PROPERTIES
from automation.clearml.records import DONE_STATUSES, parse_timestamp
from automation.errors import PromotionRefused, RegistryError, ReportNotFound
from automation.regression.gates import (
    AccuracyGateSettings,
    PerformanceGateSettings,
    accuracy_gates,
    performance_gates,
)
from automation.regression.report.clearml import (
    BASELINE_TAG,
    OUTCOME_TAG,
    PLOT_ARTIFACT,
    REPORT_CONFIG,
    REPORT_TAG,
    SERIES_TAG,
)
from automation.regression.report.format import headline_names, perf_headline_names, recovery_min, relative_change
from automation.regression.report_model import Report, ReportCell, TrendPoint

REF_FIELDS = ["id", "name", "created", "tags", "project", "status", "hyperparams.properties"]
FULL_FIELDS = [*REF_FIELDS, f"configuration.{REPORT_CONFIG}", "execution.artifacts"]
PAGE_SIZE = 500  # the ClearML server's largest page
MAX_PAGES = 20
_EPOCH = datetime.min.replace(tzinfo=UTC)


class ReportRef(BaseModel):
    """A report as the registry lists it (from tags and user properties; no report JSON)."""

    model_config = ConfigDict(frozen=True)

    report_id: str
    name: str
    title: str
    series: str
    created: datetime | None
    outcome: str
    status: str
    cells: int | None = None
    flow_run_id: str | None = None
    web_url: str
    accepted: bool = False
    promoted_by: str | None = None
    promoted_at: datetime | None = None
    note: str = ""
    accepted_cells: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


# -- reading tasks -------------------------------------------------------------------------------
def _properties(task: Mapping[str, Any]) -> dict[str, str]:
    section = (task.get("hyperparams") or {}).get(PROPERTIES) or {}
    return {str(k): str(v.get("value") or "") for k, v in section.items() if isinstance(v, dict)}


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def ref_from_task(task: Mapping[str, Any], client: ClearMLBackend) -> ReportRef:
    tags = [str(t) for t in task.get("tags") or []]
    props = _properties(task)
    cells = props.get("cells", "")
    return ReportRef(
        report_id=str(task["id"]),
        name=str(task.get("name") or ""),
        title=props.get("title") or str(task.get("name") or ""),
        series=tag_value(tags, SERIES_TAG) or props.get("series", ""),
        created=parse_timestamp(props.get("created")) or parse_timestamp(task.get("created")),
        outcome=tag_value(tags, OUTCOME_TAG) or props.get("outcome", "unknown"),
        status=str(task.get("status") or "unknown"),
        cells=int(cells) if cells.isdigit() else None,
        flow_run_id=tag_value(tags, FLOW_RUN_TAG) or props.get("flow_run_id") or None,
        web_url=client.web_url(str(task["id"]), task.get("project")),
        accepted=BASELINE_TAG in tags,
        promoted_by=props.get("promoted_by") or None,
        promoted_at=parse_timestamp(props.get("promoted_at")),
        note=props.get("promotion_note", ""),
        accepted_cells=_json_list(props.get("accepted_cells", "")),
        tags=tags,
    )


def report_from_task(task: Mapping[str, Any], client: ClearMLBackend) -> Report:
    task_id = str(task["id"])
    item = (task.get("configuration") or {}).get(REPORT_CONFIG) or {}
    text = item.get("value") if isinstance(item, dict) else None
    if not text:
        raise ReportNotFound(f"ClearML task {task_id} holds no report (configuration object '{REPORT_CONFIG}')")
    try:
        report = Report.model_validate_json(text)
    except ValidationError as exc:
        raise RegistryError(f"the report stored in ClearML task {task_id} does not parse: {exc}") from exc
    artifacts = {str(a.get("key")): str(a.get("uri") or "") for a in
                 (task.get("execution") or {}).get("artifacts") or [] if isinstance(a, dict)}
    return report.model_copy(update={"summary_task_id": task_id,
                                     "summary_task_url": client.web_url(task_id, task.get("project")),
                                     "plot_url": artifacts.get(PLOT_ARTIFACT) or report.plot_url})


async def _tasks(client: ClearMLBackend, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return await client.query_tasks(body)


async def _report_tasks(client: ClearMLBackend, tags: Sequence[str], fields: Sequence[str],
                        limit: int | None = None, page: int = 0) -> list[dict[str, Any]]:
    """Summary tasks carrying all `tags` (a `-tag` excludes), newest first."""
    return await _tasks(client, {
        "tags": ["__$all", REPORT_TAG, *tags], "system_tags": ["-archived"], "status": list(DONE_STATUSES),
        "order_by": ["-created"], "only_fields": list(fields), "page": page, "page_size": limit or PAGE_SIZE,
    })


async def _by_id(client: ClearMLBackend, ids: Sequence[str], fields: Sequence[str]) -> list[dict[str, Any]]:
    tasks = await _tasks(client, {"id": list(ids), "only_fields": list(fields), "search_hidden": True})
    return [t for t in tasks if REPORT_TAG in (t.get("tags") or [])]


async def get_report(client: ClearMLBackend, report_id: str) -> tuple[ReportRef, Report]:
    """The report and its registry entry, in one call."""
    found = await _by_id(client, [report_id], FULL_FIELDS)
    if not found:
        raise ReportNotFound(f"no report with id {report_id!r} on {client.settings.api_host} "
                             "(`automation baseline list` shows the reports)")
    return ref_from_task(found[0], client), report_from_task(found[0], client)


async def load_report(client: ClearMLBackend, report_id: str) -> Report:
    return (await get_report(client, report_id))[1]


async def find_reports(client: ClearMLBackend, series: str | None = None, accepted: bool | None = None,
                       limit: int = 50) -> list[ReportRef]:
    """Published reports, newest first; `accepted` True/False keeps only (not) promoted ones."""
    tags = [f"{SERIES_TAG}{series}"] if series else []
    if accepted is not None:
        tags.append(BASELINE_TAG if accepted else f"-{BASELINE_TAG}")
    return [ref_from_task(t, client) for t in await _report_tasks(client, tags, REF_FIELDS, limit=max(limit, 1))]


async def resolve(client: ClearMLBackend, run: str) -> tuple[ReportRef, Report]:
    """A report by its id (the summary task id) or by the Prefect flow-run id that produced it."""
    run = run.strip()
    if not run:
        raise ReportNotFound("empty report id")
    found = await _by_id(client, [run], FULL_FIELDS)
    if not found:
        found = await _report_tasks(client, [f"{FLOW_RUN_TAG}{run}"], FULL_FIELDS, limit=1)
    if not found:
        raise ReportNotFound(f"no report with id or Prefect flow-run id {run!r} on {client.settings.api_host} "
                             "(`automation baseline list` shows the reports)")
    return ref_from_task(found[0], client), report_from_task(found[0], client)


# -- promotion -----------------------------------------------------------------------------------
def promotable_cells(report: Report, cells: Sequence[str] | None = None, force: bool = False) -> list[str]:
    """The cell keys a promotion accepts; refuses errored runs and failed cells unless `force`."""
    by_key = {c.key: c for c in report.cells}
    if cells:
        unknown = [k for k in cells if k not in by_key]
        if unknown:
            known = ", ".join(sorted(by_key)) or "none"
            raise PromotionRefused(f"report {report.summary_task_id or report.title!r} has no cell {unknown[0]!r} "
                                   f"(cells: {known})")
    keys = list(dict.fromkeys(cells)) if cells else list(by_key)
    if not keys:
        raise PromotionRefused("the report has no cells to accept")
    if force:
        return keys
    problems = []
    if not cells and report.outcome == "error":
        problems.append("the run ended in error")
    for key in keys:
        cell = by_key[key]
        if cell.outcome == "error" or cell.failures:
            steps = ", ".join(f.step for f in cell.failures) or "error"
            problems.append(f"cell {key} failed ({steps})")
    if problems:
        raise PromotionRefused("refusing to accept this run as a baseline: " + "; ".join(problems)
                               + " (promote only the good cells with --cell, or pass --force)")
    return keys


async def promote(client: ClearMLBackend, run: str, by: str, note: str = "", cells: Sequence[str] | None = None,
                  force: bool = False) -> ReportRef:
    """Accept a run (report id or Prefect flow-run id): tag `baseline` + provenance in user properties.

    Cells accepted by an earlier promotion of the same report stay accepted (the union is kept).
    """
    if not by.strip():
        raise PromotionRefused("say who accepts the run (--by NAME)")
    ref, report = await resolve(client, run)
    if ref.status not in DONE_STATUSES and not force:
        raise PromotionRefused(f"report {ref.report_id} did not finish publishing (summary task {ref.status}); "
                               "publish it again, or pass --force")
    keys = promotable_cells(report, cells, force)
    accepted = list(dict.fromkeys([*ref.accepted_cells, *keys])) if ref.accepted else keys
    now = datetime.now(UTC)
    # microseconds: two promotions within one second must still order (a quick roll-back)
    props = {"promoted_by": by.strip(), "promoted_at": now.isoformat(),
             "promotion_note": note, "accepted_cells": json.dumps(accepted)}
    # force: summary tasks are completed; user properties and tags stay editable then (as in the UI)
    await client.set_properties(ref.report_id, props)
    # tasks.edit replaces the whole tag list: keep what the lookup just read
    tags = list(dict.fromkeys([*ref.tags, BASELINE_TAG]))
    await client.set_tags(ref.report_id, tags)
    return ref.model_copy(update={"accepted": True, "promoted_by": props["promoted_by"], "promoted_at": now,
                                  "note": note, "accepted_cells": accepted, "tags": tags})


async def accepted_for(client: ClearMLBackend, keys: Sequence[str]) -> dict[str, tuple[str, ReportCell]]:
    """For each cell key, the most recently promoted accepted report holding it: (report id, cell)."""
    wanted = set(keys)
    if not wanted:
        return {}
    refs: list[ReportRef] = []
    for page in range(MAX_PAGES):
        batch = await _report_tasks(client, [BASELINE_TAG], REF_FIELDS, page=page)
        refs += [ref_from_task(t, client) for t in batch]
        if len(batch) < PAGE_SIZE:
            break
    refs.sort(key=lambda r: (r.promoted_at or r.created or _EPOCH, r.created or _EPOCH), reverse=True)
    chosen: dict[str, str] = {}
    for ref in refs:
        for key in ref.accepted_cells:
            if key in wanted and key not in chosen:
                chosen[key] = ref.report_id
    if not chosen:
        return {}
    reports = {str(t["id"]): report_from_task(t, client)
               for t in await _by_id(client, sorted(set(chosen.values())), FULL_FIELDS)}
    out: dict[str, tuple[str, ReportCell]] = {}
    for key, report_id in chosen.items():
        report = reports.get(report_id)
        cell = next((c for c in report.cells if c.key == key), None) if report else None
        if cell is not None:
            out[key] = (report_id, cell)
    return out


async def previous_in_series(client: ClearMLBackend, series: str, before: str | datetime) -> Report | None:
    """The newest report of `series` created before a report (by id) or a moment."""
    exclude: str | None = None
    if isinstance(before, datetime):
        cutoff = parse_timestamp(before) or datetime.now(UTC)
    else:
        found = await _by_id(client, [before], REF_FIELDS)
        if not found:
            raise ReportNotFound(f"no report with id {before!r} on {client.settings.api_host}")
        ref = ref_from_task(found[0], client)
        exclude, cutoff = ref.report_id, ref.created or datetime.now(UTC)
    for page in range(MAX_PAGES):
        batch = await _report_tasks(client, [f"{SERIES_TAG}{series}"], REF_FIELDS, limit=100, page=page)
        for task in batch:
            ref = ref_from_task(task, client)
            if ref.report_id != exclude and ref.created is not None and ref.created < cutoff:
                return await load_report(client, ref.report_id)
        if len(batch) < 100:
            break
    return None


async def series_history(client: ClearMLBackend, series: str, before: datetime, limit: int = 30) -> list[Report]:
    """The newest `limit` reports of `series` created before `before`, oldest first (1 listing)."""
    tasks = await _report_tasks(client, [f"{SERIES_TAG}{series}"], FULL_FIELDS, limit=max(limit, 1) + 1)
    out = []
    for task in tasks:
        ref = ref_from_task(task, client)
        if ref.created is not None and ref.created < before:
            try:
                out.append(report_from_task(task, client))
            except RegistryError:  # an unreadable old report leaves a gap in the trend, nothing more
                continue
    return sorted(out, key=lambda r: r.created)[-limit:]


def trend_series(history: Sequence[Report], cells: Sequence[ReportCell], now: datetime,
                 ) -> dict[str, list[TrendPoint]]:
    """Per cell of this run: recovery (min over gated metrics) and throughput over the series'
    runs, oldest first, this run last."""
    def point(cell: ReportCell, created: datetime, report_id: str | None) -> TrendPoint:
        tps = perf_headline_names(cell.performance)[2]
        return TrendPoint(created=created, report_id=report_id, recovery=recovery_min(cell),
                          throughput=cell.performance.get(tps) if tps else None)

    out: dict[str, list[TrendPoint]] = {}
    for cell in cells:
        points = [point(c, r.created, r.summary_task_id) for r in history for c in r.cells if c.key == cell.key]
        out[cell.key] = [*points, point(cell, now, None)]
    return out


# -- history -------------------------------------------------------------------------------------
# Recorded but not a suspect: which of several agents or queues served a step changes night to night.
_NOT_SUSPECTS = ("worker", "queue", "agent")
# Not a suspect on its own (upstream commits that leave a kind's files alone); named with the files.
_COMMIT_KEY, _FILES_KEY = "code_commit", "code_files"


def environment_changes(now: Mapping[str, str], before: Mapping[str, str]) -> list[str]:
    """"step/key: before -> now" for every environment entry that differs (a suspect list)."""
    if not now or not before:
        return [] if not now and not before else ["environment not recorded on one side"]
    out = []
    for key in sorted(set(now) | set(before)):
        step, _, name = key.rpartition("/")
        if name in _NOT_SUSPECTS or name == _COMMIT_KEY:
            continue
        old, new = before.get(key, "(none)"), now.get(key, "(none)")
        if old != new:
            commits = (before.get(f"{step}/{_COMMIT_KEY}"), now.get(f"{step}/{_COMMIT_KEY}"))
            at = f" (commit {(commits[0] or '?')[:12]} -> {(commits[1] or '?')[:12]})" \
                if name == _FILES_KEY and commits != (None, None) else ""
            out.append(f"{key}: {old} -> {new}{at}")
    return out


def trend(cell: ReportCell, previous: ReportCell) -> dict[str, float]:
    """Relative change of each headline value vs the same cell of the previous run."""
    out: dict[str, float] = {}
    for name in headline_names(cell):
        change = relative_change(_value(cell, name), _value(previous, name))
        if change is not None:
            out[name] = change
    return out


def _value(cell: ReportCell, name: str) -> float | None:
    if name in cell.accuracy:
        return cell.accuracy[name].value
    return cell.performance.get(name)


def apply_history(cells: Sequence[ReportCell], accepted: Mapping[str, tuple[str, ReportCell]],
                  previous: Report | None, settings: PerformanceGateSettings | None = None,
                  accuracy: AccuracyGateSettings | None = None) -> list[ReportCell]:
    """Cells with `accepted_gates` / `accepted_accuracy_gates` (performance with the rules'
    tolerances, accuracy with the baseline threshold, vs the accepted run of the same cell) and
    `trend` (vs the previous run of the series) filled in; outcomes are decided by
    `cells.decide`."""
    before = {c.key: c for c in previous.cells} if previous else {}
    versus = (accuracy or AccuracyGateSettings()).versus_accepted()
    out = []
    for cell in cells:
        update: dict[str, Any] = {}
        hit = accepted.get(cell.key)
        if hit is not None and cell.outcome != "error":
            update["accepted_from"] = hit[0]
            if cell.performance and hit[1].performance:
                update["accepted_gates"] = performance_gates(hit[1].performance, cell.performance, settings)
            if cell.accuracy and hit[1].accuracy:
                update["accepted_accuracy_gates"] = accuracy_gates(hit[1].accuracy, cell.accuracy, versus,
                                                                   suite=cell.suite)
        if hit is not None:
            update["changes_vs_accepted"] = environment_changes(cell.environment, hit[1].environment)
        prev = before.get(cell.key)
        if prev is not None:
            update["changes_vs_previous"] = environment_changes(cell.environment, prev.environment)
        if prev is not None and previous is not None:
            update["trend"] = trend(cell, prev)
            update["trend_from"] = previous.summary_task_id
        out.append(cell.model_copy(update=update) if update else cell)
    return out
