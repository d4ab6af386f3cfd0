"""queues.*: named FIFO queues of task ids that agents poll with `queues.get_next_task`.

A queue document keeps its ordered `entries` ([{task, added}]); enqueueing and dequeueing a task
(tasks.enqueue / tasks.dequeue) maintain both the entry and the task's status, while the raw
`queues.add_task`/`remove_task` touch the entries only, as in clearml-server. `queues.get_by_id`
only accepts ids: the SDK first tries a queue *name* there and relies on the failure to fall back
to a lookup by name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from clearml_standin.api import ApiError, Ctx, Sub, endpoint
from clearml_standin.services import common
from clearml_standin.services.common import (
    Doc,
    as_int,
    as_list,
    check_query,
    match_regex,
    match_tags,
    new_id,
    now_iso,
    order_and_page,
    project_fields,
    require,
    str_list,
)

KIND = "queue"
TASK_KIND = "task"
DEFAULT_TAG = "default"

# clearml-server's subcodes for queue errors (clients only display them).
SUB_NOT_EMPTY = 702
SUB_NO_DEFAULT = 704
SUB_TASK_NOT_QUEUED = 705


def get_queue(ctx: Ctx, queue_id: Any) -> Doc:
    if not isinstance(queue_id, str) or not queue_id:
        raise ApiError(f"Invalid queue id: id={queue_id!r}", subcode=Sub.INVALID_QUEUE_ID)
    doc = ctx.store.get(KIND, queue_id)
    if doc is None:
        raise ApiError(f"Invalid queue id: id={queue_id}", subcode=Sub.INVALID_QUEUE_ID)
    return doc


def find_by_name(ctx: Ctx, name: str) -> Doc | None:
    return common.find_by_name(ctx, KIND, name)


def _new_queue(ctx: Ctx, name: str, tags: Any = None, system_tags: Any = None) -> Doc:
    doc: Doc = {
        "id": new_id(),
        "name": name,
        "user": ctx.user_id,
        "company": ctx.company,
        "created": now_iso(),
        "last_update": now_iso(),
        "tags": str_list(tags, "tags"),
        "system_tags": str_list(system_tags, "system_tags"),
        "entries": [],
        "metadata": {},
    }
    ctx.store.put(KIND, doc["id"], doc)
    return doc


def ensure_queue(ctx: Ctx, name: str) -> Doc:
    """The queue of that name, created on demand (tasks.enqueue with `queue_name` does this)."""
    return find_by_name(ctx, name) or _new_queue(ctx, name)


def default_queue(ctx: Ctx) -> Doc:
    tagged = [d for d in ctx.store.iter_raw(KIND) if DEFAULT_TAG in (d.get("system_tags") or [])]
    named = [d for d in ctx.store.iter_raw(KIND) if d.get("name") == DEFAULT_TAG]
    found = tagged or named
    if not found:
        raise ApiError("Default queue not found (no queue has the 'default' system tag)",
                       subcode=SUB_NO_DEFAULT)
    return dict(found[0])


def add_entry(ctx: Ctx, queue: Doc, task_id: str) -> bool:
    """Append the task to the queue unless it is already there; True if it was added."""
    entries = queue.setdefault("entries", [])
    if any(e.get("task") == task_id for e in entries):
        return False
    entries.append({"task": task_id, "added": now_iso()})
    queue["last_update"] = now_iso()
    ctx.store.put(KIND, queue["id"], queue)
    return True


def remove_entry(ctx: Ctx, queue_id: str | None, task_id: str) -> int:
    """Drop the task's entries from one queue (or from every queue when queue_id is None)."""
    removed = 0
    targets = [ctx.store.get(KIND, queue_id)] if queue_id else ctx.store.all(KIND)
    for queue in targets:
        if queue is None:
            continue
        entries = queue.get("entries") or []
        kept = [e for e in entries if e.get("task") != task_id]
        if len(kept) != len(entries):
            removed += len(entries) - len(kept)
            queue["entries"] = kept
            queue["last_update"] = now_iso()
            ctx.store.put(KIND, queue["id"], queue)
    return removed


def watched(ctx: Ctx, queue_id: str) -> bool:
    """Whether some live worker listens on the queue (tasks.enqueue's `verify_watched_queue`)."""
    from clearml_standin.services import workers

    return any(queue_id in (w.get("queues") or []) for w in workers.live_workers(ctx))


def _public(doc: Doc, max_entries: Any = None) -> Doc:
    out = {k: v for k, v in doc.items() if not k.startswith("_")}
    if max_entries is not None:
        out["entries"] = list(out.get("entries") or [])[: max(as_int(max_entries, "max_task_entries"), 0)]
    return out


# -- endpoints -------------------------------------------------------------------------------
@endpoint("queues.create")
def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    name = str(require(body, "name")).strip()
    if not name:
        raise ApiError("Queue name must not be empty", subcode=Sub.VALIDATION)
    if find_by_name(ctx, name) is not None:
        raise ApiError(f"Queue with this name already exists: name={name}", subcode=Sub.QUEUE_EXISTS)
    return {"id": _new_queue(ctx, name, body.get("tags"), body.get("system_tags"))["id"]}


@endpoint("queues.get_by_id")
def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"queue": _public(get_queue(ctx, require(body, "queue")), body.get("max_task_entries"))}


@endpoint("queues.get_all", "queues.get_all_ex")
def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    check_query(body)
    ids = set(as_list(body.get("id")))
    search = str(body.get("search_text") or "").lower()
    out = []
    for doc in ctx.store.iter_raw(KIND):
        if ids and doc["id"] not in ids:
            continue
        if not match_regex(doc.get("name"), body.get("name")):
            continue
        if not match_tags(doc.get("tags") or [], body.get("tags")):
            continue
        if not match_tags(doc.get("system_tags") or [], body.get("system_tags"), "system_tags"):
            continue
        if search and search not in str(doc.get("name", "")).lower() and search not in doc["id"]:
            continue
        out.append(_public(doc, body.get("max_task_entries")))
    out = order_and_page(out, body)
    return {"queues": [project_fields(d, body.get("only_fields")) for d in out]}


@endpoint("queues.get_default")
def get_default(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = default_queue(ctx)
    return {"id": doc["id"], "name": doc["name"]}


@endpoint("queues.update")
def update(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_queue(ctx, require(body, "queue"))
    fields: Doc = {}
    if body.get("name") is not None:
        name = str(body["name"]).strip()
        other = find_by_name(ctx, name)
        if other is not None and other["id"] != doc["id"]:
            raise ApiError(f"Queue with this name already exists: name={name}", subcode=Sub.QUEUE_EXISTS)
        fields["name"] = name
    for key in ("tags", "system_tags"):
        if body.get(key) is not None:
            fields[key] = str_list(body[key], key)
    doc.update(fields)
    doc["last_update"] = now_iso()
    ctx.store.put(KIND, doc["id"], doc)
    return {"updated": 1, "fields": fields}


@endpoint("queues.delete")
def delete(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_queue(ctx, require(body, "queue"))
    entries = doc.get("entries") or []
    if entries and not body.get("force"):
        raise ApiError(f"Queue is not empty: id={doc['id']} ({len(entries)} queued tasks); use force",
                       subcode=SUB_NOT_EMPTY)
    with ctx.store.transaction():
        for entry in entries:
            _unqueue_task(ctx, str(entry.get("task")))
        ctx.store.delete(KIND, doc["id"])
    return {"deleted": 1}


def _unqueue_task(ctx: Ctx, task_id: str) -> None:
    """A force-deleted queue leaves its tasks back where they were before being enqueued."""
    task = ctx.store.get(TASK_KIND, task_id)
    if task is None or task.get("status") != "queued":
        return
    now = now_iso()
    task["status"] = task.pop("_enqueue_status", None) or "created"
    task.update(status_changed=now, last_update=now, last_change=now,
                status_reason="queue deleted", status_message="")
    (task.get("execution") or {}).pop("queue", None)
    ctx.store.put(TASK_KIND, task_id, task)


@endpoint("queues.add_task")
def add_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue = get_queue(ctx, require(body, "queue"))
    task_id = str(require(body, "task"))
    if ctx.store.get(TASK_KIND, task_id) is None:
        raise ApiError(f"Invalid task id: id={task_id}", subcode=Sub.INVALID_TASK_ID)
    return {"added": int(add_entry(ctx, queue, task_id))}


@endpoint("queues.remove_task")
def remove_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue = get_queue(ctx, require(body, "queue"))
    return {"removed": remove_entry(ctx, queue["id"], str(require(body, "task")))}


@endpoint("queues.get_next_task")
def get_next_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Pop the first entry whose task is still queued; stale entries are dropped on the way."""
    queue = get_queue(ctx, require(body, "queue"))
    entries = list(queue.get("entries") or [])
    with ctx.store.transaction():
        while entries:
            entry = entries.pop(0)
            task = ctx.store.get(TASK_KIND, str(entry.get("task")))
            if task is None or task.get("status") != "queued":
                continue
            queue["entries"] = entries
            queue["last_update"] = now_iso()
            ctx.store.put(KIND, queue["id"], queue)
            # Remember which queue handed the task out, so workers.status_report can show it.
            task["_pulled_from"] = queue["id"]
            task["last_update"] = now_iso()
            ctx.store.put(TASK_KIND, task["id"], task)
            out: Doc = {"entry": {"task": task["id"], "added": entry.get("added")}}
            if body.get("get_task_info"):
                out["task_info"] = {"company": task.get("company"), "user": task.get("user")}
            return out
        if queue.get("entries"):
            queue["entries"] = []
            ctx.store.put(KIND, queue["id"], queue)
    return {}


@endpoint("queues.peek_task")
def peek_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    entries = get_queue(ctx, require(body, "queue")).get("entries") or []
    return {"task": entries[0]["task"]} if entries else {}


@endpoint("queues.get_num_entries")
def get_num_entries(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"num": len(get_queue(ctx, require(body, "queue")).get("entries") or [])}


def _move(ctx: Ctx, body: dict[str, Any], where: str) -> dict[str, Any]:
    queue = get_queue(ctx, require(body, "queue"))
    task_id = str(require(body, "task"))
    entries = list(queue.get("entries") or [])
    index = next((i for i, e in enumerate(entries) if e.get("task") == task_id), None)
    if index is None:
        raise ApiError(f"Task not queued in queue: task={task_id} queue={queue['id']}",
                       subcode=SUB_TASK_NOT_QUEUED)
    entry = entries.pop(index)
    count = as_int(body.get("count") or 1, "count", minimum=1)
    target = {"front": 0, "back": len(entries), "forward": max(index - count, 0),
              "backward": min(index + count, len(entries))}[where]
    entries.insert(target, entry)
    queue["entries"] = entries
    ctx.store.put(KIND, queue["id"], queue)
    return {"position": target}


@endpoint("queues.move_task_forward")
def move_task_forward(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _move(ctx, body, "forward")


@endpoint("queues.move_task_backward")
def move_task_backward(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _move(ctx, body, "backward")


@endpoint("queues.move_task_to_front")
def move_task_to_front(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _move(ctx, body, "front")


@endpoint("queues.move_task_to_back")
def move_task_to_back(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _move(ctx, body, "back")


@endpoint("queues.get_queue_metrics")
def get_queue_metrics(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """No history is kept: one sample per queue, now, with the current length and oldest wait."""
    ids = set(as_list(body.get("queue_ids")))
    now = datetime.now(UTC)
    out = []
    for doc in ctx.store.iter_raw(KIND):
        if ids and doc["id"] not in ids:
            continue
        entries = doc.get("entries") or []
        added = [datetime.fromisoformat(e["added"]) for e in entries if e.get("added")]
        waits = [(now - a).total_seconds() for a in added]
        out.append({
            "queue": doc["id"],
            "dates": [int(now.timestamp())],
            "avg_waiting_times": [sum(waits) / len(waits) if waits else 0.0],
            "queue_lengths": [len(entries)],
        })
    return {"queues": out}


@endpoint("queues.add_or_update_metadata")
def add_or_update_metadata(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue = get_queue(ctx, require(body, "queue"))
    items = body.get("metadata")
    if not isinstance(items, list):
        raise ApiError("Validation error: 'metadata' must be a list of {key, type, value}",
                       subcode=Sub.VALIDATION)
    metadata = {} if body.get("replace_metadata") else dict(queue.get("metadata") or {})
    for item in items:
        if not isinstance(item, dict) or not item.get("key"):
            raise ApiError("Validation error: every metadata item needs a 'key'", subcode=Sub.VALIDATION)
        metadata[str(item["key"])] = {k: item.get(k) for k in ("key", "type", "value") if k in item}
    queue["metadata"] = metadata
    ctx.store.put(KIND, queue["id"], queue)
    return {"updated": 1}


@endpoint("queues.delete_metadata")
def delete_metadata(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue = get_queue(ctx, require(body, "queue"))
    metadata = dict(queue.get("metadata") or {})
    for key in as_list(body.get("keys")):
        metadata.pop(str(key), None)
    queue["metadata"] = metadata
    ctx.store.put(KIND, queue["id"], queue)
    return {"updated": 1}
