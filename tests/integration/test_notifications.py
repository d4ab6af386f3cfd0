"""Notifications and events against a real `prefect server start` (its triggers and actions
services send the messages) and a local webhook receiver:

- `automation notify setup` is idempotent; `status` and `remove` see what it made;
- a failed flow run -> the receiver gets a Slack-compatible `{"text": ...}` naming the run;
- `automation.regression.detected` emitted in a flow run (as `finish_run` does) -> the receiver
  gets the failing cells;
- `clearml.task.*` events emitted from a foreign thread in a copy of the task run's context (how the
  bridge's poller calls back) land in the event feed related to the flow run and the task run; and
  from a real bridge run on the local stack, once the bridge calls `emit_task_event`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from uuid import uuid4

import pytest
from prefect import flow, task
from typer.testing import CliRunner

from automation.clearml.records import TaskRecord
from automation.cli import app
from flows.events import emit_regression, emit_task_event
from testing.prefect_server import PrefectServer
from testing.stacks import StackHandle
from tests.report_samples import sample_report

pytestmark = pytest.mark.integration

DELIVERY_DEADLINE_S = 60.0
class Receiver:
    """A webhook on 127.0.0.1 that records every POST body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                with receiver.cond:
                    receiver.bodies.append({"path": self.path, "body": body,
                                            "content_type": self.headers.get("Content-Type")})
                    receiver.cond.notify_all()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, *needles: str, deadline_s: float = DELIVERY_DEADLINE_S) -> str:
        """The first message text containing every needle."""
        end = time.monotonic() + deadline_s
        with self.cond:
            while True:
                for item in self.bodies:
                    text = str(item["body"].get("text", ""))
                    if all(n in text for n in needles):
                        return text
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no message with {needles} within {deadline_s} s; got: {self.bodies}")
                self.cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def notify_name(prefect_server: PrefectServer) -> Iterator[str]:
    """A name unique to this test (the Prefect server is shared by the session); removed afterwards,
    so no automation outlives its receiver."""
    name = f"test-notify-{uuid4().hex[:8]}"
    yield name
    CliRunner().invoke(app, ["notify", "remove", "--name", name])


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return result.output


def _status(name: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["notify", "status", "--name", name, "--json"])
    return dict(json.loads(result.output))


def test_setup_is_idempotent_and_removable(notify_name: str, receiver: Receiver) -> None:
    _cli("notify", "setup", "--webhook", receiver.url, "--name", notify_name)
    first = _status(notify_name)
    assert first["block_id"] and set(first["automations"]) == {"failure", "regression"}
    assert all(a["enabled"] for a in first["automations"].values())

    _cli("notify", "setup", "--webhook", receiver.url, "--name", notify_name)  # again: same objects
    assert _status(notify_name) == first
    table = _cli("notify", "status", "--name", notify_name)
    assert f"{notify_name}-flow-run-failed" in table and f"{notify_name}-regression" in table
    assert table.count("enabled") == 2 and receiver.url not in table  # the webhook URL stays secret

    _cli("notify", "setup", "--webhook", receiver.url, "--name", notify_name, "--no-on-failure")
    assert set(_status(notify_name)["automations"]) == {"regression"}

    _cli("notify", "test", "--name", notify_name, "--message", "hello from the test")
    text = receiver.wait_for("hello from the test", deadline_s=10)
    assert receiver.bodies[-1]["path"] == "/hook" and receiver.bodies[-1]["content_type"] == "application/json"
    assert text == "llm-automation\nhello from the test"

    assert "removed: automation" in _cli("notify", "remove", "--name", notify_name)
    result = CliRunner().invoke(app, ["notify", "status", "--name", notify_name, "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["automations"] == {}


def test_setup_needs_a_prefect_api(monkeypatch: pytest.MonkeyPatch, prefect_server: PrefectServer) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        result = CliRunner().invoke(app, ["notify", "setup", "--webhook", "http://127.0.0.1:9/hook"])
    assert result.exit_code == 1 and "PREFECT_API_URL is not set" in result.output


@flow(name="notify-failing-flow")
async def failing_flow(marker: str) -> None:
    raise RuntimeError(f"boom {marker}")


def test_failed_flow_run_notifies(notify_name: str, receiver: Receiver) -> None:
    _cli("notify", "setup", "--webhook", receiver.url, "--name", notify_name, "--no-on-regression")
    marker = uuid4().hex[:8]
    started = time.monotonic()
    state: Any = asyncio.run(cast(Any, failing_flow)(marker, return_state=True))
    assert state.is_failed()

    async def run_name() -> str:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return str((await client.read_flow_run(state.state_details.flow_run_id)).name)

    name = asyncio.run(run_name())
    text = receiver.wait_for(f"Prefect flow run {name} failed")
    print(f"failure notification after {time.monotonic() - started:.1f} s:\n{text}")
    assert f"Flow run {name} of flow notify-failing-flow entered Failed" in text
    assert f"boom {marker}" in text  # the state message
    assert f"/runs/flow-run/{state.state_details.flow_run_id}" in text  # the UI link


@flow(name="notify-regression-flow")
async def regression_flow(title: str) -> list[str]:
    from prefect.runtime import flow_run

    report = sample_report(title=title, flow_run_id=str(flow_run.id), ttft_factor=1.0)
    return emit_regression(report)


def test_regression_notifies(notify_name: str, receiver: Receiver) -> None:
    _cli("notify", "setup", "--webhook", receiver.url, "--name", notify_name, "--no-on-failure")
    title = f"nightly {uuid4().hex[:8]}"
    started = time.monotonic()
    emitted = asyncio.run(regression_flow(title))
    assert emitted == ["automation.report.published", "automation.regression.detected"]
    text = receiver.wait_for(f"Regression detected: {title}")
    print(f"regression notification after {time.monotonic() - started:.1f} s:\n{text}")
    lines = text.splitlines()
    assert lines[1] == "1 cell(s) of nightly-test failed their gates:"
    assert lines[2].startswith("- hf:org/tiny-llama w8a8 (tiny/smoke): ")
    assert "tiny/acc recovery 0.500 < 0.95" in lines[2]
    assert lines[-1].startswith("Report: http://prefect.example/runs/flow-run/")


async def _events_about(resource_ids: list[str] | None = None, related_id: str | None = None,
                        prefix: str = "clearml.task.", want: int = 1, last: str | None = None,
                        deadline_s: float = DELIVERY_DEADLINE_S) -> list[Any]:
    """Events read back from the server's feed (`POST /api/events/filter`), oldest first, polled
    until `want` arrived (and one named `last`, when given: the persister writes in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventRelatedFilter,
        EventResourceFilter,
    )

    flt = EventFilter(occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(hours=1)),
                      event=EventNameFilter(prefix=[prefix]),
                      resource=EventResourceFilter(id=resource_ids) if resource_ids else None,
                      related=EventRelatedFilter(id=[related_id]) if related_id else None)
    end = time.monotonic() + deadline_s
    async with get_client() as client:
        while True:
            page = await client.read_events(filter=flt, limit=50)
            complete = len(page.events) >= want and (last is None or any(e.event == last for e in page.events))
            if complete or time.monotonic() > end:
                return sorted(page.events, key=lambda e: e.occurred)
            await asyncio.sleep(1.0)


@task
async def emit_from_poller_like_thread(task_id: str) -> tuple[str, str]:
    """What the bridge does: a foreign thread calls back inside a copy of this task run's context."""
    from prefect.runtime import flow_run, task_run

    context = contextvars.copy_context()
    records = [TaskRecord.model_validate({"id": task_id, **fields}) for fields in (
        {"status": "queued"}, {"status": "in_progress", "runtime": {"progress": "50"}},
        {"status": "completed", "runtime": {"progress": "100"}})]
    fr, tr = str(flow_run.id), str(task_run.id)

    def poller() -> None:  # the run ids come from the copied context (the bridge passes none)
        for record in records:
            context.run(emit_task_event, record, task_id=task_id, kind="debug", identity="id-1", queue="gpu",
                        web_url=f"http://web/{task_id}")

    thread = threading.Thread(target=poller, name="fake-poller")
    thread.start()
    await asyncio.to_thread(thread.join, 10)
    return fr, tr


@flow(name="notify-events-flow")
async def events_flow(task_id: str) -> tuple[str, str]:
    return await emit_from_poller_like_thread(task_id)


def test_task_events_from_a_foreign_thread_reach_the_feed(prefect_server: PrefectServer) -> None:
    task_id = f"fake-{uuid4().hex}"
    flow_run_id, task_run_id = asyncio.run(events_flow(task_id))
    found = asyncio.run(_events_about([f"clearml.task.{task_id}"], want=3, last="clearml.task.completed"))
    assert [e.event for e in found] == ["clearml.task.queued", "clearml.task.in_progress", "clearml.task.completed"]
    for event in found:
        assert event.resource["clearml.queue"] == "gpu" and event.resource["clearml.url"] == f"http://web/{task_id}"
        roles = {r.id: r.role for r in event.related}
        assert roles[f"prefect.flow-run.{flow_run_id}"] == "flow-run"
        assert roles[f"prefect.task-run.{task_run_id}"] == "task-run"
        assert any(r.role == "flow" for r in event.related)  # added by Prefect from the copied run context
    assert found[1].payload["progress"] == 50.0
    assert found[1].follows == found[0].id and found[2].follows == found[1].id


def test_bridge_run_emits_clearml_task_events(local_stack: StackHandle, prefect_server: PrefectServer) -> None:
    from automation.specs.debug import DebugSpec
    from tests.integration.bridge_flows import one_flow

    spec = DebugSpec(queue="cpu", sleep_s=1.0, steps=2, value=1.0, salt=f"events-{uuid4().hex}")
    out = asyncio.run(one_flow(spec))
    result = out["state"].result()
    flow_run_id = out["state"].state_details.flow_run_id
    task_run_id = out["state"].state_details.task_run_id
    found = asyncio.run(_events_about([f"clearml.task.{result.task_id}"], want=3, last="clearml.task.completed"))
    names = [e.event for e in found]
    assert names[-1] == "clearml.task.completed", names
    assert "clearml.task.in_progress" in names
    for event in found:
        assert event.resource["clearml.task.kind"] == "debug" and event.resource["clearml.queue"] == "cpu"
        assert event.resource["clearml.url"].endswith(f"/experiments/{result.task_id}/output/log")
        roles = {r.id: r.role for r in event.related}
        assert roles[f"prefect.flow-run.{flow_run_id}"] == "flow-run"
        assert roles[f"prefect.task-run.{task_run_id}"] == "task-run"
    # and the feed of the flow run lists them (what the Prefect UI's event feed shows)
    related = asyncio.run(_events_about(related_id=f"prefect.flow-run.{flow_run_id}", want=len(found)))
    assert {e.id for e in found} <= {e.id for e in related}
