"""The Prefect production path: `prefect deploy` from `deployments/prefect.yaml` onto a real
Prefect server, a real `prefect worker` on a `process` work pool, a deployment run that goes
through the file's pull step (the worker runs from elsewhere; the step moves the run into
$LLM_AUTOMATION_DIR) to completion with its ClearML tasks, and a cancel through the API that reaches
the running ClearML task through the worker.

The deployment is the file's own `compress-evaluate-benchmark` entry, renamed and pointed at this
test's pool, with the local-stack parameters (one scheme on the tiny model, so finished steps of
the e2e tests are reused when they ran first).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from automation.clearml.client import FLOW_RUN_TAG
from automation.devstack.defaults import local_parameters
from testing import REPO
from testing.prefect_server import PrefectServer
from testing.processes import OFFLINE, child_env, stop_process_group
from testing.stacks import ACTIVE, StackHandle, admin_client
from testing.waits import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:6]
POOL = f"llm-automation-test-{RUN}"
NAME = f"worker-ceb-{RUN}"
DEPLOYMENT = f"compress-evaluate-benchmark/{NAME}"
PREFECT = str(Path(sys.executable).parent / "prefect")


def _prefect(env: dict[str, str], *args: str, cwd: Path = REPO, timeout: float = 180) -> str:
    res = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def worker(local_stack: StackHandle, prefect_server: PrefectServer, tiny_model: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("prefect-worker")
    env = child_env(local_stack.env, prefect_server.env, OFFLINE, LLM_AUTOMATION_DIR=str(REPO),
                    PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5")
    env.pop("PYTHONPATH")  # the pull step, not the path, must bring the run to the code
    shipped = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    entry = next(d for d in shipped["deployments"] if d["name"] == "compress-evaluate-benchmark")
    params = local_parameters(tiny_model)["compress-evaluate-benchmark"]
    entry.update(name=NAME, work_pool={**entry["work_pool"], "name": POOL},
                 parameters={**params, "schemes": ["w4a16"], "step_queues": {"evaluate": "cpu"}})
    shipped["deployments"] = [entry]
    prefect_file = root / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(shipped, sort_keys=False))
    assert shipped["pull"] == [{"prefect.deployments.steps.set_working_directory":
                                {"directory": "{{ $LLM_AUTOMATION_DIR }}"}}]

    _prefect(env, "work-pool", "create", POOL, "--type", "process")
    _prefect(env, "deploy", "--prefect-file", str(prefect_file), "--name", NAME)
    log = root / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--type", "process"], cwd=root,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("the worker to poll its pool", lambda: proc.poll() is not None or "started" in log.read_text().lower(),
                 120)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield {"log": str(log)}
    finally:
        stop_process_group(proc, term_wait_s=30)  # the worker and any flow-run process it started


async def _start(parameters: dict[str, Any]) -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(DEPLOYMENT)
        return str((await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)).id)


async def _read(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(uuid.UUID(flow_run_id))


async def _cancel(flow_run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async with get_client() as client:
        await client.set_flow_run_state(uuid.UUID(flow_run_id), Cancelling(), force=True)


def _final(flow_run_id: str) -> Any:
    run = asyncio.run(_read(flow_run_id))
    return run if run.state is not None and run.state.is_final() else None


def _tasks(local_stack: StackHandle, flow_run_id: str) -> list[dict[str, Any]]:
    return list(admin_client(local_stack.env).call(
        "tasks.get_all", {"tags": [f"{FLOW_RUN_TAG}{flow_run_id}"], "search_hidden": True,
                          "only_fields": ["id", "name", "status"]})["tasks"])


@pytest.mark.timeout(1800)
def test_a_deployment_run_goes_through_the_worker_and_its_cancel_reaches_clearml(
        worker: dict[str, str], local_stack: StackHandle) -> None:
    started = time.monotonic()
    flow_run_id = asyncio.run(_start({}))
    done = wait_for("the worker's run to finish", lambda: _final(flow_run_id), 1200, every_s=2)
    took = time.monotonic() - started
    log = Path(worker["log"]).read_text()
    assert done.state.is_completed(), f"{done.state.type.value}: {done.state.message}\n{log[-3000:]}"
    assert done.work_pool_name == POOL and flow_run_id in log  # this worker ran it
    tasks = _tasks(local_stack, flow_run_id)
    assert tasks and all(t["status"] == "completed" for t in tasks), tasks

    # A run that computes afresh (refresh): cancel it while a ClearML task of it runs.
    cancelled_id = asyncio.run(_start({"refresh": True}))
    wait_for("a ClearML task of the run in progress",
             lambda: any(t["status"] == "in_progress" for t in _tasks(local_stack, cancelled_id)), 600)
    before = {t["id"]: t["status"] for t in _tasks(local_stack, cancelled_id)}
    asyncio.run(_cancel(cancelled_id))
    clicked = time.monotonic()
    wait_for("every ClearML task of the run stopped",
             lambda: all(t["status"] not in ACTIVE for t in _tasks(local_stack, cancelled_id)), 120, every_s=0.5)
    stopped_s = time.monotonic() - clicked
    after = {t["id"]: t["status"] for t in _tasks(local_stack, cancelled_id)}
    assert all(after[i] == "stopped" for i, status in before.items() if status in ACTIVE), (before, after)
    final = wait_for("the flow run cancelled", lambda: _final(cancelled_id), 120)
    assert final.state.is_cancelled(), final.state
    print(f"\n[measure] process worker: run completed in {took:.0f} s; cancel stopped every task in {stopped_s:.1f} s")
