"""pip requirement lists: normalisation and the merge rule (a pinned requirement wins)."""

from __future__ import annotations

from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from automation.errors import PackageError


def parse(req: str, field: str = "packages") -> Requirement:
    try:
        return Requirement(req)
    except InvalidRequirement as exc:
        raise PackageError(f"{field}: '{req}' is not a valid pip requirement ({exc})") from exc


def is_pinned(req: Requirement) -> bool:
    return any(s.operator in ("==", "===") for s in req.specifier)


def merge(*groups: Iterable[str], field: str = "packages") -> tuple[str, ...]:
    """Merge requirement lists by normalised name. A pinned (`==`) requirement wins over an
    unpinned or ranged one; two different pins of one package are an error; otherwise the later
    group (the user's) wins. Order: first appearance of each name."""
    chosen: dict[str, Requirement] = {}
    for group in groups:
        for raw in group:
            req = parse(raw.strip(), field)
            name = canonicalize_name(req.name)
            old = chosen.get(name)
            if old is None:
                chosen[name] = req
                continue
            if is_pinned(old) and is_pinned(req):
                if str(old.specifier) != str(req.specifier):
                    raise PackageError(f"{field}: conflicting pins for {name}: '{old}' and '{req}'; keep one")
                continue
            if is_pinned(old):
                continue
            chosen[name] = req
    return tuple(str(r) for r in chosen.values())
