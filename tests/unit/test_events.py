"""Prefect events for ClearML transitions and regressions, and the notification automations: the pure
builders, the emitters' dedupe and never-raise guarantees, and the notification templates rendered
with the Prefect server's own (sandboxed) template engine."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any
from uuid import uuid4

import pytest

from automation.clearml.records import TaskRecord
from automation.regression.report_model import Report
from flows import events
from flows import notifications as notify
from flows.events import REGRESSION_EVENT, REPORT_EVENT, emit_regression, emit_task_event, report_events, task_event
from tests.report_samples import sample_report

RECORD = {"id": "t1", "status": "in_progress", "status_message": "running step 2", "status_reason": "",
          "runtime": {"progress": "40"}, "execution.queue": None, "last_worker": "agent-gpu:0",
          "started": "2026-11-03T02:00:00+00:00", "tags": ["identity:abc"]}


def _task(record: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"task_id": "t1", "kind": "debug", "identity": "abc123", "queue": "gpu",
                            "web_url": "http://web/projects/*/experiments/t1/output/log",
                            "flow_run_id": "fr-1", "task_run_id": "tr-1", **kw}
    return task_event(_record(record if record is not None else RECORD), **args)


def _record(fields: dict[str, Any]) -> TaskRecord:
    return TaskRecord.model_validate({"id": "t1", **fields})


def test_task_event_name_resource_related_payload() -> None:
    spec = _task()
    assert spec["event"] == "clearml.task.in_progress"
    assert spec["resource"] == {
        "prefect.resource.id": "clearml.task.t1", "prefect.resource.name": "debug task t1",
        "clearml.task.id": "t1", "clearml.task.status": "in_progress", "clearml.task.kind": "debug",
        "clearml.queue": "gpu", "clearml.url": "http://web/projects/*/experiments/t1/output/log",
        "clearml.identity": "abc123"}
    assert spec["related"] == [
        {"prefect.resource.id": "prefect.flow-run.fr-1", "prefect.resource.role": "flow-run"},
        {"prefect.resource.id": "prefect.task-run.tr-1", "prefect.resource.role": "task-run"}]
    payload = spec["payload"]
    assert payload["status"] == "in_progress" and payload["progress"] == 40.0
    assert payload["status_message"] == "running step 2" and "status_reason" not in payload  # empty: left out
    assert payload["last_worker"] == "agent-gpu:0" and payload["url"].endswith("/t1/output/log")
    json.dumps(spec)  # JSON all the way down


@pytest.mark.parametrize(("status", "name"), [
    ("queued", "clearml.task.queued"), ("completed", "clearml.task.completed"), ("failed", "clearml.task.failed"),
    ("stopped", "clearml.task.stopped"), ("Weird Status!", "clearml.task.unknown"),
    (None, "clearml.task.unknown")])
def test_task_event_names(status: str | None, name: str) -> None:
    assert _task({"status": status})["event"] == name


def test_task_event_outside_a_run_and_with_a_name() -> None:
    spec = task_event(_record({"status": "queued", "name": "debug-x", "execution": {"queue": "q1"}}), task_id="t2")
    assert spec["related"] == []
    assert spec["resource"]["prefect.resource.name"] == "debug-x"
    assert spec["resource"]["clearml.queue"] == "q1"  # from the record when the caller does not say
    assert all(isinstance(v, str) for v in spec["resource"].values())  # resource labels are strings
    assert _task(name="compress w4a16")["resource"]["prefect.resource.name"] == "compress w4a16"


def test_report_events_regression_payload() -> None:
    report = sample_report(ttft_factor=1.0)  # w4a16 passes, w8a8 regressed, fp8 errored: outcome "error"
    specs = report_events(report)
    assert [s["event"] for s in specs] == [REPORT_EVENT, REGRESSION_EVENT]
    published, regression = specs
    assert published["resource"]["prefect.resource.id"] == "automation.report.flow-run-1"
    assert published["resource"]["automation.outcome"] == "error"
    assert published["related"] == [{"prefect.resource.id": "prefect.flow-run.flow-run-1",
                                     "prefect.resource.role": "flow-run"}]
    assert published["payload"]["cell_outcomes"] == {"baseline": 1, "pass": 1, "fail": 1, "error": 1}
    payload = regression["payload"]
    assert payload["regressed"] == 1 and payload["report_url"] == report.flow_run_url
    (cell,) = payload["cells"]
    assert (cell["model"], cell["scheme"], cell["suite"], cell["profile"]) == ("hf:org/tiny-llama", "w8a8", "tiny",
                                                                                "smoke")
    acc = {a["metric"]: a for a in cell["accuracy"]}
    assert acc["tiny/acc"]["recovery"] == pytest.approx(0.5) and acc["tiny/acc"]["threshold"] == 0.95
    assert {p["metric"] for p in cell["performance"]} >= {"synchronous/output_tokens_per_s"}
    assert cell["summary"].startswith("hf:org/tiny-llama w8a8 (tiny/smoke): ")
    assert "tiny/acc recovery 0.500 < 0.95" in cell["summary"]
    assert "synchronous/output_tokens_per_s -50.0% vs base" in cell["summary"]
    json.dumps(specs)


def test_report_events_published_summary_task_and_no_regression() -> None:
    report = sample_report(with_failure=False)
    passing = report.model_copy(update={"cells": [c for c in report.cells if c.outcome != "fail"],
                                        "outcome": "pass", "summary_task_id": "sum-1",
                                        "summary_task_url": "http://web/sum-1"})
    (published,) = report_events(passing)
    assert published["event"] == REPORT_EVENT
    assert published["resource"]["prefect.resource.id"] == "clearml.task.sum-1"
    assert published["resource"]["clearml.url"] == "http://web/sum-1"
    assert published["payload"]["report_url"] == "http://web/sum-1"
    no_run = passing.model_copy(update={"flow_run_id": None, "summary_task_id": None})
    assert report_events(no_run)[0]["related"] == []
    assert report_events(no_run)[0]["resource"]["prefect.resource.id"] == "automation.report.nightly-test"


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[dict[str, Any], Any]] = []
        self.fail = fail

    def __call__(self, spec: dict[str, Any], follows: Any = None) -> Any:
        if self.fail:
            raise RuntimeError("events client exploded")
        self.calls.append((spec, follows))
        return object()


def test_emit_task_event_once_per_transition(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(events, "_emit", rec)
    tid = f"t-{uuid4().hex}"
    statuses = [("queued", None, ""), ("in_progress", "10", ""), ("in_progress", "50", ""),  # progress only
                ("in_progress", "50", "uploading"), ("completed", "100", "")]
    sent = [emit_task_event(_record({"status": s, "runtime": {"progress": p}, "status_message": m}), task_id=tid)
            for s, p, m in statuses]
    assert sent == [True, True, False, True, True]
    assert [c[0]["event"] for c in rec.calls] == ["clearml.task.queued", "clearml.task.in_progress",
                                                  "clearml.task.in_progress", "clearml.task.completed"]
    assert rec.calls[0][1] is None and all(c[1] is not None for c in rec.calls[1:])  # `follows` chains them


def test_emitters_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_emit", Recorder(fail=True))
    assert emit_task_event(_record({"status": "queued"}), task_id=f"t-{uuid4().hex}") is False
    assert emit_regression(sample_report()) == []
    monkeypatch.setattr(events, "report_events", lambda report: 1 / 0)
    assert emit_regression(sample_report()) == []


def test_emit_from_another_thread_without_prefect_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Prefect API configured (or events off): a quiet no-op, from any thread."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out: list[bool] = []
    with temporary_settings(updates={PREFECT_API_URL: None}):
        thread = threading.Thread(target=lambda: out.append(
            emit_task_event(_record({"status": "queued"}), task_id=f"t-{uuid4().hex}")))
        thread.start()
        thread.join(10)
    assert out == [False]


# -- notification automations -------------------------------------------------------------------

def test_automation_definitions() -> None:
    block_id = uuid4()
    failure = notify.failure_automation("team-x", block_id)
    regression = notify.regression_automation("team-x", block_id)
    assert failure.name == "team-x-flow-run-failed" and regression.name == "team-x-regression"
    assert failure.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failure.trigger.match.model_dump() == {"prefect.resource.id": "prefect.flow-run.*"}
    assert regression.trigger.expect == {REGRESSION_EVENT}
    for automation in (failure, regression):
        assert automation.trigger.posture == "Reactive" and automation.trigger.threshold == 1
        (action,) = automation.actions
        assert action.type == "send-notification" and action.block_document_id == block_id
    with pytest.raises(notify.NotifyError):
        notify.check_name("Bad Name")
    with pytest.raises(notify.NotifyError):
        notify.check_webhook("hooks.slack.com/services/x")


def test_webhook_block_posts_slack_json_and_hides_the_url() -> None:
    block = notify.webhook_block("team-x", "https://hooks.slack.com/services/T0/B0/XYZ")
    args = block._build_request_args(body="line 1\nline \"2\"", subject="Subject")
    assert args["method"] == "POST" and args["url"] == "https://hooks.slack.com/services/T0/B0/XYZ"
    assert args["json"] == {"text": "Subject\nline 1\nline \"2\""}
    assert "hooks.slack.com" not in block.url and "XYZ" not in json.dumps(block.model_dump(mode="json"))


def _render(template: str, context: dict[str, Any]) -> str:
    from prefect.server.events.actions import SendNotification as ServerSendNotification
    from prefect.server.utilities.user_templates import render_user_template

    ServerSendNotification._register_filters_if_needed()
    ServerSendNotification.validate_template(template, "body")  # what the server checks on create
    return asyncio.run(render_user_template(template, context))


def test_regression_message_renders_failing_cells() -> None:
    report: Report = sample_report(ttft_factor=1.0)
    regression = report_events(report)[1]
    context = {"event": {"event": REGRESSION_EVENT, "payload": regression["payload"]}}
    subject = _render(notify.REGRESSION_SUBJECT, context)
    body = _render(notify.REGRESSION_BODY, context)
    assert subject == "Regression detected: tiny nightly"
    assert body.splitlines()[0] == "1 cell(s) of nightly-test failed their gates:"
    assert body.splitlines()[1].startswith("- hf:org/tiny-llama w8a8 (tiny/smoke): suite/tiny_average recovery 0.500")
    assert body.splitlines()[-1] == f"Report: {report.flow_run_url}"
