"""tasks.*: experiment documents, their status machine and their queue membership.

A task is stored (kind "task") in the shape of the SDK's `tasks.Task` model. Internal bookkeeping
keys start with "_" and never leave the server. Status changes follow clearml-server's rules as
its API documents them: each status endpoint accepts a set of current statuses, `force` lifts
that restriction (a published task stays final), and every change stamps `status_changed`,
`status_reason`, `status_message`, `last_update` and `last_change` and answers with the changed
`fields`. Leaving the queue (dequeue, stop, failed, reset, delete, archive) always removes the
queue entry too, so an agent never pulls a task that is no longer queued.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from clearml_standin.api import ApiError, Ctx, Sub, endpoint
from clearml_standin.services import projects, queues
from clearml_standin.services.common import (
    Doc,
    as_int,
    as_list,
    check_query,
    match_regex,
    match_tags,
    match_values,
    new_id,
    now_iso,
    order_and_page,
    project_fields,
    require,
    str_list,
)

KIND = "task"

CREATED = "created"
QUEUED = "queued"
IN_PROGRESS = "in_progress"
STOPPED = "stopped"
PUBLISHED = "published"
PUBLISHING = "publishing"
CLOSED = "closed"
FAILED = "failed"
COMPLETED = "completed"
UNKNOWN = "unknown"

TASK_TYPES = frozenset({
    "dataset_import", "annotation", "annotation_manual", "training", "testing", "inference",
    "data_processing", "application", "monitor", "controller", "optimizer", "service", "qc", "custom",
})
ARCHIVED = "archived"
HIDDEN = "hidden"

# Current statuses each status endpoint accepts without `force`.
_STARTED_FROM = {CREATED, QUEUED, IN_PROGRESS}
_STOPPED_FROM = {CREATED, QUEUED, IN_PROGRESS, STOPPED}
_FAILED_FROM = {CREATED, QUEUED, IN_PROGRESS, STOPPED, FAILED}
_COMPLETED_FROM = {IN_PROGRESS, STOPPED}
_CLOSED_FROM = {IN_PROGRESS, STOPPED}
_PUBLISH_FROM = {STOPPED, COMPLETED}
_ENQUEUE_FROM = {CREATED, STOPPED, FAILED}
_DEQUEUE_TO = {CREATED, STOPPED, FAILED, IN_PROGRESS}
# What to tell a caller whose enqueue was refused (enqueue has no `force`).
_ENQUEUE_HINTS = {QUEUED: "it is already queued", IN_PROGRESS: "stop it first"}
# Parameters, configuration and artifacts of these may be edited without `force`.
_EDITABLE = {CREATED, IN_PROGRESS}
# Fields tasks.edit accepts (output_dest maps to output.destination).
_EDIT_FIELDS = (
    "name", "type", "comment", "parent", "project", "input", "output_dest", "execution", "script",
    "hyperparams", "configuration", "container", "models", "runtime", "tags", "system_tags",
)
# Fields that may be edited whatever the status (names, notes and labels).
_ALWAYS_EDITABLE = frozenset({"name", "comment", "tags", "system_tags", "project", "runtime"})


# -- documents -------------------------------------------------------------------------------
def get_task(ctx: Ctx, task_id: Any) -> Doc:
    if not isinstance(task_id, str) or not task_id:
        raise ApiError(f"Invalid task id: id={task_id!r}", subcode=Sub.INVALID_TASK_ID)
    doc = ctx.store.get(KIND, task_id)
    if doc is None:
        raise ApiError(f"Invalid task id: id={task_id}", subcode=Sub.INVALID_TASK_ID)
    return doc


def _published(doc: Doc) -> ApiError:
    return ApiError(f"Task is published and cannot be edited: task={doc['id']}", subcode=Sub.TASK_PUBLISHED)


def _invalid(msg: str) -> ApiError:
    return ApiError(f"Validation error: {msg}", subcode=Sub.VALIDATION)


def public(doc: Doc) -> Doc:
    """The API's view: no internal keys, and unset (None) top-level fields left out like Mongo does."""
    return {k: v for k, v in doc.items() if not k.startswith("_") and v is not None}


def _save(ctx: Ctx, doc: Doc, now: str | None = None) -> None:
    now = now or now_iso()
    doc["last_update"] = now
    doc["last_change"] = now
    doc["last_changed_by"] = ctx.user_id
    ctx.store.put(KIND, doc["id"], doc)


def _check_project(ctx: Ctx, project_id: Any) -> str | None:
    if project_id in (None, ""):
        return None
    if not isinstance(project_id, str):
        raise ApiError(f"Invalid project id: id={project_id!r}", subcode=Sub.INVALID_PROJECT_ID)
    projects.get_project(ctx, project_id)
    return project_id


def _check_type(value: Any) -> str:
    if value not in TASK_TYPES:
        raise ApiError(f"Validation error: invalid task type {value!r} (one of {sorted(TASK_TYPES)})",
                       subcode=Sub.VALIDATION)
    return str(value)


def _section(body: Doc, key: str, kind: type) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise ApiError(f"Validation error: '{key}' must be a JSON {'object' if kind is dict else 'array'}",
                       subcode=Sub.VALIDATION)
    return copy.deepcopy(value)


def _normalize_hyperparams(value: Any) -> Doc:
    """{section: {name: item}} with every item carrying its own section and name."""
    out: Doc = {}
    for section, params in (value or {}).items():
        if not isinstance(params, dict):
            raise ApiError(f"Validation error: hyperparams section '{section}' must be an object",
                           subcode=Sub.VALIDATION)
        out[section] = {}
        for name, item in params.items():
            item = dict(item) if isinstance(item, dict) else {"value": item}
            item["section"] = section
            item["name"] = name
            if item.get("value") is not None and not isinstance(item["value"], str):
                item["value"] = str(item["value"])
            out[section][name] = item
    return out


def _normalize_configuration(value: Any) -> Doc:
    out: Doc = {}
    for name, item in (value or {}).items():
        item = dict(item) if isinstance(item, dict) else {"value": item}
        item["name"] = name
        out[name] = item
    return out


def _normalize_execution(value: Any) -> Doc:
    execution = dict(value or {})
    execution.setdefault("artifacts", [])
    for key in [k for k, v in execution.items() if v is None]:
        execution.pop(key)
    return execution


def _normalize_models(value: Any) -> Doc:
    models = dict(value or {})
    return {"input": list(models.get("input") or []), "output": list(models.get("output") or [])}


def _normalize_container(value: Any) -> Doc:
    # The model types container values as strings; clients sometimes send numbers or nulls.
    return {str(k): (None if v is None else str(v)) for k, v in (value or {}).items()}


def new_task(ctx: Ctx, body: Doc) -> Doc:
    name = require(body, "name")
    if not isinstance(name, str):
        raise ApiError("Validation error: 'name' must be a string", subcode=Sub.VALIDATION)
    now = now_iso()
    return {
        "id": new_id(),
        "name": name,
        "user": ctx.user_id,
        "company": ctx.company,
        "type": _check_type(require(body, "type")),
        "status": CREATED,
        "status_reason": "",
        "status_message": "",
        "status_changed": now,
        "comment": body.get("comment") or "",
        "created": now,
        "last_update": now,
        "last_change": now,
        "last_changed_by": ctx.user_id,
        "parent": body.get("parent") or None,
        "project": _check_project(ctx, body.get("project")),
        "input": _section(body, "input", dict),
        "output": {"destination": body.get("output_dest")} if body.get("output_dest") else {},
        "execution": _normalize_execution(_section(body, "execution", dict)),
        "script": _section(body, "script", dict) or {},
        "tags": str_list(body.get("tags"), "tags"),
        "system_tags": str_list(body.get("system_tags"), "system_tags"),
        "hyperparams": _normalize_hyperparams(_section(body, "hyperparams", dict)),
        "configuration": _normalize_configuration(_section(body, "configuration", dict)),
        "models": _normalize_models(_section(body, "models", dict)),
        "container": _normalize_container(_section(body, "container", dict)),
        "runtime": {},
        "last_iteration": 0,
        "last_metrics": {},
    }


# -- status machine --------------------------------------------------------------------------
def _require_status(doc: Doc, allowed: set[str], force: bool, action: str) -> None:
    status = doc.get("status")
    if status == PUBLISHED:
        raise ApiError(f"Task is published and cannot be changed ({action}): task={doc['id']}",
                       subcode=Sub.TASK_PUBLISHED)
    if not force and status not in allowed:
        hint = _ENQUEUE_HINTS.get(str(status), "reset it first") if action == "enqueue" else "use force"
        raise ApiError(
            f"Invalid task status for {action}: task={doc['id']} status={status} "
            f"(expected one of {sorted(allowed)}; {hint})",
            subcode=Sub.INVALID_TASK_STATUS,
        )


def _elapsed_s(since: str | None, until: str) -> int | None:
    if not since:
        return None
    try:
        delta = datetime.fromisoformat(until) - datetime.fromisoformat(since)
    except ValueError:
        return None
    return max(int(delta.total_seconds()), 0)


def _leave_queue(ctx: Ctx, doc: Doc) -> int:
    """Drop the task from every queue; returns how many entries were removed."""
    removed = queues.remove_entry(ctx, None, doc["id"])
    execution = doc.get("execution")
    if isinstance(execution, dict):
        execution.pop("queue", None)
    doc.pop("_enqueue_status", None)
    return removed


def _set_status(ctx: Ctx, doc: Doc, new_status: str, body: Doc, **extra: Any) -> Doc:
    """Apply a status change (already validated) and return the response's `fields`."""
    now = now_iso()
    old = doc.get("status")
    if old == IN_PROGRESS and new_status != IN_PROGRESS:
        duration = _elapsed_s(doc.get("started"), now)
        if duration is not None:
            doc["active_duration"] = duration
            extra["active_duration"] = duration
    doc["status"] = new_status
    doc["status_reason"] = body.get("status_reason") or ""
    doc["status_message"] = body.get("status_message") or ""
    doc["status_changed"] = now
    fields: Doc = {
        "status": new_status,
        "status_reason": doc["status_reason"],
        "status_message": doc["status_message"],
        "status_changed": now,
        "last_update": now,
        "last_change": now,
    }
    for dotted, value in extra.items():
        _assign(doc, dotted, value)
        fields[dotted] = value
    _save(ctx, doc, now)
    return fields


def _assign(doc: Doc, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = doc
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    if value is None:
        cur.pop(parts[-1], None)
    else:
        cur[parts[-1]] = value


def _status_before_queue(doc: Doc) -> str:
    previous = doc.get("_enqueue_status")
    return previous if isinstance(previous, str) and previous in _ENQUEUE_FROM else CREATED


def _was_queued(ctx: Ctx, doc: Doc) -> Doc:
    """Leaving `queued` for another status: drop the entry and the remembered queue."""
    if doc.get("status") == QUEUED:
        _leave_queue(ctx, doc)
        return {"execution.queue": None}
    return {}


# -- create / read ---------------------------------------------------------------------------
@endpoint("tasks.create")
def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = new_task(ctx, body)
    ctx.store.put(KIND, doc["id"], doc)
    return {"id": doc["id"]}


@endpoint("tasks.validate")
def validate(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    new_task(ctx, body)
    return {}


@endpoint("tasks.get_by_id")
def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"task": public(get_task(ctx, require(body, "task")))}


@endpoint("tasks.get_types")
def get_types(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    wanted = set(as_list(body.get("projects")))
    types = {d.get("type") for d in ctx.store.iter_raw(KIND) if not wanted or d.get("project") in wanted}
    return {"types": sorted(t for t in types if t)}


def _project_ids(ctx: Ctx, wanted: Any, include_subprojects: bool) -> set[str | None]:
    ids: set[str | None] = {None if p in (None, "") else str(p) for p in as_list(wanted)}
    if include_subprojects:
        names = [p["name"] for p in ctx.store.iter_raw("project") if p["id"] in ids]
        for proj in ctx.store.iter_raw("project"):
            if any(str(proj.get("name", "")).startswith(n + "/") for n in names):
                ids.add(proj["id"])
    return ids


_CMP = re.compile(r"^(>=|<=|>|<)?\s*(.+)$")


def _as_epoch(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(f"Validation error: cannot parse date {text!r}", subcode=Sub.VALIDATION) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _match_dates(value: Any, constraints: Any) -> bool:
    """`status_changed` style filters: ['>=2024-01-01', '<1700000000']."""
    if not constraints:
        return True
    have = _as_epoch(value)
    for constraint in as_list(constraints):
        match = _CMP.match(str(constraint))
        if not match:
            continue
        op, bound_text = match.group(1) or ">=", match.group(2)
        bound = _as_epoch(bound_text)
        if have is None or bound is None:
            return False
        ok = {">=": have >= bound, "<=": have <= bound, ">": have > bound, "<": have < bound}[op]
        if not ok:
            return False
    return True


def _match_pattern(doc: Doc, cond: Any, need_all: bool) -> bool:
    """`_any_` / `_all_`: a regex tried on several (dotted) fields."""
    if not isinstance(cond, dict) or not cond.get("pattern"):
        return True
    results = []
    for dotted in as_list(cond.get("fields")):
        value: Any = doc
        for part in str(dotted).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values = value if isinstance(value, list) else [value]
        results.append(any(match_regex(v, cond["pattern"], "pattern") for v in values if v is not None))
    if not results:
        return True
    return all(results) if need_all else any(results)


def _matches(ctx: Ctx, doc: Doc, body: Doc, ids: set[str], project_ids: set[str | None] | None) -> bool:
    if ids and doc["id"] not in ids:
        return False
    if not ids and not body.get("search_hidden") and HIDDEN in (doc.get("system_tags") or []):
        return False
    if project_ids is not None and doc.get("project") not in project_ids:
        return False
    checks: list[Callable[[], bool]] = [
        lambda: match_regex(doc.get("name"), body.get("name")),
        lambda: match_tags(doc.get("tags") or [], body.get("tags")),
        lambda: match_tags(doc.get("system_tags") or [], body.get("system_tags"), "system_tags"),
        lambda: match_values(doc.get("status"), body.get("status")),
        lambda: match_values(doc.get("type"), body.get("type")),
        lambda: match_values(doc.get("user"), body.get("user")),
        lambda: match_values(doc.get("parent"), body.get("parent")),
        lambda: _match_dates(doc.get("status_changed"), body.get("status_changed")),
        lambda: _match_pattern(doc, body.get("_any_"), need_all=False),
        lambda: _match_pattern(doc, body.get("_all_"), need_all=True),
    ]
    if not all(check() for check in checks):
        return False
    text = str(body.get("search_text") or "").lower()
    if text:
        haystack = " ".join(str(doc.get(k) or "") for k in ("id", "name", "comment")).lower()
        if text not in haystack:
            return False
    return True


@endpoint("tasks.get_all", "tasks.get_all_ex")
def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    check_query(body)
    id_list = list(dict.fromkeys(str(i) for i in as_list(body.get("id"))))
    ids = set(id_list)
    project_ids = None
    if body.get("project") is not None and as_list(body.get("project")):
        project_ids = _project_ids(ctx, body.get("project"), bool(body.get("include_subprojects")))
    if ids:
        candidates: Iterable[Doc] = ctx.store.get_many(KIND, id_list)
    else:
        candidates = ctx.store.iter_raw(KIND)
    found = [doc for doc in candidates if _matches(ctx, doc, body, ids, project_ids)]
    if not body.get("order_by") and not ids:
        # clearml-server's natural order is insertion order; keep it stable for paging.
        found.sort(key=lambda d: str(d.get("created") or ""))
    found = order_and_page([public(d) for d in found], _paging(body))
    # Raw store documents are shared: hand out copies of just the page.
    return {"tasks": [copy.deepcopy(project_fields(d, body.get("only_fields"))) for d in found]}


def _paging(body: Doc) -> Doc:
    paging = dict(body)
    if paging.get("page_size") is None and paging.get("size") is not None:
        paging["page_size"] = paging["size"]
        paging.setdefault("page", 0)
    text_score = ("@text_score", "-@text_score")
    paging["order_by"] = [k for k in as_list(body.get("order_by")) if k not in text_score]
    return paging


# -- edits -----------------------------------------------------------------------------------
def _check_editable(doc: Doc, fields: Iterable[str], force: bool) -> None:
    names = set(fields)
    if names and names <= _ALWAYS_EDITABLE:
        return
    status = doc.get("status")
    if status == PUBLISHED:
        raise _published(doc)
    if not force and status != CREATED:
        raise ApiError(
            f"Invalid task status for edit: task={doc['id']} status={status} (only 'created' tasks can be "
            "edited; use force to override)",
            subcode=Sub.INVALID_TASK_STATUS,
        )


_NORMALIZERS: dict[str, Callable[[Any], Any]] = {
    "hyperparams": _normalize_hyperparams,
    "configuration": _normalize_configuration,
    "execution": _normalize_execution,
    "models": _normalize_models,
    "container": _normalize_container,
}


@endpoint("tasks.edit")
def edit(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    given = {k: body[k] for k in _EDIT_FIELDS if k in body}
    _check_editable(doc, given, bool(body.get("force")))
    fields: Doc = {}
    for key, value in given.items():
        if key == "type":
            value = _check_type(value)
        elif key == "project":
            value = _check_project(ctx, value)
        elif key in ("tags", "system_tags"):
            value = str_list(value, key)
        elif key in _NORMALIZERS:
            if value is not None and not isinstance(value, dict):
                raise ApiError(f"Validation error: '{key}' must be a JSON object", subcode=Sub.VALIDATION)
            value = _NORMALIZERS[key](value)
        if key == "output_dest":
            doc.setdefault("output", {})["destination"] = value
            fields["output.destination"] = value
            continue
        # Sections are replaced whole: the SDK always sends the complete section it holds.
        doc[key] = value
        fields[key] = value
    _save(ctx, doc)
    return {"updated": 1, "fields": fields}


_UPDATE_FIELDS = ("name", "comment", "tags", "system_tags", "project", "created")


def _update_one(ctx: Ctx, body: Doc) -> Doc:
    doc = get_task(ctx, require(body, "task"))
    fields: Doc = {}
    for key in _UPDATE_FIELDS:
        if key not in body:
            continue
        value = body[key]
        if key == "project":
            value = _check_project(ctx, value)
        elif key in ("tags", "system_tags"):
            value = str_list(value, key)
        doc[key] = value
        fields[key] = value
    if "output__error" in body:
        doc.setdefault("output", {})["error"] = body["output__error"]
        fields["output.error"] = body["output__error"]
    _save(ctx, doc)
    return {"updated": 1, "fields": fields}


@endpoint("tasks.update")
def update(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _update_one(ctx, body)


@endpoint("tasks.update_batch")
def update_batch(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise ApiError("Validation error: update_batch expects a list of update requests",
                       subcode=Sub.VALIDATION)
    with ctx.store.transaction():
        updated = sum(_update_one(ctx, r)["updated"] for r in requests if isinstance(r, dict))
    return {"updated": updated}


@endpoint("tasks.set_requirements")
def set_requirements(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    requirements = body.get("requirements")
    if not isinstance(requirements, dict):
        raise ApiError("Validation error: 'requirements' must be an object such as {\"pip\": \"...\"}",
                       subcode=Sub.VALIDATION)
    if doc.get("status") == PUBLISHED:
        raise _published(doc)
    script = doc.get("script") or {}
    script["requirements"] = requirements
    doc["script"] = script
    _save(ctx, doc)
    return {"updated": 1, "fields": {"script.requirements": requirements}}


@endpoint("tasks.ping")
def ping(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    doc["last_update"] = now_iso()
    ctx.store.put(KIND, doc["id"], doc)
    return {}


# -- hyper-parameters and configuration ------------------------------------------------------
def _check_params_editable(doc: Doc, force: bool) -> None:
    if doc.get("status") == PUBLISHED:
        raise _published(doc)
    if not force and doc.get("status") not in _EDITABLE:
        raise ApiError(
            f"Invalid task status: task={doc['id']} status={doc.get('status')} (parameters of running or "
            "new tasks only; use force to override)",
            subcode=Sub.INVALID_TASK_STATUS,
        )


def _items(body: Doc, key: str) -> list[Doc]:
    items = body.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ApiError(f"Validation error: '{key}' must be a list of objects", subcode=Sub.VALIDATION)
    return items


@endpoint("tasks.edit_hyper_params")
def edit_hyper_params(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    items = _items(body, "hyperparams")
    _check_params_editable(doc, bool(body.get("force")))
    replace = body.get("replace_hyperparams") or "none"
    if replace not in ("none", "section", "all"):
        raise ApiError(f"Validation error: replace_hyperparams must be none, section or all, got {replace!r}",
                       subcode=Sub.VALIDATION)
    hyperparams = {} if replace == "all" else dict(doc.get("hyperparams") or {})
    if replace == "section":
        for item in items:
            hyperparams.pop(str(item.get("section") or "General"), None)
    for item in items:
        if not item.get("name"):
            raise ApiError("Validation error: every hyper-parameter needs a 'name'", subcode=Sub.VALIDATION)
        section = str(item.get("section") or "General")
        entry = {k: item[k] for k in ("value", "type", "description") if item.get(k) is not None}
        if "value" in entry and not isinstance(entry["value"], str):
            entry["value"] = str(entry["value"])
        name = str(item["name"])
        hyperparams.setdefault(section, {})[name] = {"section": section, "name": name, **entry}
    doc["hyperparams"] = hyperparams
    _save(ctx, doc)
    return {"updated": 1}


@endpoint("tasks.delete_hyper_params")
def delete_hyper_params(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    items = _items(body, "hyperparams")
    _check_params_editable(doc, bool(body.get("force")))
    hyperparams = dict(doc.get("hyperparams") or {})
    deleted = 0
    for item in items:
        section = str(item.get("section") or "")
        if not item.get("name"):
            deleted += len(hyperparams.pop(section, None) or {})
        elif item["name"] in hyperparams.get(section, {}):
            del hyperparams[section][item["name"]]
            deleted += 1
    doc["hyperparams"] = hyperparams
    _save(ctx, doc)
    return {"deleted": deleted}


@endpoint("tasks.get_hyper_params")
def get_hyper_params(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    out = []
    for task_id in as_list(require(body, "tasks")):
        doc = get_task(ctx, task_id)
        items = [dict(item) for params in (doc.get("hyperparams") or {}).values() for item in params.values()]
        out.append({"task": doc["id"], "hyperparams": items})
    return {"params": out}


@endpoint("tasks.edit_configuration")
def edit_configuration(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    items = _items(body, "configuration")
    _check_params_editable(doc, bool(body.get("force")))
    configuration = {} if body.get("replace_configuration") else dict(doc.get("configuration") or {})
    for item in items:
        if not item.get("name"):
            raise _invalid("every configuration item needs a 'name'")
        configuration[str(item["name"])] = {k: item[k] for k in ("name", "value", "type", "description")
                                            if item.get(k) is not None}
    doc["configuration"] = configuration
    _save(ctx, doc)
    return {"updated": 1}


@endpoint("tasks.delete_configuration")
def delete_configuration(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    names = [str(n) for n in as_list(require(body, "configuration"))]
    _check_params_editable(doc, bool(body.get("force")))
    configuration = dict(doc.get("configuration") or {})
    deleted = sum(1 for n in names if configuration.pop(n, None) is not None)
    doc["configuration"] = configuration
    _save(ctx, doc)
    return {"deleted": deleted}


@endpoint("tasks.get_configurations")
def get_configurations(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    names = {str(n) for n in as_list(body.get("names"))}
    out = []
    for task_id in as_list(require(body, "tasks")):
        doc = get_task(ctx, task_id)
        items = [dict(v) for k, v in (doc.get("configuration") or {}).items() if not names or k in names]
        out.append({"task": doc["id"], "configuration": items})
    return {"configurations": out}


@endpoint("tasks.get_configuration_names")
def get_configuration_names(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    skip_empty = body.get("skip_empty", True)
    per_task: Doc = {}
    for task_id in as_list(require(body, "tasks")):
        doc = get_task(ctx, task_id)
        names = [k for k, v in (doc.get("configuration") or {}).items() if not skip_empty or v.get("value")]
        per_task[doc["id"]] = {"task": doc["id"], "names": sorted(names)}
    # The service model types this as one object: a single task's entry, or entries keyed by task.
    if len(per_task) == 1:
        return {"configurations": next(iter(per_task.values()))}
    return {"configurations": per_task}


# -- artifacts and models --------------------------------------------------------------------
def _artifact_key(item: Doc) -> tuple[str, str]:
    return str(item.get("key")), str(item.get("mode") or "output")


@endpoint("tasks.add_or_update_artifacts")
def add_or_update_artifacts(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    items = _items(body, "artifacts")
    _check_params_editable(doc, bool(body.get("force")))
    for item in items:
        if not item.get("key") or not item.get("type"):
            raise ApiError("Validation error: every artifact needs 'key' and 'type'", subcode=Sub.VALIDATION)
    execution = doc.setdefault("execution", {})
    current = {_artifact_key(a): a for a in execution.get("artifacts") or []}
    for item in items:
        artifact = {k: v for k, v in item.items() if v is not None}
        artifact.setdefault("mode", "output")
        current[_artifact_key(artifact)] = artifact
    execution["artifacts"] = list(current.values())
    _save(ctx, doc)
    return {"updated": 1}


@endpoint("tasks.delete_artifacts")
def delete_artifacts(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    items = _items(body, "artifacts")
    _check_params_editable(doc, bool(body.get("force")))
    drop = {_artifact_key(i) for i in items}
    execution = doc.setdefault("execution", {})
    before = execution.get("artifacts") or []
    execution["artifacts"] = [a for a in before if _artifact_key(a) not in drop]
    _save(ctx, doc)
    return {"deleted": len(before) - len(execution["artifacts"])}


@endpoint("tasks.add_or_update_model")
def add_or_update_model(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    name, model, kind = str(require(body, "name")), str(require(body, "model")), require(body, "type")
    if body.get("iteration") is not None:
        as_int(body["iteration"], "iteration")
    if kind not in ("input", "output"):
        raise ApiError(f"Validation error: model type must be 'input' or 'output', got {kind!r}",
                       subcode=Sub.VALIDATION)
    models = _normalize_models(doc.get("models"))
    entries = [m for m in models[kind] if m.get("name") != name]
    entries.append({"name": name, "model": model})
    models[kind] = entries
    doc["models"] = models
    if body.get("iteration") is not None:
        iteration = as_int(body["iteration"], "iteration")
        doc["last_iteration"] = max(int(doc.get("last_iteration") or 0), iteration)
    _save(ctx, doc)
    return {"updated": 1}


@endpoint("tasks.delete_models")
def delete_models(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    models = _normalize_models(doc.get("models"))
    drop = {(str(m.get("type")), str(m.get("name"))) for m in _items(body, "models")}
    for kind in ("input", "output"):
        models[kind] = [m for m in models[kind] if (kind, str(m.get("name"))) not in drop]
    doc["models"] = models
    _save(ctx, doc)
    return {"updated": 1}


# -- status endpoints ------------------------------------------------------------------------
def _force(body: Doc) -> bool:
    return bool(body.get("force"))


@endpoint("tasks.started")
def started(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    _require_status(doc, _STARTED_FROM, _force(body), "started")
    with ctx.store.transaction():
        extra = _was_queued(ctx, doc)
        fields = _set_status(ctx, doc, IN_PROGRESS, body, started=now_iso(), **extra)
    return {"started": 1, "updated": 1, "fields": fields}


@endpoint("tasks.stop")
def stop(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """A stop *request*: a running task gets status_message 'stopping' and its agent ends it."""
    doc = get_task(ctx, require(body, "task"))
    force = _force(body)
    status = doc.get("status")
    if status == IN_PROGRESS and not force:
        request = {"status_reason": body.get("status_reason") or "stop request", "status_message": "stopping"}
        return {"updated": 1, "fields": _set_status(ctx, doc, IN_PROGRESS, request)}
    _require_status(doc, {CREATED, QUEUED}, force, "stop")
    with ctx.store.transaction():
        extra = _was_queued(ctx, doc)
        fields = _set_status(ctx, doc, STOPPED, body, **extra)
    return {"updated": 1, "fields": fields}


def _transition(ctx: Ctx, body: dict[str, Any], new_status: str, allowed: set[str], action: str) -> dict[str, Any]:
    """A plain status change: check the rule, leave the queue if queued, record the status."""
    doc = get_task(ctx, require(body, "task"))
    _require_status(doc, allowed, _force(body), action)
    with ctx.store.transaction():
        extra = _was_queued(ctx, doc)
        fields = _set_status(ctx, doc, new_status, body, **extra)
    return {"updated": 1, "fields": fields}


@endpoint("tasks.stopped")
def stopped(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _transition(ctx, body, STOPPED, _STOPPED_FROM, "stopped")


@endpoint("tasks.failed")
def failed(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _transition(ctx, body, FAILED, _FAILED_FROM, "failed")


@endpoint("tasks.completed")
def completed(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    _require_status(doc, _COMPLETED_FROM, _force(body), "completed")
    with ctx.store.transaction():
        extra = _was_queued(ctx, doc)
        fields = _set_status(ctx, doc, COMPLETED, body, completed=now_iso(), **extra)
        published = 0
        if body.get("publish"):
            fields.update(_publish(ctx, doc, {"status_reason": "completed", "publish_model": True}))
            published = 1
    return {"updated": 1, "published": published, "fields": fields}


@endpoint("tasks.close")
def close(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    _require_status(doc, _CLOSED_FROM, _force(body), "close")
    with ctx.store.transaction():
        extra = _was_queued(ctx, doc)
        fields = _set_status(ctx, doc, CLOSED, body, **extra)
    return {"updated": 1, "fields": fields}


def _publish(ctx: Ctx, doc: Doc, body: Doc) -> Doc:
    if body.get("publish_model", True):
        # Output models become final with their task (models.* reads `ready`).
        for entry in (doc.get("models") or {}).get("output") or []:
            model = ctx.store.get("model", str(entry.get("model")))
            if model is not None and not model.get("ready"):
                model["ready"] = True
                model["last_update"] = now_iso()
                ctx.store.put("model", model["id"], model)
    return _set_status(ctx, doc, PUBLISHED, body, published=now_iso())


@endpoint("tasks.publish")
def publish(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    _require_status(doc, _PUBLISH_FROM, _force(body), "publish")
    with ctx.store.transaction():
        fields = _publish(ctx, doc, body)
    return {"updated": 1, "committed_versions_results": [], "fields": fields}


@endpoint("tasks.enqueue")
def enqueue(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    if body.get("queue") and body.get("queue_name"):
        raise _invalid("pass either 'queue' or 'queue_name', not both")
    _require_status(doc, _ENQUEUE_FROM, False, "enqueue")
    with ctx.store.transaction():
        if body.get("queue"):
            queue = queues.get_queue(ctx, body["queue"])
        elif body.get("queue_name"):
            queue = queues.ensure_queue(ctx, str(body["queue_name"]))
        else:
            queue = queues.default_queue(ctx)
        previous = doc.get("status")
        queues.add_entry(ctx, queue, doc["id"])
        doc["_enqueue_status"] = previous
        fields = _set_status(ctx, doc, QUEUED, body, **{"execution.queue": queue["id"]})
    out: Doc = {"queued": 1, "updated": 1, "fields": fields}
    if body.get("verify_watched_queue"):
        out["queue_watched"] = queues.watched(ctx, queue["id"])
    return out


@endpoint("tasks.dequeue")
def dequeue(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    if doc.get("status") != QUEUED:
        raise ApiError(f"Invalid task status for dequeue: task={doc['id']} status={doc.get('status')} "
                       "(only queued tasks can be dequeued)", subcode=Sub.INVALID_TASK_STATUS)
    with ctx.store.transaction():
        # The task goes back to its status before enqueue unless the caller (the agent) names one.
        back_to = body.get("new_status") or _status_before_queue(doc)
        if back_to not in _DEQUEUE_TO:
            raise _invalid(f"new_status must be one of {sorted(_DEQUEUE_TO)}, got {back_to!r}")
        removed = _leave_queue(ctx, doc)
        fields = _set_status(ctx, doc, back_to, body, **{"execution.queue": None})
    return {"dequeued": 1 if removed else 0, "updated": 1, "fields": fields}


def _reset_fields(doc: Doc, clear_all: bool) -> Doc:
    """What a reset clears: run results, timings, output models and output artifacts."""
    execution = doc.get("execution") or {}
    if clear_all:
        doc["script"] = {}
        execution = {}
    execution.pop("queue", None)
    execution["artifacts"] = [a for a in execution.get("artifacts") or [] if a.get("mode") == "input"]
    doc["execution"] = execution
    models = _normalize_models(doc.get("models"))
    deleted_models = len(models["output"])
    models["output"] = []
    doc["models"] = models
    for key in ("started", "completed", "published", "active_duration", "last_worker", "last_worker_report"):
        doc.pop(key, None)
    doc["output"] = {k: v for k, v in (doc.get("output") or {}).items() if k == "destination"}
    doc["last_iteration"] = 0
    doc["last_metrics"] = {}
    doc["runtime"] = {}
    doc.pop("_enqueue_status", None)
    doc.pop("_pulled_from", None)
    return {"deleted_models": deleted_models}


@endpoint("tasks.reset")
def reset(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    if doc.get("status") == PUBLISHED:
        raise ApiError(f"Cannot reset a published task: task={doc['id']} (clone it instead)",
                       subcode=Sub.TASK_PUBLISHED)
    if doc.get("status") == COMPLETED and not _force(body):
        raise ApiError(f"Invalid task status for reset: task={doc['id']} status=completed (use force)",
                       subcode=Sub.INVALID_TASK_STATUS)
    with ctx.store.transaction():
        removed = _leave_queue(ctx, doc)
        info = _reset_fields(doc, bool(body.get("clear_all")))
        events = ctx.store.delete_events(doc["id"])
        fields = _set_status(ctx, doc, CREATED, body, **{"execution.queue": None})
    out: Doc = {"updated": 1, "fields": fields, "events": {"deleted": events}, **info}
    if removed:
        out["dequeued"] = {"removed": removed}
    return out


@endpoint("tasks.delete")
def delete(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_task(ctx, require(body, "task"))
    if doc.get("status") == IN_PROGRESS and not _force(body):
        raise ApiError(f"Cannot delete a running task: task={doc['id']} status=in_progress (use force)",
                       subcode=Sub.INVALID_TASK_STATUS)
    with ctx.store.transaction():
        _leave_queue(ctx, doc)
        children = 0
        for child in ctx.store.all(KIND):
            if child.get("parent") == doc["id"]:
                child.pop("parent", None)
                ctx.store.put(KIND, child["id"], child)
                children += 1
        models = 0
        for model in ctx.store.all("model"):
            if model.get("task") == doc["id"]:
                model.pop("task", None)
                ctx.store.put("model", model["id"], model)
                models += 1
        events = ctx.store.delete_events(doc["id"])
        ctx.store.delete(KIND, doc["id"])
    return {"deleted": True, "updated_children": children, "updated_models": models,
            "events": {"deleted": events}}


def _archive_one(ctx: Ctx, task_id: str, body: Doc, archive: bool) -> bool:
    doc = get_task(ctx, task_id)
    tags = list(doc.get("system_tags") or [])
    if archive == (ARCHIVED in tags):
        return False
    if archive:
        tags.append(ARCHIVED)
        if doc.get("status") == QUEUED:
            # Archiving a queued task takes it out of its queue, as the web UI's archive does.
            back_to = _status_before_queue(doc)
            _leave_queue(ctx, doc)
            doc["system_tags"] = tags
            _set_status(ctx, doc, back_to, body, **{"execution.queue": None})
            return True
    else:
        tags.remove(ARCHIVED)
    doc["system_tags"] = tags
    _save(ctx, doc)
    return True


@endpoint("tasks.archive")
def archive(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    with ctx.store.transaction():
        count = sum(_archive_one(ctx, str(t), body, True) for t in as_list(require(body, "tasks")))
    return {"archived": count}


# -- bulk variants: one single-task call per id, failures reported per id ---------------------
def _must(result: Doc | None) -> Doc:
    """Registered handlers are typed as maybe returning None; the ones reused here never do."""
    return result or {}


def _many(ctx: Ctx, body: Doc, one: Callable[[Ctx, Doc], Doc], extra: Doc | None = None) -> Doc:
    succeeded, failed_ = [], []
    for task_id in as_list(require(body, "ids")):
        single = {k: v for k, v in body.items() if k != "ids"}
        single["task"] = task_id
        try:
            result = one(ctx, single)
        except ApiError as err:
            error = {"codes": [err.code, err.subcode], "msg": err.msg, "data": {}}
            failed_.append({"id": task_id, "error": error})
            continue
        succeeded.append({"id": task_id, **result})
    return {"succeeded": succeeded, "failed": failed_, **(extra or {})}


def _single_archive(archive_it: bool) -> Callable[[Ctx, Doc], Doc]:
    def run(ctx: Ctx, body: Doc) -> Doc:
        changed = _archive_one(ctx, str(body["task"]), body, archive_it)
        return {"archived" if archive_it else "unarchived": changed}

    return run


@endpoint("tasks.archive_many")
def archive_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _many(ctx, body, _single_archive(True))


@endpoint("tasks.unarchive_many")
def unarchive_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _many(ctx, body, _single_archive(False))


@endpoint("tasks.stop_many")
def stop_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _many(ctx, body, lambda c, b: _must(stop(c, b)))


@endpoint("tasks.reset_many")
def reset_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    def one(c: Ctx, b: Doc) -> Doc:
        result = _must(reset(c, b))
        return {"updated": result["updated"], "fields": result["fields"],
                "deleted_models": result.get("deleted_models", 0)}

    return _many(ctx, body, one)


@endpoint("tasks.delete_many")
def delete_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    def one(c: Ctx, b: Doc) -> Doc:
        result = _must(delete(c, b))
        return {"deleted": result["deleted"], "updated_children": result["updated_children"],
                "updated_models": result["updated_models"]}

    return _many(ctx, body, one)


@endpoint("tasks.publish_many")
def publish_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    def one(c: Ctx, b: Doc) -> Doc:
        result = _must(publish(c, b))
        return {"updated": result["updated"], "fields": result["fields"]}

    return _many(ctx, body, one)


@endpoint("tasks.enqueue_many")
def enqueue_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    def one(c: Ctx, b: Doc) -> Doc:
        result = _must(enqueue(c, {k: v for k, v in b.items() if k != "verify_watched_queue"}))
        return {"queued": bool(result["queued"]), "updated": result["updated"], "fields": result["fields"]}

    out = _many(ctx, body, one)
    if body.get("verify_watched_queue") and out["succeeded"]:
        first = get_task(ctx, out["succeeded"][0]["id"])
        out["queue_watched"] = queues.watched(ctx, str((first.get("execution") or {}).get("queue")))
    return out


@endpoint("tasks.dequeue_many")
def dequeue_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    def one(c: Ctx, b: Doc) -> Doc:
        result = _must(dequeue(c, b))
        return {"dequeued": bool(result["dequeued"]), "updated": result["updated"],
                "fields": result["fields"]}

    return _many(ctx, body, one)


# -- clone -----------------------------------------------------------------------------------
@endpoint("tasks.clone")
def clone(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    source = get_task(ctx, require(body, "task"))
    project = source.get("project")
    new_project: Doc | None = None
    if body.get("new_task_project"):
        project = _check_project(ctx, body["new_task_project"])
    elif body.get("new_project_name"):
        proj = projects.ensure_project(ctx, str(body["new_project_name"]))
        project = proj["id"]
        new_project = {"id": proj["id"], "name": proj["name"]}
    execution = copy.deepcopy(source.get("execution") or {})
    execution.pop("queue", None)
    # Output artifacts belong to the original run; input ones describe what the task consumes.
    execution["artifacts"] = [a for a in execution.get("artifacts") or [] if a.get("mode") == "input"]
    overrides = body.get("execution_overrides")
    if isinstance(overrides, dict):
        execution.update({k: v for k, v in overrides.items() if v is not None})
    models = _normalize_models(source.get("models"))
    if body.get("new_task_input_models") is not None:
        models["input"] = list(body["new_task_input_models"])
    models["output"] = []

    def pick(key: str, default: Any) -> Any:
        return copy.deepcopy(body[key]) if body.get(key) is not None else copy.deepcopy(default)

    doc = new_task(ctx, {
        "name": pick("new_task_name", source.get("name")),
        "type": source.get("type"),
        "comment": pick("new_task_comment", source.get("comment")),
        "parent": pick("new_task_parent", source.get("parent")),
        "project": project,
        "input": source.get("input"),
        "output_dest": (source.get("output") or {}).get("destination"),
        "execution": execution,
        "script": copy.deepcopy(source.get("script")),
        "tags": pick("new_task_tags", source.get("tags")),
        "system_tags": pick("new_task_system_tags", []),
        "hyperparams": pick("new_task_hyperparams", source.get("hyperparams")),
        "configuration": pick("new_task_configuration", source.get("configuration")),
        "container": pick("new_task_container", source.get("container")),
        "models": models,
    })
    ctx.store.put(KIND, doc["id"], doc)
    out: Doc = {"id": doc["id"]}
    if new_project is not None:
        out["new_project"] = new_project
    return out


@endpoint("tasks.move")
def move(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    ids = as_list(require(body, "ids"))
    if body.get("project"):
        project_id = _check_project(ctx, body["project"])
    elif body.get("project_name"):
        project_id = projects.ensure_project(ctx, str(body["project_name"]))["id"]
    else:
        raise ApiError("Validation error: 'project' or 'project_name' is required", subcode=Sub.VALIDATION)
    with ctx.store.transaction():
        for task_id in ids:
            doc = get_task(ctx, task_id)
            doc["project"] = project_id
            _save(ctx, doc)
    return {"project_id": project_id}


# -- non-responsive tasks ----------------------------------------------------------------------
NON_RESPONSIVE_MESSAGE = "Forced stop (non-responsive)"


def _epoch_of(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def stop_non_responsive(ctx: Ctx, threshold_s: float, now: float | None = None, alive_since: float = 0.0) -> list[str]:
    """Stop in_progress tasks nobody has heard of for `threshold_s` seconds, as clearml-server's
    watchdog does: a task whose agent died with it would otherwise stay running forever and hold
    its identity (the bridge would attach to it instead of running the work again).

    Heard of means any write to the task (events, pings, edits: `last_update`) or a status report
    of the worker running it (`last_worker_report`), so a long silent step under a live agent is
    never stopped. `alive_since` (the server's start) counts as heard of too: a server that was
    down for hours must give the agents time to report before it judges their tasks.
    Returns the ids of the tasks stopped.
    """
    current = datetime.now(UTC).timestamp() if now is None else now
    stale = []
    for doc in ctx.store.iter_raw(KIND):
        if doc.get("status") != IN_PROGRESS:
            continue
        heard = [t for t in (_epoch_of(doc.get("last_update")), _epoch_of(doc.get("last_worker_report"))) if t]
        if current - max([*heard, alive_since]) > threshold_s:
            stale.append(str(doc["id"]))
    for task_id in stale:
        doc = get_task(ctx, task_id)
        reason = {"status_reason": NON_RESPONSIVE_MESSAGE, "status_message": NON_RESPONSIVE_MESSAGE}
        with ctx.store.transaction():
            _set_status(ctx, doc, STOPPED, reason)
    return stale
