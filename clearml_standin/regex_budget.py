"""Regular-expression filters that cannot run away.

ClearML filters by regex (`name`, `basename`, model `pattern`s), so a client picks the pattern. The
`regex` engine is used instead of `re` because it takes a timeout and releases the GIL while it
matches; every request gets one budget for all its matches together (a catastrophic pattern over a
thousand names costs one budget, not a thousand), and a pattern longer than any real name filter
is refused before it is compiled.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import regex

REGEX_BUDGET_S = 0.5
MAX_PATTERN_CHARS = 4096

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("regex_deadline", default=None)
T = TypeVar("T")


class PatternRefused(ValueError):
    """A pattern that does not compile, is too long, or ran out of the request's budget."""


def request_budget(fn: Callable[..., T], budget_s: float = REGEX_BUDGET_S) -> Callable[..., T]:
    """fn with one regex budget for the whole call (set where the call runs: the store's thread)."""

    @functools.wraps(fn)
    def run(*args: Any) -> T:
        token = _deadline.set(time.monotonic() + budget_s)
        try:
            return fn(*args)
        finally:
            _deadline.reset(token)

    return run


def search(pattern: str, text: str, field_name: str) -> bool:
    """Whether the case-insensitive pattern matches somewhere in text, within the request's budget."""
    compiled = _compiled(pattern, field_name)
    deadline = _deadline.get()
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        return compiled.search(text, concurrent=True, timeout=timeout) is not None
    except TimeoutError:
        raise PatternRefused(f"regular expression for '{field_name}' is too expensive to match (over "
                             f"{REGEX_BUDGET_S:g} s per request); use a simpler pattern") from None


@functools.lru_cache(maxsize=256)
def _compiled_cached(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern, flags=regex.IGNORECASE | regex.VERSION0)


def _compiled(pattern: str, field_name: str) -> regex.Pattern[str]:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternRefused(f"regular expression for '{field_name}' is {len(pattern)} characters long "
                             f"(at most {MAX_PATTERN_CHARS})")
    try:
        return _compiled_cached(pattern)
    except (regex.error, RecursionError, OverflowError, MemoryError) as exc:
        raise PatternRefused(f"Invalid regular expression for '{field_name}': {exc}") from None
