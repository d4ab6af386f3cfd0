"""The report as markdown: the Prefect markdown artifact and the ClearML summary task's description."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from automation.regression.gates import AccuracyDecision, PerformanceDecision
from automation.regression.report.format import (
    fmt,
    fmt_change,
    headline_accuracy,
    interval,
    outcome_word,
    rank_accuracy,
    short_model,
    step_links,
    summary_headers,
    summary_values,
)
from automation.regression.report_model import Report, ReportCell


# -- markdown ---------------------------------------------------------------------------------------
def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_link(text: str, url: str | None) -> str:
    # ClearML ids and URLs carry no markdown specials except '|' (escaped by md_table)
    return f"[{text}]({url})" if url else text




def _md_header(report: Report) -> str:
    counts: dict[str, int] = {}
    for cell in report.cells:
        counts[cell.outcome] = counts.get(cell.outcome, 0) + 1
    tally = ", ".join(f"{n} {outcome_word(o)}" for o, n in sorted(counts.items()))
    lines = [f"# {report.title}", "",
             f"**Outcome: {outcome_word(report.outcome)}** | series `{report.series}` | "
             f"created {report.created.isoformat(timespec='seconds')} | {len(report.cells)} cells ({tally})"]
    links = []
    if report.flow_run_id:
        links.append("Prefect flow run: " + _md_link(report.flow_run_id, report.flow_run_url))
    if report.summary_task_id:
        links.append("ClearML summary task: " + _md_link(report.summary_task_id, report.summary_task_url))
    if links:
        lines += ["", " | ".join(links)]
    return "\n".join(lines)






def _md_summary(report: Report) -> str:
    acc_names = headline_accuracy(report)
    rows = []
    for cell in report.cells:
        tasks = " ".join(_md_link(label, url) for label, url in step_links(cell)) or "-"
        rows.append([*summary_values(report, cell, acc_names), tasks])
    note = ("Performance columns: the lightest-load benchmark of the profile, change vs the base model in "
            "brackets. Recovery: compressed / base, the minimum over gated metrics.")
    return "## Summary\n\n" + md_table([*summary_headers(acc_names), "Tasks"], rows) + "\n\n" + note


def _md_perf_decisions(title: str, decisions: Sequence[PerformanceDecision], reference: str) -> str:
    rows = [[d.metric, d.direction, fmt(d.reference), fmt(d.candidate), fmt_change(d.change),
             f"{d.tolerance:.0%}", "yes" if d.gating else "observe", outcome_word(d.outcome), d.reason or ""]
            for d in decisions]
    headers = ["Metric", "Better", reference, "Value", "Change", "Tolerance", "Gating", "Outcome", "Reason"]
    return f"### {title}\n\n" + md_table(headers, rows)




def _md_acc_decisions(title: str, decisions: Sequence[AccuracyDecision], reference: str) -> str:
    rows = [[d.metric, fmt(d.base.value if d.base else None), fmt(d.candidate.value if d.candidate else None),
             fmt(d.recovery), interval(d.low, d.high), fmt(d.threshold),
             f"{d.paired.right_to_wrong} / {d.paired.wrong_to_right}" if d.paired else "-",
             outcome_word(d.outcome), d.reason] for d in decisions]
    headers = ["Metric", reference, "Value", "Recovery", "Interval", "Threshold", "Flips R->W / W->R", "Outcome",
               "Reason"]
    return f"### {title}\n\n" + md_table(headers, rows)


def _md_flips(decisions: Sequence[AccuracyDecision]) -> str:
    rows = [[d.metric, example] for d in decisions if d.paired for example in d.paired.examples]
    return "### Flipped examples (right under base, wrong compressed)\n\n" + md_table(["Metric", "Example"], rows) \
        if rows else ""


def _md_cell(cell: ReportCell) -> str:
    head = (f"## {short_model(cell.model)} | {cell.scheme} | {cell.suite} | {cell.profile}: "
            f"{outcome_word(cell.outcome)}")
    facts = [f"model `{cell.model}`"]
    if cell.queue:
        facts.append(f"queue `{cell.queue}`")
    if cell.output_model_id:
        facts.append(f"output model `{cell.output_model_id}`")
    parts = [head, " | ".join(facts)]
    if cell.failures:
        rows = [[f.step + (f" (timeout: {f.timeout})" if f.timeout else ""), f.error,
                 _md_link(f.task_id or "-", f.web_url)] for f in cell.failures]
        parts.append("### Failures\n\n" + md_table(["Step", "Error", "Task"], rows))
    if cell.accuracy_gates:
        parts.append(_md_acc_decisions("Accuracy gates (vs base)", cell.accuracy_gates, "Base"))
        flipped = _md_flips(cell.accuracy_gates)
        if flipped:
            parts.append(flipped)
    if cell.accepted_accuracy_gates:
        note = " (not gating: the base model moved too, see Stack changes)" if cell.stack_changed else ""
        parts.append(_md_acc_decisions(f"Accuracy vs accepted run (report {cell.accepted_from or '?'}){note}",
                                       cell.accepted_accuracy_gates, "Accepted"))
    if cell.performance_gates:
        parts.append(_md_perf_decisions("Performance vs base", cell.performance_gates, "Base"))
    if cell.accepted_gates:
        parts.append(_md_perf_decisions(f"Performance vs accepted run (report {cell.accepted_from or '?'})",
                                        cell.accepted_gates, "Accepted"))
    for title, changes in ((f"What changed vs accepted run (report {cell.accepted_from or '?'})",
                            cell.changes_vs_accepted),
                           (f"What changed vs previous run (report {cell.trend_from or '?'})",
                            cell.changes_vs_previous)):
        if changes:
            parts.append(f"### {title}\n\n" + "\n".join(f"- `{_md_escape(c)}`" for c in changes))
    if cell.trend:
        rows = [[name, fmt(_current_value(cell, name)), fmt_change(change)]
                for name, change in sorted(cell.trend.items())]
        parts.append(f"### Trend vs previous run (report {cell.trend_from or '?'})\n\n"
                     + md_table(["Value", "Now", "Change"], rows))
    if cell.accuracy:
        rank = rank_accuracy(cell.accuracy, [d.metric for d in cell.accuracy_gates])
        rows = [[n, fmt(cell.accuracy[n].value), fmt(cell.accuracy[n].stderr),
                 "-" if cell.accuracy[n].samples is None else str(cell.accuracy[n].samples)] for n in rank]
        parts.append("### Accuracy values\n\n" + md_table(["Metric", "Value", "Stderr", "Samples"], rows))
    if cell.performance:
        rows = [[n, fmt(v)] for n, v in sorted(cell.performance.items())]
        parts.append("### Performance values\n\n" + md_table(["Metric", "Value"], rows))
    if cell.steps:
        rows = [[s.step, _md_link(s.task_id, s.web_url), s.status, "yes" if s.reused else "no",
                 "-" if s.duration_s is None else f"{s.duration_s:.0f} s"] for s in cell.steps]
        parts.append("### ClearML tasks\n\n" + md_table(["Step", "Task", "Status", "Reused", "Duration"], rows))
    return "\n\n".join(parts)


def _current_value(cell: ReportCell, name: str) -> float | None:
    if name in cell.accuracy:
        return cell.accuracy[name].value
    return cell.performance.get(name)


def _md_settings(report: Report) -> str:
    parts = []
    if report.settings:
        parts.append("## Gate settings\n\n```json\n" + json.dumps(report.settings, indent=1, sort_keys=True,
                                                                   default=str) + "\n```")
    if report.provenance:
        rows = [[k, v] for k, v in sorted(report.provenance.items())]
        parts.append("## Provenance\n\n" + md_table(["What", "Value"], rows))
    return "\n\n".join(parts)


def render_markdown(report: Report) -> str:
    """The whole report as plain markdown: header, joined summary table, per-cell details, settings."""
    stack = ("## Stack changes\n\nThe base model's own scores moved from its accepted run: the evaluation or serving "
             "stack changed, not the compression. Comparisons with accepted runs do not gate these cells.\n\n"
             + "\n".join(f"- {_md_escape(c)}" for c in report.stack_changes)) if report.stack_changes else ""
    unread = (f"**Not compared with the accepted baselines or the previous run** (their gates did not run): "
              f"{_md_escape(report.history_error)}") if report.history_error else ""
    parts = [_md_header(report), unread, stack, _md_summary(report), "# Details", *(_md_cell(c) for c in report.cells),
             _md_settings(report)]
    return "\n\n".join(p for p in parts if p) + "\n"


