"""The registry of task kinds: a kind is one spec class registered by name."""

from __future__ import annotations

from typing import TypeVar

from automation.specs.base import SpecError, TaskSpec

S = TypeVar("S", bound=type[TaskSpec])
_KINDS: dict[str, type[TaskSpec]] = {}


def register(cls: S) -> S:
    """Class decorator: make a spec class available by its `kind` name."""
    if not cls.kind or not cls.script_module:
        raise TypeError(f"{cls.__name__} must set `kind` and `script_module`")
    existing = _KINDS.get(cls.kind)
    if existing is not None and existing is not cls:
        raise TypeError(f"task kind '{cls.kind}' is already registered by {existing.__name__}")
    _KINDS[cls.kind] = cls
    return cls


def kinds() -> dict[str, type[TaskSpec]]:
    _load_builtin()
    return dict(sorted(_KINDS.items()))


def get_kind(name: str) -> type[TaskSpec]:
    _load_builtin()
    try:
        return _KINDS[name]
    except KeyError:
        raise SpecError(f"unknown task kind '{name}' (known: {', '.join(sorted(_KINDS))})") from None


def _load_builtin() -> None:
    # Importing the kind modules registers them; done lazily to keep imports cheap.
    import automation.specs.builtin  # noqa: F401
