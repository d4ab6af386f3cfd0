"""events.*: scalars, single values, plots, debug images, vectors and console logs of tasks and models.

Events are appended to the store's event log. Scalar reports also maintain what clearml-server
keeps on the task document itself (`last_metrics`, `last_iteration`, `last_update`), because
`Task.get_last_scalar_metrics()` and the web UI read those instead of the events.

Re-reporting a scalar (or plot, image, vector) for the same metric, variant and iteration replaces
the earlier value in every read, as clearml-server's deterministic event ids make it do. Single
values are scalars reported at iteration -2**31 (`Logger.report_single_value` sends them as
metric "Summary"); they are kept out of scalar histograms and the task's `last_iteration`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from clearml_standin.api import ApiError, Ctx, Sub, endpoint
from clearml_standin.services.common import Doc, as_int, as_list, now_iso, require

SCALAR = "training_stats_scalar"
VECTOR = "training_stats_vector"
IMAGE = "training_debug_image"
PLOT = "plot"
LOG = "log"
EVENT_TYPES = frozenset({SCALAR, VECTOR, IMAGE, PLOT, LOG})
METRIC_TYPES = (SCALAR, VECTOR, IMAGE, PLOT)

SINGLE_VALUE_ITER = -(2**31)
DEFAULT_HISTOGRAM_SAMPLES = 6000
DEFAULT_BATCH_SIZE = 500
MAX_TOTAL = 10000  # clearml-server caps reported totals at 10000

_SCROLL_PREFIX = "standin-scroll-"


# -- ingestion -------------------------------------------------------------------------------
def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _owner_kind(raw: Doc) -> str:
    return "model" if raw.get("model_event") else "task"


def _normalize(raw: Any, now_ms: int) -> Doc:
    """Validate one reported event and fill in what clearml-server fills in (timestamps, defaults)."""
    if not isinstance(raw, dict):
        raise ApiError("Invalid event: expected a JSON object", subcode=Sub.VALIDATION)
    ev_type = raw.get("type")
    if ev_type not in EVENT_TYPES:
        raise ApiError(f"Invalid event type {ev_type!r}", subcode=Sub.VALIDATION)
    task = raw.get("task")
    if not isinstance(task, str) or not task:
        raise ApiError("Invalid event: missing required field 'task'", subcode=Sub.VALIDATION)
    ev: Doc = {k: v for k, v in raw.items() if k not in ("model_event", "allow_locked")}
    timestamp = raw.get("timestamp")
    ev["timestamp"] = int(timestamp) if isinstance(timestamp, (int, float)) and timestamp > 0 else now_ms
    ev["@timestamp"] = _iso(ev["timestamp"])
    if ev_type == LOG:
        ev["msg"] = str(raw.get("msg") or "")
        ev["level"] = str(raw.get("level") or "info").lower()
        ev.setdefault("metric", "")
        ev.setdefault("variant", "")
        return ev
    ev["metric"] = str(raw.get("metric") or "")
    ev["variant"] = str(raw.get("variant") or "")
    iteration = raw.get("iter")
    if iteration is not None and not isinstance(iteration, int):
        raise ApiError(f"Invalid event: 'iter' must be an integer, got {iteration!r}", subcode=Sub.VALIDATION)
    ev["iter"] = iteration if iteration is not None else 0
    if ev_type == SCALAR:
        ev["value"] = _finite(raw.get("value"), "value")
    elif ev_type == VECTOR:
        ev["values"] = [_finite(v, "values") for v in as_list(raw.get("values"))]
    elif ev_type == PLOT:
        ev["plot_str"] = str(raw.get("plot_str") or "")
        ev["plot_len"] = len(ev["plot_str"])
    return ev


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(f"Invalid event: '{name}' must be a finite number, got {value!r}",
                       subcode=Sub.VALIDATION)
    return value


def _check_owner(
    ctx: Ctx, kind: str, owner_id: str, allow_locked: bool, cache: dict[str, Doc | None]
) -> None:
    if owner_id not in cache:
        cache[owner_id] = ctx.store.get(kind, owner_id)
    doc = cache[owner_id]
    if doc is None:
        sub = Sub.INVALID_MODEL_ID if kind == "model" else Sub.INVALID_TASK_ID
        raise ApiError(f"Invalid {kind} id: {owner_id}", subcode=sub)
    locked = doc.get("ready") if kind == "model" else doc.get("status") == "published"
    if locked and not allow_locked:
        raise ApiError(f"Cannot add events to a published {kind}: {owner_id}", subcode=Sub.TASK_PUBLISHED)


def ingest(ctx: Ctx, raws: list[Any]) -> Doc:
    """Store the valid events of a batch; report the invalid ones the way add_batch does."""
    now_ms = _now_ms()
    good: list[Doc] = []
    errors: dict[str, int] = {}
    owners: dict[str, Doc | None] = {}
    for raw in raws:
        try:
            ev = _normalize(raw, now_ms)
            kind = _owner_kind(raw)
            _check_owner(ctx, kind, ev["task"], bool(raw.get("allow_locked")), owners)
        except ApiError as err:
            errors[err.msg] = errors.get(err.msg, 0) + 1
            continue
        if kind == "model":
            ev["model_event"] = True
        good.append(ev)
    with ctx.store.transaction():
        if good:
            ctx.store.add_events(good)
        _update_owners(ctx, good)
    return {"added": len(good), "errors": sum(errors.values()), "errors_info": errors}


# -- what the task document caches -------------------------------------------------------------
def metric_hash(name: str) -> str:
    """Key of a metric/variant in `last_metrics` (clearml-server keys them by an md5 of the name)."""
    return hashlib.md5(name.encode("utf-8")).hexdigest()


def _update_owners(ctx: Ctx, events: list[Doc]) -> None:
    by_owner: dict[tuple[str, str], list[Doc]] = {}
    for ev in events:
        if ev["type"] == LOG:
            continue
        kind = "model" if ev.get("model_event") else "task"
        by_owner.setdefault((kind, ev["task"]), []).append(ev)
    for (kind, owner_id), evs in by_owner.items():
        doc = ctx.store.get(kind, owner_id)
        if doc is None:
            continue
        if kind == "task":
            _apply_task_metrics(doc, evs)
        else:
            _apply_model_metrics(doc, evs)
        ctx.store.put(kind, owner_id, doc)


def _apply_task_metrics(doc: Doc, events: list[Doc]) -> None:
    last_metrics = doc.get("last_metrics") or {}
    last_iter = doc.get("last_iteration")
    for ev in events:
        if ev["iter"] != SINGLE_VALUE_ITER:
            last_iter = ev["iter"] if last_iter is None else max(last_iter, ev["iter"])
        if ev["type"] != SCALAR:
            continue
        variants = last_metrics.setdefault(metric_hash(ev["metric"]), {})
        entry = variants.setdefault(metric_hash(ev["variant"]), {"metric": ev["metric"],
                                                                 "variant": ev["variant"]})
        _fold_value(entry, ev["value"], ev["iter"])
    doc["last_metrics"] = last_metrics
    if last_iter is not None:
        doc["last_iteration"] = last_iter
    doc["last_update"] = now_iso()


def _apply_model_metrics(doc: Doc, events: list[Doc]) -> None:
    last_iter = doc.get("last_iteration")
    for ev in events:
        if ev["iter"] != SINGLE_VALUE_ITER:
            last_iter = ev["iter"] if last_iter is None else max(last_iter, ev["iter"])
    if last_iter is not None:
        doc["last_iteration"] = last_iter
    doc["last_update"] = now_iso()


def _fold_value(entry: Doc, value: float, iteration: int) -> None:
    """Running last/min/max of one variant, with the iterations min and max were reported at."""
    entry["value"] = value
    if entry.get("min_value") is None or value < entry["min_value"]:
        entry["min_value"] = value
        entry["min_value_iteration"] = iteration
    if entry.get("max_value") is None or value > entry["max_value"]:
        entry["max_value"] = value
        entry["max_value_iteration"] = iteration


# -- reading ---------------------------------------------------------------------------------
def _latest_per_point(events: Iterable[Doc]) -> list[Doc]:
    """Keep the last report of each (metric, variant, iter), in the order points were first seen."""
    points: dict[tuple[str, str, int], Doc] = {}
    for ev in events:
        points[(ev.get("metric", ""), ev.get("variant", ""), ev.get("iter", 0))] = ev
    return list(points.values())


def _metric_events(ctx: Ctx, owner: str, types: Iterable[str]) -> list[Doc]:
    return _latest_per_point(ctx.store.events(owner, list(types)))


def _wanted(metrics_filter: Any) -> dict[str, set[str] | None] | None:
    """[{metric, variants}] -> {metric: variants or None for all}; None when nothing is filtered."""
    items = [m for m in as_list(metrics_filter) if isinstance(m, dict) and m.get("metric")]
    if not items:
        return None
    out: dict[str, set[str] | None] = {}
    for item in items:
        variants = as_list(item.get("variants"))
        out[item["metric"]] = set(variants) if variants else None
    return out


def _selected(ev: Doc, wanted: dict[str, set[str] | None] | None) -> bool:
    if wanted is None:
        return True
    if ev.get("metric") not in wanted:
        return False
    variants = wanted[ev["metric"]]
    return variants is None or ev.get("variant") in variants


def _check_readable(ctx: Ctx, owner: str, model_events: bool) -> None:
    kind = "model" if model_events else "task"
    if ctx.store.get(kind, owner) is None:
        sub = Sub.INVALID_MODEL_ID if model_events else Sub.INVALID_TASK_ID
        raise ApiError(f"Invalid {kind} id: {owner}", subcode=sub)


def _x_value(ev: Doc, key: str) -> Any:
    if key == "timestamp":
        return ev["timestamp"]
    if key == "iso_time":
        return ev.get("@timestamp") or _iso(ev["timestamp"])
    return ev["iter"]


def _downsample(xs: list[Any], ys: list[float], samples: int) -> tuple[list[Any], list[float]]:
    """Average y over equal windows of points (x of each window's first point) when over the limit."""
    if samples <= 0 or len(xs) <= samples:
        return xs, ys
    window = math.ceil(len(xs) / samples)
    out_x: list[Any] = []
    out_y: list[float] = []
    for start in range(0, len(xs), window):
        chunk = ys[start : start + window]
        out_x.append(xs[start])
        out_y.append(sum(chunk) / len(chunk))
    return out_x, out_y


def scalar_histogram(events: list[Doc], key: str, samples: int, wanted: Any = None) -> Doc:
    """{metric: {variant: {"name", "x", "y"}}}, points ordered by the x axis."""
    selection = _wanted(wanted)
    series: dict[str, dict[str, list[Doc]]] = {}
    for ev in events:
        if ev.get("iter") == SINGLE_VALUE_ITER or not _selected(ev, selection):
            continue
        series.setdefault(ev["metric"], {}).setdefault(ev["variant"], []).append(ev)
    out: Doc = {}
    for metric, variants in series.items():
        for variant, evs in variants.items():
            by_time = key != "iter"
            evs.sort(key=lambda e: (e["timestamp"], e["iter"]) if by_time else (e["iter"], e["timestamp"]))
            xs, ys = _downsample([_x_value(e, key) for e in evs], [e["value"] for e in evs], samples)
            out.setdefault(metric, {})[variant] = {"name": variant, "x": xs, "y": ys}
    return out


def _scroll_offset(scroll_id: Any) -> int:
    if not scroll_id:
        return 0
    text = str(scroll_id)
    if not text.startswith(_SCROLL_PREFIX):
        raise ApiError(f"Invalid scroll id: {text}", subcode=Sub.VALIDATION)
    try:
        return max(0, int(text[len(_SCROLL_PREFIX):]))
    except ValueError as exc:
        raise ApiError(f"Invalid scroll id: {text}", subcode=Sub.VALIDATION) from exc


def _scroll_id(offset: int) -> str:
    return f"{_SCROLL_PREFIX}{offset}"


def _page(events: list[Doc], body: Doc, default_size: int = DEFAULT_BATCH_SIZE) -> Doc:
    """One scrolled page: events, returned, total and the scroll id of the next page."""
    offset = _scroll_offset(body.get("scroll_id"))
    size = as_int(body.get("batch_size") or default_size, "batch_size", minimum=1)
    chunk = events[offset : offset + size]
    return {
        "events": chunk,
        "returned": len(chunk),
        "total": min(len(events), MAX_TOTAL),
        "scroll_id": _scroll_id(offset + len(chunk)),
    }


def _by_time(events: list[Doc], order: str) -> list[Doc]:
    return sorted(events, key=lambda e: e.get("timestamp") or 0, reverse=order == "desc")


def _last_iterations(events: list[Doc], iters: int) -> list[tuple[int, list[Doc]]]:
    """Group events by iteration, latest first, keeping the `iters` latest iterations."""
    groups: dict[int, list[Doc]] = {}
    for ev in events:
        groups.setdefault(ev.get("iter", 0), []).append(ev)
    ordered = sorted(groups.items(), key=lambda kv: kv[0], reverse=True)
    return ordered[:iters] if iters > 0 else ordered


# -- endpoints: writing ----------------------------------------------------------------------
@endpoint("events.add")
def add(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    result = ingest(ctx, [body])
    if result["errors"]:
        msg = next(iter(result["errors_info"]))
        raise ApiError(msg, subcode=Sub.VALIDATION)
    return {}


@endpoint("events.add_batch")
def add_batch(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    # The SDK sends several JSON lines (parsed into "requests"); one line arrives as a plain object.
    raws = body["requests"] if isinstance(body.get("requests"), list) else [body]
    if not raws:
        raise ApiError("Batch request is empty", subcode=Sub.VALIDATION)
    return ingest(ctx, raws)


@endpoint("events.delete_for_task")
def delete_for_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = str(require(body, "task"))
    task = ctx.store.get("task", task_id)
    if task is None:
        raise ApiError(f"Invalid task id: {task_id}", subcode=Sub.INVALID_TASK_ID)
    if task.get("status") == "published" and not body.get("allow_locked"):
        raise ApiError(f"Cannot delete events of a published task: {task_id}", subcode=Sub.TASK_PUBLISHED)
    return {"deleted": ctx.store.delete_events(task_id) > 0}


@endpoint("events.delete_for_model")
def delete_for_model(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    model_id = str(require(body, "model"))
    _check_readable(ctx, model_id, model_events=True)
    return {"deleted": ctx.store.delete_events(model_id) > 0}


@endpoint("events.clear_task_log")
def clear_task_log(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = str(require(body, "task"))
    _check_readable(ctx, task_id, model_events=False)
    kept = [e for e in ctx.store.events(task_id) if e.get("type") != LOG]
    with ctx.store.transaction():
        deleted = ctx.store.delete_events(task_id) - len(kept)
        if kept:
            ctx.store.add_events(kept)
    return {"deleted": deleted}


# -- endpoints: logs -------------------------------------------------------------------------
@endpoint("events.get_task_log")
def get_task_log(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Console log: the `batch_size` lines next to a reference time, earlier or later than it."""
    task_id = str(require(body, "task"))
    _check_readable(ctx, task_id, model_events=False)
    logs = _by_time(ctx.store.events(task_id, [LOG]), "asc")
    earlier = body.get("navigate_earlier", True) is not False
    size = as_int(body.get("batch_size") or DEFAULT_BATCH_SIZE, "batch_size", minimum=1)
    ref = body.get("from_timestamp")
    if ref is not None:
        logs = [e for e in logs if (e["timestamp"] < ref if earlier else e["timestamp"] > ref)]
    chunk = logs[-size:] if earlier else logs[:size]
    order = body.get("order") or ("desc" if earlier else "asc")
    if order == "desc":
        chunk = list(reversed(chunk))
    return {"events": chunk, "returned": len(chunk), "total": min(len(logs), MAX_TOTAL)}


@endpoint("events.get_task_events")
def get_task_events(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    owner = str(require(body, "task"))
    model_events = bool(body.get("model_events"))
    _check_readable(ctx, owner, model_events)
    ev_type = body.get("event_type")
    if ev_type is not None and ev_type not in EVENT_TYPES:
        raise ApiError(f"Invalid event type {ev_type!r}", subcode=Sub.VALIDATION)
    events = ctx.store.events(owner, [ev_type] if ev_type else None)
    return _page(_by_time(events, body.get("order") or "asc"), body)


# -- endpoints: scalars ----------------------------------------------------------------------
@endpoint("events.scalar_metrics_iter_histogram")
def scalar_metrics_iter_histogram(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    owner = str(require(body, "task"))
    model_events = bool(body.get("model_events"))
    _check_readable(ctx, owner, model_events)
    key = body.get("key") or "iter"
    if key not in ("iter", "timestamp", "iso_time"):
        raise ApiError(f"Invalid key {key!r}: expected iter, timestamp or iso_time", subcode=Sub.VALIDATION)
    samples = body.get("samples")
    samples = DEFAULT_HISTOGRAM_SAMPLES if samples is None else as_int(samples, "samples")
    events = _metric_events(ctx, owner, [SCALAR])
    return scalar_histogram(events, key, samples, body.get("metrics"))


@endpoint("events.multi_task_scalar_metrics_iter_histogram")
def multi_task_scalar_metrics_iter_histogram(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """{metric: {variant: {task_id: {"name": task name, "x", "y"}}}} across several tasks."""
    task_ids = [str(t) for t in as_list(require(body, "tasks"))]
    key = body.get("key") or "iter"
    samples = body.get("samples")
    samples = DEFAULT_HISTOGRAM_SAMPLES if samples is None else as_int(samples, "samples")
    out: Doc = {}
    for task_id in task_ids:
        task = ctx.store.get("task", task_id)
        if task is None:
            raise ApiError(f"Invalid task id: {task_id}", subcode=Sub.INVALID_TASK_ID)
        hist = scalar_histogram(_metric_events(ctx, task_id, [SCALAR]), key, samples)
        for metric, variants in hist.items():
            for variant, points in variants.items():
                points["name"] = task.get("name") or task_id
                out.setdefault(metric, {}).setdefault(variant, {})[task_id] = points
    return out


@endpoint("events.get_scalar_metric_data")
def get_scalar_metric_data(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    owner = str(require(body, "task"))
    model_events = bool(body.get("model_events"))
    _check_readable(ctx, owner, model_events)
    metric = body.get("metric")
    events = [e for e in _metric_events(ctx, owner, [SCALAR]) if not metric or e.get("metric") == metric]
    events.sort(key=lambda e: (e["iter"], e["timestamp"]))
    page = _page(events, body, default_size=MAX_TOTAL)
    if body.get("no_scroll"):
        page["scroll_id"] = None
    return page


@endpoint("events.get_task_latest_scalar_values")
def get_task_latest_scalar_values(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = str(require(body, "task"))
    _check_readable(ctx, task_id, model_events=False)
    series: dict[str, dict[str, list[Doc]]] = {}
    for ev in _metric_events(ctx, task_id, [SCALAR]):
        if ev["iter"] == SINGLE_VALUE_ITER:
            continue
        series.setdefault(ev["metric"], {}).setdefault(ev["variant"], []).append(ev)
    metrics = []
    for metric, variants in series.items():
        entries = []
        for variant, evs in variants.items():
            evs.sort(key=lambda e: (e["iter"], e["timestamp"]))
            last_100 = [e["value"] for e in evs[-100:]]
            entries.append({"name": variant, "last_value": evs[-1]["value"],
                            "last_100_value": sum(last_100) / len(last_100)})
        metrics.append({"name": metric, "variants": entries})
    return {"metrics": metrics}


@endpoint("events.get_task_single_value_metrics")
def get_task_single_value_metrics(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    model_events = bool(body.get("model_events"))
    out = []
    for owner in [str(t) for t in as_list(require(body, "tasks"))]:
        _check_readable(ctx, owner, model_events)
        values = [
            {"metric": e["metric"], "variant": e["variant"], "value": e["value"], "timestamp": e["timestamp"]}
            for e in _metric_events(ctx, owner, [SCALAR])
            if e["iter"] == SINGLE_VALUE_ITER
        ]
        if values:
            out.append({"task": owner, "values": values})
    return {"tasks": out}


@endpoint("events.get_scalar_metrics_and_variants")
def get_scalar_metrics_and_variants(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": _metrics_and_variants(ctx, body, SCALAR)}


@endpoint("events.get_vector_metrics_and_variants")
def get_vector_metrics_and_variants(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": _metrics_and_variants(ctx, body, VECTOR)}


def _metrics_and_variants(ctx: Ctx, body: Doc, ev_type: str) -> dict[str, list[str]]:
    owner = str(require(body, "task"))
    _check_readable(ctx, owner, bool(body.get("model_events")))
    out: dict[str, list[str]] = {}
    for ev in ctx.store.events(owner, [ev_type]):
        variants = out.setdefault(ev["metric"], [])
        if ev["variant"] not in variants:
            variants.append(ev["variant"])
    return out


@endpoint("events.vector_metrics_iter_histogram")
def vector_metrics_iter_histogram(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    owner = str(require(body, "task"))
    metric, variant = str(require(body, "metric")), str(require(body, "variant"))
    _check_readable(ctx, owner, bool(body.get("model_events")))
    evs = [e for e in _metric_events(ctx, owner, [VECTOR])
           if e["metric"] == metric and e["variant"] == variant]
    evs.sort(key=lambda e: e["iter"])
    return {"images": [{"iter": e["iter"], "values": e.get("values", []), "timestamp": e["timestamp"]}
                       for e in evs]}


@endpoint("events.get_task_metrics")
def get_task_metrics(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    ev_type = body.get("event_type")
    if ev_type is not None and not isinstance(ev_type, str):
        raise ApiError(f"Validation error: 'event_type' must be an event type name, got {str(ev_type)[:60]!r}",
                       subcode=Sub.VALIDATION)
    types = [ev_type] if ev_type else list(METRIC_TYPES)
    model_events = bool(body.get("model_events"))
    out = []
    for owner in [str(t) for t in as_list(require(body, "tasks"))]:
        _check_readable(ctx, owner, model_events)
        names: list[str] = []
        for ev in ctx.store.events(owner, types):
            if ev.get("metric") not in names:
                names.append(ev["metric"])
        out.append({"task": owner, "metrics": names})
    return {"metrics": out}


# -- endpoints: plots and debug images --------------------------------------------------------
@endpoint("events.get_task_plots")
def get_task_plots(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    owner = str(require(body, "task"))
    _check_readable(ctx, owner, bool(body.get("model_events")))
    wanted = _wanted(body.get("metrics"))
    plots = [e for e in _metric_events(ctx, owner, [PLOT]) if _selected(e, wanted)]
    iters = as_int(body.get("iters") or 1, "iters")
    selected = [ev for _, evs in _last_iterations(plots, iters) for ev in evs]
    page = _page(selected, body, default_size=MAX_TOTAL)
    return {"plots": page["events"], "returned": page["returned"], "total": page["total"],
            "scroll_id": None if body.get("no_scroll") else page["scroll_id"]}


def _per_task_iterations(ctx: Ctx, body: Doc, ev_type: str) -> dict[str, Any]:
    """debug_images/plots: for each requested task, the latest `iters` iterations of matching events.

    Everything is returned on the first call; a call with the returned scroll id gets empty
    iterations, which is how the SDK's paging loop learns that it is done.
    """
    requested = [m for m in as_list(require(body, "metrics")) if isinstance(m, dict) and m.get("task")]
    exhausted = bool(body.get("scroll_id")) and not body.get("refresh")
    iters = as_int(body.get("iters") or 1, "iters")
    earlier = body.get("navigate_earlier", True) is not False
    model_events = bool(body.get("model_events"))
    per_task: dict[str, list[Doc]] = {}
    for item in requested:
        per_task.setdefault(item["task"], []).append(item)
    metrics = []
    for task_id, items in per_task.items():
        _check_readable(ctx, task_id, model_events)
        iterations: list[Doc] = []
        if not exhausted:
            wanted = _wanted(items)
            evs = [e for e in _metric_events(ctx, task_id, [ev_type]) if _selected(e, wanted)]
            groups = _last_iterations(evs, iters)
            if not earlier:
                groups.reverse()
            iterations = [{"iter": it, "events": group} for it, group in groups]
        metrics.append({"task": task_id, "iterations": iterations})
    return {"metrics": metrics, "scroll_id": _scroll_id(1)}


@endpoint("events.debug_images")
def debug_images(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _per_task_iterations(ctx, body, IMAGE)


@endpoint("events.plots")
def plots(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _per_task_iterations(ctx, body, PLOT)


@endpoint("events.get_multi_task_plots")
def get_multi_task_plots(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """{metric: {variant: {task_id: {"name", "plots": [...]}}}} for the latest `iters` iterations."""
    task_ids = [str(t) for t in as_list(require(body, "tasks"))]
    iters = as_int(body.get("iters") or 1, "iters")
    out: Doc = {}
    total = 0
    for task_id in task_ids:
        task = ctx.store.get("task", task_id)
        if task is None:
            raise ApiError(f"Invalid task id: {task_id}", subcode=Sub.INVALID_TASK_ID)
        for _, group in _last_iterations(_metric_events(ctx, task_id, [PLOT]), iters):
            for ev in group:
                slot = out.setdefault(ev["metric"], {}).setdefault(ev["variant"], {}).setdefault(
                    task_id, {"name": task.get("name") or task_id, "plots": []})
                slot["plots"].append(ev)
                total += 1
    return {"plots": out, "returned": total, "total": total, "scroll_id": None}
