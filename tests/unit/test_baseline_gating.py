"""Gating against accepted baselines and the paired per-document comparison (pure functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from automation.regression.baselines import apply_history
from automation.regression.cells import decide
from automation.regression.gates import (
    AccuracyGateSettings,
    mcnemar_exact_p,
    paired_gate,
    recovery_gate,
    with_paired,
)
from automation.regression.report.markdown import render_markdown
from automation.regression.report_model import BASE_SCHEME, ReportCell
from automation.results import DocumentScores, MetricValue
from automation.scripts.lib.evaluate_core import per_sample
from tests.report_samples import sample_report


def docs(n: int, right: int, flips_down: int = 0, flips_up: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """`n` documents, the first `right` right under the base; the candidate gets `flips_down` of
    those wrong and `flips_up` of the wrong ones right."""
    base = {f"d{i:03d}": 1.0 if i < right else 0.0 for i in range(n)}
    cand = dict(base)
    for i in range(flips_down):
        cand[f"d{i:03d}"] = 0.0
    for i in range(flips_up):
        cand[f"d{right + i:03d}"] = 1.0
    return base, cand


# -- McNemar and the paired gate -------------------------------------------------------------------
def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(16, 0) == pytest.approx(2 * 0.5 ** 16)
    assert mcnemar_exact_p(3, 0) == pytest.approx(0.25)
    assert mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(7, 2) == mcnemar_exact_p(2, 7) == pytest.approx(2 * (1 + 9 + 36) / 512)


def test_paired_test_decides_where_the_independent_intervals_overlap() -> None:
    # 200 documents, base right on 160 (0.80); the compressed model loses 16 of them and gains none
    # (0.72, recovery 0.90 < 0.95). Independent Wilson intervals on 0.80 and 0.72 overlap: inconclusive.
    base, cand = docs(200, 160, flips_down=16)
    independent = recovery_gate("t/acc", MetricValue(value=0.80, samples=200), MetricValue(value=0.72, samples=200))
    assert independent.outcome == "inconclusive"
    paired = paired_gate("t/acc", base, cand)
    assert paired is not None and paired.paired is not None
    assert paired.outcome == "fail"
    assert paired.recovery == pytest.approx(0.9)
    assert paired.high is not None and paired.high < 0.95
    assert (paired.paired.documents, paired.paired.right_to_wrong, paired.paired.wrong_to_right) == (200, 16, 0)
    assert paired.paired.mcnemar_p == pytest.approx(2 * 0.5 ** 16)
    assert "16 right->wrong, 0 wrong->right of 200" in paired.reason


def test_paired_drop_without_a_significant_mcnemar_is_inconclusive() -> None:
    # 4 right->wrong, 0 back, of 20: recovery 0.75, but 4 flips are not evidence (p = 0.125)
    base, cand = docs(20, 16, flips_down=4)
    decision = paired_gate("t/acc", base, cand)
    assert decision is not None and decision.outcome == "inconclusive"
    assert decision.paired is not None and decision.paired.mcnemar_p == pytest.approx(0.125)


def test_paired_gate_passes_churn_that_nets_out() -> None:
    base, cand = docs(100, 80, flips_down=10, flips_up=10)
    decision = paired_gate("t/acc", base, cand)
    assert decision is not None and decision.outcome == "pass" and decision.recovery == pytest.approx(1.0)
    assert decision.paired is not None and decision.paired.mcnemar_p == 1.0


def test_paired_gate_declines_what_it_cannot_pair() -> None:
    assert paired_gate("t/acc", {"a": 1.0}, {"b": 1.0}) is None  # no common documents
    assert paired_gate("t/f1", {"a": 0.5}, {"a": 1.0}) is None  # not 0/1 scores
    assert paired_gate("t/word_perplexity", {"a": 1.0}, {"a": 0.0}) is None  # lower is better: not a proportion
    with pytest.raises(ValueError, match="threshold"):
        paired_gate("t/acc", {"a": 1.0}, {"a": 1.0}, threshold=95)


def test_with_paired_replaces_decisions_it_can_pair_and_spells_out_examples() -> None:
    base, cand = docs(200, 160, flips_down=16)
    independent = [recovery_gate("t/acc", MetricValue(value=0.80, samples=200), MetricValue(value=0.72, samples=200)),
                   recovery_gate("suite/avg", MetricValue(value=0.8), MetricValue(value=0.79))]
    examples = {"t": {"d000": {"target": "Paris", "response": "Paris"}}}
    theirs = DocumentScores(scores={"t/acc": base}, examples=examples)
    mine = DocumentScores(scores={"t/acc": cand}, examples={"t": {"d000": {"target": "Paris", "response": "Rome"}}})
    out = with_paired(independent, theirs, mine)
    assert [d.outcome for d in out] == ["fail", "pass"]
    assert out[1] == independent[1]  # no per-document scores: left as it was
    assert out[0].paired is not None
    assert out[0].paired.examples[0] == "target 'Paris': base 'Paris' -> candidate 'Rome'"


def test_per_sample_reads_lm_evals_logged_samples() -> None:
    results = {"samples": {
        "tiny_mc": [{"doc_id": 0, "doc_hash": "h0", "filter": "none", "metrics": ["acc", "acc_norm"], "acc": 1.0,
                     "acc_norm": 0.0, "target": 2, "filtered_resps": [(-5.0, False), (-3.0, False), (-1.2, True)]},
                    {"doc_id": 1, "doc_hash": "h1", "filter": "none", "metrics": ["acc"], "acc": 0.0, "target": 1,
                     "filtered_resps": [(-3.0, False)]}],
        "tiny_gen": [{"doc_id": 0, "doc_hash": "g0", "filter": "strip", "metrics": ["exact_match"],
                      "exact_match": 1.0, "target": "4", "filtered_resps": ["4"]}],
        "tiny_ppl": [{"doc_id": 0, "doc_hash": "p0", "filter": "none", "metrics": ["word_perplexity"],
                      "word_perplexity": (-10.0, 5), "target": "", "filtered_resps": [-10.0]}],
    }}
    data = per_sample(results)
    assert data["tasks"] == {"tiny_mc": {"acc": {"h0": 1.0, "h1": 0.0}, "acc_norm": {"h0": 0.0}},
                             "tiny_gen": {"exact_match,strip": {"g0": 1.0}}}
    scores = DocumentScores.from_artifact(data)
    assert set(scores.scores) == {"tiny_mc/acc", "tiny_mc/acc_norm", "tiny_gen/exact_match,strip"}
    assert scores.example("tiny_gen/exact_match,strip", "g0") == {"target": "4", "response": "4"}
    assert scores.example("tiny_mc/acc", "h0") == {"target": "2", "response": "choice 2"}
    assert DocumentScores.from_artifact({"unexpected": 1}) == DocumentScores()


# -- accepted baselines gate -----------------------------------------------------------------------
def _cells(report_cells: list[ReportCell]) -> dict[str, ReportCell]:
    return {c.scheme: c for c in report_cells}


def test_a_cell_that_passes_vs_base_fails_against_its_accepted_run() -> None:
    tonight = sample_report(ttft_factor=1.0, with_failure=False)
    w4 = _cells(tonight.cells)["w4a16"]
    assert w4.outcome == "pass"
    # the accepted run of w4a16 scored 10% higher on every accuracy value than tonight
    better = {k: MetricValue(value=v.value * (1.1 if "perplexity" not in k else 0.9), stderr=v.stderr,
                             samples=v.samples) for k, v in w4.accuracy.items()}
    accepted = {w4.key: ("acc-1", w4.model_copy(update={"accuracy": better}))}
    cells = apply_history(tonight.cells, accepted, None, accuracy=AccuracyGateSettings(baseline_threshold=0.98))
    decided, changes = decide(cells)
    w4_now = _cells(decided)["w4a16"]
    assert changes == []
    assert w4_now.accepted_from == "acc-1"
    failed = {d.metric for d in w4_now.accepted_accuracy_gates if d.outcome == "fail"}
    assert "tiny/acc" in failed
    assert w4_now.outcome == "fail"
    assert "Accuracy vs accepted run (report acc-1)" in render_markdown(tonight.model_copy(update={"cells": decided}))


def test_an_unchanged_cell_passes_against_its_accepted_run() -> None:
    tonight = sample_report(ttft_factor=1.0, with_failure=False)
    accepted = {c.key: ("acc-1", c) for c in tonight.cells}
    decided, changes = decide(apply_history(tonight.cells, accepted, None))
    assert changes == []
    assert _cells(decided)["w4a16"].outcome == "pass"
    assert all(d.outcome == "pass" for d in _cells(decided)["w4a16"].accepted_accuracy_gates)
    assert _cells(decided)[BASE_SCHEME].outcome == "baseline"


def test_a_moved_base_model_is_a_stack_change_not_a_compression_regression() -> None:
    tonight = sample_report(ttft_factor=1.0, with_failure=False)
    cells = _cells(tonight.cells)
    base, w4 = cells[BASE_SCHEME], cells["w4a16"]

    def scaled(cell: ReportCell) -> ReportCell:
        return cell.model_copy(update={"accuracy": {k: MetricValue(value=v.value * 1.2, stderr=v.stderr,
                                                                   samples=v.samples)
                                                    for k, v in cell.accuracy.items()}})

    # last accepted run: both models scored 20% higher (the evaluation stack moved since, for both)
    accepted = {base.key: ("acc-1", scaled(base)), w4.key: ("acc-1", scaled(w4))}
    decided, changes = decide(apply_history(tonight.cells, accepted, None))
    assert len(changes) == 1 and changes[0].startswith("hf:org/tiny-llama (base) on tiny / smoke")
    assert "tiny/acc 0.96 -> 0.8" in changes[0]
    now = _cells(decided)
    assert now["w4a16"].stack_changed and now["w4a16"].outcome == "pass"  # tonight's vs-base gates decide
    assert any(d.outcome == "fail" for d in now["w4a16"].accepted_accuracy_gates)  # shown, not gating
    md = render_markdown(tonight.model_copy(update={"cells": decided, "stack_changes": changes}))
    assert "## Stack changes" in md and "not gating: the base model moved too" in md


def test_baseline_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match="baseline_threshold"):
        AccuracyGateSettings(baseline_threshold=98)


# -- the environment: pinned, recorded, compared --------------------------------------------------
def test_a_hub_model_is_pinned_to_the_commit_its_revision_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                ) -> None:
    """Offline (the hub is not reachable from these machines): the local cache says the commit."""
    import asyncio

    from automation.errors import FlowInputError
    from automation.specs.model_ref import ModelRef
    from flows.run import check_model_available

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--m"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    given = ModelRef.model_validate("hf:org/m")
    pinned = asyncio.run(check_model_available(given))
    assert str(pinned) == f"hf:org/m@{sha}" and pinned.pinned
    assert asyncio.run(check_model_available(pinned)) == pinned  # a commit stays as given
    with pytest.raises(FlowInputError, match="not in the local hub cache"):
        asyncio.run(check_model_available(ModelRef.model_validate("hf:org/other")))


def test_step_limits_default_per_kind_and_take_overrides() -> None:
    from automation.regression.plan import StepLimits
    from automation.specs.benchmark import BenchmarkSpec
    from automation.specs.evaluate import EvaluateSpec

    bench = BenchmarkSpec(model="hf:org/m@" + "0" * 40, profile="smoke")
    evaluate = EvaluateSpec(model="hf:org/m@" + "0" * 40, suite="tiny")
    assert StepLimits().for_spec(bench) == (BenchmarkSpec.max_queue_s, BenchmarkSpec.max_run_s)
    assert BenchmarkSpec.max_run_s < EvaluateSpec.max_run_s
    assert StepLimits(evaluate_run_s=60).for_spec(evaluate) == (EvaluateSpec.max_queue_s, 60)
    with pytest.raises(ValueError, match="evaluate_queue_s"):
        StepLimits(evaluate_queue_s=0)


def test_what_changed_lists_suspects_and_leaves_out_which_agent_ran() -> None:
    from automation.regression.baselines import environment_changes

    before = {"compress/code_files": "a1", "compress/llmcompressor": "0.14.0", "compress/worker": "gpu-1",
              "evaluate/lm_eval": "0.4.13"}
    now = {**before, "compress/code_files": "b2", "compress/worker": "gpu-7", "evaluate/gpu": "H100"}
    assert environment_changes(now, before) == ["compress/code_files: a1 -> b2", "evaluate/gpu: (none) -> H100"]
    moved = {**now, "compress/code_commit": "c" * 40, "evaluate/code_commit": "c" * 40}
    pinned = {**before, "compress/code_commit": "a" * 40, "evaluate/code_commit": "a" * 40}
    assert environment_changes(moved, pinned)[0] == f"compress/code_files: a1 -> b2 (commit {'a' * 12} -> {'c' * 12})"
    assert not any(c.startswith("evaluate/code") for c in environment_changes(moved, pinned))
    assert environment_changes(before, before) == []
    assert environment_changes(now, {}) == ["environment not recorded on one side"]
    assert environment_changes({}, {}) == []


# -- the cross-run trend -----------------------------------------------------------------------------
def test_the_trend_follows_each_cell_across_the_series_and_is_plotted() -> None:
    import xml.etree.ElementTree as ET
    from datetime import UTC, datetime, timedelta

    from automation.regression.baselines import trend_series
    from automation.regression.report.clearml import plotly_figures
    from automation.regression.report.svg import plot_svg

    start = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    history = [sample_report(created=start + timedelta(days=i), with_failure=False).model_copy(
        update={"summary_task_id": f"night-{i}"}) for i in range(3)]
    tonight = sample_report(created=start + timedelta(days=3), with_failure=False)
    series = trend_series(history, tonight.cells, tonight.created)
    w4 = _cells(tonight.cells)["w4a16"]
    points = series[w4.key]
    assert [p.report_id for p in points] == ["night-0", "night-1", "night-2", None]
    assert points[-1].recovery == pytest.approx(min(d.recovery for d in w4.accuracy_gates if d.recovery))
    assert points[-1].throughput == w4.performance["synchronous/output_tokens_per_s"]
    report = tonight.model_copy(update={"trend_series": series})
    svg = plot_svg(report)
    ET.fromstring(svg)  # well-formed
    assert "across the runs of the series" in svg and svg.count("<polyline") == 2  # w4a16 and w8a8
    figures = plotly_figures(report)
    assert {"trend: recovery", "trend: throughput"} <= set(figures)
    assert len(figures["trend: recovery"]["data"][0]["x"]) == 4
    assert "<polyline" not in plot_svg(tonight)  # no series yet: no trend panel


def test_a_run_whose_baselines_could_not_be_read_is_not_a_pass() -> None:
    from flows.run import report_outcome

    cells = [c for c in sample_report(ttft_factor=1.0, with_failure=False).cells if c.scheme in (BASE_SCHEME, "w4a16")]
    assert report_outcome(cells) == "pass"
    assert report_outcome(cells, "BackendUnavailable: the server did not answer") == "inconclusive"


# -- performance noise from repetitions -------------------------------------------------------------
def test_repetitions_report_the_median_and_the_spread() -> None:
    from automation.scripts.benchmark import combine_repetitions

    def run(ttft: float, tps: float, errored: int = 0) -> dict[str, Any]:
        return {"profile": "smoke", "wall_s": 10.0, "error_fraction": 0.0, "benchmarks": [{
            "strategy": "synchronous", "rate": None, "ttft_ms": {"median": ttft, "p90": ttft * 2, "p99": None},
            "output_tokens_per_s": tps, "request_totals": {"successful": 6 - errored, "errored": errored,
                                                           "incomplete": 0, "total": 6}}]}

    combined, spreads = combine_repetitions([run(10.0, 50.0), run(14.0, 40.0, errored=1), run(11.0, 45.0)])
    bench = combined["benchmarks"][0]
    assert bench["ttft_ms"] == {"median": 11.0, "p90": 22.0, "p99": None}
    assert bench["output_tokens_per_s"] == 45.0 and bench["strategy"] == "synchronous"
    assert spreads[0]["ttft_ms"]["median"] == 2.0 and spreads[0]["output_tokens_per_s"] == 5.0
    assert bench["request_totals"] == {"successful": 17, "errored": 1, "incomplete": 0, "total": 18}
    assert combined["error_fraction"] == round(1 / 18, 4) and combined["repetitions"] == 3
    assert combined["wall_s"] == 30.0


def test_the_measured_spread_widens_the_performance_tolerance() -> None:
    from automation.regression.gates import PerformanceGateSettings, PerformanceRule, performance_gates

    rules = PerformanceGateSettings(rules=(PerformanceRule(pattern="*/ttft_ms/median", direction="lower",
                                                           tolerance=0.10),))
    reference, candidate = {"s/ttft_ms/median": 100.0}, {"s/ttft_ms/median": 115.0}
    [without] = performance_gates(reference, candidate, rules)
    assert without.outcome == "fail" and without.tolerance == 0.10
    noisy_ref = {**reference, "s/ttft_ms/median:spread": 8.0}
    noisy_cand = {**candidate, "s/ttft_ms/median:spread": 10.0}
    [within] = performance_gates(noisy_ref, noisy_cand, rules)  # band (8 + 10) / 100 = 18% > 15% worse
    assert within.outcome == "pass" and within.tolerance == pytest.approx(0.18)
    assert "measured noise band" in within.reason
    [quiet] = performance_gates({**reference, "s/ttft_ms/median:spread": 1.0}, candidate, rules)
    assert quiet.outcome == "fail" and quiet.tolerance == 0.10  # a narrow band leaves the rule's tolerance


def test_repetitions_must_be_odd() -> None:
    from automation.errors import SpecError
    from automation.specs.base import build
    from automation.specs.benchmark import BenchmarkSpec

    with pytest.raises(SpecError, match=r"repetitions: .*odd number"):
        build(BenchmarkSpec, {"model": "hf:org/m@" + "0" * 40, "profile": "smoke", "repetitions": 2})
    one = BenchmarkSpec(model="hf:org/m@" + "0" * 40, profile="smoke")
    assert one.identity() == BenchmarkSpec(model=one.model, profile="smoke", repetitions=1).identity()
    assert one.identity() != BenchmarkSpec(model=one.model, profile="smoke", repetitions=3).identity()


def test_a_timed_out_step_says_so_in_the_report() -> None:
    from automation.regression.report_model import StepFailure

    report = sample_report(with_failure=False)
    cells = list(report.cells)
    cells[1] = cells[1].model_copy(update={"outcome": "error", "failures": [StepFailure(
        step="benchmark", error="ran more than 14400 s on the agent, so it was stopped (its GPU freed)",
        task_id="t1", timeout="run")]})
    md = render_markdown(report.model_copy(update={"cells": cells}))
    assert "| benchmark (timeout: run) | ran more than 14400 s on the agent" in md
