"""Task lifecycle end to end: the real SDK creates, parameterises and enqueues tasks, the real
clearml-agent runs them, and the stand-in's status machine ends them completed, failed or stopped.

Also covered: dequeue (back to the status before enqueue), queries by project/tag/status with
`-tag` exclusion, clone + enqueue, the raw API's error answers for bad ids and bodies, and that
every response parsed with the SDK's own response classes.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.stacks import StackHandle

pytestmark = pytest.mark.integration

PROJECT = "lifecycle-tests"
RUN_DEADLINE_S = 240.0
TERMINAL = {"completed", "failed", "stopped", "closed", "published"}
HOLD_QUEUE = "lifecycle-hold"  # no agent listens here: tasks stay queued

# The task script: reads its parameters and configuration back, reports a scalar, then behaves as
# its "Args/mode" parameter says (ok, fail, or sleep with a heartbeat file until killed).
SCRIPT = textwrap.dedent(
    """
    import json
    import time
    from pathlib import Path

    from clearml import Task

    task = Task.init()
    params = task.get_parameters()
    config = task.get_configuration_object("run_config")
    out = Path(params["Args/out"])
    out.write_text(json.dumps({"params": params, "config": config, "id": task.id}))
    task.get_logger().report_scalar(title="loss", series="train", value=0.25, iteration=1)
    print("lifecycle task started", task.id, flush=True)
    mode = params.get("Args/mode", "ok")
    if mode == "fail":
        raise RuntimeError("lifecycle deliberate failure 42")
    if mode == "sleep":
        beat = Path(params["Args/heartbeat"])
        for i in range(100000):
            beat.write_text(str(time.time()))
            time.sleep(0.5)
    print("lifecycle task done", flush=True)
    """
)


# -- helpers ---------------------------------------------------------------------------------
def _wait_status(task: Any, wanted: set[str], deadline_s: float = RUN_DEADLINE_S) -> str:
    deadline = time.monotonic() + deadline_s
    status = str(task.get_status())
    while status not in wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task.id} still {status!r} after {deadline_s:.0f} s, wanted {wanted}")
        time.sleep(1)
        status = str(task.get_status())
    return status


def _agent_logs(stack: StackHandle) -> str:
    logs = sorted((stack.data_dir / "logs").glob("agent-*.log"))
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _create(tmp_path: Path, name: str, mode: str, **extra: Any) -> tuple[Any, Path]:
    from clearml import Task

    script = tmp_path / "lifecycle_task.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}-out.json"
    task: Any = Task.create(project_name=PROJECT, task_name=name, script=str(script))
    task.set_parameters({"Args/mode": mode, "Args/out": str(out), "Args/lr": 0.01, **extra})
    task.set_configuration_object(name="run_config", config_text="batch: 4\nseed: 7\n")
    return task, out


class Api:
    """The raw REST API, for what the SDK hides (error answers, queue entries)."""

    def __init__(self, stack: StackHandle) -> None:
        self._http = httpx.Client(base_url=stack.api_url, timeout=10)
        creds = (stack.env["CLEARML_API_ACCESS_KEY"], stack.env["CLEARML_API_SECRET_KEY"])
        res = self._http.post("/auth.login", auth=creds)
        self._headers = {"Authorization": f"Bearer {res.json()['data']['token']}"}

    def raw(self, name: str, body: dict[str, Any]) -> httpx.Response:
        return self._http.post(f"/{name}", json=body, headers=self._headers)

    def call(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        res = self.raw(name, body)
        assert res.status_code == 200, f"{name}: {res.status_code} {res.text}"
        return dict(res.json()["data"])

    def error(self, name: str, body: dict[str, Any]) -> str:
        res = self.raw(name, body)
        assert res.status_code == 400, f"{name} should fail with 400, got {res.status_code}: {res.text}"
        return str(res.json()["meta"]["result_msg"])

    def tasks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.call("tasks.get_all", body)["tasks"])

    def queue_id(self, name: str) -> str:
        found = self.call("queues.get_all", {"name": f"^{name}$"})["queues"]
        return str(found[0]["id"]) if found else str(self.call("queues.create", {"name": name})["id"])

    def entries(self, queue_id: str) -> list[str]:
        return [e["task"] for e in self.call("queues.get_by_id", {"queue": queue_id})["queue"]["entries"]]


@pytest.fixture(autouse=True)
def no_parse_failures(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """The SDK only logs responses it cannot parse; fail the test that produced one."""
    yield
    out, err = capfd.readouterr()
    sys.stdout.write(out)
    sys.stderr.write(err)
    assert "Failed parsing response" not in out + err


@pytest.fixture(scope="module")
def api(local_stack: StackHandle) -> Api:
    return Api(local_stack)


@pytest.fixture(scope="module")
def tag() -> str:
    return f"lc-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def completed_run(
    local_stack: StackHandle, tmp_path_factory: pytest.TempPathFactory, tag: str
) -> Iterator[Any]:
    """One task run to completion by the agent, shared by the tests that read it back."""
    from clearml import Task

    tmp_path = tmp_path_factory.mktemp("completed")
    task, out = _create(tmp_path, "lifecycle ok", "ok")
    task.add_tags([tag])
    Task.enqueue(task, queue_name="cpu")
    status = _wait_status(task, TERMINAL)
    assert status == "completed", f"task ended {status}: {task.get_status_message()}"
    yield task, out


# -- flows -----------------------------------------------------------------------------------
def test_created_task_runs_to_completion_with_its_parameters(completed_run: Any) -> None:
    from clearml import Task

    task, out = completed_run
    seen = json.loads(out.read_text())
    assert seen["id"] == task.id
    assert seen["params"]["Args/mode"] == "ok"
    assert seen["params"]["Args/lr"] == "0.01"
    assert "batch: 4" in seen["config"]

    fresh: Any = Task.get_task(task_id=task.id)
    assert fresh.get_parameters()["Args/lr"] == "0.01"
    assert "seed: 7" in fresh.get_configuration_object("run_config")
    assert fresh.data.status_reason  # the agent says why it completed
    assert fresh.data.started is not None and fresh.data.completed is not None
    assert fresh.get_last_scalar_metrics()["loss"]["train"]["last"] == pytest.approx(0.25)


def test_failing_script_ends_failed_with_the_error_visible(local_stack: StackHandle, tmp_path: Path) -> None:
    from clearml import Task

    task, _ = _create(tmp_path, "lifecycle fail", "fail")
    Task.enqueue(task, queue_name="cpu")
    assert _wait_status(task, TERMINAL) == "failed"
    task.reload()
    # Through the API only, as a user on another machine would see it: why it failed...
    reason = f"{task.data.status_reason} {task.data.status_message}"
    assert "exit code" in reason, reason
    status, message = task.get_status_message()
    assert str(status) == "failed" and message == task.data.status_message and message, message
    # ...and the script's own error in the task's console log (the agent may still be sending it).
    deadline = time.monotonic() + 30
    while True:
        console = "\n".join(task.get_reported_console_output(number_of_reports=500))
        if "RuntimeError: lifecycle deliberate failure 42" in console:
            break
        assert time.monotonic() < deadline, f"the script's error never reached the task's log:\n{console[-3000:]}"
        time.sleep(1)
    assert "Traceback (most recent call last)" in console
    assert console.index("lifecycle task started") < console.index("lifecycle deliberate failure 42")


def test_running_task_marked_stopped_is_killed_by_the_agent(local_stack: StackHandle, tmp_path: Path) -> None:
    from clearml import Task

    beat = tmp_path / "heartbeat"
    task, _ = _create(tmp_path, "lifecycle sleep", "sleep", **{"Args/heartbeat": str(beat)})
    Task.enqueue(task, queue_name="cpu")
    _wait_status(task, {"in_progress"})
    deadline = time.monotonic() + RUN_DEADLINE_S
    while not beat.exists():
        assert time.monotonic() < deadline, "the sleeping script never started"
        assert task.get_status() == "in_progress"
        time.sleep(0.5)

    task.mark_stopped()
    assert task.get_status() == "stopped"
    # The agent's abort check sees the status and kills the script: the heartbeat stops.
    deadline = time.monotonic() + 60
    while True:
        last = beat.stat().st_mtime
        time.sleep(3)
        if beat.stat().st_mtime == last:
            break
        assert time.monotonic() < deadline, "the script kept running after mark_stopped()"
    assert task.get_status() == "stopped"
    deadline = time.monotonic() + 30
    while f"Running task '{task.id}' (user aborted)" not in _agent_logs(local_stack):
        assert time.monotonic() < deadline, "the agent never reported the abort"
        time.sleep(1)


def test_queued_task_dequeues_and_stops(local_stack: StackHandle, api: Api, tmp_path: Path) -> None:
    from clearml import Task

    hold = api.queue_id(HOLD_QUEUE)
    task, _ = _create(tmp_path, "lifecycle queued", "ok")
    Task.enqueue(task, queue_name=HOLD_QUEUE)
    assert task.get_status() == "queued"
    assert api.entries(hold) == [task.id]
    assert api.call("tasks.get_by_id", {"task": task.id})["task"]["execution"]["queue"] == hold

    answer = Task.dequeue(task)
    assert answer.dequeued == 1 and answer.fields["status"] == "created"
    assert task.get_status() == "created"
    assert api.entries(hold) == []

    # A stopped task goes back to stopped when dequeued; stopping a queued task dequeues it.
    Task.enqueue(task, queue_id=hold)
    task.mark_stopped()
    assert task.get_status() == "stopped"
    assert api.entries(hold) == []
    Task.enqueue(task, queue_id=hold)
    Task.dequeue(task)
    assert task.get_status() == "stopped"


def test_get_tasks_filters_and_clone_runs_again(completed_run: Any, tag: str) -> None:
    from clearml import Task
    from clearml.backend_interface.session import SendError

    task, _ = completed_run
    found: list[Any] = Task.get_tasks(project_name=PROJECT, tags=[tag], task_filter={"status": ["completed"]})
    assert [t.id for t in found] == [task.id]
    assert Task.get_tasks(project_name=PROJECT, tags=[tag], task_filter={"status": ["failed"]}) == []
    excluded: list[Any] = Task.get_tasks(project_name=PROJECT, tags=[f"-{tag}"])
    assert excluded and task.id not in {t.id for t in excluded}
    by_name: list[Any] = Task.get_tasks(project_name=PROJECT, task_name="lifecycle ok")
    assert task.id in {t.id for t in by_name}

    with pytest.raises(SendError, match="Invalid task status"):
        Task.enqueue(task, queue_name="cpu")  # completed is final until reset

    clone: Any = Task.clone(source_task=task, name="lifecycle ok (clone)")
    assert clone.get_status() == "created"
    assert clone.get_parameters()["Args/lr"] == "0.01"
    Task.enqueue(clone, queue_name="cpu")
    assert _wait_status(clone, TERMINAL) == "completed"
    assert Task.get_task(task_id=clone.id).get_parameters() == Task.get_task(task_id=task.id).get_parameters()


# -- the raw API: filters, projections and errors ----------------------------------------------
def test_get_all_filters_projection_and_paging(api: Api, completed_run: Any, tag: str) -> None:
    task, _ = completed_run
    ids = [api.call("tasks.create", {"name": f"lc page {i}", "type": "testing", "tags": [tag, f"p{i}"]})["id"]
           for i in range(5)]
    page = api.tasks({"tags": [tag], "name": "^lc page", "order_by": ["name"], "page": 1, "page_size": 2,
                      "only_fields": ["id", "name", "script.entry_point"]})
    assert [t["name"] for t in page] == ["lc page 2", "lc page 3"]
    assert all(set(t) <= {"id", "name", "script"} for t in page)
    excluded = api.tasks({"tags": [tag, "-p0", "-p1"], "type": ["testing"]})
    assert {t["id"] for t in excluded} == set(ids[2:])
    dotted = api.tasks({"id": [task.id], "only_fields": ["status", "script.entry_point"]})
    assert dotted == [{"id": task.id, "status": "completed", "script": {"entry_point": "lifecycle_task.py"}}]
    assert api.tasks({"id": ids, "status": ["completed"]}) == []
    api.call("tasks.archive", {"tasks": ids[:1]})
    active = api.tasks({"id": ids, "system_tags": ["-archived"], "only_fields": ["id"]})
    assert {t["id"] for t in active} == set(ids[1:])


def test_bad_ids_and_bodies_are_400_with_a_message(api: Api, completed_run: Any) -> None:
    task, _ = completed_run
    assert "Invalid task id" in api.error("tasks.get_by_id", {"task": "no-such-task"})
    assert "task" in api.error("tasks.get_by_id", {})
    assert "Invalid task status" in api.error("tasks.enqueue", {"task": task.id, "queue_name": "cpu"})
    assert "Invalid task status" in api.error("tasks.dequeue", {"task": task.id})
    assert "type" in api.error("tasks.create", {"name": "x", "type": "not-a-type"})
    assert "Invalid queue id" in api.error("queues.get_by_id", {"queue": "cpu"})  # names are not ids
    bad_project = {"name": "x", "type": "training", "project": "nope"}
    assert "Invalid project id" in api.error("tasks.create", bad_project)
    assert "must be" in api.error("tasks.edit_hyper_params", {"task": task.id, "hyperparams": "nope"})
    assert "Invalid regular expression" in api.error("tasks.get_all", {"name": "(unclosed"})


def test_reset_makes_a_completed_task_enqueueable(api: Api) -> None:
    hold = api.queue_id(HOLD_QUEUE)
    task_id = api.call("tasks.create", {"name": "lc reset", "type": "training"})["id"]
    api.call("tasks.started", {"task": task_id})
    api.call("tasks.completed", {"task": task_id})
    api.error("tasks.reset", {"task": task_id})  # completed needs force
    reset = api.call("tasks.reset", {"task": task_id, "force": True})
    assert reset["fields"]["status"] == "created"
    queued = api.call("tasks.enqueue", {"task": task_id, "queue": hold})
    assert queued["queued"] == 1 and queued["fields"]["execution.queue"] == hold
    assert task_id in api.entries(hold)
    api.call("tasks.delete", {"task": task_id})
    assert task_id not in api.entries(hold)


def test_agent_runs_left_no_contract_errors(local_stack: StackHandle) -> None:
    stats = local_stack.stats()
    assert stats["contract_errors"] == [], "responses the SDK's own classes could not parse"
    assert not stats.get("unsupported"), f"endpoints the stand-in lacks: {stats.get('unsupported')}"
    assert "Failed parsing response" not in _agent_logs(local_stack)
