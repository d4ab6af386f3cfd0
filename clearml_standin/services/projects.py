"""projects.*: the project tree tasks and models live in (names with '/' are nested)."""

from __future__ import annotations

from typing import Any

from clearml_standin.api import ApiError, Ctx, Sub, endpoint
from clearml_standin.services import common
from clearml_standin.services.common import (
    Doc,
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

KIND = "project"


def get_project(ctx: Ctx, project_id: str) -> Doc:
    doc = ctx.store.get(KIND, project_id)
    if doc is None:
        raise ApiError(f"Invalid project id: id={project_id}", subcode=Sub.INVALID_PROJECT_ID)
    return doc


def find_by_name(ctx: Ctx, name: str) -> Doc | None:
    return common.find_by_name(ctx, KIND, name)


def ensure_project(ctx: Ctx, name: str, **extra: Any) -> Doc:
    """Create a project (and its parents, as clearml-server does for 'a/b/c') if missing."""
    existing = find_by_name(ctx, name)
    if existing is not None:
        return existing
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1:
        ensure_project(ctx, "/".join(parts[:-1]))
    doc: Doc = {
        "id": new_id(),
        "name": name,
        "basename": parts[-1] if parts else name,
        "description": extra.get("description") or "",
        "user": ctx.user_id,
        "company": ctx.company,  # must be a string: the SDK's model rejects an object here
        "created": now_iso(),
        "last_update": now_iso(),
        "tags": str_list(extra.get("tags"), "tags"),
        "system_tags": str_list(extra.get("system_tags"), "system_tags"),
        "default_output_destination": extra.get("default_output_destination"),
    }
    ctx.store.put(KIND, doc["id"], doc)
    return doc


@endpoint("projects.create")
def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    name = str(require(body, "name")).strip()
    if len(name) < 3:
        raise ApiError("Project name must be at least 3 characters long", subcode=Sub.VALIDATION)
    if find_by_name(ctx, name) is not None:
        raise ApiError(f"Project with the same name already exists: name={name}", subcode=Sub.PROJECT_EXISTS)
    doc = ensure_project(ctx, name, **{k: v for k, v in body.items() if k != "name"})
    return {"id": doc["id"]}


@endpoint("projects.get_by_id")
def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"project": get_project(ctx, str(require(body, "project")))}


@endpoint("projects.get_all", "projects.get_all_ex")
def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    check_query(body, regex_fields=("name", "basename"))
    ids = set(as_list(body.get("id")))
    out = []
    for doc in ctx.store.iter_raw(KIND):
        if ids and doc["id"] not in ids:
            continue
        if not match_regex(doc.get("name"), body.get("name")):
            continue
        if not match_regex(doc.get("basename"), body.get("basename"), "basename"):
            continue
        if not match_tags(doc.get("tags", []), body.get("tags")):
            continue
        if not match_tags(doc.get("system_tags", []), body.get("system_tags"), "system_tags"):
            continue
        if not match_values(doc.get("user"), body.get("user")):
            continue
        out.append(dict(doc))
    out = order_and_page(out, body)
    return {"projects": [project_fields(d, body.get("only_fields")) for d in out]}


@endpoint("projects.update")
def update(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    doc = get_project(ctx, str(require(body, "project")))
    changed = {k: v for k, v in body.items() if k in ("name", "description", "tags", "system_tags",
                                                       "default_output_destination")}
    for key in ("tags", "system_tags"):
        if key in changed:
            changed[key] = str_list(changed[key], key)
    doc.update(changed)
    doc["last_update"] = now_iso()
    ctx.store.put(KIND, doc["id"], doc)
    return {"updated": 1, "fields": changed}
