"""Shared fixtures: one real local stack (stand-in + real clearml-agents) per test session.

The clearml SDK keeps process-global state (config, session, current task), so the session
fixture points the environment at the stack BEFORE any test imports clearml, and gives the whole
test session its own HOME so SDK and agent caches never touch the user's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.processes import OFFLINE, environment
from testing.stacks import StackHandle, start_stack
from tests.prefect_server import prefect_server  # noqa: F401 (a session fixture, shared by every test directory)


@pytest.fixture(scope="session")
def session_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="automation-test-home-"))
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield home
    if old is not None:
        os.environ["HOME"] = old


@pytest.fixture(scope="session")
def local_stack(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """The stand-in with response-contract checking on, plus agents on queues `gpu` and `cpu`."""
    handle = start_stack(tmp_path_factory.mktemp("stack"), validate=True)
    try:
        with environment(handle.env):
            yield handle
    finally:
        handle.stack.down()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per session. Its path is part of every spec's identity, so tests
    that share it also share finished ClearML work (a later test's identical step is reused)."""
    from automation.devstack.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny", {**os.environ, **OFFLINE})
