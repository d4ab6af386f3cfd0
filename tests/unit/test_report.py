"""Report rendering, the history math and the promotion rules (pure functions, no servers)."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from automation.errors import PromotionRefused
from automation.regression.baselines import apply_history, promotable_cells, trend
from automation.regression.gates import PerformanceGateSettings, PerformanceRule
from automation.regression.report.clearml import plotly_figures, sanitize
from automation.regression.report.console import render_console
from automation.regression.report.format import (
    headline_accuracy,
    perf_label,
    rank_accuracy,
    short_model,
    table_rows,
    write_json,
)
from automation.regression.report.markdown import render_markdown
from automation.regression.report.svg import plot_svg
from automation.regression.report_model import Report, ReportCell
from automation.results import MetricValue
from flows.publish import artifact_key, publish_prefect
from tests.report_samples import BASE_PERF, sample_report

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def report() -> Report:
    return sample_report()


def cell(report: Report, scheme: str) -> ReportCell:
    return next(c for c in report.cells if c.scheme == scheme)


# -- headline choice -------------------------------------------------------------------------------
def test_headline_accuracy_puts_suite_averages_then_groups_first_and_caps_the_columns(report: Report) -> None:
    assert headline_accuracy(report) == ["suite/tiny_average", "tiny/acc", "tiny/acc_norm",
                                         "tiny_gen/exact_match,strip"]


def test_rank_accuracy_is_deterministic_and_prefers_gated_metrics_over_the_rest() -> None:
    names = ["b_task/acc", "a_task/acc", "mmlu/acc", "mmlu_algebra/acc", "suite/avg"]
    assert rank_accuracy(names, gated=["b_task/acc"]) == ["suite/avg", "mmlu/acc", "b_task/acc", "a_task/acc",
                                                          "mmlu_algebra/acc"]
    assert rank_accuracy(reversed(names), gated=["b_task/acc"]) == rank_accuracy(names, gated=["b_task/acc"])


def test_perf_label_is_the_lightest_load() -> None:
    assert perf_label(BASE_PERF) == "synchronous"
    rates = {"concurrent@32/ttft_ms/median": 1.0, "concurrent@8/ttft_ms/median": 1.0,
             "concurrent@64/output_tokens_per_s": 1.0}
    assert perf_label(rates) == "concurrent@8"
    assert perf_label({"error_fraction": 0.0}) is None


def test_short_model_names() -> None:
    assert short_model("hf:org/tiny-llama@main") == "tiny-llama"
    assert short_model("/data/models/llama-3-8b/") == "llama-3-8b"
    assert short_model("clearml:0123456789abcdef") == "clearml-01234567"


# -- markdown --------------------------------------------------------------------------------------
def test_markdown_joins_accuracy_and_performance_with_outcomes_and_links(report: Report) -> None:
    md = render_markdown(report)
    summary = md.split("# Details")[0]
    header = next(line for line in summary.splitlines() if line.startswith("| Model"))
    assert header.count("|") - 1 == 4 + 4 + 2 + 3 + 3  # keys, 4 accuracy, recovery+outcome, 3 perf, 3 outcomes+tasks
    w4 = next(line for line in summary.splitlines() if "| w4a16 |" in line)
    assert "0.891" in w4 and "0.9836" in w4  # suite average and min recovery (perplexity)
    assert "120 (+20.0%)" in w4 and "60 (+20.0%)" in w4  # TTFT and throughput vs base
    assert "| PASS | 120" in w4 and w4.count("FAIL") == 2  # accuracy passes, performance and cell fail
    for scheme in ("compress", "evaluate", "benchmark"):
        assert f"[{scheme}](http://web.example/projects/p/experiments/w4a16-{scheme}/output/log)" in w4
    fp8 = next(line for line in summary.splitlines() if "| fp8 |" in line)
    assert "ERROR" in fp8 and "[evaluate (failed)](http://web.example/projects/p/experiments/fp8-evaluate" in fp8
    assert "**Outcome: ERROR**" in md
    assert "[flow-run-1](http://prefect.example/runs/flow-run/flow-run-1)" in md


def test_markdown_details_hold_every_decision_failure_and_value(report: Report) -> None:
    md = render_markdown(report)
    w8 = md.split("## tiny-llama | w8a8 | tiny | smoke: FAIL")[1].split("\n## ")[0]
    assert "| tiny/acc | 0.8 | 0.4 | 0.5 | [0.4755, 0.5245] | 0.95 | - | FAIL |" in w8
    assert "| synchronous/output_tokens_per_s | higher | 50 | 25 | -50.0% | 10% | yes | FAIL |" in w8
    assert "| synchronous/ttft_ms/p99 | lower | 180 | 90 | +50.0% | 25% | observe | PASS |" in w8
    assert "| tiny_ppl/word_perplexity | 30 | - | - |" in w8  # the full per-metric detail
    assert "CUDA out of memory on queue gpu" in md
    assert "exact_match,strip" in md and "\\|" not in md.split("# Details")[0].split("| Tasks |")[0]


def test_markdown_shows_accepted_comparison_and_trend() -> None:
    now = sample_report(ttft_factor=1.0)
    before = sample_report(ttft_factor=0.8).model_copy(update={"summary_task_id": "prev-report"})
    accepted = {c.key: ("accepted-report", c) for c in before.cells}
    cells = apply_history(now.cells, accepted, before)
    md = render_markdown(now.model_copy(update={"cells": cells}))
    assert "### Performance vs accepted run (report accepted-report)" in md
    assert "### Trend vs previous run (report prev-report)" in md
    assert "| synchronous/ttft_ms/median | 100 | +25.0% |" in md


def test_markdown_escapes_pipes_in_cells() -> None:
    report = sample_report(title="a|b")
    assert "# a|b" in render_markdown(report)  # headings are not tables
    bad = report.model_copy(update={"provenance": {"note": "x|y"}})
    assert "| note | x\\|y |" in render_markdown(bad)


# -- console, table rows, json ---------------------------------------------------------------------
def test_console_rendering_holds_outcomes_and_links(report: Report) -> None:
    console = Console(record=True, width=250)
    console.print(render_console(report))
    text = console.export_text()
    assert "tiny nightly: ERROR" in text and "FAIL" in text and "INCONCLUSIVE" not in text
    assert "w4a16-benchmark/output/log" in text and "CUDA out of memory" in text


def test_table_rows_are_flat_json_with_the_same_keys(report: Report) -> None:
    rows = table_rows(report)
    assert len(rows) == len(report.cells)
    assert all(row.keys() == rows[0].keys() for row in rows)
    assert all(v is None or isinstance(v, str | float | int) for row in rows for v in row.values())
    w4 = rows[1]
    assert w4["scheme"] == "w4a16" and w4["ttft_ms_median"] == 120.0
    assert w4["ttft_ms_median_vs_base"] == pytest.approx(0.2) and w4["outcome"] == "FAIL"
    json.dumps(rows)


def test_write_json_round_trips(report: Report, tmp_path: Path) -> None:
    path = write_json(report, tmp_path / "out" / "report.json")
    assert Report.model_validate_json(path.read_text()) == report


# -- SVG and plotly --------------------------------------------------------------------------------
def test_svg_is_valid_and_draws_bars_thresholds_and_points(report: Report) -> None:
    root = ET.fromstring(plot_svg(report))
    assert root.tag == f"{SVG}svg"
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(bars) == 2 * 6  # two compressed cells x six gated metrics
    thresholds = [line for line in root.iter(f"{SVG}line") if line.get("stroke-dasharray")]
    assert len(thresholds) == 6
    assert len(list(root.iter(f"{SVG}circle"))) == 3  # base, w4a16, w8a8 benchmarked; fp8 not


def test_svg_escapes_text_and_survives_an_empty_report() -> None:
    empty = Report(title='<x & "y">', series="s", created=datetime(2026, 1, 1, tzinfo=UTC), cells=[],
                   outcome="inconclusive")
    root = ET.fromstring(plot_svg(empty))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert any(t and '<x & "y">' in t for t in texts)
    assert "no accuracy gates" in texts and "no benchmark values" in texts


def test_plotly_figures_are_json(report: Report) -> None:
    figures = plotly_figures(report)
    recovery = json.loads(json.dumps(figures["recovery"]))
    assert [t["name"] for t in recovery["data"]] == ["tiny-llama w4a16", "tiny-llama w8a8", "threshold"]
    scatter = figures["latency vs throughput"]["data"]
    assert {t["name"]: (t["x"][0], t["y"][0]) for t in scatter}["tiny-llama w4a16"] == (60.0, 120.0)


# -- history ---------------------------------------------------------------------------------------
def test_apply_history_compares_with_the_accepted_cell_and_the_previous_run() -> None:
    now = sample_report(ttft_factor=1.3)
    accepted_run = sample_report(ttft_factor=1.0)
    previous = sample_report(ttft_factor=1.2).model_copy(update={"summary_task_id": "prev"})
    w4_accepted = cell(accepted_run, "w4a16")
    cells = apply_history(now.cells, {w4_accepted.key: ("acc-1", w4_accepted)}, previous)
    w4 = cell(now.model_copy(update={"cells": cells}), "w4a16")
    assert w4.accepted_from == "acc-1"
    ttft = next(d for d in w4.accepted_gates if d.metric == "synchronous/ttft_ms/median")
    assert (ttft.reference, ttft.candidate, ttft.outcome) == (100.0, pytest.approx(130.0), "fail")
    assert ttft.change == pytest.approx(-0.3)
    assert w4.trend_from == "prev"
    assert w4.trend["synchronous/ttft_ms/median"] == pytest.approx(130 / 120 - 1)
    assert w4.trend["suite/tiny_average"] == pytest.approx(0.0)
    assert set(w4.trend) == {"suite/tiny_average", "tiny/acc", "tiny/acc_norm", "tiny_gen/exact_match,strip",
                             "synchronous/ttft_ms/median", "synchronous/itl_ms/median",
                             "synchronous/output_tokens_per_s"}
    base = cell(now.model_copy(update={"cells": cells}), "base")
    assert base.accepted_gates == [] and base.accepted_from is None  # only w4a16 was accepted
    fp8 = cell(now.model_copy(update={"cells": cells}), "fp8")
    assert fp8.trend == {} and fp8.trend_from == "prev"  # no values on either side


def test_apply_history_uses_the_given_rules_and_leaves_cells_alone_without_history() -> None:
    now = sample_report()
    assert apply_history(now.cells, {}, None) == now.cells
    strict = PerformanceGateSettings(rules=(PerformanceRule(pattern="*/itl_ms/median", direction="lower",
                                                            tolerance=0.0),))
    w4 = cell(now, "w4a16")
    slower = w4.model_copy(update={"performance": {**w4.performance, "synchronous/itl_ms/median": 11.0}})
    [out] = apply_history([slower], {w4.key: ("r", w4)}, None, strict)
    assert [(d.metric, d.outcome) for d in out.accepted_gates] == [("synchronous/itl_ms/median", "fail")]


def test_trend_skips_zero_and_missing_references() -> None:
    now = cell(sample_report(), "w4a16")
    before = now.model_copy(update={"accuracy": {"suite/tiny_average": MetricValue(value=0.0)}, "performance": {}})
    assert trend(now, before) == {}


# -- promotion rules -------------------------------------------------------------------------------
def test_promotion_refuses_errored_runs_and_failed_cells_unless_forced(report: Report) -> None:
    with pytest.raises(PromotionRefused, match=r"the run ended in error.*fp8.*failed \(evaluate\)"):
        promotable_cells(report)
    assert promotable_cells(report, force=True) == [c.key for c in report.cells]
    good = [cell(report, "base").key, cell(report, "w4a16").key]
    assert promotable_cells(report, good) == good  # accepting only the good cells needs no force
    with pytest.raises(PromotionRefused, match="fp8"):
        promotable_cells(report, [cell(report, "fp8").key])
    with pytest.raises(PromotionRefused, match="has no cell 'nope'"):
        promotable_cells(report, ["nope"], force=True)
    clean = sample_report(with_failure=False)
    assert len(promotable_cells(clean)) == 3  # gate failures are not errors: a team may accept them


# -- secrets and Prefect ---------------------------------------------------------------------------
def test_sanitize_masks_secret_entries_and_values(report: Report) -> None:
    leaky = report.model_copy(update={
        "provenance": {"CLEARML_API_SECRET_KEY": "s3cr3t-value", "code": "abc", "note": "key s3cr3t-value inside",
                       "max_tokens": "8"}})
    clean = sanitize(leaky, ["s3cr3t-value"])
    assert "s3cr3t-value" not in clean.model_dump_json()
    assert clean.provenance["CLEARML_API_SECRET_KEY"] == "***" and clean.provenance["max_tokens"] == "8"
    assert clean.cells == report.cells


def test_artifact_keys_are_lowercase_letters_digits_and_dashes() -> None:
    assert artifact_key("report-Nightly/W4A16 tiny_v2") == "report-nightly-w4a16-tiny-v2"
    assert artifact_key("***") == "report"


def test_publish_prefect_outside_a_run_is_a_no_op(report: Report) -> None:
    assert asyncio.run(publish_prefect(report)) == []
