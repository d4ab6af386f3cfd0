"""The stand-in's status machine, in process: which status endpoints each status accepts, what
`force` lifts, and how queue entries follow the task (enqueue adds one, leaving `queued` any way
removes it, dequeue restores the status the task had before it was enqueued)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from clearml_standin.api import Credentials, StandInApp
from clearml_standin.store import Store

CREDS = Credentials(access_key="AK", secret_key="SK", token_secret="a-test-token-secret-of-32-bytes-or-more")
STATUSES = ("created", "queued", "in_progress", "stopped", "failed", "completed", "published")
HOLD = "transitions-hold"


class Api:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        basic = base64.b64encode(b"AK:SK").decode()
        res = client.post("/auth.login", headers={"Authorization": f"Basic {basic}"}, json={})
        self.headers = {"Authorization": f"Bearer {res.json()['data']['token']}"}

    def raw(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        res = self.client.post(f"/{name}", headers=self.headers, json=body)
        return res.status_code, res.json()

    def call(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        code, payload = self.raw(name, body)
        assert code == 200, f"{name} {body}: {code} {payload['meta']['result_msg']}"
        return dict(payload["data"])

    def refused(self, name: str, body: dict[str, Any]) -> str:
        code, payload = self.raw(name, body)
        assert code == 400, f"{name} {body} should be refused, got {code}: {payload}"
        assert payload["meta"]["result_subcode"] in (110, 111), payload["meta"]  # invalid status / published
        return str(payload["meta"]["result_msg"])

    def status(self, task_id: str) -> str:
        return str(self.call("tasks.get_by_id", {"task": task_id})["task"]["status"])

    def entries(self, queue_id: str) -> list[str]:
        return [e["task"] for e in self.call("queues.get_by_id", {"queue": queue_id})["queue"]["entries"]]

    def task_in(self, status: str, queue_id: str) -> str:
        """A new task brought to `status` through the endpoints a client would use."""
        task_id = str(self.call("tasks.create", {"name": f"t-{status}", "type": "training"})["id"])
        steps: dict[str, list[tuple[str, dict[str, Any]]]] = {
            "created": [],
            "queued": [("tasks.enqueue", {"queue": queue_id})],
            "in_progress": [("tasks.started", {})],
            "stopped": [("tasks.started", {}), ("tasks.stopped", {})],
            "failed": [("tasks.started", {}), ("tasks.failed", {})],
            "completed": [("tasks.started", {}), ("tasks.completed", {})],
            "published": [("tasks.started", {}), ("tasks.completed", {}), ("tasks.publish", {})],
        }
        for name, body in steps[status]:
            self.call(name, {"task": task_id, **body})
        assert self.status(task_id) == status
        return task_id


@pytest.fixture()
def api(tmp_path: Path) -> Api:
    app = StandInApp(Store(tmp_path / "db.sqlite"), CREDS, api_url="http://api", files_url="http://files",
                     web_url="http://web", validate=True)
    return Api(TestClient(app.app))


@pytest.fixture()
def hold(api: Api) -> str:
    return str(api.call("queues.create", {"name": HOLD})["id"])


# What each status endpoint accepts without force (everything else is refused with a 400).
ALLOWED: dict[str, set[str]] = {
    "tasks.enqueue": {"created", "stopped", "failed"},
    "tasks.started": {"created", "queued", "in_progress"},
    "tasks.stopped": {"created", "queued", "in_progress", "stopped"},
    "tasks.failed": {"created", "queued", "in_progress", "stopped", "failed"},
    "tasks.completed": {"in_progress", "stopped"},
}
RESULT: dict[str, str] = {"tasks.enqueue": "queued", "tasks.started": "in_progress", "tasks.stopped": "stopped",
                          "tasks.failed": "failed", "tasks.completed": "completed"}


@pytest.mark.parametrize("endpoint", sorted(ALLOWED))
@pytest.mark.parametrize("status", STATUSES)
def test_status_matrix_without_force(api: Api, hold: str, endpoint: str, status: str) -> None:
    task_id = api.task_in(status, hold)
    body: dict[str, Any] = {"task": task_id, **({"queue": hold} if endpoint == "tasks.enqueue" else {})}
    if status in ALLOWED[endpoint]:
        assert api.call(endpoint, body)["fields"]["status"] == RESULT[endpoint]
        assert api.status(task_id) == RESULT[endpoint]
    else:
        msg = api.refused(endpoint, body)
        assert task_id in msg and (status in msg or "published" in msg)
        assert api.status(task_id) == status  # a refused change leaves the task as it was
    # Only a queued task has a queue entry, whatever happened.
    assert (task_id in api.entries(hold)) == (api.status(task_id) == "queued")


@pytest.mark.parametrize("endpoint", ["tasks.started", "tasks.stopped", "tasks.failed"])
def test_force_lifts_the_rule_but_not_for_published(api: Api, hold: str, endpoint: str) -> None:
    done = api.task_in("completed", hold)
    assert api.call(endpoint, {"task": done, "force": True})["fields"]["status"] == RESULT[endpoint]
    published = api.task_in("published", hold)
    assert "published" in api.refused(endpoint, {"task": published, "force": True})
    assert api.status(published) == "published"


def test_enqueue_has_no_force_completed_stays_final(api: Api, hold: str) -> None:
    done = api.task_in("completed", hold)
    assert "reset" in api.refused("tasks.enqueue", {"task": done, "queue": hold, "force": True})
    assert api.entries(hold) == []


@pytest.mark.parametrize(
    ("leave", "expected"),
    [
        (lambda api, t: api.call("tasks.stopped", {"task": t}), "stopped"),
        (lambda api, t: api.call("tasks.stop", {"task": t}), "stopped"),
        (lambda api, t: api.call("tasks.failed", {"task": t}), "failed"),
        (lambda api, t: api.call("tasks.dequeue", {"task": t}), "created"),
        (lambda api, t: api.call("tasks.reset", {"task": t}), "created"),
        (lambda api, t: api.call("tasks.archive", {"tasks": [t]}), "created"),
    ],
    ids=["stopped", "stop", "failed", "dequeue", "reset", "archive"],
)
def test_leaving_queued_removes_the_queue_entry(
    api: Api, hold: str, leave: Callable[[Api, str], Any], expected: str
) -> None:
    task_id = api.task_in("queued", hold)
    assert api.entries(hold) == [task_id]
    assert api.call("tasks.get_by_id", {"task": task_id})["task"]["execution"]["queue"] == hold
    leave(api, task_id)
    assert api.status(task_id) == expected
    assert api.entries(hold) == []
    assert "queue" not in (api.call("tasks.get_by_id", {"task": task_id})["task"].get("execution") or {})
    # and an agent polling the queue gets nothing
    assert not api.call("queues.get_next_task", {"queue": hold}).get("entry")


@pytest.mark.parametrize("before", ["created", "stopped", "failed"])
def test_dequeue_returns_to_the_status_before_enqueue(api: Api, hold: str, before: str) -> None:
    task_id = api.task_in(before, hold)
    api.call("tasks.enqueue", {"task": task_id, "queue": hold})
    answer = api.call("tasks.dequeue", {"task": task_id})
    assert answer["dequeued"] == 1 and answer["fields"]["status"] == before
    assert api.status(task_id) == before
    assert api.entries(hold) == []
    # twice in a row: the remembered status is not stale from an earlier round
    api.call("tasks.enqueue", {"task": task_id, "queue": hold})
    api.call("tasks.dequeue", {"task": task_id})
    assert api.status(task_id) == before


@pytest.mark.parametrize("status", [s for s in STATUSES if s != "queued"])
def test_dequeue_refuses_tasks_that_are_not_queued(api: Api, hold: str, status: str) -> None:
    task_id = api.task_in(status, hold)
    api.refused("tasks.dequeue", {"task": task_id})
    assert api.status(task_id) == status


def test_stop_request_on_a_running_task_asks_the_agent(api: Api, hold: str) -> None:
    """`tasks.stop` on in_progress only flags it (status_message 'stopping'); the agent ends it."""
    task_id = api.task_in("in_progress", hold)
    fields = api.call("tasks.stop", {"task": task_id})["fields"]
    assert fields["status"] == "in_progress" and fields["status_message"] == "stopping"
    assert api.call("tasks.stopped", {"task": task_id})["fields"]["status"] == "stopped"


def test_agent_pull_then_started_leaves_no_entry(api: Api, hold: str) -> None:
    task_id = api.task_in("queued", hold)
    entry = api.call("queues.get_next_task", {"queue": hold})["entry"]
    assert entry["task"] == task_id
    api.call("tasks.started", {"task": task_id})
    assert api.status(task_id) == "in_progress" and api.entries(hold) == []


# -- the non-responsive task watchdog ---------------------------------------------------------------
@pytest.fixture()
def standin(tmp_path: Path) -> StandInApp:
    return StandInApp(Store(tmp_path / "db.sqlite"), CREDS, api_url="http://api", files_url="http://files",
                      web_url="http://web", validate=True)


def test_watchdog_stops_only_silent_running_tasks(standin: StandInApp) -> None:
    from clearml_standin.services.tasks import NON_RESPONSIVE_MESSAGE, stop_non_responsive

    api = Api(TestClient(standin.app))
    hold = str(api.call("queues.create", {"name": HOLD})["id"])
    silent = api.task_in("in_progress", hold)
    pinged = api.task_in("in_progress", hold)
    reported = api.task_in("in_progress", hold)
    others = {s: api.task_in(s, hold) for s in ("created", "queued", "stopped", "completed")}
    time.sleep(0.3)
    api.call("tasks.ping", {"task": pinged})
    api.call("workers.status_report", {"worker": "w1", "timestamp": 1, "task": reported})

    assert stop_non_responsive(standin.ctx(), threshold_s=0.2) == [silent]
    task = api.call("tasks.get_by_id", {"task": silent})["task"]
    assert task["status"] == "stopped" and task["status_message"] == NON_RESPONSIVE_MESSAGE
    assert "non-responsive" in task["status_reason"]
    for task_id in (pinged, reported):
        assert api.status(task_id) == "in_progress"
    for status, task_id in others.items():
        assert api.status(task_id) == status
    # A server that only just started gives running tasks the whole threshold before judging them.
    assert stop_non_responsive(standin.ctx(), threshold_s=0.2, alive_since=time.time()) == []


def test_watchdog_loop_runs_with_a_tiny_threshold(standin: StandInApp) -> None:
    from clearml_standin.server import watch_non_responsive

    api = Api(TestClient(standin.app))
    hold = str(api.call("queues.create", {"name": HOLD})["id"])
    task_id = api.task_in("in_progress", hold)

    def status() -> str:  # read the store directly: no request thread racing the watchdog
        return str((standin.store.get("task", task_id) or {}).get("status"))

    async def run() -> None:
        stop = asyncio.Event()
        job = asyncio.create_task(watch_non_responsive(standin, 0.2, stop))
        deadline = time.monotonic() + 5
        while status() != "stopped" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(job, timeout=2)

    asyncio.run(run())
    assert api.status(task_id) == "stopped"


def test_watchdog_threshold_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from clearml_standin import server

    monkeypatch.delenv(server.NON_RESPONSIVE_ENV, raising=False)
    assert server.non_responsive_default() == 7200
    monkeypatch.setenv(server.NON_RESPONSIVE_ENV, "30")
    assert server.non_responsive_default() == 30
    monkeypatch.setenv(server.NON_RESPONSIVE_ENV, "soon")
    assert server.non_responsive_default() == 7200
