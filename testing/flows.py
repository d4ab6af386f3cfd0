"""Helpers for the harness's own Prefect flows (tests/integration/bridge_flows.py, benchmarks/flows.py):
debug specs over both agent queues, awaiting them in a flow, the modules' command line, a flow
module served as a deployment from a subprocess, and runs started from that deployment.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow

from automation.results import TaskResult
from automation.specs.debug import DebugSpec
from flows.bridge import run_task
from testing import REPO
from testing.stacks import AGENT_QUEUES
from testing.waits import WaitTimeout

DEPLOYMENT_WAIT_S = 60.0


def batch_specs(salt: str, n: int, sleep_s: float = 2.0, steps: int = 2, **fields: Any) -> list[DebugSpec]:
    """`n` distinct debug specs spread over both agent queues (`fields`, e.g. `project`, go to each)."""
    return [DebugSpec(queue=AGENT_QUEUES[i % len(AGENT_QUEUES)], sleep_s=sleep_s, steps=steps, value=float(i + 1),
                      salt=f"{salt}-{i}", **fields) for i in range(n)]


async def run_all(specs: Sequence[DebugSpec]) -> list[TaskResult]:
    """Every spec's `run_task`, concurrently (in a flow: a sweep's shape)."""
    return list(await asyncio.gather(*[run_task(s) for s in specs]))


def print_results(results: Sequence[TaskResult]) -> None:
    """The line an orchestrator subprocess hands its results back on: `RESULTS <json>`."""
    print("RESULTS " + json.dumps([r.model_dump(mode="json") for r in results]), flush=True)


def flow_cli(argv: list[str], hold: Flow[..., Any], run: Callable[[str, int, float], None],
             **more: Callable[..., None]) -> None:
    """The command line of a harness flow module:

        serve NAME         serve the flow `hold` as the deployment NAME (until SIGTERM)
        run SALT N SLEEP   `run(SALT, N, SLEEP)`: a flow over `batch_specs(SALT, N, SLEEP)`
        COMMAND ARG...     `more[COMMAND](ARG, ...)`
    """
    command, args = argv[0], argv[1:]
    if command == "serve":
        hold.serve(name=args[0], print_starting_message=True)
    elif command == "run":
        run(args[0], int(args[1]), float(args[2]))
    elif command in more:
        more[command](*args)
    else:
        raise SystemExit(f"unknown command {command!r}")


def serve(module: str, name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m MODULE serve NAME` (a flow_cli module) in its own process group (stop it with
    testing.processes.stop_process_group), its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, "serve", name], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def deployment_id(name: str, server: subprocess.Popen[bytes], log: Path,
                        timeout_s: float = DEPLOYMENT_WAIT_S) -> UUID:
    """The id of the deployment `name` ("flow/deployment") once `server` has registered it; WaitTimeout,
    with the end of `log`, when `server` exits first or `timeout_s` passes."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return (await client.read_deployment_by_name(name)).id
            except ObjectNotFound:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise WaitTimeout(f"deployment never appeared:\n{log.read_text()[-3000:]}") from None
                await asyncio.sleep(0.5)


async def start_run(deployment: UUID, parameters: dict[str, Any]) -> str:
    """A new flow run of `deployment`; its id."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return str((await client.create_flow_run_from_deployment(deployment, parameters=parameters)).id)
