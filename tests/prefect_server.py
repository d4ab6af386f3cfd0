"""Prefect fixture for integration and e2e tests: one real `prefect server start` per test session
(testing/prefect_server.py), this process pointed at it (and, through the environment, its
subprocesses: served deployments, orchestrators that get SIGKILLed). One server per session
because the ephemeral mode costs 6-10 s per process (FACTS.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing import REPO
from testing.prefect_server import PrefectServer, pointed_at, start_prefect_server

SERVER_START_TIMEOUT_S = 90.0


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-home"), cwd=REPO, timeout_s=SERVER_START_TIMEOUT_S)
    try:
        with pointed_at(server):
            yield server
    finally:
        server.stop()
