"""workers.*: agents announce themselves, report status while polling or running, and go away.

clearml-server keeps workers in Redis with an expiry; here a worker is a document (kind
"worker") that counts as gone once it has not reported for its `timeout` seconds. Runtime
properties (the agent's `get/set_runtime_properties`) are kept on the same document.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from clearml_standin.api import ApiError, Ctx, Sub, endpoint
from clearml_standin.services.common import Doc, as_int, as_list, match_tags, now_iso, require, str_list

KIND = "worker"
DEFAULT_TIMEOUT_S = 600
SUB_WORKER_NOT_REGISTERED = 1001


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


def _alive(doc: Doc, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    return now - _epoch(doc.get("last_activity_time")) <= float(doc.get("_timeout") or DEFAULT_TIMEOUT_S)


def live_workers(ctx: Ctx) -> list[Doc]:
    now = time.time()
    return [dict(d) for d in ctx.store.iter_raw(KIND) if _alive(d, now)]


def _worker_id(body: dict[str, Any]) -> str:
    worker = require(body, "worker")
    if not isinstance(worker, str):
        raise ApiError(f"Validation error: 'worker' must be a string, got {worker!r}", subcode=Sub.VALIDATION)
    return worker


def _queue_ids(ctx: Ctx, values: Any) -> list[str]:
    """Agents send queue ids; accept names too and keep whatever cannot be resolved as given."""
    out = []
    for value in as_list(values):
        value = str(value)
        if ctx.store.get("queue", value) is None:
            found = next((q for q in ctx.store.iter_raw("queue") if q.get("name") == value), None)
            value = found["id"] if found else value
        out.append(value)
    return out


def _new_worker(ctx: Ctx, worker_id: str, body: dict[str, Any]) -> Doc:
    now = now_iso()
    return {
        "id": worker_id,
        "key": f"worker_{ctx.company}_{worker_id}",
        "user": ctx.user_id,
        "company": ctx.company,
        "ip": body.get("ip") or "127.0.0.1",
        "register_time": now,
        "last_activity_time": now,
        "last_report_time": now,
        "queues": _queue_ids(ctx, body.get("queues")),
        "tags": str_list(body.get("tags"), "tags"),
        "system_tags": str_list(body.get("system_tags"), "system_tags"),
        "_timeout": as_int(body.get("timeout") or DEFAULT_TIMEOUT_S, "timeout"),
        "_runtime_properties": [],
    }


# -- the API's view of a worker (ids expanded to {id, name} entries) ---------------------------
def _name_of(ctx: Ctx, kind: str, id_: str | None) -> str | None:
    if not id_:
        return None
    doc = ctx.store.get(kind, id_)
    return doc.get("name") if doc else None


def _queue_entry(ctx: Ctx, queue_id: str) -> Doc:
    queue = ctx.store.get("queue", queue_id)
    if queue is None:
        return {"id": queue_id, "name": None}
    entries = queue.get("entries") or []
    entry: Doc = {"id": queue_id, "name": queue.get("name"), "num_tasks": len(entries)}
    if entries:
        next_id = entries[0].get("task")
        entry["next_task"] = {"id": next_id, "name": _name_of(ctx, "task", next_id)}
    return entry


def _public(ctx: Ctx, doc: Doc) -> Doc:
    out: Doc = {
        "id": doc["id"],
        "key": doc.get("key"),
        "user": {"id": doc.get("user"), "name": ctx.user_name if doc.get("user") == ctx.user_id else None},
        "company": {"id": doc.get("company"), "name": doc.get("company")},
        "ip": doc.get("ip"),
        "register_time": doc.get("register_time"),
        "last_activity_time": doc.get("last_activity_time"),
        "last_report_time": doc.get("last_report_time"),
        "queues": [_queue_entry(ctx, q) for q in doc.get("queues") or []],
        "tags": doc.get("tags") or [],
        "system_tags": doc.get("system_tags") or [],
    }
    task_id = doc.get("task")
    task = ctx.store.get("task", task_id) if task_id else None
    if task is not None:
        started = _epoch(task.get("started"))
        out["task"] = {
            "id": task_id,
            "name": task.get("name"),
            "running_time": int((time.time() - started) * 1000) if started else 0,
            "last_iteration": task.get("last_iteration") or 0,
        }
        if task.get("project"):
            out["project"] = {"id": task["project"], "name": _name_of(ctx, "project", task["project"])}
    if doc.get("queue"):
        out["queue"] = _queue_entry(ctx, doc["queue"])
    return {k: v for k, v in out.items() if v is not None}


# -- endpoints -------------------------------------------------------------------------------
@endpoint("workers.register")
def register(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    worker_id = _worker_id(body)
    existing = ctx.store.get(KIND, worker_id)
    doc = _new_worker(ctx, worker_id, body)
    if existing is not None:
        # Re-registering keeps runtime properties (the agent re-registers after a server restart).
        doc["_runtime_properties"] = existing.get("_runtime_properties") or []
    ctx.store.put(KIND, worker_id, doc)
    return {}


@endpoint("workers.unregister")
def unregister(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    ctx.store.delete(KIND, _worker_id(body))
    return {}


@endpoint("workers.status_report")
def status_report(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    worker_id = _worker_id(body)
    require(body, "timestamp")
    doc = ctx.store.get(KIND, worker_id) or _new_worker(ctx, worker_id, body)
    now = now_iso()
    doc["last_activity_time"] = now
    doc["last_report_time"] = now
    if body.get("queues") is not None:
        doc["queues"] = _queue_ids(ctx, body.get("queues"))
    if body.get("tags") is not None:
        doc["tags"] = str_list(body["tags"], "tags")
    current_queue = _queue_ids(ctx, body.get("queue"))
    doc["queue"] = current_queue[0] if current_queue else None
    task_id = body.get("task") or None
    doc["task"] = task_id
    if isinstance(body.get("machine_stats"), dict):
        doc["_machine_stats"] = body["machine_stats"]
    with ctx.store.transaction():
        ctx.store.put(KIND, worker_id, doc)
        task = ctx.store.get("task", task_id) if task_id else None
        if task is not None:
            task["last_worker"] = worker_id
            task["last_worker_report"] = now
            ctx.store.put("task", task["id"], task)
    return {}


@endpoint("workers.get_all")
def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    last_seen = None if body.get("last_seen") is None else as_int(body["last_seen"], "last_seen", minimum=0)
    str_list(body.get("tags"), "tags")
    str_list(body.get("system_tags"), "system_tags")
    now = time.time()
    out = []
    for doc in live_workers(ctx):
        if last_seen is not None and now - _epoch(doc.get("last_activity_time")) > float(last_seen):
            continue
        if not match_tags(doc.get("tags") or [], body.get("tags")):
            continue
        if not match_tags(doc.get("system_tags") or [], body.get("system_tags"), "system_tags"):
            continue
        out.append(_public(ctx, doc))
    return {"workers": out}


def _registered(ctx: Ctx, worker_id: str) -> Doc:
    doc = ctx.store.get(KIND, worker_id)
    if doc is None:
        raise ApiError(f"Worker is not registered: worker={worker_id}", subcode=SUB_WORKER_NOT_REGISTERED)
    return doc


@endpoint("workers.get_runtime_properties")
def get_runtime_properties(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = _registered(ctx, _worker_id(body))
    now = time.time()
    props = [p for p in doc.get("_runtime_properties") or [] if not p.get("_expires") or p["_expires"] > now]
    return {"runtime_properties": [{k: v for k, v in p.items() if not k.startswith("_")} for p in props]}


@endpoint("workers.set_runtime_properties")
def set_runtime_properties(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = _registered(ctx, _worker_id(body))
    items = body.get("runtime_properties")
    if not isinstance(items, list):
        raise ApiError("Validation error: 'runtime_properties' must be a list of {key, value}",
                       subcode=Sub.VALIDATION)
    props = {p["key"]: p for p in doc.get("_runtime_properties") or []}
    for item in items:
        if not isinstance(item, dict) or not item.get("key"):
            raise ApiError("Validation error: every runtime property needs a 'key'", subcode=Sub.VALIDATION)
        value = "" if item.get("value") is None else str(item["value"])
        prop: Doc = {"key": str(item["key"]), "value": value}
        if item.get("expiry"):
            prop["expiry"] = as_int(item["expiry"], "expiry")
            prop["_expires"] = time.time() + prop["expiry"]
        props[prop["key"]] = prop
    doc["_runtime_properties"] = list(props.values())
    ctx.store.put(KIND, doc["id"], doc)
    return {"added": [p["key"] for p in items], "removed": [], "errors": []}


@endpoint("workers.get_metric_keys")
def get_metric_keys(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"categories": []}


@endpoint("workers.get_stats")
def get_stats(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """No metric history is kept; answers the shape with no samples."""
    return {"workers": []}


@endpoint("workers.get_activity_report")
def get_activity_report(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """One sample, now: how many workers are alive and how many of them run a task."""
    alive = live_workers(ctx)
    now = int(time.time())
    return {
        "total": {"dates": [now], "counts": [len(alive)]},
        "active": {"dates": [now], "counts": [sum(1 for w in alive if w.get("task"))]},
    }
