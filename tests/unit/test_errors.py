"""The error tree: one root, `retryable` and an exit code on every class, and the CLI's one path
from an error to one line and an exit code."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

from automation import errors
from automation.cli.errors import CommandGroup
from automation.errors import (
    AutomationError,
    BackendError,
    InputError,
    QueueNotFound,
    ServerUnreachable,
    SpecError,
    TaskFailed,
)


def _classes() -> list[type[BaseException]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, BaseException) and c.__module__ == errors.__name__]


def test_every_error_of_the_product_has_the_one_root_and_says_retry_and_exit_code() -> None:
    classes = _classes()
    assert len(classes) >= 30
    for cls in classes:
        assert issubclass(cls, AutomationError), cls
        assert isinstance(cls.retryable, bool) and cls.exit_code in (1, 2) and cls.label, cls


def test_input_errors_are_value_errors_so_pydantic_names_the_field() -> None:
    assert issubclass(SpecError, ValueError) and issubclass(QueueNotFound, InputError)
    assert not ServerUnreachable.retryable and not issubclass(BackendError, ValueError)


def test_no_error_class_is_defined_outside_the_tree() -> None:
    """Product modules raise the tree's classes; none defines its own exception (the stand-in, a
    separate product, and the core scripts' simulated MemoryError aside)."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    allowed = {"automation/errors.py", "automation/scripts/debug.py", "automation/clearml/client.py"}
    found = []
    for top in ("automation", "flows", "deployments"):
        for path in (repo / top).rglob("*.py"):
            rel = str(path.relative_to(repo))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and rel not in allowed and any(
                        getattr(b, "id", "").endswith(("Error", "Exception")) for b in node.bases):
                    found.append(f"{rel}:{node.name}")
    assert found == []


app = CommandGroup()


@app.command("bad")
def _bad() -> None:
    raise SpecError("recipe_args.group_size: must divide hidden_size 128 (use 32, 64 or 128)")


@app.command("down")
def _down() -> None:
    raise ServerUnreachable("ClearML API server http://127.0.0.1:1 did not answer")


@app.command("task")
def _task() -> None:
    raise TaskFailed("t1", "http://web/t1", "failed", "boom", ["Traceback (most recent call last):", "  x"])


@pytest.mark.parametrize(("command", "code", "label"), [("bad", 2, "invalid input:"), ("down", 1, "ClearML server:"),
                                                        ("task", 1, "task failed:")])
def test_cli_turns_an_error_into_its_label_message_and_exit_code(command: str, code: int, label: str) -> None:
    res = CliRunner().invoke(app, [command])
    assert res.exit_code == code, res.output
    assert res.output.startswith(label) and "Traceback (most recent call last):\n  File" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
