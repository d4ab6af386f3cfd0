"""The report as rich tables for the CLI."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from automation.regression.report.format import (
    cell_label,
    fmt,
    fmt_change,
    headline_accuracy,
    interval,
    outcome_word,
    step_links,
    summary_headers,
    summary_values,
)
from automation.regression.report_model import Report


# -- console ---------------------------------------------------------------------------------------
def render_console(report: Report) -> Group:
    """Rich tables for the CLI: the summary and every gate decision."""
    acc_names = headline_accuracy(report)
    summary = Table(title=f"{report.title}: {outcome_word(report.outcome)} (series {report.series}, "
                          f"{report.created:%Y-%m-%d %H:%M})", title_justify="left")
    for header in summary_headers(acc_names):
        summary.add_column(header)
    for cell in report.cells:
        summary.add_row(*summary_values(report, cell, acc_names))
    # The console keeps to what decides: accuracy gates, gating performance checks and failures;
    # observation-only metrics and every decision's reason are in the markdown report.
    decisions = Table(title="gate decisions", title_justify="left")
    for header in ("cell", "vs", "metric", "reference", "value", "recovery / change", "interval", "outcome"):
        decisions.add_column(header)
    for cell in report.cells:
        label = cell_label(cell)
        for vs, acc in (("base", cell.accuracy_gates), ("accepted", cell.accepted_accuracy_gates)):
            for a in acc:
                flips = f" ({a.paired.right_to_wrong} R->W, {a.paired.wrong_to_right} W->R)" if a.paired else ""
                decisions.add_row(label, vs, a.metric, fmt(a.base.value if a.base else None),
                                  fmt(a.candidate.value if a.candidate else None), fmt(a.recovery) + flips,
                                  interval(a.low, a.high), outcome_word(a.outcome))
        for vs, perf in (("base", cell.performance_gates), ("accepted", cell.accepted_gates)):
            for p in perf:
                if p.gating:  # observation-only changes: the summary's deltas and the markdown
                    decisions.add_row(label, vs, p.metric, fmt(p.reference), fmt(p.candidate), fmt_change(p.change),
                                      "-", outcome_word(p.outcome) + ("" if p.gating else " (observe)"))
        for f in cell.failures:
            decisions.add_row(label, f.step, "-", "-", "-", "-", "-", f"ERROR: {f.error}")
    links = Table(title="ClearML tasks", title_justify="left")
    links.add_column("cell")
    links.add_column("tasks")
    for cell in report.cells:
        links.add_row(cell_label(cell), "\n".join(f"{label}: {url}" for label, url in step_links(cell)) or "-")
    return Group(summary, decisions, links)

