"""Reporting end to end: a script run by the REAL clearml-agent reports scalars, a single value,
artifacts and an uploaded output model; the real SDK then reads all of it back, downloads the
files, and the stand-in's web page for the task shows the result.

Every response the stand-in sent during the session is checked against the SDK's own response
classes (`contract_errors`), and the agent's log must not show any response it failed to parse.
"""

from __future__ import annotations

import html
import json
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.stacks import StackHandle, fetch_file

pytestmark = pytest.mark.integration

RUN_DEADLINE_S = 300.0
TERMINAL = {"completed", "failed", "stopped", "closed", "published"}

LOSSES = [1.0, 0.5, 0.25, 0.125, 0.0625]
ACCURACY = 0.93
SUMMARY = {"score": 3, "labels": ["a", "b"], "nested": {"ok": True}}
NOTES = "notes reported from the agent-run task\n"
WEIGHTS = b"\x00\x01tiny-weights\xff" * 64
PARAMS = {"Args/alpha": 0.5, "Args/label": "page-check <b>"}
CONFIG_NAME = "report_config"
CONFIG_TEXT = "batch: 4\nseed: 7\nnote: \"a & b\"\n"

REPORT_SCRIPT = textwrap.dedent(
    f"""
    import json
    from pathlib import Path

    from clearml import OutputModel, Task

    task = Task.init(project_name="reporting-tests", task_name="report", output_uri=True)
    logger = task.get_logger()
    for i, loss in enumerate({LOSSES!r}):
        logger.report_scalar(title="loss", series="train", value=loss, iteration=i)
        logger.report_scalar(title="lr", series="value", value=0.1, iteration=i)
    logger.report_single_value("accuracy", {ACCURACY!r})
    print("reported scalars")

    notes = Path("notes.txt")
    notes.write_text({NOTES!r})
    task.upload_artifact("notes", artifact_object=str(notes), wait_on_upload=True)
    task.upload_artifact("summary", artifact_object=json.loads({json.dumps(SUMMARY)!r}), wait_on_upload=True)

    weights = Path("weights.bin")
    weights.write_bytes({WEIGHTS!r})
    model = OutputModel(task=task, name="tiny-model", framework="custom")
    model.update_weights(weights_filename=str(weights), auto_delete_file=False, async_enable=False)
    task.flush(wait_for_uploads=True)
    print("model uploaded to", model.url)
    """
)


def _sections(page: str) -> dict[str, str]:
    """The task page's HTML between one <h2> heading and the next, keyed by the heading."""
    parts = re.split(r"<h2>(.*?)</h2>", page)
    return {re.sub(r"\s*\(.*\)$", "", parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _hrefs(fragment: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]*)"', fragment)]


def _wait_terminal(task: Any, deadline_s: float) -> str:
    deadline = time.monotonic() + deadline_s
    status = task.get_status()
    while status not in TERMINAL:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task.id} still {status!r} after {deadline_s:.0f} s")
        time.sleep(2)
        status = task.get_status()
    return str(status)


def _agent_log_problems(stack: StackHandle) -> list[str]:
    problems = []
    for log in sorted((stack.data_dir / "logs").glob("agent-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            # the agent prints the first when a response does not fit the SDK's models, the second
            # when events.add_batch did not take every log line it sent
            if "Failed parsing response" in line or "sending events only" in line:
                problems.append(f"{log.name}: {line.strip()}")
    return problems


def _task_log_tail(task: Any) -> str:
    try:
        return "\n".join(task.get_reported_console_output(number_of_reports=200))
    except Exception as exc:  # only used to explain a failure
        return f"(console log unavailable: {exc!r})"


def test_agent_run_reports_scalars_artifacts_and_model(local_stack: StackHandle, tmp_path: Path) -> None:
    from clearml import Task

    script = tmp_path / "report_task.py"
    script.write_text(REPORT_SCRIPT)
    task: Any = Task.create(project_name="reporting-tests", task_name="agent report", script=str(script),
                       add_task_init_call=False)
    task.set_parameters(PARAMS)
    task.set_configuration_object(name=CONFIG_NAME, config_text=CONFIG_TEXT)
    Task.enqueue(task, queue_name="cpu")

    status = _wait_terminal(task, RUN_DEADLINE_S)
    assert status == "completed", f"task ended {status}:\n{_task_log_tail(task)}"
    task = Task.get_task(task_id=task.id)

    # scalars as the SDK parses events.scalar_metrics_iter_histogram
    scalars: Any = task.get_reported_scalars()
    assert scalars["loss"]["train"]["x"] == list(range(len(LOSSES)))
    assert scalars["loss"]["train"]["y"] == pytest.approx(LOSSES)
    assert "Summary" not in scalars  # single values are not a series
    assert task.get_reported_single_values() == {"accuracy": pytest.approx(ACCURACY)}

    last: Any = task.get_last_scalar_metrics()
    expected_last = {"last": LOSSES[-1], "min": min(LOSSES), "max": max(LOSSES)}
    assert last["loss"]["train"] == pytest.approx(expected_last)
    assert task.get_last_iteration() >= len(LOSSES) - 1

    # artifacts, downloaded from the file server
    files_url = local_stack.env["CLEARML_FILES_HOST"]
    assert set(task.artifacts) >= {"notes", "summary"}
    assert task.artifacts["notes"].url.startswith(files_url)
    notes_copy = task.artifacts["notes"].get_local_copy()
    assert Path(notes_copy).read_text() == NOTES
    assert task.artifacts["summary"].get() == SUMMARY

    # the output model: registered, linked to the task, uploaded and downloadable
    outputs = task.models["output"]
    assert outputs, "no output model linked to the task"
    model = outputs[-1]
    assert model.name == "tiny-model"
    assert model.url.startswith(files_url), model.url
    assert Path(model.get_local_copy()).read_bytes() == WEIGHTS

    # the web page the SDK links to
    page_url = task.get_output_log_web_page()
    assert page_url.startswith(local_stack.env["CLEARML_WEB_HOST"])
    page = httpx.get(page_url, timeout=10)
    assert page.status_code == 200
    assert "completed" in page.text and "loss" in page.text and "0.0625" in page.text
    assert "tiny-model" in page.text and "notes" in page.text
    assert "reported scalars" in page.text  # the console log tail
    sections = _sections(page.text)
    # parameters and configuration, as the task holds them (escaped, not interpreted)
    params_text = html.unescape(sections["Parameters"])
    for key, value in PARAMS.items():
        section, name = key.split("/")
        assert section in params_text and name in params_text and str(value) in params_text, key
    assert "<b>" not in sections["Parameters"]
    config_text = html.unescape(sections["Configuration"])
    assert CONFIG_NAME in config_text and CONFIG_TEXT.strip() in config_text
    # Download links: the page's own downloads of the very URLs the SDK reports (a browser holds no
    # credentials for the file server); they serve the bytes that were uploaded, as attachments.
    web = local_stack.env["CLEARML_WEB_HOST"]
    artifact_links = _hrefs(sections["Artifacts"])
    model_links = _hrefs(sections["Models"])

    def page_link(url: str) -> str:
        return "/files/" + url.removeprefix(files_url + "/")

    expected = {
        task.artifacts["notes"].url: lambda body: body.decode() == NOTES,
        task.artifacts["summary"].url: lambda body: json.loads(body) == SUMMARY,
    }
    assert {page_link(u) for u in expected} <= set(artifact_links), (artifact_links, list(expected))
    assert page_link(model.url) in model_links, (model_links, model.url)
    expected[model.url] = lambda body: body == WEIGHTS
    for url, ok in expected.items():
        res = httpx.get(web + page_link(url), timeout=10)
        assert res.status_code == 200 and ok(res.content), url
        assert res.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(url, timeout=10).status_code == 401  # the file server itself wants credentials
        assert fetch_file(local_stack.env, url).content == res.content

    stats = local_stack.stats()
    assert stats["contract_errors"] == []
    assert stats["calls"].get("events.add_batch", 0) > 0
    assert _agent_log_problems(local_stack) == []


def test_web_pages_for_unknown_ids_are_404(local_stack: StackHandle) -> None:
    web = local_stack.env["CLEARML_WEB_HOST"]
    missing_task = f"{web}/projects/*/experiments/0123456789abcdef/output/log"
    assert httpx.get(missing_task, timeout=10).status_code == 404
    assert httpx.get(f"{web}/projects/*/models/0123456789abcdef", timeout=10).status_code == 404
    index = httpx.get(f"{web}/", timeout=10)
    assert index.status_code == 200 and "Recent tasks" in index.text
