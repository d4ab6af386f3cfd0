"""Per-step time limits of the bridge (`max_queue_s`, `max_run_s`) against the local stack: real
stand-in, a real clearml-agent on `gpu`, and the `debug` kind."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psutil
import pytest

from automation.clearml.admin import AdminClient
from automation.clearml.client import IDENTITY_TAG
from automation.clearml.records import parse_timestamp
from automation.errors import TaskTimeout
from automation.specs.debug import DebugSpec
from flows.bridge import execute
from testing.prefect_server import PrefectServer
from testing.processes import DEBUG_SCRIPT
from testing.stacks import StackHandle, admin_client
from testing.waits import wait_for

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]  # keeps identities of this session apart from any earlier one


@pytest.fixture(scope="module")
def api(local_stack: StackHandle) -> AdminClient:
    return admin_client(local_stack.env)


def the_task(api: AdminClient, spec: DebugSpec) -> dict[str, Any]:
    tasks = api.call("tasks.get_all", {"tags": [f"{IDENTITY_TAG}{spec.identity()}"], "search_hidden": True,
                                       "only_fields": ["id", "status", "started", "execution.queue"]})["tasks"]
    assert len(tasks) == 1, tasks
    return dict(tasks[0])


def task_processes(task_id: str) -> list[int]:
    """Pids of the agent's children that run the task's core script."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if DEBUG_SCRIPT in " ".join(proc.info["cmdline"] or []) \
                    and proc.environ().get("CLEARML_TASK_ID") == task_id:
                found.append(int(proc.pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_max_run_s_stops_the_task_on_the_agent(local_stack: StackHandle, api: AdminClient) -> None:
    spec = DebugSpec(queue="gpu", sleep_s=60.0, steps=60, salt=f"max-run-{RUN}")
    with pytest.raises(TaskTimeout) as info:
        asyncio.run(execute(spec, max_run_s=3, max_queue_s=120))
    raised = time.time()
    err = info.value
    assert err.phase == "run" and not err.retryable
    assert "ran more than 3 s" in str(err) and "max_run_s" in str(err)
    task = the_task(api, spec)
    # ended on the agent: `stopped`, or `failed` when the agent's kill lands before the stop settles
    # (a loaded 2-core host); its process is gone either way (below)
    assert err.task_id == task["id"] and task["status"] in ("stopped", "failed")
    started = parse_timestamp(task["started"])
    assert started is not None
    # 3 s of running + up to one poll interval to notice the start + the stop's 10 s watch for a
    # forced restart; the agent's pick-up time (it polls its queue every 5 s) is not counted.
    assert raised - started.timestamp() < 20
    wait_for("the agent to kill the task's process", lambda: not task_processes(task["id"]), 15)


def test_max_queue_s_dequeues_a_task_no_agent_picks_up(local_stack: StackHandle, api: AdminClient) -> None:
    queue = f"unserved-{RUN}"
    queue_id = api.call("queues.create", {"name": queue})["id"]
    spec = DebugSpec(queue=queue, sleep_s=0.1, steps=1, salt=f"max-queue-{RUN}")
    begun = time.monotonic()
    with pytest.raises(TaskTimeout) as info:
        asyncio.run(execute(spec, max_queue_s=2, max_run_s=60))
    assert time.monotonic() - begun < 10
    err = info.value
    assert err.phase == "queue" and not err.retryable
    assert f"waited more than 2 s in queue '{queue}'" in str(err) and "max_queue_s" in str(err)
    task = the_task(api, spec)
    assert err.task_id == task["id"] and task["status"] == "stopped"
    assert api.call("queues.get_by_id", {"queue": queue_id})["queue"]["entries"] == []


def test_a_step_past_its_run_limit_is_a_timeout_in_its_cell(local_stack: StackHandle, api: AdminClient,
                                                            prefect_server: PrefectServer) -> None:
    """What a flow's cell holds when a step runs out of time: a typed timeout, not a lost step."""
    from tests.integration.bridge_flows import step_flow

    spec = DebugSpec(queue="gpu", sleep_s=60.0, steps=60, salt=f"cell-run-{RUN}")
    out = asyncio.run(step_flow(spec, None, 3.0))
    failure = out["failure"]
    assert out["result"] is None and failure is not None
    assert failure["timeout"] == "run" and failure["step"] == "evaluate", failure
    assert "ran more than 3 s" in failure["error"] and failure["task_id"] == the_task(api, spec)["id"]
    wait_for("the task ended", lambda: the_task(api, spec)["status"] in ("stopped", "failed"), timeout_s=30)
