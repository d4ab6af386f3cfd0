"""Shared fixtures: one real local stack (stand-in + real clearml-agents) per test session.

The clearml SDK keeps process-global state (config, session, current task), so the session
fixture points the environment at the stack BEFORE any test imports clearml, and gives the whole
test session its own HOME so SDK and agent caches never touch the user's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from automation.devstack.stack import LocalStack
from tests.prefect_server import prefect_server  # noqa: F401 (a session fixture, shared by every test directory)


@dataclass
class StackHandle:
    stack: LocalStack
    env: dict[str, str]

    @property
    def data_dir(self) -> Path:
        return self.stack.data.root

    @property
    def api_url(self) -> str:
        return self.env["CLEARML_API_HOST"]

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.api_url}/_standin/stats", timeout=10).json())

    def reset_stats(self) -> None:
        httpx.post(f"{self.api_url}/_standin/reset_stats", timeout=10)


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
    data_dir = tmp_path_factory.mktemp("stack")
    stack = LocalStack(data_dir)
    report = stack.up(queues=["gpu", "cpu"], validate=True, allow_faults=True)
    saved = {k: os.environ.get(k) for k in report.env}
    os.environ.update(report.env)
    try:
        yield StackHandle(stack=stack, env=report.env)
    finally:
        stack.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per session. Its path is part of every spec's identity, so tests
    that share it also share finished ClearML work (a later test's identical step is reused)."""
    from automation.devstack.tiny_model import ensure_tiny_model

    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny", {**os.environ, **offline})
