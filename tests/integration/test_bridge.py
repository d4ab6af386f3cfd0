"""The bridge (issue 4) against the local stack: real stand-in, real clearml-agents on `gpu` and
`cpu`, a real Prefect server, and the `debug` kind.

Counting is done on the server: ClearML tasks by `identity:` tag, `tasks.create` calls from the
stand-in's stats, Prefect task-run attempts from the Prefect API.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from automation.clearml.admin import AdminClient
from automation.clearml.client import FLOW_RUN_TAG, IDENTITY_TAG, TASK_RUN_TAG, ClearMLBackend
from automation.clearml.records import TaskRecord, parse_timestamp
from automation.errors import CodeError, QueueNotFound, ServerUnreachable, SpecError, TaskTimeout
from automation.results import TaskResult
from automation.specs.debug import DebugSpec
from flows.bridge import DUPLICATE_REASON, QUEUE_LIMIT_PREFIX, ensure_queue_limits, execute, stop_flow_run_tasks
from flows.poller import shared_poller
from testing import REPO
from testing.flows import batch_specs, deployment_id, serve, start_run
from testing.prefect_server import PrefectServer
from testing.processes import child_env, kill_task_process, stop_process_group
from testing.stacks import ACTIVE, StackHandle, admin_client
from testing.waits import wait_for
from tests.integration.bridge_flows import batch_flow, one_flow, timeout_flow

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]  # keeps identities of this session apart from any earlier one


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(local_stack: StackHandle) -> AdminClient:
    return admin_client(local_stack.env)


@pytest.fixture
def stack(local_stack: StackHandle, prefect_server: PrefectServer) -> StackHandle:
    return local_stack


def by_identity(api: AdminClient, spec: DebugSpec) -> list[dict[str, Any]]:
    return list(api.call("tasks.get_all", {
        "tags": [f"{IDENTITY_TAG}{spec.identity()}"], "order_by": ["created"], "search_hidden": True,
        "only_fields": ["id", "status", "status_message", "tags", "created", "started", "completed",
                        "hyperparams"]})["tasks"])


def by_tag(api: AdminClient, tag: str) -> list[dict[str, Any]]:
    return list(api.call("tasks.get_all", {"tags": [tag], "search_hidden": True,
                                           "only_fields": ["id", "status", "tags"]})["tasks"])


def calls(stack: StackHandle, endpoint: str) -> int:
    return int(stack.stats()["calls"].get(endpoint, 0))


@pytest.fixture(scope="module")
def idle_queue(api: AdminClient) -> str:
    """A queue no agent serves: tasks stay queued until the test moves them (cheap and exact)."""
    name = f"idle-{RUN}"
    api.call("queues.create", {"name": name})
    return name


def run_by_hand(api: AdminClient, task_id: str) -> None:
    """Play the agent: start and complete a task without running anything."""
    api.call("tasks.started", {"task": task_id})
    api.call("tasks.completed", {"task": task_id})


async def _submit(spec: DebugSpec, tags: list[str]) -> str:
    client = ClearMLBackend()
    try:
        task_id = await client.create(spec, tags=tags)
        await client.enqueue(task_id, spec.queue)
        return task_id
    finally:
        await client.aclose()


async def _task_run(task_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_task_run(task_run_id)


def task_run_count(state: Any) -> int:
    return int(asyncio.run(_task_run(state.state_details.task_run_id)).run_count)


# -- 1. happy path, measurements, Prefect side ------------------------------------------------
def test_happy_path_concurrent_tasks(stack: StackHandle, api: AdminClient) -> None:
    specs = batch_specs(f"happy-{RUN}", 3, sleep_s=1.0)
    poller = shared_poller()
    stack.reset_stats()
    started = time.monotonic()
    out = asyncio.run(batch_flow(specs))
    wall = time.monotonic() - started
    results: list[TaskResult] = out["results"]

    assert [r.status for r in results] == ["completed"] * 3
    for spec, result in zip(specs, results, strict=True):
        assert isinstance(result, TaskResult)
        assert result.identity == spec.identity() and result.queue == spec.queue and not result.reused
        assert result.scalars["debug/value"] == spec.value
        assert result.values["debug_value"].value == spec.value
        assert "debug_summary" in result.artifacts
        assert result.task_id in result.web_url
        json.loads(result.model_dump_json())  # small and JSON-serialisable
        assert len(by_identity(api, spec)) == 1

    # ClearML side: tags with flow-run and task-run ids, the Prefect run URL as a user property.
    task = by_identity(api, specs[0])[0]
    flow_tags = [t for t in task["tags"] if t.startswith(FLOW_RUN_TAG)]
    assert flow_tags and any(t.startswith("prefect-task-run:") for t in task["tags"])
    url = task["hyperparams"]["properties"]["prefect_run_url"]["value"]
    flow_run_id = flow_tags[0][len(FLOW_RUN_TAG):]
    assert url.endswith(f"/flow-runs/flow-run/{flow_run_id}")
    assert len(by_tag(api, flow_tags[0])) == 3

    # Where the task's time went, recorded by the core script's runtime, consistent with the
    # task's own timestamps: the process starts after the task was created, the figures are
    # written before the task is completed, and the debug work holds its 1 s of sleep. (Not
    # `started`: the script's own Task.init marks the task started again, after its imports.)
    full = api.call("tasks.get_by_id", {"task": task["id"]})["task"]
    props = {k[len("phase."):]: float(v["value"]) for k, v in full["hyperparams"]["properties"].items()
             if k.startswith("phase.")}
    assert set(props) == {"start", "imports_s", "sdk_init_s", "spec_read_s", "env_s", "input_model_s", "work_s",
                          "upload_s", "flush_s", "end"}, props
    assert all(props[k] >= 0 for k in props), props
    assert props["work_s"] >= 1.0 and props["upload_s"] > 0 and props["input_model_s"] == 0, props
    created_at, completed_at = (parse_timestamp(full[k]) for k in ("created", "completed"))
    assert created_at is not None and completed_at is not None
    assert created_at.timestamp() - 1 <= props["start"] < props["end"] <= completed_at.timestamp() + 1, \
        (props, full["created"], full["completed"])
    in_process = sum(v for k, v in props.items() if k.endswith("_s"))
    assert in_process <= props["end"] - props["start"] + 0.5, props

    # What the task ran with, recorded by the runtime at its start (`env.*`), read back with the
    # result: the interpreter, every distribution the task declares, the key ML libraries, the queue.
    import platform
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = results[0].environment
    print(f"\n[measure] env_s {props['env_s']:.3f} s; environment {env}")
    assert env["python"] == platform.python_version() and env["queue"] == specs[0].queue, env
    assert all(env[canonicalize_name(Requirement(r).name)] == version(Requirement(r).name)
               for r in specs[0].task_requirements()), env
    assert env["torch"] == version("torch") and env["torch_cuda"] and env["worker"], env

    # Prefect side: a link artifact per task pointing at the ClearML task page.
    links = asyncio.run(_links(flow_run_id))
    assert sorted(links) == sorted(r.web_url.replace(f"/projects/{_project(r)}/", "/projects/*/") for r in results)

    # Measured overhead: orchestrator calls by endpoint, stand-in stats for the writes.
    stats = stack.stats()["calls"]
    assert stats["tasks.create"] == 3 and stats["tasks.enqueue"] == 3
    by_endpoint = out["calls"]
    # identity lookups and duplicate checks (polls go through the poller's own client; the
    # stand-in's other tasks.get_all come from the SDK and agents inside the tasks)
    lookups = by_endpoint.get("tasks.get_all", 0)
    per_submission = (by_endpoint.get("tasks.get_all", 0) + by_endpoint["tasks.create"]
                      + by_endpoint["tasks.enqueue"]) / 3
    poller_backend = poller._backend
    assert poller_backend is not None
    tick_calls = poller_backend.endpoint_calls.get("tasks.get_all", 0)
    print(f"\n[measure] wall {wall:.1f} s for 3 tasks; orchestrator calls {by_endpoint}; "
          f"per submission {per_submission:.2f} (tasks.get_all {lookups / 3:.1f}: identity lookup + "
          f"duplicate check; create 1; enqueue 1); "
          f"poller ticks {poller.ticks}, poller tasks.get_all {tick_calls} "
          f"({tick_calls / max(poller.ticks, 1):.2f} per tick); stand-in calls {stats}")
    # identity lookup + create + enqueue + the duplicate check (one more lookup); no queue limit
    # here, so no slot wait and no lookup after it; nothing attached, so no tag edit
    assert by_endpoint["tasks.get_all"] == 6 and per_submission == 4.0, by_endpoint
    assert "tasks.edit" not in by_endpoint
    assert tick_calls == poller.ticks  # ONE tasks.get_all per tick, whatever the number of tasks

    # Transitions reach each task run's Prefect log.
    task_run_id = next(t for t in task["tags"] if t.startswith(TASK_RUN_TAG))[len(TASK_RUN_TAG):]
    # The statuses the poller saw: an agent that polls every second may take a task before the
    # first poll sees it queued, so "queued" may be skipped; the run and its end may not.
    wanted = [f"ClearML task {task['id']}: {status}" for status in ("in_progress", "completed")]

    def logged() -> list[str] | None:
        lines = asyncio.run(_task_run_logs(flow_run_id, task_run_id))
        return lines if all(any(line.startswith(w) for line in lines) for w in wanted) else None

    wait_for(f"transitions {wanted} in the task run's log", logged, 20)


async def _task_run_logs(flow_run_id: str, task_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTaskRunId

    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]),
            task_run_id=LogFilterTaskRunId(any_=[uuid.UUID(task_run_id)])), limit=200)
    return [log.message for log in logs]


def _project(result: TaskResult) -> str:
    return result.web_url.split("/projects/")[1].split("/")[0]


async def _links(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(),  # a link artifact is stored as markdown `[text](link)`
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])),
            task_run_filter=TaskRunFilter(), limit=100, offset=0, sort=ArtifactSort.KEY_ASC)
    return [str(a.data).split("](")[1].rstrip(")") for a in arts if str(a.data).startswith("[ClearML task")]


# -- the environment a task runs in contradicts a pin it declares -------------------------------
def test_a_pin_the_environment_contradicts_fails_as_infrastructure(stack: StackHandle, api: AdminClient) -> None:
    """The local agents skip installs, so the task runs with this checkout's psutil: the script
    fails it before the work with one line naming both versions, typed as an infrastructure failure."""
    from importlib.metadata import version

    from automation.errors import InfrastructureError

    spec = DebugSpec(queue="cpu", sleep_s=0.1, steps=1, packages=("psutil==0.0.1",), salt=f"pin-{RUN}")
    with pytest.raises(InfrastructureError) as info:
        asyncio.run(execute(spec, max_wait_s=120))
    line = (f"environment: psutil==0.0.1 declared but {version('psutil')} is installed (the agent's environment "
            "does not match the task; rebuild it or change the pin)")
    print(f"\n[pin mismatch] {str(info.value).splitlines()[0]}")
    assert line in info.value.log_tail, info.value.log_tail
    tasks = by_identity(api, spec)
    assert [t["status"] for t in tasks] == ["failed"]
    props = {k: v["value"] for k, v in tasks[0]["hyperparams"]["properties"].items()}
    assert props["env.psutil"] == version("psutil") and not any(k.startswith("phase.") for k in props), props


# -- 8. unchanged flow twice ------------------------------------------------------------------
def test_unchanged_flow_twice_creates_nothing(stack: StackHandle, api: AdminClient) -> None:
    specs = batch_specs(f"happy-{RUN}", 3, sleep_s=1.0)  # the happy path's: reused if it ran first
    first = asyncio.run(batch_flow(specs))["results"]
    creates = calls(stack, "tasks.create")
    second = asyncio.run(batch_flow(specs))["results"]
    assert calls(stack, "tasks.create") == creates  # zero ClearML tasks created by the second run
    assert [r.task_id for r in second] == [r.task_id for r in first]
    assert all(r.reused for r in second)
    assert all(len(by_identity(api, s)) == 1 for s in specs)


# -- 2. code error ----------------------------------------------------------------------------
def test_code_error_fails_once_with_url_and_log_tail(stack: StackHandle, api: AdminClient) -> None:
    spec = DebugSpec(queue="cpu", sleep_s=0.2, steps=1, fail=True, fail_message=f"boom-{RUN}",
                     salt=f"fail-{RUN}")
    state = asyncio.run(one_flow(spec))["state"]
    assert state.is_failed()
    with pytest.raises(CodeError) as info:
        state.result()
    err = info.value
    text = str(err)
    assert err.url in text and err.task_id in err.url
    assert f"boom-{RUN}" in text  # the status message and the log tail carry the exception
    assert any(f"boom-{RUN}" in line for line in err.log_tail), err.log_tail
    assert "Traceback" in text
    assert task_run_count(state) == 1  # not retried
    tasks = by_identity(api, spec)
    assert [t["status"] for t in tasks] == ["failed"]


# -- 3. infrastructure failure ----------------------------------------------------------------
def test_killed_task_process_is_retried_and_completes(stack: StackHandle, api: AdminClient) -> None:
    spec = DebugSpec(queue="gpu", sleep_s=6.0, steps=6, salt=f"kill-{RUN}")
    killed: dict[str, int] = {}

    async def scenario() -> Any:
        flow_task = asyncio.create_task(one_flow(spec))

        def running() -> str | None:
            tasks = by_identity(api, spec)
            return str(tasks[0]["id"]) if tasks and tasks[0]["status"] == "in_progress" else None

        deadline = time.monotonic() + 60
        while not flow_task.done():
            task_id = running()
            if task_id and not killed:
                pid = await asyncio.to_thread(kill_task_process, task_id)
                if pid:
                    killed[task_id] = pid
            if killed or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        return (await flow_task)["state"]

    state = asyncio.run(scenario())
    assert killed, "never found the task's process to kill"
    assert state.is_completed(), state
    result = state.result()
    tasks = by_identity(api, spec)
    assert [t["status"] for t in tasks] == ["failed", "completed"]
    assert str(tasks[0]["id"]) in killed and result.task_id == str(tasks[1]["id"])
    assert task_run_count(state) == 2


# -- 4. out of memory -> next queue -----------------------------------------------------------
def test_oom_escalates_to_next_queue(stack: StackHandle, api: AdminClient) -> None:
    spec = DebugSpec(queue="gpu", queue_escalation=("cpu",), oom_on_queues=("gpu",), sleep_s=0.5,
                     steps=1, salt=f"oom-{RUN}")
    state = asyncio.run(one_flow(spec))["state"]
    assert state.is_completed(), state
    result = state.result()
    assert result.queue == "cpu"
    tasks = by_identity(api, spec)
    assert [t["status"] for t in tasks] == ["failed", "completed"]
    # (status_message is overwritten by the agent after the script reported the OOM; the bridge
    # classifies from the log tail, as here)
    tail = api.call("events.get_task_log", {"task": tasks[0]["id"], "batch_size": 50})["events"]
    assert any("CUDA out of memory" in str(ev.get("msg", "")) for ev in tail)
    assert "queue:gpu" in tasks[0]["tags"] and "queue:cpu" in tasks[1]["tags"]
    assert task_run_count(state) == 2


# -- 9. bad input -----------------------------------------------------------------------------
def test_missing_queue_fails_before_creating(stack: StackHandle) -> None:
    creates = calls(stack, "tasks.create")
    state = asyncio.run(one_flow(DebugSpec(queue="no-such-queue", salt=f"noq-{RUN}")))["state"]
    assert state.is_failed()
    with pytest.raises(QueueNotFound) as info:
        state.result()
    assert "no-such-queue" in str(info.value) and "cpu" in str(info.value) and "gpu" in str(info.value)
    assert task_run_count(state) == 1
    assert calls(stack, "tasks.create") == creates


def test_unreachable_server_fails_within_seconds(stack: StackHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("CLEARML_API_HOST", url)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as info:
        asyncio.run(execute(DebugSpec(salt=f"unreach-{RUN}")))
    assert time.monotonic() - started < 5
    assert url in str(info.value)


def test_invalid_spec_creates_nothing(stack: StackHandle) -> None:
    with pytest.raises(ValueError):
        DebugSpec(sleep_s=-1)
    creates, lookups = calls(stack, "tasks.create"), calls(stack, "tasks.get_all")
    bad = DebugSpec.model_construct(sleep_s=-1.0, steps=0, queue="gpu")  # bypasses validation
    with pytest.raises(SpecError) as info:
        asyncio.run(execute(bad))
    assert "sleep_s" in str(info.value) and "steps" in str(info.value)
    assert calls(stack, "tasks.create") == creates and calls(stack, "tasks.get_all") == lookups


# -- 10. per-queue concurrency limit ----------------------------------------------------------
def test_queue_limit_serializes_tasks(stack: StackHandle, api: AdminClient) -> None:
    assert asyncio.run(ensure_queue_limits({"cpu": 1})) == {"cpu": 1}
    try:
        specs = [DebugSpec(queue="cpu", sleep_s=0.5, steps=1, salt=f"limit-{RUN}-{i}") for i in range(2)]
        out = asyncio.run(batch_flow(specs))
        assert [r.status for r in out["results"]] == ["completed", "completed"]
        first, second = sorted((by_identity(api, s)[0] for s in specs), key=lambda t: t["created"])
        # With a limit of 1 the second task is not even created before the first one ended.
        assert second["created"] >= first["completed"], (first, second)
    finally:
        asyncio.run(ensure_queue_limits({"cpu": 0}))
    assert asyncio.run(_limit_names()) == [] or f"{QUEUE_LIMIT_PREFIX}cpu" not in asyncio.run(_limit_names())


async def _limit_names() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return [lim.name for lim in await client.read_global_concurrency_limits()]


# -- 7. transient faults ----------------------------------------------------------------------
@pytest.fixture
def faults(stack: StackHandle) -> Iterator[Callable[..., dict[str, Any]]]:
    try:
        yield stack.faults
    finally:
        stack.faults(rate=0.0)


def test_transient_faults_lose_and_duplicate_nothing(stack: StackHandle, api: AdminClient,
                                                     faults: Callable[..., dict[str, Any]]) -> None:
    specs = batch_specs(f"faults-{RUN}", 4, sleep_s=0.5)
    faults(rate=0.1, kinds=["error", "drop", "delay"], delay_s=0.5, seed=4)
    poller = shared_poller()
    check_s, poller.entry_check_s = poller.entry_check_s, 3.0  # an agent's lost dequeue is put back soon
    try:
        out = asyncio.run(batch_flow(specs))
    finally:
        poller.entry_check_s = check_s
    injected = faults(rate=0.0)["injected"]
    print(f"\n[measure] faults injected: {injected}")
    assert sum(injected.values()) > 0
    assert [r.status for r in out["results"]] == ["completed"] * 4
    for spec, result in zip(specs, out["results"], strict=True):
        tasks = by_identity(api, spec)
        assert [t["status"] for t in tasks] == ["completed"], tasks  # nothing lost, nothing duplicated
        assert result.scalars["debug/value"] == spec.value


def test_lost_dequeue_is_put_back(stack: StackHandle, api: AdminClient) -> None:
    """An agent's `queues.get_next_task` whose answer is lost leaves the task `queued` in no queue;
    the poller puts it back. Made deterministic here: a queue no agent serves, popped by hand."""
    queue = f"orphan-{RUN}"
    queue_id = api.call("queues.create", {"name": queue})["id"]
    spec = DebugSpec(queue=queue, sleep_s=0.1, steps=1, salt=f"lost-{RUN}")
    poller = shared_poller()
    check_s, poller.entry_check_s = poller.entry_check_s, 1.0

    def entries() -> list[str]:
        return [e["task"] for e in api.call("queues.get_by_id", {"queue": queue_id})["queue"]["entries"]]

    async def scenario() -> None:
        running = asyncio.create_task(execute(spec))
        try:
            queued = await asyncio.to_thread(wait_for, "the task queued", lambda: entries(), 30)
            api.call("queues.get_next_task", {"queue": queue_id})  # the pop whose answer "got lost"
            assert entries() == [] and by_identity(api, spec)[0]["status"] == "queued"
            back = await asyncio.to_thread(wait_for, "the entry put back", lambda: entries(), 30)
            assert back == queued
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    try:
        before = poller.put_back
        asyncio.run(scenario())
        assert poller.put_back == before + 1
    finally:
        poller.entry_check_s = check_s
    assert [t["status"] for t in by_identity(api, spec)] == ["stopped"]  # the cancel reached it


# -- timeouts, the crash sweep, refresh and max age, concurrent orchestrators ------------------
def test_task_timeout_and_max_wait_stop_the_task(stack: StackHandle, api: AdminClient, idle_queue: str) -> None:
    spec = DebugSpec(queue=idle_queue, sleep_s=0.1, steps=1, salt=f"timeout-{RUN}")
    # 12 s: the timeout must land after create + enqueue (a lookup, the limit check, create,
    # enqueue, the duplicate check), which a loaded 2-core CI host can stretch to seconds.
    state = asyncio.run(timeout_flow(spec, 12.0))["state"]
    assert state.is_failed() and state.name == "TimedOut", state
    assert [t["status"] for t in by_identity(api, spec)] == ["stopped"]  # dequeued, not left queued
    assert task_run_count(state) == 1

    spec = DebugSpec(queue=idle_queue, sleep_s=0.1, steps=1, salt=f"max-wait-{RUN}")
    started = time.monotonic()
    with pytest.raises(TaskTimeout) as info:
        asyncio.run(execute(spec, max_wait_s=1.5))
    assert time.monotonic() - started < 10
    tasks = by_identity(api, spec)
    assert [t["status"] for t in tasks] == ["stopped"] and info.value.task_id == str(tasks[0]["id"])


def test_crash_sweep_stops_every_active_task_of_the_flow_run(stack: StackHandle, api: AdminClient,
                                                             idle_queue: str) -> None:
    from prefect.client.schemas.objects import StateType

    flow_run_id = uuid.uuid4()
    tag = f"{FLOW_RUN_TAG}{flow_run_id}"
    queued = asyncio.run(_submit(DebugSpec(queue=idle_queue, salt=f"sweep-q-{RUN}"), [tag]))
    running = asyncio.run(_submit(DebugSpec(queue=idle_queue, salt=f"sweep-r-{RUN}"), [tag]))
    other = asyncio.run(_submit(DebugSpec(queue=idle_queue, salt=f"sweep-o-{RUN}"), []))
    api.call("tasks.started", {"task": running})
    try:
        asyncio.run(stop_flow_run_tasks(None, SimpleNamespace(id=flow_run_id),
                                        SimpleNamespace(type=StateType.CRASHED, name="Crashed")))
        status = {t["id"]: t["status"] for t in by_tag(api, tag)}
        assert status == {queued: "stopped", running: "stopped"}, status
        assert api.call("tasks.get_by_id", {"task": other})["task"]["status"] == "queued"  # not this run's
    finally:
        api.call("tasks.stopped", {"task": other, "force": True})


def test_refresh_recomputes_and_max_age_ages_out_a_reuse(stack: StackHandle, api: AdminClient,
                                                         idle_queue: str) -> None:
    spec = DebugSpec(queue=idle_queue, sleep_s=0.1, steps=1, salt=f"age-{RUN}")
    done = asyncio.run(_submit(spec, []))
    run_by_hand(api, done)
    assert asyncio.run(execute(spec)).task_id == done  # reused: no task created
    with pytest.raises(TaskTimeout):  # a new task (on a queue nobody serves: stopped after 1 s)
        asyncio.run(execute(spec, refresh=True, max_wait_s=1.0))
    assert [t["status"] for t in by_identity(api, spec)] == ["completed", "stopped"]
    assert asyncio.run(execute(spec, max_age_s=3600)).task_id == done  # young enough: reused
    time.sleep(1.0)
    with pytest.raises(TaskTimeout):  # older than max_age_s: a new task
        asyncio.run(execute(spec, max_age_s=1.0, max_wait_s=1.0))
    assert [t["status"] for t in by_identity(api, spec)] == ["completed", "stopped", "stopped"]


def test_concurrent_orchestrators_keep_the_older_task(stack: StackHandle, api: AdminClient, idle_queue: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two orchestrators (own event loops, so own clients and identity locks, as two processes)
    both miss each other in the lookup and both create a task: one completes, the other is stopped
    before it ran, and both runs get the same result."""
    spec = DebugSpec(queue=idle_queue, sleep_s=0.1, steps=1, salt=f"race-{RUN}")
    both_looked = threading.Barrier(2, timeout=30)
    lookups: collections.Counter[int] = collections.Counter()
    create, find = ClearMLBackend.create, ClearMLBackend.find_by_identity

    async def create_after_both_looked(self: ClearMLBackend, *args: Any, **kwargs: Any) -> str:
        await asyncio.to_thread(both_looked.wait)
        return await create(self, *args, **kwargs)

    async def counted_find(self: ClearMLBackend, *args: Any, **kwargs: Any) -> list[TaskRecord]:
        lookups[threading.get_ident()] += 1
        return await find(self, *args, **kwargs)

    monkeypatch.setattr(ClearMLBackend, "create", create_after_both_looked)
    monkeypatch.setattr(ClearMLBackend, "find_by_identity", counted_find)
    outcomes: dict[int, Any] = {}

    def orchestrator(i: int) -> None:
        try:
            outcomes[i] = asyncio.run(execute(spec))
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=orchestrator, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        tasks = wait_for("one task kept, the duplicate stopped", lambda: (
            lambda ts: ts if sorted(t["status"] for t in ts) == ["queued", "stopped"] else None)(
            by_identity(api, spec)), 30)
        kept = next(t for t in tasks if t["status"] == "queued")
        run_by_hand(api, kept["id"])
    finally:
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "an orchestrator is still waiting"
    assert len(outcomes) == 2, outcomes
    assert all(isinstance(o, TaskResult) and o.task_id == kept["id"] for o in outcomes.values()), outcomes
    older, younger = by_identity(api, spec)  # by created
    assert older["id"] == kept["id"] and older["status"] == "completed"
    assert younger["status"] == "stopped" and not younger.get("started")  # never ran
    assert younger["status_message"].startswith(DUPLICATE_REASON)
    assert sorted(lookups.values()) == [2, 2]  # exactly one extra lookup per submission


# -- 6. SIGKILL the orchestrator, run again ---------------------------------------------------
def test_sigkilled_orchestrator_rerun_has_no_duplicates(stack: StackHandle, api: AdminClient,
                                                        prefect_server: PrefectServer) -> None:
    salt, n = f"crash-{RUN}", 3
    specs = batch_specs(salt, n, sleep_s=4.0)
    argv = [sys.executable, "-m", "tests.integration.bridge_flows", "run", salt, str(n), "4.0"]
    env = child_env(prefect_server.env)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for("every task created and one running",
                 lambda: all(by_identity(api, s) for s in specs)
                 and any(by_identity(api, s)[0]["status"] == "in_progress" for s in specs), 60)
    finally:
        proc.kill()  # SIGKILL: no hook, no finally, no stop
        proc.wait()
    before = {s.identity(): [t["status"] for t in by_identity(api, s)] for s in specs}
    assert all(len(v) == 1 for v in before.values()), before
    assert any(v[0] in ACTIVE for v in before.values()), before

    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    line = next(ln for ln in rerun.stdout.splitlines() if ln.startswith("RESULTS "))
    results = [TaskResult.model_validate(r) for r in json.loads(line[len("RESULTS "):])]
    assert [r.status for r in results] == ["completed"] * n  # every result delivered
    for spec, result in zip(specs, results, strict=True):
        tasks = by_identity(api, spec)
        assert len(tasks) == 1, tasks  # zero duplicates
        assert result.task_id == str(tasks[0]["id"])

    # The rerun attached to the tasks still active and tagged them with its own run ids, so ITS
    # cancel/crash sweep covers them (the killed run's sweep never ran).
    rerun_tag = FLOW_RUN_TAG + next(ln.split()[1] for ln in rerun.stdout.splitlines() if ln.startswith("FLOW_RUN "))
    attached = set(re.findall(r"attaching to ClearML task (\w+)", rerun.stdout + rerun.stderr))
    assert attached, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for spec in specs:
        task = by_identity(api, spec)[0]
        flow_tags = [t for t in task["tags"] if t.startswith(FLOW_RUN_TAG)]
        if str(task["id"]) in attached:
            assert rerun_tag in flow_tags and len(flow_tags) == 2, task["tags"]
            assert len([t for t in task["tags"] if t.startswith(TASK_RUN_TAG)]) == 2, task["tags"]
        else:  # reused after it completed: left as it was
            assert rerun_tag not in flow_tags and len(flow_tags) == 1, task["tags"]


# -- 5. cancel a deployment run from the CLI ---------------------------------------------------
def test_cli_cancel_stops_every_task_of_the_run(stack: StackHandle, api: AdminClient,
                                                prefect_server: PrefectServer) -> None:
    env = child_env(prefect_server.env)
    name = f"hold-{RUN}"
    log = prefect_server.home / f"serve-{name}.log"
    server = serve("tests.integration.bridge_flows", name, env, log)
    try:
        deployment = asyncio.run(deployment_id(f"bridge-hold/{name}", server, log))
        flow_run_id = asyncio.run(start_run(deployment, {"salt": f"cancel-{RUN}", "n": 3}))
        tag = f"{FLOW_RUN_TAG}{flow_run_id}"

        def all_submitted() -> bool:
            tasks = by_tag(api, tag)
            statuses = [t["status"] for t in tasks]
            return len(tasks) == 3 and "in_progress" in statuses and all(s in ACTIVE - {"created"} for s in statuses)

        wait_for("3 tasks of the run queued or running", all_submitted, 90)
        statuses_before = sorted(t["status"] for t in by_tag(api, tag))
        started = time.monotonic()
        cli = subprocess.run([str(REPO / ".venv/bin/prefect"), "flow-run", "cancel", flow_run_id],
                             env=env, capture_output=True, text=True, timeout=60)
        cli_done = time.monotonic()
        assert cli.returncode == 0, cli.stdout + cli.stderr
        wait_for("every task of the run stopped or dequeued",
                 lambda: all(t["status"] not in ACTIVE for t in by_tag(api, tag)), 30, every_s=0.1)
        stopped = time.monotonic()
        print(f"\n[measure] cancel: tasks before {statuses_before}; CLI took {cli_done - started:.1f} s; "
              f"all stopped {stopped - cli_done:.1f} s after the CLI returned "
              f"({stopped - started:.1f} s after it was invoked); after: "
              f"{sorted(t['status'] for t in by_tag(api, tag))}")
        assert stopped - cli_done <= 5.0
        # An agent that popped a task just before the cancel forces it to in_progress when it starts
        # it; the stop must hold all the same (the bridge watches such a task and stops it again).
        time.sleep(20)
        after = by_tag(api, tag)
        assert all(t["status"] not in ACTIVE for t in after), after
    finally:
        stop_process_group(server)
