"""The one place where an error becomes what a person sees: one line on stderr and an exit code.

Every command group of the `automation` command is a `CommandGroup`; each of its commands runs
under `one_line`, so an `AutomationError` (automation/errors.py) prints `<label>: <message>` and
exits with the class's `exit_code` (2: bad input; 1: anything else that failed), never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from automation.errors import AutomationError

err_console = Console(stderr=True, highlight=False)
console = Console()
if not console.is_terminal:  # logs and pipes: no wrapping inside URLs and tables
    console = Console(width=200)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1, label: str = "error") -> typer.Exit:
    """Print one error line; returns the Exit to raise (`raise fail(...)`)."""
    err_console.print(f"[red]{escape(label)}:[/red] {escape(message)}")
    return typer.Exit(code)


def one_line(fn: F) -> F:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutomationError as exc:
            raise fail(str(exc), exc.exit_code, exc.label) from None

    return run  # type: ignore[return-value]


class CommandGroup(typer.Typer):
    """A typer app whose commands all report errors through `one_line`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(fn: F) -> F:
            register(one_line(fn))
            return fn

        return decorator
