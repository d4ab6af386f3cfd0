"""Helpers shared by the service handlers: ids, timestamps, projection, paging and filters.

They implement the query semantics clearml-server documents for `*.get_all`: `id` lists,
regex `name`, `tags`/`system_tags` with `-tag` exclusion (and `__$all`/`__$any`/`__$not`
operators), field filters such as `status`, `order_by` with `-` for descending, `page`/`page_size`
and `only_fields` projection with dotted paths.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from automation.local.api import ApiError, Ctx, Sub, missing

Doc = dict[str, Any]


def new_id() -> str:
    return uuid.uuid4().hex


def now_iso() -> str:
    """ClearML timestamps: ISO 8601 UTC with milliseconds and a '+00:00' offset."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def require(body: Doc, name: str) -> Any:
    value = body.get(name)
    if value is None or value == "":
        raise missing(name)
    return value


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return list(value)
    return [value]


def find_by_name(ctx: Ctx, kind: str, name: str) -> Doc | None:
    """The document of a kind with exactly this name (projects and queues are unique by name)."""
    for doc in ctx.store.iter_raw(kind):
        if doc.get("name") == name:
            return dict(doc)
    return None


# -- projection ------------------------------------------------------------------------------
def _get_path(doc: Doc, dotted: str) -> tuple[bool, Any]:
    cur: Any = doc
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return False, None
    return True, cur


def _set_path(out: Doc, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = out
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def project_fields(doc: Doc, only_fields: Sequence[str] | None) -> Doc:
    """Keep only the requested (possibly dotted) fields; `id` is always returned."""
    if not only_fields:
        return doc
    out: Doc = {"id": doc.get("id")}
    for name in only_fields:
        if name.startswith("-"):
            continue
        found, value = _get_path(doc, name)
        if found:
            _set_path(out, name, value)
    excluded = [n[1:] for n in only_fields if n.startswith("-")]
    if excluded and len(excluded) == len(only_fields):
        out = dict(doc)
        for name in excluded:
            out.pop(name, None)
    return out


# -- filters ---------------------------------------------------------------------------------
def match_tags(have: Iterable[str], wanted: Sequence[str] | None) -> bool:
    """ClearML tag filter: plain tags must all... be any-of, `-tag` excludes, operators group."""
    if not wanted:
        return True
    have_set = set(have or [])
    include: list[str] = []
    exclude: list[str] = []
    mode = "any"
    all_include: list[str] = []
    for tag in wanted:
        if tag in ("__$all", "__$and"):
            mode = "all"
            continue
        if tag in ("__$any", "__$or"):
            mode = "any"
            continue
        if tag == "__$not":
            mode = "not"
            continue
        if tag.startswith("-"):
            exclude.append(tag[1:])
        elif mode == "not":
            exclude.append(tag)
        elif mode == "all":
            all_include.append(tag)
        else:
            include.append(tag)
    if exclude and have_set.intersection(exclude):
        return False
    if all_include and not set(all_include).issubset(have_set):
        return False
    return not (include and not have_set.intersection(include))


def match_regex(value: Any, pattern: str | None) -> bool:
    if not pattern:
        return True
    try:
        return re.search(pattern, str(value or ""), flags=re.IGNORECASE) is not None
    except re.error as exc:
        raise ApiError(f"Invalid regular expression for 'name': {exc}", subcode=Sub.VALIDATION) from exc


def match_values(value: Any, wanted: Any) -> bool:
    """Field filter: a scalar or a list of accepted values; `-x` excludes x; None allows all."""
    if wanted is None:
        return True
    accepted = as_list(wanted)
    if not accepted:
        return True
    negated = {str(a)[1:] for a in accepted if isinstance(a, str) and a.startswith("-")}
    positive = [a for a in accepted if not (isinstance(a, str) and a.startswith("-"))]
    values = as_list(value) if isinstance(value, list) else [value]
    if negated and any(str(v) in negated for v in values):
        return False
    return not (positive and not any(v in positive for v in values))


def order_and_page(docs: list[Doc], body: Doc) -> list[Doc]:
    order = as_list(body.get("order_by"))
    for key in reversed(order):
        if not isinstance(key, str) or not key:
            continue
        desc = key.startswith("-")
        field = key.lstrip("-+")
        docs.sort(key=functools.partial(_doc_sort_key, field), reverse=desc)
    page = body.get("page")
    size = body.get("page_size")
    if page is not None and size is not None:
        page_i, size_i = int(page), int(size)
        if page_i < 0 or size_i <= 0:
            raise ApiError("Invalid paging: page must be >= 0 and page_size > 0", subcode=Sub.VALIDATION)
        docs = docs[page_i * size_i : (page_i + 1) * size_i]
    elif size is not None:
        docs = docs[: int(size)]
    return docs


def _doc_sort_key(field: str, doc: Doc) -> tuple[int, Any]:
    return _sort_key(_get_path(doc, field)[1])


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def scroll_response(docs: list[Doc], body: Doc) -> Doc:
    """Extra fields clearml-server returns with scrolled listings (harmless when unused)."""
    return {"scroll_id": body.get("scroll_id") or new_id()} if body.get("scroll_id") is not None else {}
