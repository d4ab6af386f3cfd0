"""Reports and the baseline registry against the local stack: real stand-in, real HTTP, no mocks.

A report is published as a ClearML summary task, read back, promoted (by report id and by Prefect
flow-run id), found as the accepted run of its cells and as the previous run of its series; the
`automation baseline` CLI does the same; artifacts download from the file server.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from automation.clearml.client import ClearMLBackend
from automation.cli import app
from automation.errors import PromotionRefused, ReportNotFound
from automation.regression.baselines import (
    accepted_for,
    apply_history,
    find_reports,
    load_report,
    previous_in_series,
    promote,
)
from automation.regression.report.clearml import publish_clearml
from automation.regression.report_model import Report
from flows.publish import publish_prefect
from testing.prefect_server import PrefectServer
from testing.stacks import StackHandle, fetch_file
from tests.report_samples import sample_report

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]  # keeps this session's series and cells apart from any other test's
PROJECT = "tests/reports"
T = TypeVar("T")


@pytest.fixture
def env(local_stack: StackHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for key, value in local_stack.env.items():
        monkeypatch.setenv(key, value)
    yield local_stack.env


def with_client(work: Callable[[ClearMLBackend], Awaitable[T]]) -> T:
    async def go() -> T:
        client = ClearMLBackend()
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def publish(report: Report) -> Report:
    return with_client(lambda c: publish_clearml(report, c, PROJECT))


def make(tag: str, **kwargs: Any) -> Report:
    """A sample report with its own series and cells (cell keys are global to the registry)."""
    kwargs.setdefault("flow_run_id", str(uuid.uuid4()))
    return sample_report(model=f"hf:org/tiny-{RUN}-{tag}", series=f"test-{RUN}-{tag}", **kwargs)


def task_doc(task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = with_client(lambda c: c.call("tasks.get_by_id", {"task": task_id}))["task"]
    return task


# -- publish and read back -------------------------------------------------------------------------
def test_publish_stores_a_completed_summary_task_that_reads_back_equal(env: dict[str, str],
                                                                        local_stack: StackHandle) -> None:
    report = make("publish").model_copy(update={"provenance": {
        "code": "abc", "leak": f"key {env['CLEARML_API_SECRET_KEY']}"}})

    async def work(client: ClearMLBackend) -> tuple[Report, dict[str, int]]:
        await client.project_id(PROJECT)  # cached: count only what publishing costs
        before = dict(client.endpoint_calls)
        out = await publish_clearml(report, client, PROJECT)
        return out, {k: v - before.get(k, 0) for k, v in client.endpoint_calls.items() if v - before.get(k, 0)}

    published, calls = with_client(work)
    assert calls == {"tasks.create": 1, "tasks.add_or_update_artifacts": 1, "events.add_batch": 1,
                     "tasks.started": 1, "tasks.completed": 1}
    assert published.summary_task_id and published.summary_task_url and published.plot_url
    assert published.summary_task_url.startswith(env["CLEARML_WEB_HOST"])
    assert httpx.get(published.summary_task_url, timeout=10).status_code == 200
    loaded = with_client(lambda c: load_report(c, published.summary_task_id or ""))
    assert loaded == published
    assert env["CLEARML_API_SECRET_KEY"] not in loaded.model_dump_json()

    task = task_doc(published.summary_task_id)
    assert task["status"] == "completed" and task["type"] == "qc"
    assert task["name"] == f"report tiny nightly {report.created:%Y-%m-%d %H:%M}"
    assert set(task["tags"]) == {"report", f"series:{report.series}", "outcome:error",
                                 f"prefect-flow-run:{report.flow_run_id}"}
    props = {k: v["value"] for k, v in task["hyperparams"]["properties"].items()}
    assert props["series"] == report.series and props["outcome"] == "error" and props["cells"] == "4"
    assert "| w4a16 |" in task["comment"] and env["CLEARML_API_SECRET_KEY"] not in json.dumps(task)
    # scalars comparable across nights: title = value name, series = "<model> <scheme>"
    last = {(m["metric"], m["variant"]): m["value"] for variants in task["last_metrics"].values()
            for m in variants.values()}
    short = f"tiny-{RUN}-publish"
    assert last[("suite/tiny_average", f"{short} w4a16")] == pytest.approx(0.891)
    assert last[("recovery tiny/acc", f"{short} w8a8")] == pytest.approx(0.5)
    assert last[("smoke synchronous/ttft_ms/median", f"{short} w4a16")] == pytest.approx(120.0)
    plots = stored_plots(local_stack, published.summary_task_id)
    assert set(plots) == {"recovery", "latency vs throughput"}
    assert plots["recovery"]["layout"]["barmode"] == "group"


def stored_plots(stack: StackHandle, task_id: str) -> dict[str, Any]:
    """Plot events as the stand-in stored them (read from its database: no API call of our own)."""
    db = sqlite3.connect(f"file:{stack.data_dir / 'clearml' / 'standin.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT doc FROM events WHERE task = ? AND type = 'plot'", (task_id,)).fetchall()
    finally:
        db.close()
    return {json.loads(r[0])["variant"]: json.loads(json.loads(r[0])["plot_str"]) for r in rows}


def test_artifacts_download_from_the_file_server(env: dict[str, str]) -> None:
    published = publish(make("files"))
    assert httpx.get(published.plot_url or "", timeout=10).status_code == 401  # credentials wanted
    res = fetch_file(env, published.plot_url or "")
    assert res.status_code == 200 and res.headers["content-type"].startswith("image/svg")
    assert ET.fromstring(res.text).tag == "{http://www.w3.org/2000/svg}svg"
    artifacts = {a["key"]: a for a in task_doc(published.summary_task_id or "")["execution"]["artifacts"]}
    assert set(artifacts) == {"report_plot", "report_json", "report_markdown"}
    stored = Report.model_validate_json(fetch_file(env, artifacts["report_json"]["uri"]).text)
    assert stored.cells == published.cells
    markdown = fetch_file(env, artifacts["report_markdown"]["uri"]).text
    assert markdown.startswith("# tiny nightly") and artifacts["report_markdown"]["content_size"] == len(
        markdown.encode())


# -- promotion -------------------------------------------------------------------------------------
def test_promote_by_report_id_and_by_flow_run_id(env: dict[str, str]) -> None:
    clean = publish(make("promote", with_failure=False))
    ref = with_client(lambda c: promote(c, clean.summary_task_id or "", by="alice", note="good night"))
    assert ref.accepted and ref.promoted_by == "alice" and len(ref.accepted_cells) == 3
    listed = with_client(lambda c: find_reports(c, series=clean.series, accepted=True))
    assert [r.report_id for r in listed] == [clean.summary_task_id]
    assert listed[0].note == "good night" and listed[0].accepted_cells == [c.key for c in clean.cells]
    assert with_client(lambda c: find_reports(c, series=clean.series, accepted=False)) == []

    errored = publish(make("promote"))  # same series? no: its own series, with a failed cell
    with pytest.raises(PromotionRefused, match="fp8"):
        with_client(lambda c: promote(c, errored.flow_run_id or "", by="bob"))
    good = [c.key for c in errored.cells if c.scheme in ("base", "w4a16")]
    ref = with_client(lambda c: promote(c, errored.flow_run_id or "", by="bob", cells=good[:1]))
    assert ref.report_id == errored.summary_task_id and ref.accepted_cells == good[:1]
    ref = with_client(lambda c: promote(c, errored.flow_run_id or "", by="bob", cells=good[1:]))
    assert ref.accepted_cells == good  # a later promotion of the same report adds cells
    tags = task_doc(errored.summary_task_id or "")["tags"]
    assert "baseline" in tags and "report" in tags and tags.count("baseline") == 1
    with pytest.raises(ReportNotFound, match="no report with id or Prefect flow-run id"):
        with_client(lambda c: promote(c, "does-not-exist", by="bob"))
    half = publish(make("half", with_failure=False))  # as if publishing had failed half-way
    with_client(lambda c: c.call("tasks.failed", {"task": half.summary_task_id, "force": True}))
    with pytest.raises(PromotionRefused, match="did not finish publishing"):
        with_client(lambda c: promote(c, half.summary_task_id or "", by="bob"))
    assert with_client(lambda c: find_reports(c, series=half.series)) == []


def test_accepted_for_returns_the_most_recently_promoted_cell(env: dict[str, str]) -> None:
    first = publish(make("accepted", with_failure=False, ttft_factor=1.0))
    second = publish(make("accepted", with_failure=False, ttft_factor=1.1))
    key = next(c.key for c in first.cells if c.scheme == "w4a16")
    assert with_client(lambda c: accepted_for(c, [key])) == {}
    with_client(lambda c: promote(c, first.summary_task_id or "", by="alice"))
    with_client(lambda c: promote(c, second.summary_task_id or "", by="alice"))
    found = with_client(lambda c: accepted_for(c, [key, "unknown|cell|key|x"]))
    assert set(found) == {key}
    assert found[key][0] == second.summary_task_id
    assert found[key][1] == next(c for c in second.cells if c.key == key)
    with_client(lambda c: promote(c, first.summary_task_id or "", by="carol", note="roll back"))
    assert with_client(lambda c: accepted_for(c, [key]))[key][0] == first.summary_task_id


def test_previous_in_series_and_history_end_to_end(env: dict[str, str]) -> None:
    one = make("series", with_failure=False, ttft_factor=1.0)
    first = publish(one)
    second = publish(make("series", with_failure=False, ttft_factor=1.1,
                          created=one.created + timedelta(days=1)))
    earlier = with_client(lambda c: previous_in_series(c, second.series, second.summary_task_id or ""))
    assert earlier is not None and earlier.summary_task_id == first.summary_task_id
    latest = with_client(lambda c: previous_in_series(c, second.series, second.created + timedelta(hours=1)))
    assert latest is not None and latest.summary_task_id == second.summary_task_id
    assert with_client(lambda c: previous_in_series(c, second.series, first.summary_task_id or "")) is None
    assert with_client(lambda c: previous_in_series(c, "no-such-series", second.created)) is None

    with_client(lambda c: promote(c, first.summary_task_id or "", by="alice"))
    third = make("series", with_failure=False, ttft_factor=1.3, created=one.created + timedelta(days=2))

    async def history(client: ClearMLBackend) -> Report:
        accepted = await accepted_for(client, [c.key for c in third.cells])
        previous = await previous_in_series(client, third.series, third.created)
        return third.model_copy(update={"cells": apply_history(third.cells, accepted, previous)})

    filled = with_client(history)
    w4 = next(c for c in filled.cells if c.scheme == "w4a16")
    assert w4.accepted_from == first.summary_task_id and w4.trend_from == second.summary_task_id
    assert w4.trend["synchronous/ttft_ms/median"] == pytest.approx(130 / 110 - 1)
    ttft = next(d for d in w4.accepted_gates if d.metric == "synchronous/ttft_ms/median")
    assert ttft.outcome == "fail" and ttft.change == pytest.approx(-0.3)
    republished = publish(filled)
    assert with_client(lambda c: load_report(c, republished.summary_task_id or "")).cells == filled.cells


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_promote_list_and_show(env: dict[str, str]) -> None:
    published = publish(make("cli"))
    runner = CliRunner()
    rid = published.summary_task_id or ""
    res = runner.invoke(app, ["baseline", "show", rid])
    assert res.exit_code == 0, res.output
    assert "tiny nightly: ERROR" in res.output and "not accepted" in res.output
    res = runner.invoke(app, ["baseline", "show", published.flow_run_id or "", "--json"])
    assert res.exit_code == 0 and Report.model_validate_json(res.output) == published

    res = runner.invoke(app, ["baseline", "promote", rid, "--by", "dora"])
    assert res.exit_code == 1 and "refusing" in res.output and "Traceback" not in res.output
    w4 = next(c.key for c in published.cells if c.scheme == "w4a16")
    res = runner.invoke(app, ["baseline", "promote", rid, "--by", "dora", "--note", "w4 ok", "--cell", w4])
    assert res.exit_code == 0, res.output
    assert f"accepted report {rid}" in res.output and "1 cells" in res.output

    res = runner.invoke(app, ["baseline", "list", "--series", published.series, "--accepted", "--json"])
    assert res.exit_code == 0, res.output
    [entry] = json.loads(res.output)
    assert entry["report_id"] == rid and entry["promoted_by"] == "dora" and entry["accepted_cells"] == [w4]
    res = runner.invoke(app, ["baseline", "list", "--series", published.series])
    assert res.exit_code == 0 and rid in res.output
    res = runner.invoke(app, ["baseline", "show", rid])
    assert "accepted by dora" in res.output and "w4 ok" in res.output


def test_cli_errors_are_one_line_without_traceback(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["baseline", "show", "0123456789abcdef0123456789abcdef"])
    assert res.exit_code == 1 and "no report with id or Prefect flow-run id" in res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    monkeypatch.setenv("CLEARML_API_HOST", "http://127.0.0.1:9")
    res = runner.invoke(app, ["baseline", "list"])
    assert res.exit_code == 1 and "unreachable" in res.output and "Traceback" not in res.output


def test_cli_entry_point_lists_reports(env: dict[str, str]) -> None:
    published = publish(make("entry"))
    exe = Path(sys.executable).with_name("automation")
    out = subprocess.run([str(exe), "baseline", "list", "--series", published.series, "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert [r["report_id"] for r in json.loads(out.stdout)] == [published.summary_task_id]
    assert env["CLEARML_API_SECRET_KEY"] not in out.stdout + out.stderr


# -- Prefect artifacts -----------------------------------------------------------------------------
def test_publish_prefect_creates_markdown_table_and_image_artifacts(env: dict[str, str],
                                                                     prefect_server: PrefectServer) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.logging.handlers import APILogHandler

    published = publish(make("prefect"))
    key = f"report-test-{RUN}"

    @flow
    async def show_report(report: Report) -> list[str]:
        return await publish_prefect(report, key=key)

    ids = asyncio.run(show_report(published))
    assert len(ids) == 3
    APILogHandler().flush()  # send the run's logs while the session's Prefect server still runs

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key, f"{key}-table", f"{key}-plot"])))
        return {str(a.key): a for a in arts}

    arts = asyncio.run(read())
    assert set(arts) == {key, f"{key}-table", f"{key}-plot"}
    assert arts[key].type == "markdown" and "| w4a16 |" in str(arts[key].data)
    assert arts[f"{key}-plot"].type == "image" and str(arts[f"{key}-plot"].data) == published.plot_url
    rows = json.loads(str(arts[f"{key}-table"].data))
    assert [r["scheme"] for r in rows] == ["base", "w4a16", "w8a8", "fp8"]
