"""Helpers shared by the service handlers: ids, timestamps, projection, paging and filters.

They implement the query semantics clearml-server documents for `*.get_all`: `id` lists,
regex `name`, `tags`/`system_tags` with `-tag` exclusion (and `__$all`/`__$any`/`__$not`
operators), field filters such as `status`, `order_by` with `-` for descending, `page`/`page_size`
and `only_fields` projection with dotted paths.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from clearml_standin import regex_budget
from clearml_standin.api import ApiError, Ctx, Sub, missing

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


def _invalid(msg: str) -> ApiError:
    return ApiError(f"Validation error: {msg}", subcode=Sub.VALIDATION)


def as_int(value: Any, field_name: str, minimum: int | None = None) -> int:
    """An integer request field. Query-string requests carry numbers as text, so digits in a
    string are accepted; anything else (a bool, a fraction, words) is a 400 naming the field."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise _invalid(f"'{field_name}' must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise _invalid(f"'{field_name}' must be >= {minimum}, got {number}")
    return number


def str_list(value: Any, field_name: str) -> list[str]:
    """A field the service models type as an array of strings (tags, only_fields, order_by...).

    A bare string or an object is refused rather than iterated: `tags: "abc"` would otherwise
    filter on "a", "b" and "c", and a dict would be stored as its repr.
    """
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise _invalid(f"'{field_name}' must be an array of strings, got {type(value).__name__} {value!r}")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise _invalid(f"'{field_name}' must be an array of strings, got item {bad[0]!r}")
    return list(value)


def check_query(body: Doc, regex_fields: Sequence[str] = ("name",)) -> None:
    """Validate the common `*.get_all` query fields once, before any document is looked at, so a
    malformed query fails even when nothing would have matched."""
    for name in ("tags", "system_tags", "only_fields", "order_by"):
        str_list(body.get(name), name)
    for name in regex_fields:
        match_regex("", body.get(name), name)
    for name in ("page", "page_size", "size"):
        if body.get(name) is not None:
            as_int(body[name], name, minimum=0 if name == "page" else 1)


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


def _project_path(doc: Doc, parts: list[str], out: Doc) -> None:
    """Copy doc's value at the dotted path into out, as a MongoDB inclusion projection does: an
    existing parent object is kept even when the leaf is missing (`runtime.version` of
    `runtime: {}` is `runtime: {}`), and a list of objects is projected element by element."""
    head, rest = parts[0], parts[1:]
    if head not in doc:
        return
    value = doc[head]
    if not rest:
        out[head] = value
        return
    if isinstance(value, dict):
        sub = out.get(head)
        if not isinstance(sub, dict):
            sub = out[head] = {}
        _project_path(value, rest, sub)
    elif isinstance(value, list):
        dicts = [v for v in value if isinstance(v, dict)]
        previous = out.get(head)  # another field of the same list, projected before
        items = previous if isinstance(previous, list) and len(previous) == len(dicts) else [{} for _ in dicts]
        for item, sub_out in zip(dicts, items, strict=True):
            _project_path(item, rest, sub_out)
        out[head] = items


def project_fields(doc: Doc, only_fields: Sequence[str] | None) -> Doc:
    """Keep only the requested (possibly dotted) fields; `id` is always returned."""
    only_fields = str_list(only_fields, "only_fields")
    if not only_fields:
        return doc
    out: Doc = {"id": doc.get("id")}
    for name in only_fields:
        if name.startswith("-"):
            continue
        _project_path(doc, name.split("."), out)
    excluded = [n[1:] for n in only_fields if n.startswith("-")]
    if excluded and len(excluded) == len(only_fields):
        out = dict(doc)
        for name in excluded:
            out.pop(name, None)
    return out


# -- filters ---------------------------------------------------------------------------------
def match_tags(have: Iterable[str], wanted: Sequence[str] | None, field_name: str = "tags") -> bool:
    """ClearML tag filter: plain tags are any-of, `-tag` excludes, `__$all`/`__$any` switch the
    mode for the tags after them, `__$not` negates the one tag after it."""
    wanted = str_list(wanted, field_name)
    if not wanted:
        return True
    have_set = set(have or [])
    include: list[str] = []
    exclude: list[str] = []
    mode = "any"
    negate_next = False
    all_include: list[str] = []
    for tag in wanted:
        if tag in ("__$all", "__$and"):
            mode = "all"
            continue
        if tag in ("__$any", "__$or"):
            mode = "any"
            continue
        if tag == "__$not":
            negate_next = True  # clearml-server: negates the one tag that follows, not the rest
            continue
        if tag.startswith("-"):
            exclude.append(tag[1:])
        elif negate_next:
            exclude.append(tag)
            negate_next = False
        elif mode == "all":
            all_include.append(tag)
        else:
            include.append(tag)
    if exclude and have_set.intersection(exclude):
        return False
    if all_include and not set(all_include).issubset(have_set):
        return False
    return not (include and not have_set.intersection(include))


def match_regex(value: Any, pattern: Any, field_name: str = "name") -> bool:
    if pattern is None or pattern == "":
        return True
    if not isinstance(pattern, str):
        raise _invalid(f"'{field_name}' must be a string (a regular expression), got {str(pattern)[:80]!r}")
    try:
        return regex_budget.search(pattern, str(value or ""), field_name)
    except regex_budget.PatternRefused as exc:
        raise ApiError(str(exc), subcode=Sub.VALIDATION) from None


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
    """`order_by` (stable, `-` for descending), then `page`/`page_size` as the service models
    declare them: integers, page >= 0, page_size >= 1, and page only together with page_size."""
    for key in reversed(str_list(body.get("order_by"), "order_by")):
        if not key:
            continue
        desc = key.startswith("-")
        field = key.lstrip("-+")
        docs.sort(key=functools.partial(_doc_sort_key, field), reverse=desc)
    page = body.get("page")
    size = body.get("page_size")
    if page is not None and size is None:
        raise _invalid("'page' requires 'page_size'")
    if size is None:
        return docs
    size_i = as_int(size, "page_size", minimum=1)
    page_i = as_int(page, "page", minimum=0) if page is not None else 0
    return docs[page_i * size_i : (page_i + 1) * size_i]


def _doc_sort_key(field: str, doc: Doc) -> tuple[int, Any]:
    return _sort_key(_get_path(doc, field)[1])


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))
