"""A recipe search's report as a ClearML summary task (the Prefect artifacts: flows/publish.py)."""

from __future__ import annotations

import logging
import re
import time

from automation.clearml.client import FLOW_RUN_TAG, ClearMLBackend, artifact_entry, plot_event
from automation.errors import BackendError
from automation.search.report import SearchReport, plot_svg, plotly_figures, render_markdown

log = logging.getLogger("automation.search")

SEARCH_TAG = "recipe-search"
STUDY_TAG = "study:"
REPORT_CONFIG = "search_report"
SUMMARY_TASK_TYPE = "qc"
MAX_COMMENT_CHARS = 100_000


def _safe_path(text: str) -> str:
    return re.sub(r"[^\w.\-/]+", "_", text).strip("/")


async def publish_clearml(report: SearchReport, client: ClearMLBackend, project: str) -> SearchReport:
    """Store the report as a completed ClearML task: the report JSON as configuration object
    `search_report`, the markdown as its description, the Pareto plots (plotly) and the SVG,
    JSON and markdown as artifacts; returns it with the task's id and URL."""
    project_id = await client.project_id(project)
    name = f"recipe search {report.title} {report.created:%Y-%m-%d %H:%M}"
    tags = [SEARCH_TAG, f"{STUDY_TAG}{report.study_name}"]
    if report.flow_run_id:
        tags.append(f"{FLOW_RUN_TAG}{report.flow_run_id}")
    markdown = render_markdown(report)
    task_id = await client.create_record_task(
        name=name, project_id=project_id, task_type=SUMMARY_TASK_TYPE, comment=markdown[:MAX_COMMENT_CHARS],
        tags=tags, properties={"study": report.study_name, "trials": str(len(report.completed())),
                               "pareto": ",".join(map(str, report.pareto))},
        configuration={REPORT_CONFIG: (report.model_dump_json(), "automation.search.report.SearchReport (JSON)")})
    url = client.web_url(task_id, project_id)
    try:
        folder = f"{_safe_path(project)}/{_safe_path(name)}.{task_id}/artifacts"
        svg, body = plot_svg(report).encode(), report.model_dump_json(indent=2).encode()
        files = {f"{folder}/pareto_plot/pareto.svg": (svg, "image/svg+xml"),
                 f"{folder}/search_json/search.json": (body, "application/json"),
                 f"{folder}/search_markdown/search.md": (markdown.encode(), "text/markdown")}
        urls = list((await client.upload_files(files)).values())
        await client.add_artifacts(task_id, [
            artifact_entry("pareto_plot", urls[0], svg, "image/svg+xml", "Pareto front"),
            artifact_entry("search_json", urls[1], body, "application/json", report.title),
            artifact_entry("search_markdown", urls[2], markdown.encode(), "text/markdown", markdown)])
        now_ms = int(time.time() * 1000)
        await client.add_events([plot_event(task_id, "recipe search", title, figure, now_ms)
                                 for title, figure in plotly_figures(report).items()])
        await client.mark_completed(task_id, f"{len(report.completed())} trials", reason="search report published")
    except Exception:
        try:
            await client.mark_failed(task_id, "report publishing failed", retry_for_s=5)
        except BackendError as exc:
            log.warning("could not mark summary task %s failed: %s", task_id, exc)
        raise
    return report.model_copy(update={"summary_task_id": task_id, "summary_task_url": url, "plot_url": urls[0]})
