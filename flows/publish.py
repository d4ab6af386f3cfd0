"""The report as Prefect artifacts of the current flow run: markdown, table and plot."""

from __future__ import annotations

import logging
import re

from automation.regression.report.format import outcome_word, table_rows
from automation.regression.report.markdown import render_markdown
from automation.regression.report_model import Report
from automation.search.report import SearchReport

log = logging.getLogger("flows.publish")

# -- Prefect ---------------------------------------------------------------------------------------
def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key[:80].rstrip("-") or "report"


async def publish_prefect(report: Report, key: str | None = None) -> list[str]:
    """Markdown, table and (when the plot was uploaded) image artifacts on the current flow/task run.

    Outside a Prefect run it does nothing (artifacts would be orphans). Returns the artifact ids.
    """
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        log.info("not inside a Prefect flow or task run: no artifacts for report %r", report.title)
        return []
    from prefect.artifacts import acreate_image_artifact, acreate_markdown_artifact, acreate_table_artifact

    base = artifact_key(key or f"report-{report.series}")
    described = f"{report.title}: {outcome_word(report.outcome)}"
    ids = [
        await acreate_markdown_artifact(render_markdown(report), key=base, description=described),
        await acreate_table_artifact(table_rows(report), key=f"{base}-table", description=described),
    ]
    if report.plot_url:
        ids.append(await acreate_image_artifact(report.plot_url, key=f"{base}-plot", description=described))
    return [str(i) for i in ids]




async def publish_search_prefect(report: SearchReport) -> list[str]:
    """A recipe search's markdown and trial table as artifacts of the current flow run."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return []
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    from automation.search.report import render_markdown, table_rows

    base = artifact_key(f"search-{report.study_name}")
    described = f"{report.title}: {len(report.completed())} trials, Pareto front {report.pareto}"
    ids = [await acreate_markdown_artifact(render_markdown(report), key=base, description=described),
           await acreate_table_artifact(table_rows(report), key=f"{base}-trials", description=described)]
    return [str(i) for i in ids]
