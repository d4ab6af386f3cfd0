"""models.*: registered model weights (the URI of a file, usually on the file server) and their metadata.

Documents have the shape of the v2_23 `Model` service model. Links between tasks and models live on
the task (`models.input` / `models.output`, lists of `{name, model, updated}`); the SDK maintains
them with `tasks.add_or_update_model`, and this module keeps them consistent where clearml-server
does too: `update_for_task` registers the output model, and deleting a model drops the references.
"""

from __future__ import annotations

import re
from typing import Any

from clearml_standin.api import ApiError, Ctx, Sub, endpoint
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
from clearml_standin.services.projects import ensure_project, get_project

KIND = "model"
ARCHIVED = "archived"

# Fields a caller may set with create/edit/update (everything else is maintained here).
_EDITABLE = (
    "name", "comment", "tags", "system_tags", "framework", "design", "labels", "uri", "ready",
    "parent", "project", "task", "ui_cache",
)
# Top-level request keys of models.get_all that are not "field == value" filters.
_QUERY_KEYS = frozenset({
    "id", "name", "user", "ready", "tags", "system_tags", "only_fields", "page", "page_size", "project",
    "order_by", "task", "search_text", "framework", "uri", "last_update", "_all_", "_any_", "scroll_id",
    "refresh_scroll", "size", "include_subprojects", "allow_public", "search_hidden",
})


def get_model(ctx: Ctx, model_id: str) -> Doc:
    doc = ctx.store.get(KIND, model_id)
    if doc is None:
        raise ApiError(f"Invalid model id: id={model_id}", subcode=Sub.INVALID_MODEL_ID)
    return doc


def _task(ctx: Ctx, task_id: str) -> Doc:
    doc = ctx.store.get("task", task_id)
    if doc is None:
        raise ApiError(f"Invalid task id: id={task_id}", subcode=Sub.INVALID_TASK_ID)
    return doc


def _metadata(items: Any) -> dict[str, Doc]:
    """The request's list of {key, type, value} -> the stored mapping keyed by `key`."""
    out: dict[str, Doc] = {}
    for item in as_list(items):
        if not isinstance(item, dict) or not item.get("key"):
            raise ApiError("Invalid metadata item: 'key' is required", subcode=Sub.VALIDATION)
        key = str(item["key"])
        out[key] = {"key": key, "type": item.get("type"), "value": item.get("value")}
    return out


def _check_refs(ctx: Ctx, fields: Doc) -> None:
    for key in ("tags", "system_tags"):
        if key in fields:
            fields[key] = str_list(fields[key], key)
    if fields.get("task"):
        _task(ctx, str(fields["task"]))
    if fields.get("project"):
        get_project(ctx, str(fields["project"]))
    if fields.get("parent"):
        get_model(ctx, str(fields["parent"]))
    labels = fields.get("labels")
    if labels is not None and not _valid_labels(labels):
        raise ApiError("Invalid labels: expected a mapping of label name to integer id",
                       subcode=Sub.VALIDATION)


def _valid_labels(labels: Any) -> bool:
    return isinstance(labels, dict) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels.values()
    )


def _bump_task_iteration(ctx: Ctx, task_id: str | None, iteration: Any) -> None:
    """A model saved at an iteration moves its task's `last_iteration` forward (never back)."""
    if not task_id or not isinstance(iteration, int) or isinstance(iteration, bool):
        return
    task = ctx.store.get("task", task_id)
    if task is None:
        return
    if task.get("last_iteration") is None or iteration > task["last_iteration"]:
        task["last_iteration"] = iteration
        task["last_update"] = now_iso()
        ctx.store.put("task", task_id, task)


def new_model(ctx: Ctx, body: Doc) -> Doc:
    fields = {k: body[k] for k in _EDITABLE if body.get(k) is not None}
    _check_refs(ctx, fields)
    if not fields.get("project") and fields.get("task"):
        # a model created by a task lives in the task's project unless told otherwise
        fields["project"] = _task(ctx, str(fields["task"])).get("project")
    now = now_iso()
    doc: Doc = {
        "id": new_id(),
        "name": "",
        "comment": "",
        "company": ctx.company,
        "user": ctx.user_id,
        "created": now,
        "last_update": now,
        "tags": [],
        "system_tags": [],
        "framework": None,
        "design": {},
        "labels": {},
        "uri": None,
        "ready": False,
        "ui_cache": {},
        "metadata": _metadata(body.get("metadata")),
        **fields,
    }
    if body.get("iteration") is not None:
        doc["last_iteration"] = as_int(body["iteration"], "iteration")
    return doc


# -- create / read -------------------------------------------------------------------------------
@endpoint("models.create")
def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    require(body, "name")
    if body.get("uri") is None:
        raise ApiError("Validation error: missing required field 'uri'", subcode=Sub.VALIDATION)
    doc = new_model(ctx, body)
    ctx.store.put(KIND, doc["id"], doc)
    return {"id": doc["id"], "created": True}


@endpoint("models.get_by_id")
def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"model": get_model(ctx, str(require(body, "model")))}


@endpoint("models.get_by_task_id")
def get_by_task_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """The task's (last registered) output model."""
    task = _task(ctx, str(require(body, "task")))
    outputs = (task.get("models") or {}).get("output") or []
    model_id = outputs[-1].get("model") if outputs else None
    if not model_id:
        candidates = [m for m in ctx.store.iter_raw(KIND) if m.get("task") == task["id"]]
        if not candidates:
            raise ApiError(f"No output model for task: id={task['id']}", subcode=Sub.INVALID_MODEL_ID)
        model_id = max(candidates, key=lambda m: str(m.get("created") or ""))["id"]
    return {"model": get_model(ctx, str(model_id))}


def _matches_pattern(doc: Doc, spec: Any, combine: Any) -> bool:
    if not isinstance(spec, dict) or not spec.get("pattern"):
        return True
    fields = as_list(spec.get("fields")) or ["name"]
    return bool(combine(match_regex(_dotted(doc, f), spec["pattern"], "pattern") for f in fields))


def _dotted(doc: Doc, path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _match_last_update(value: Any, constraints: Any) -> bool:
    """`last_update` filters: ISO strings with an optional >, >=, <, <= prefix (all must hold)."""
    for raw in as_list(constraints):
        match = re.match(r"^(>=|>|<=|<)?(.*)$", str(raw), flags=re.DOTALL)
        op = (match.group(1) if match else None) or ">="
        bound = match.group(2) if match else str(raw)
        current = str(value or "")
        ok = {">": current > bound, ">=": current >= bound, "<": current < bound, "<=": current <= bound}[op]
        if not ok:
            return False
    return True


def _matches(doc: Doc, body: Doc, ids: set[str]) -> bool:
    checks = (
        not ids or doc["id"] in ids,
        match_regex(doc.get("name"), body.get("name")),
        match_tags(doc.get("tags", []), body.get("tags")),
        match_tags(doc.get("system_tags", []), body.get("system_tags"), "system_tags"),
        body.get("ready") is None or bool(doc.get("ready")) == bool(body["ready"]),
        match_values(doc.get("project"), body.get("project")),
        match_values(doc.get("task"), body.get("task")),
        match_values(doc.get("user"), body.get("user")),
        match_values(doc.get("framework"), body.get("framework")),
        match_values(doc.get("uri"), body.get("uri")),
        _match_last_update(doc.get("last_update"), body.get("last_update")),
        _matches_pattern(doc, body.get("_all_"), all),
        _matches_pattern(doc, body.get("_any_"), any),
    )
    if not all(checks):
        return False
    text = body.get("search_text")
    if text and not any(str(text).lower() in str(doc.get(f) or "").lower()
                        for f in ("name", "comment", "id")):
        return False
    # Anything else dotted is an equality filter, e.g. Model.query_models' `metadata.<key>.value`.
    return all(
        match_values(_dotted(doc, key), wanted)
        for key, wanted in body.items()
        if key not in _QUERY_KEYS and "." in key
    )


@endpoint("models.get_all", "models.get_all_ex")
def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    check_query(body)
    ids = {str(i) for i in as_list(body.get("id"))}
    found = [dict(doc) for doc in ctx.store.iter_raw(KIND) if _matches(doc, body, ids)]
    if body.get("size") is not None and body.get("page_size") is None:
        body = {**body, "page_size": body["size"]}
    found = order_and_page(found, body)
    return {"models": [project_fields(d, body.get("only_fields")) for d in found]}


@endpoint("models.get_frameworks")
def get_frameworks(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    projects = as_list(body.get("projects"))
    frameworks = {
        str(m["framework"]) for m in ctx.store.iter_raw(KIND)
        if m.get("framework") and (not projects or m.get("project") in projects)
    }
    return {"frameworks": sorted(frameworks)}


# -- change ----------------------------------------------------------------------------------
def _apply(ctx: Ctx, doc: Doc, body: Doc, allowed: tuple[str, ...]) -> Doc:
    """Set the given fields (ignoring nulls as the SDK sends them for 'unchanged'); return them."""
    fields = {k: body[k] for k in allowed if k in body and body[k] is not None}
    _check_refs(ctx, fields)
    if "metadata" in body and body["metadata"] is not None:
        fields["metadata"] = _metadata(body["metadata"])
    if body.get("iteration") is not None:
        fields["last_iteration"] = as_int(body["iteration"], "iteration")
    doc.update(fields)
    doc["last_update"] = now_iso()
    ctx.store.put(KIND, doc["id"], doc)
    _bump_task_iteration(ctx, doc.get("task"), body.get("iteration"))
    return fields


@endpoint("models.edit")
def edit(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_model(ctx, str(require(body, "model")))
    fields = _apply(ctx, doc, body, _EDITABLE)
    return {"updated": 1, "fields": fields}


@endpoint("models.update")
def update(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_model(ctx, str(require(body, "model")))
    fields = _apply(ctx, doc, body, ("name", "comment", "tags", "system_tags", "ready", "created",
                                     "ui_cache", "project", "task"))
    return {"updated": 1, "fields": fields}


def link_output(ctx: Ctx, task: Doc, model_id: str, name: str | None) -> None:
    """Put (or move) a model into the task's `models.output`, keyed by its name there."""
    models = task.setdefault("models", {})
    outputs = [m for m in (models.get("output") or []) if m.get("model") != model_id]
    entry_name = name or "Output Model"
    outputs = [m for m in outputs if m.get("name") != entry_name]
    outputs.append({"name": entry_name, "model": model_id, "updated": now_iso()})
    models["output"] = outputs
    models.setdefault("input", [])
    task["last_update"] = now_iso()
    ctx.store.put("task", task["id"], task)


@endpoint("models.update_for_task")
def update_for_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Register a task's output model: create it from `uri`, or adopt `override_model_id`."""
    task = _task(ctx, str(require(body, "task")))
    if task.get("status") == "published":
        raise ApiError(f"Task is published and cannot be changed: id={task['id']}",
                       subcode=Sub.TASK_PUBLISHED)
    override = body.get("override_model_id")
    if override and body.get("uri"):
        raise ApiError("Only one of 'uri' and 'override_model_id' may be given", subcode=Sub.VALIDATION)
    with ctx.store.transaction():
        if override:
            doc = get_model(ctx, str(override))
            created = False
            fields = _apply(ctx, doc, {**body, "task": task["id"]},
                            ("name", "comment", "tags", "system_tags", "task"))
        elif body.get("uri"):
            doc = new_model(ctx, {"name": body.get("name") or task.get("name") or "Output Model",
                                  "project": task.get("project"), **body, "task": task["id"]})
            ctx.store.put(KIND, doc["id"], doc)
            created, fields = True, {k: doc.get(k) for k in ("name", "uri", "task")}
        else:
            raise ApiError("Either 'uri' or 'override_model_id' is required", subcode=Sub.VALIDATION)
        link_output(ctx, _task(ctx, task["id"]), doc["id"], body.get("name") or doc.get("name"))
        _bump_task_iteration(ctx, task["id"], body.get("iteration"))
    return {"id": doc["id"], "created": created, "updated": 0 if created else 1, "fields": fields}


@endpoint("models.set_ready")
def set_ready(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_model(ctx, str(require(body, "model")))
    with ctx.store.transaction():
        updated = 0 if doc.get("ready") else 1
        doc["ready"] = True
        doc["last_update"] = now_iso()
        ctx.store.put(KIND, doc["id"], doc)
        published = _publish_task(ctx, doc, bool(body.get("publish_task", True)),
                                  bool(body.get("force_publish_task")))
    out: Doc = {"updated": updated}
    if published is not None:
        out["published_task"] = published
    return out


def _publish_task(ctx: Ctx, model: Doc, publish: bool, force: bool) -> Doc | None:
    """Publishing a model publishes its creating task too when that task has finished (or when forced)."""
    if not publish or not model.get("task"):
        return None
    task = ctx.store.get("task", model["task"])
    if task is None or task.get("status") == "published":
        return None
    if task.get("status") not in ("stopped", "completed") and not force:
        return None
    now = now_iso()
    fields = {"status": "published", "published": now, "status_changed": now, "last_update": now,
              "status_reason": "model published", "status_message": ""}
    task.update(fields)
    ctx.store.put("task", task["id"], task)
    return {"id": task["id"], "data": {"updated": 1, "fields": fields}}


@endpoint("models.publish_many")
def publish_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    def one(doc: Doc) -> Doc:
        doc["ready"] = True
        doc["last_update"] = now_iso()
        ctx.store.put(KIND, doc["id"], doc)
        published = _publish_task(ctx, doc, bool(body.get("publish_tasks", True)),
                                  bool(body.get("force_publish_task")))
        return {"updated": 1, **({"published_task": published} if published else {})}

    return _many(ctx, body, one)


def _many(ctx: Ctx, body: Doc, action: Any) -> Doc:
    succeeded, failed = [], []
    for model_id in [str(i) for i in as_list(require(body, "ids"))]:
        try:
            with ctx.store.transaction():
                result = action(get_model(ctx, model_id))
            succeeded.append({"id": model_id, **result})
        except ApiError as err:
            error = {"codes": [err.code, err.subcode], "msg": err.msg, "data": {}}
            failed.append({"id": model_id, "error": error})
    return {"succeeded": succeeded, "failed": failed}


def _set_archived(ctx: Ctx, doc: Doc, archived: bool) -> bool:
    tags = list(doc.get("system_tags") or [])
    if (ARCHIVED in tags) == archived:
        return False
    doc["system_tags"] = [*tags, ARCHIVED] if archived else [t for t in tags if t != ARCHIVED]
    doc["last_update"] = now_iso()
    ctx.store.put(KIND, doc["id"], doc)
    return True


@endpoint("models.archive_many")
def archive_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _many(ctx, body, lambda doc: {"archived": _set_archived(ctx, doc, True)})


@endpoint("models.unarchive_many")
def unarchive_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _many(ctx, body, lambda doc: {"unarchived": _set_archived(ctx, doc, False)})


@endpoint("models.archive")
def archive(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    _set_archived(ctx, get_model(ctx, str(require(body, "model"))), True)
    return {"archived": 1}


def _delete(ctx: Ctx, doc: Doc, force: bool) -> Doc:
    users = _tasks_using(ctx, doc["id"])
    others = [t for t in users if t["id"] != doc.get("task")]
    if others and doc.get("ready") and not force:
        raise ApiError(f"Model is used as input by {len(others)} task(s); use force to delete it: "
                       f"id={doc['id']}", subcode=202)
    for task in users:
        _unlink(ctx, task, doc["id"])
    ctx.store.delete(KIND, doc["id"])
    ctx.store.delete_events(doc["id"])
    return {"deleted": True, "url": doc.get("uri")}


def _tasks_using(ctx: Ctx, model_id: str) -> list[Doc]:
    out = []
    for task in ctx.store.iter_raw("task"):
        models = task.get("models") or {}
        if any(m.get("model") == model_id for key in ("input", "output") for m in models.get(key) or []):
            out.append(dict(task))
    return out


def _unlink(ctx: Ctx, task: Doc, model_id: str) -> None:
    task = ctx.store.get("task", task["id"]) or task
    models = task.get("models") or {}
    for key in ("input", "output"):
        models[key] = [m for m in models.get(key) or [] if m.get("model") != model_id]
    task["models"] = models
    ctx.store.put("task", task["id"], task)


@endpoint("models.delete")
def delete(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_model(ctx, str(require(body, "model")))
    with ctx.store.transaction():
        return _delete(ctx, doc, bool(body.get("force")))


@endpoint("models.delete_many")
def delete_many(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _many(ctx, body, lambda doc: _delete(ctx, doc, bool(body.get("force"))))


@endpoint("models.move")
def move(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    ids = [str(i) for i in as_list(require(body, "ids"))]
    if body.get("project"):
        project_id = get_project(ctx, str(body["project"]))["id"]
    elif body.get("project_name"):
        project_id = ensure_project(ctx, str(body["project_name"]))["id"]
    else:
        raise ApiError("Either 'project' or 'project_name' is required", subcode=Sub.VALIDATION)
    with ctx.store.transaction():
        for model_id in ids:
            doc = get_model(ctx, model_id)
            doc["project"] = project_id
            doc["last_update"] = now_iso()
            ctx.store.put(KIND, model_id, doc)
    return {"project_id": project_id}


@endpoint("models.make_public", "models.make_private")
def make_public(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    # one company and no shared examples here: nothing to change, but the ids must exist
    ids = [str(i) for i in as_list(body.get("ids"))]
    for model_id in ids:
        get_model(ctx, model_id)
    return {"updated": len(ids)}


# -- metadata --------------------------------------------------------------------------------
@endpoint("models.add_or_update_metadata")
def add_or_update_metadata(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_model(ctx, str(require(body, "model")))
    items = _metadata(require(body, "metadata"))
    current = {} if body.get("replace_metadata") else dict(doc.get("metadata") or {})
    current.update(items)
    doc["metadata"] = current
    doc["last_update"] = now_iso()
    ctx.store.put(KIND, doc["id"], doc)
    return {"updated": 1}


@endpoint("models.delete_metadata")
def delete_metadata(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_model(ctx, str(require(body, "model")))
    keys = {str(k) for k in as_list(require(body, "keys"))}
    current = dict(doc.get("metadata") or {})
    removed = [k for k in keys if current.pop(k, None) is not None]
    doc["metadata"] = current
    doc["last_update"] = now_iso()
    ctx.store.put(KIND, doc["id"], doc)
    return {"updated": 1 if removed else 0}
