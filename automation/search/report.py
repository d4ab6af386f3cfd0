"""A recipe search's report: every trial, the Pareto front, the best trial per objective; as
markdown, JSON, an SVG plot and plotly figures (ClearML's Plots tab)."""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TrialState = Literal["complete", "failed", "running", "waiting", "pruned"]


class TrialRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: int
    state: TrialState
    params: dict[str, Any]
    recipe: str | None = None
    recipe_args: dict[str, Any] = Field(default_factory=dict)
    values: dict[str, float] = Field(default_factory=dict, description="objective -> value")
    recoveries: dict[str, float] = Field(default_factory=dict, description="metric -> recovery")
    pareto: bool = False
    tasks: dict[str, str] = Field(default_factory=dict, description="step -> ClearML task URL")
    task_ids: dict[str, str] = Field(default_factory=dict, description="step -> ClearML task id")
    identities: dict[str, str] = Field(default_factory=dict, description="step -> spec identity")
    model_id: str | None = None
    model_url: str | None = None
    reused: bool = Field(False, description="every step's task existed already (the trial cost nothing)")
    error: str | None = None


class SearchReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str
    study_name: str
    storage: str = Field(description="the study's storage URL, password masked")
    model: str
    recipes: list[str]
    space: list[str]
    objectives: dict[str, Literal["maximize", "minimize"]]
    sampler: str
    trials_requested: int
    trials: list[TrialRecord]
    pareto: list[int] = Field(default_factory=list, description="numbers of the trials on the Pareto front")
    best: dict[str, int] = Field(default_factory=dict, description="objective -> number of its best trial")
    base_tasks: dict[str, str] = Field(default_factory=dict, description="base model step -> ClearML task URL")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    summary_task_id: str | None = None
    summary_task_url: str | None = None
    plot_url: str | None = None

    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "complete"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(report: SearchReport) -> str:
    objectives = list(report.objectives)
    lines = [f"# Recipe search: {report.title}", "",
             f"Study `{report.study_name}` ({report.sampler}), storage `{report.storage}`: "
             f"{len(report.completed())} of {report.trials_requested} trials complete.", "",
             "Space: " + "; ".join(report.space or ["(recipe defaults only)"]), "",
             "Objectives: " + ", ".join(f"{n} ({d})" for n, d in report.objectives.items()), ""]
    header = ["trial", "state", "recipe", "parameters", *objectives, "Pareto", "tasks"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in report.trials:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()) or "-"
        links = " ".join(f"[{step}]({url})" for step, url in t.tasks.items()) or (t.error or "-")
        row = [str(t.number), t.state, t.recipe or "-", params, *(_fmt(t.values[o]) if o in t.values else "-"
                                                                 for o in objectives),
               "yes" if t.pareto else "", links]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Pareto front: " + (", ".join(f"trial {n}" for n in report.pareto) or "none yet")]
    for objective, number in report.best.items():
        trial = next(t for t in report.trials if t.number == number)
        model = f", model {trial.model_url or trial.model_id}" if (trial.model_url or trial.model_id) else ""
        lines.append(f"- best {objective}: trial {number} ({_fmt(trial.values[objective])}){model}")
    lines += ["", "Promote a trial's recipe to a named recipe file: `automation search promote "
              f"--study {report.study_name} --storage <url> --trial N --name NAME`"]
    return "\n".join(lines) + "\n"


def table_rows(report: SearchReport) -> list[dict[str, Any]]:
    return [{"trial": t.number, "state": t.state, "recipe": t.recipe, **{f"param {k}": v for k, v in t.params.items()},
             **t.values, "pareto": t.pareto} for t in report.trials]


def _panels(report: SearchReport) -> list[tuple[str, str]]:
    """(x objective, y objective) pairs to plot: recovery vs size and vs throughput, when searched."""
    y = next((o for o in ("recovery", "recovery_mean") if o in report.objectives), None)
    names = list(report.objectives)
    if y is None:
        return [(names[0], names[1])] if len(names) > 1 else []
    return [(x, y) for x in ("size", "throughput", "ttft") if x in report.objectives]


def plot_svg(report: SearchReport) -> str:
    """Scatter panels of the completed trials; Pareto trials filled, the others hollow."""
    panels = _panels(report)
    width, height, pad = 420, 300, 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * max(len(panels), 1)}" height="{height}" '
             'font-family="sans-serif" font-size="11">']
    if not panels or not report.completed():
        parts.append(f'<text x="10" y="20">{html.escape(report.title)}: nothing to plot yet</text></svg>')
        return "".join(parts)
    for index, (x_name, y_name) in enumerate(panels):
        left = index * width
        points = [(t, t.values[x_name], t.values[y_name]) for t in report.completed()
                  if x_name in t.values and y_name in t.values and math.isfinite(t.values[x_name] + t.values[y_name])]
        xs, ys = [p[1] for p in points] or [0.0], [p[2] for p in points] or [0.0]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

        def sx(v: float, x0: float = x0, x1: float = x1, left: float = left) -> float:
            return left + pad + (v - x0) / (x1 - x0) * (width - 2 * pad)

        def sy(v: float, y0: float = y0, y1: float = y1) -> float:
            return height - pad - (v - y0) / (y1 - y0) * (height - 2 * pad)

        parts.append(f'<rect x="{left + pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
                     'fill="none" stroke="#999"/>')
        parts.append(f'<text x="{left + width / 2}" y="{height - 12}" text-anchor="middle">'
                     f'{html.escape(x_name)} ({report.objectives[x_name]})</text>')
        parts.append(f'<text x="{left + 12}" y="{height / 2}" transform="rotate(-90 {left + 12} {height / 2})" '
                     f'text-anchor="middle">{html.escape(y_name)} ({report.objectives[y_name]})</text>')
        for v, anchor_y in ((x0, height - pad + 14), (x1, height - pad + 14)):
            parts.append(f'<text x="{sx(v):.1f}" y="{anchor_y}" text-anchor="middle">{v:.4g}</text>')
        for v in (y0, y1):
            parts.append(f'<text x="{left + pad - 4}" y="{sy(v):.1f}" text-anchor="end">{v:.4g}</text>')
        for trial, x, y in points:
            fill = "#1f77b4" if trial.pareto else "none"
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{fill}" stroke="#1f77b4"/>'
                         f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 5:.1f}">{trial.number}</text>')
    parts.append("</svg>")
    return "".join(parts)


def plotly_figures(report: SearchReport) -> dict[str, dict[str, Any]]:
    figures = {}
    for x_name, y_name in _panels(report):
        traces = []
        for label, on_front in (("Pareto front", True), ("other trials", False)):
            chosen = [t for t in report.completed()
                      if t.pareto == on_front and x_name in t.values and y_name in t.values]
            traces.append({"type": "scatter", "mode": "markers+text", "name": label,
                           "x": [t.values[x_name] for t in chosen], "y": [t.values[y_name] for t in chosen],
                           "text": [str(t.number) for t in chosen], "textposition": "top center"})
        figures[f"{y_name} vs {x_name}"] = {"data": traces, "layout": {
            "title": f"{y_name} vs {x_name}", "xaxis": {"title": x_name}, "yaxis": {"title": y_name}}}
    return figures
