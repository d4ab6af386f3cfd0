"""The report's plot: a small hand-written SVG (recovery bars; latency vs throughput), no plotting library."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

from automation.regression.report.format import cell_label, fmt, perf_headline_names, rank_accuracy
from automation.regression.report_model import BASE_SCHEME, Report, ReportCell

# -- SVG -------------------------------------------------------------------------------------------
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
BASE_COLOR = "#7f7f7f"
SVG_WIDTH = 960
_PANEL_H = 360
_MARGIN = {"left": 70, "right": 30, "top": 50, "bottom": 90}
MAX_PLOT_METRICS = 12


def scheme_colors(report: Report) -> dict[str, str]:
    schemes = sorted({c.scheme for c in report.cells if c.scheme != BASE_SCHEME})
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(schemes)}
    colors[BASE_SCHEME] = BASE_COLOR
    return colors


def _text(x: float, y: float, text: str, size: int = 12, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f"{escape(text)}</text>")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = (hi - lo) / n if hi > lo else 1.0
    return [lo + i * step for i in range(n + 1)]


def recovery_data(report: Report) -> tuple[list[str], list[tuple[ReportCell, list[float | None]]], list[float]]:
    cells = [c for c in report.cells if c.accuracy_gates]
    gated = [d.metric for c in cells for d in c.accuracy_gates]
    metrics = rank_accuracy(gated, gated)[:MAX_PLOT_METRICS]
    series = []
    thresholds = []
    for metric in metrics:
        found = [d.threshold for c in cells for d in c.accuracy_gates if d.metric == metric]
        thresholds.append(max(found) if found else 0.95)
    for cell in cells:
        by_metric = {d.metric: d.recovery for d in cell.accuracy_gates}
        series.append((cell, [by_metric.get(m) for m in metrics]))
    return metrics, series, thresholds


def _recovery_panel(report: Report, top: float, colors: Mapping[str, str]) -> str:
    metrics, series, thresholds = recovery_data(report)
    out = [_text(SVG_WIDTH / 2, top + 24, "Recovery (compressed / base) per metric; dashed: threshold", 14,
                 "middle", ' font-weight="bold"')]
    if not metrics or not series:
        return "".join(out) + _text(SVG_WIDTH / 2, top + _PANEL_H / 2, "no accuracy gates", 12, "middle")
    values = [v for _, vals in series for v in vals if v is not None]
    lo = math.floor(min([*values, *thresholds, 0.85]) * 20 - 1) / 20
    hi = math.ceil(max([*values, *thresholds, 1.0]) * 20 + 0.5) / 20
    x0, x1 = _MARGIN["left"], SVG_WIDTH - _MARGIN["right"]
    y0, y1 = top + _MARGIN["top"], top + _PANEL_H - _MARGIN["bottom"]

    def y_of(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    out.append(_axes(x0, x1, y0, y1, [(y_of(t), f"{t:.2f}") for t in _ticks(lo, hi)], "recovery"))
    group_w = (x1 - x0) / len(metrics)
    bar_w = max(min(group_w * 0.8 / len(series), 40.0), 2.0)
    for i, (metric, threshold) in enumerate(zip(metrics, thresholds, strict=True)):
        gx = x0 + i * group_w + (group_w - bar_w * len(series)) / 2
        for j, (cell, vals) in enumerate(series):
            value = vals[i]
            if value is None:
                continue
            top_y = y_of(max(min(value, hi), lo))
            out.append(f'<rect x="{gx + j * bar_w:.1f}" y="{top_y:.1f}" width="{bar_w * 0.95:.1f}" '
                       f'height="{y1 - top_y:.1f}" fill="{colors.get(cell.scheme, BASE_COLOR)}">'
                       f"<title>{escape(f'{cell_label(cell)} {metric}: {value:.4f}')}</title></rect>")
        ty = y_of(threshold)
        out.append(f'<line x1="{x0 + i * group_w + 2:.1f}" y1="{ty:.1f}" x2="{x0 + (i + 1) * group_w - 2:.1f}" '
                   f'y2="{ty:.1f}" stroke="#d62728" stroke-width="2" stroke-dasharray="6,3"/>')
        lx = x0 + (i + 0.5) * group_w
        out.append(_text(lx, y1 + 14, metric[:28], 10, "end", f' transform="rotate(-25 {lx:.1f} {y1 + 14:.1f})"'))
    return "".join(out)


def _axes(x0: float, x1: float, y0: float, y1: float, yticks: Sequence[tuple[float, str]], ylabel: str) -> str:
    out = [f'<line x1="{x0}" y1="{y1:.1f}" x2="{x1}" y2="{y1:.1f}" stroke="#333"/>',
           f'<line x1="{x0}" y1="{y0:.1f}" x2="{x0}" y2="{y1:.1f}" stroke="#333"/>']
    for y, label in yticks:
        out.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(_text(x0 - 6, y + 4, label, 10, "end"))
    mid = (y0 + y1) / 2
    out.append(_text(16, mid, ylabel, 11, "middle", f' transform="rotate(-90 16 {mid:.1f})"'))
    return "".join(out)


def scatter_points(report: Report) -> list[tuple[ReportCell, float, float]]:
    points = []
    for cell in report.cells:
        ttft, _, tps = perf_headline_names(cell.performance)
        if ttft and tps:
            points.append((cell, cell.performance[tps], cell.performance[ttft]))
    return points


def _scatter_panel(report: Report, top: float, colors: Mapping[str, str]) -> str:
    out = [_text(SVG_WIDTH / 2, top + 24, "Latency (TTFT median) vs throughput (output tokens/s)", 14, "middle",
                 ' font-weight="bold"')]
    points = scatter_points(report)
    if not points:
        return "".join(out) + _text(SVG_WIDTH / 2, top + _PANEL_H / 2, "no benchmark values", 12, "middle")
    x_hi = max(p[1] for p in points) * 1.15 or 1.0
    y_hi = max(p[2] for p in points) * 1.15 or 1.0
    x0, x1 = _MARGIN["left"], SVG_WIDTH - _MARGIN["right"]
    y0, y1 = top + _MARGIN["top"], top + _PANEL_H - _MARGIN["bottom"] + 30
    out.append(_axes(x0, x1, y0, y1, [(y1 - t / y_hi * (y1 - y0), fmt(t)) for t in _ticks(0, y_hi)],
                     "TTFT median (ms)"))
    for t in _ticks(0, x_hi):
        x = x0 + t / x_hi * (x1 - x0)
        out.append(_text(x, y1 + 16, fmt(t), 10, "middle"))
    out.append(_text((x0 + x1) / 2, y1 + 34, "output tokens/s", 11, "middle"))
    for cell, tps, ttft in points:
        x, y = x0 + tps / x_hi * (x1 - x0), y1 - ttft / y_hi * (y1 - y0)
        label = cell_label(cell)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colors.get(cell.scheme, BASE_COLOR)}">'
                   f"<title>{escape(f'{label}: {fmt(tps)} tok/s, TTFT {fmt(ttft)} ms')}</title></circle>")
        out.append(_text(x + 9, y - 7, label, 10))
    return "".join(out)


def trend_lines(report: Report) -> list[tuple[ReportCell, list[tuple[str, float]]]]:
    """Per compressed cell with at least two runs in its series: (run date, min recovery) points."""
    out = []
    for cell in report.cells:
        points = [(f"{p.created:%m-%d %H:%M}", p.recovery) for p in report.trend_series.get(cell.key, [])]
        kept = [(label, value) for label, value in points if value is not None]
        if cell.scheme != BASE_SCHEME and len(kept) >= 2:
            out.append((cell, kept))
    return out


def _trend_panel(report: Report, top: float, colors: Mapping[str, str]) -> str:
    out = [_text(SVG_WIDTH / 2, top + 24, "Recovery (min over gated metrics) across the runs of the series", 14,
                 "middle", ' font-weight="bold"')]
    lines = trend_lines(report)
    if not lines:
        return "".join(out) + _text(SVG_WIDTH / 2, top + _PANEL_H / 2, "fewer than two runs in the series", 12,
                                    "middle")
    values = [v for _, pts in lines for _, v in pts]
    lo = math.floor(min([*values, 0.85]) * 20 - 1) / 20
    hi = math.ceil(max([*values, 1.0]) * 20 + 0.5) / 20
    runs = max(len(pts) for _, pts in lines)
    x0, x1 = _MARGIN["left"], SVG_WIDTH - _MARGIN["right"]
    y0, y1 = top + _MARGIN["top"], top + _PANEL_H - _MARGIN["bottom"]

    def y_of(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    def x_of(i: int, n: int) -> float:  # the last point of every line is this run: align them at the right
        return x1 - (n - 1 - i) * (x1 - x0) / max(runs - 1, 1)

    out.append(_axes(x0, x1, y0, y1, [(y_of(t), f"{t:.2f}") for t in _ticks(lo, hi)], "recovery"))
    longest = max(lines, key=lambda line: len(line[1]))[1]
    for i, (label, _) in enumerate(longest):
        x = x_of(i, len(longest))
        out.append(_text(x, y1 + 14, label, 10, "end", f' transform="rotate(-25 {x:.1f} {y1 + 14:.1f})"'))
    for cell, pts in lines:
        color = colors.get(cell.scheme, BASE_COLOR)
        xy = [(x_of(i, len(pts)), y_of(v)) for i, (_, v) in enumerate(pts)]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + '"/>')
        for (x, y), (label, v) in zip(xy, pts, strict=True):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                       f"<title>{escape(f'{cell_label(cell)} {label}: {v:.4f}')}</title></circle>")
    return "".join(out)


def _legend(colors: Mapping[str, str], y: float) -> str:
    out = []
    x = float(_MARGIN["left"])
    for scheme, color in sorted(colors.items(), key=lambda kv: (kv[0] != BASE_SCHEME, kv[0])):
        out.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{color}"/>')
        out.append(_text(x + 16, y, scheme, 12))
        x += 30 + 7 * len(scheme)
    return "".join(out)


def plot_svg(report: Report) -> str:
    """Recovery bars per metric and scheme (with the threshold) above a TTFT vs throughput scatter,
    and, when the series has earlier runs, the recovery of each cell across them."""
    colors = scheme_colors(report)
    trend = bool(trend_lines(report))
    height = (3 if trend else 2) * _PANEL_H + 70
    body = [
        '<rect width="100%" height="100%" fill="white"/>',
        _text(SVG_WIDTH / 2, 22, f"{report.title} ({report.created:%Y-%m-%d %H:%M})", 15, "middle",
              ' font-weight="bold"'),
        _legend(colors, 44),
        _recovery_panel(report, 50, colors),
        _scatter_panel(report, 50 + _PANEL_H, colors),
        _trend_panel(report, 50 + 2 * _PANEL_H, colors) if trend else "",
    ]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
            f'viewBox="0 0 {SVG_WIDTH} {height}" font-family="sans-serif" role="img" '
            f"aria-label={quoteattr(report.title)}>" + "".join(body) + "</svg>\n")


