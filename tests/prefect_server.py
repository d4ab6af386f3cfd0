"""Prefect fixture for integration and e2e tests: one real `prefect server start` per test session.

The server runs on a free port with its own PREFECT_HOME (SQLite) in a temporary directory and
analytics off; the test process is pointed at it with `temporary_settings` (and the environment,
for subprocesses: served deployments, orchestrators that get SIGKILLed). One server per session
because the ephemeral mode costs 6-10 s per process (FACTS.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.prefect_server import PrefectServer, start_prefect_server

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 90.0


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-home"), cwd=REPO, timeout_s=SERVER_START_TIMEOUT_S)
    api_url, home, env = server.api_url, server.home, server.env

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_UI_URL,
        temporary_settings,
    )

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_HOME: home,
                                         PREFECT_UI_URL: env["PREFECT_UI_URL"],
                                         PREFECT_SERVER_ANALYTICS_ENABLED: False}):
            yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
