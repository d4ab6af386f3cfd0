"""Recovery and performance gates: direction, Wilson/stderr noise intervals, thresholds, outcomes."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from automation.regression.gates import (
    DEFAULT_PERFORMANCE_RULES,
    AccuracyDecision,
    AccuracyGateSettings,
    PerformanceDecision,
    PerformanceGateSettings,
    PerformanceRule,
    _wilson_stderr,
    accuracy_gates,
    metric_direction,
    overall,
    performance_gate,
    performance_gates,
    recovery_gate,
    threshold_for,
)
from automation.results import MetricValue


def mv(value: float, stderr: float | None = None, n: int | None = None) -> MetricValue:
    return MetricValue(value=value, stderr=stderr, samples=n)


# -- direction -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "tiny_ppl/word_perplexity", "tiny_ppl/byte_perplexity", "wikitext/bits_per_byte", "x/bpb", "ppl", "train/loss",
    "error_fraction", "x/err", "synchronous/ttft_ms/median", "constant@2/itl_ms/p90", "sweep/tpot_ms/p99",
    "synchronous/request_latency_s/median", "wall_s", "suite/tiny_ppl_average",
])
def test_lower_is_better_names(name: str) -> None:
    assert metric_direction(name) == "lower"


@pytest.mark.parametrize("name", [
    "tiny_mc/acc", "tiny_mc/acc_norm", "tiny_gen/exact_match,strip", "tiny/acc", "suite/tiny_average",
    "truthfulqa_mc2/mc2", "squad/f1", "humaneval/pass@1", "constant@2/output_tokens_per_s",
    "synchronous/requests_per_s", "tiny_ppl/acc", "gsm8k/exact_match,strict-match", "demo_score",
])
def test_higher_is_better_names(name: str) -> None:
    # per_s is a rate even though it ends in _s; a score under a perplexity-named task is a score
    assert metric_direction(name) == "higher"


# -- Wilson / recovery -----------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_wilson_is_nonzero_at_the_extremes(p: float) -> None:
    assert _wilson_stderr(p, 20, 1.96) > 0.01
    assert _wilson_stderr(p, 2000, 1.96) < _wilson_stderr(p, 20, 1.96)  # shrinks with n


def test_identical_values_pass_even_at_p_1() -> None:
    d = recovery_gate("tiny_mc/acc", mv(1.0, n=20), mv(1.0, n=20))
    assert (d.outcome, d.recovery, d.direction) == ("pass", 1.0, "higher")
    assert d.low is not None and d.high is not None and d.low < 1.0 < d.high  # Wilson: a real interval


def test_big_drop_with_many_samples_fails() -> None:
    d = recovery_gate("tiny_mc/acc", mv(0.8, n=1000), mv(0.5, n=1000))
    assert d.outcome == "fail"
    assert d.recovery == pytest.approx(0.625)
    assert d.high is not None and d.high < 0.95
    assert "Wilson n=1000" in d.reason


def test_small_drop_with_few_samples_is_inconclusive() -> None:
    d = recovery_gate("tiny_mc/acc", mv(0.80, n=50), mv(0.74, n=50))
    assert d.recovery == pytest.approx(0.925)
    assert d.outcome == "inconclusive"
    assert d.low is not None and d.high is not None and d.low < 0.925 < 0.95 <= d.high
    assert "noise" in d.reason
    # the same drop with many samples is beyond noise
    assert recovery_gate("tiny_mc/acc", mv(0.80, n=20000), mv(0.74, n=20000)).outcome == "fail"


def test_reported_stderr_is_used_when_wider_than_wilson() -> None:
    d = recovery_gate("tiny_mc/acc", mv(0.8, stderr=0.05, n=1000), mv(0.6, stderr=0.05, n=1000))
    assert d.outcome == "fail"
    se_r = 0.75 * math.sqrt((0.05 / 0.6) ** 2 + (0.05 / 0.8) ** 2)  # delta method on the ratio
    z = 1.959963984540054
    assert d.low == pytest.approx(0.75 - z * se_r) and d.high == pytest.approx(0.75 + z * se_r)
    assert "base stderr, candidate stderr" in d.reason


def test_zero_stderr_at_p_one_falls_back_to_wilson() -> None:
    """lm-eval reports stderr 0 when all 32 samples are right; that is not certainty."""
    d = recovery_gate("tiny_mc/acc", mv(1.0, stderr=0.0, n=32), mv(0.906, stderr=0.052, n=32))
    assert d.low is not None and d.high is not None and d.high - d.low > 0.1
    assert d.outcome == "inconclusive" and "Wilson n=32" in d.reason
    # a larger stderr turns the same drop into noise
    assert recovery_gate("x/acc", mv(0.8, stderr=0.15), mv(0.6, stderr=0.15)).outcome == "inconclusive"


def test_confidence_widens_the_interval() -> None:
    narrow = recovery_gate("x/acc", mv(0.8, stderr=0.05), mv(0.7, stderr=0.05), confidence=0.8)
    wide = recovery_gate("x/acc", mv(0.8, stderr=0.05), mv(0.7, stderr=0.05), confidence=0.99)
    assert narrow.high is not None and wide.high is not None and wide.high > narrow.high


def test_one_sided_uncertainty_is_used() -> None:
    d = recovery_gate("x/acc", mv(0.8), mv(0.74, n=50))
    assert d.outcome == "inconclusive" and d.high is not None and d.high > 0.95
    assert "base no stderr or sample count" in d.reason


def test_no_uncertainty_decides_on_the_point() -> None:
    fail = recovery_gate("suite/tiny_average", mv(0.8), mv(0.74))
    assert (fail.outcome, fail.low, fail.high) == ("fail", None, None)
    assert "decided on the point" in fail.reason
    assert recovery_gate("suite/tiny_average", mv(0.8), mv(0.77)).outcome == "pass"
    # a sample count on a non-proportion (or a value outside [0, 1]) gives no Wilson interval
    assert recovery_gate("tiny_ppl/word_perplexity", mv(10, n=5), mv(10.6, n=5)).outcome == "fail"
    assert recovery_gate("x/acc", mv(80.0, n=5), mv(74.0, n=5)).outcome == "fail"


def test_threshold_boundary_passes_despite_float_error() -> None:
    assert recovery_gate("x/acc", mv(0.8), mv(0.8 * 0.95)).outcome == "pass"
    assert 0.7 * 0.8 / 0.7 < 0.8  # float error the comparison must absorb
    assert recovery_gate("x/acc", mv(0.7), mv(0.7 * 0.8), threshold=0.8).outcome == "pass"


def test_perplexity_recovery_is_base_over_candidate() -> None:
    worse = recovery_gate("tiny_ppl/word_perplexity", mv(10.0, stderr=0.01), mv(12.0, stderr=0.01))
    assert worse.direction == "lower"
    assert worse.recovery == pytest.approx(10 / 12) and worse.outcome == "fail"
    better = recovery_gate("tiny_ppl/word_perplexity", mv(10.0), mv(9.0))
    assert better.recovery is not None and better.recovery > 1 and better.outcome == "pass"
    assert better.recovery == pytest.approx(10 / 9)
    # an explicit direction overrides the name
    assert recovery_gate("custom", mv(10.0), mv(12.0), direction="lower").outcome == "fail"
    assert recovery_gate("custom", mv(10.0), mv(12.0)).outcome == "pass"


@pytest.mark.parametrize(("base", "candidate", "reason"), [
    (None, mv(0.5), "missing in base"),
    (mv(0.5), None, "missing in candidate"),
    (None, None, "missing in base and candidate"),
    (mv(float("nan")), mv(0.5), "missing in base"),
    (mv(0.0, n=10), mv(0.5, n=10), "base value is 0"),
])
def test_undefined_recovery_is_inconclusive(base: MetricValue | None, candidate: MetricValue | None,
                                            reason: str) -> None:
    d = recovery_gate("x/acc", base, candidate)
    assert (d.outcome, d.recovery) == ("inconclusive", None)
    assert reason in d.reason


def test_zero_perplexity_candidate_is_undefined() -> None:
    d = recovery_gate("x/word_perplexity", mv(5.0), mv(0.0))
    assert d.outcome == "inconclusive" and "candidate value is 0" in d.reason


def test_recovery_gate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="threshold"):
        recovery_gate("x/acc", mv(0.5), mv(0.5), threshold=1.5)
    with pytest.raises(ValueError, match="confidence"):
        recovery_gate("x/acc", mv(0.5), mv(0.5), confidence=1.0)


# -- thresholds ------------------------------------------------------------------------------------
def test_threshold_precedence() -> None:
    s = AccuracyGateSettings(threshold=0.9, per_suite={"tiny": 0.8},
                             per_metric={"*/acc*": 0.7, "tiny_mc/acc": 0.6})
    assert threshold_for("tiny_gen/exact_match,strip", s) == 0.9
    assert threshold_for("tiny_gen/exact_match,strip", s, suite="openllm") == 0.9
    assert threshold_for("tiny_gen/exact_match,strip", s, suite="tiny") == 0.8
    assert threshold_for("tiny_ppl/acc_norm", s, suite="tiny") == 0.7  # pattern beats the suite
    assert threshold_for("tiny_mc/acc", s, suite="tiny") == 0.6  # the exact name beats an earlier pattern
    assert AccuracyGateSettings().threshold == 0.95


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("per_metric", {"tiny_mc/acc": 95.0}, r"per_metric\['tiny_mc/acc'\] = 95.0.*\(0, 1\].*write 0.95"),
    ("per_suite", {"tiny": 0.0}, r"per_suite\['tiny'\] = 0.0.*\(0, 1\]"),
    ("per_suite", {"tiny": 1.2}, r"per_suite\['tiny'\] = 1.2.*e.g. 0.95"),
])
def test_threshold_validation_names_the_key(field: str, value: dict[str, float], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        AccuracyGateSettings.model_validate({field: value})
    AccuracyGateSettings.model_validate({field: {k: 1.0 for k in value}})  # 1.0 is allowed


def test_default_threshold_and_confidence_are_validated() -> None:
    with pytest.raises(ValidationError, match="threshold"):
        AccuracyGateSettings(threshold=0)
    with pytest.raises(ValidationError, match="confidence"):
        AccuracyGateSettings(confidence=0.4)


# -- accuracy_gates --------------------------------------------------------------------------------
BASE = {"tiny_mc/acc": mv(0.8, n=1000), "tiny_gen/exact_match,strip": mv(0.6, stderr=0.02),
        "tiny_ppl/word_perplexity": mv(10.0), "suite/tiny_average": mv(0.7), "tiny_mc/acc:stderr": mv(0.01),
        "base_only/acc": mv(0.5)}
CAND = {"tiny_mc/acc": mv(0.5, n=1000), "tiny_gen/exact_match,strip": mv(0.6, stderr=0.02),
        "tiny_ppl/word_perplexity": mv(10.2), "suite/tiny_average": mv(0.69), "tiny_mc/acc:n": mv(1000),
        "cand_only/acc": mv(0.5)}


def test_accuracy_gates_compare_common_metrics_sorted() -> None:
    decisions = accuracy_gates(BASE, CAND, suite="tiny")
    assert [d.metric for d in decisions] == [
        "suite/tiny_average", "tiny_gen/exact_match,strip", "tiny_mc/acc", "tiny_ppl/word_perplexity"]
    by = {d.metric: d for d in decisions}
    assert by["tiny_mc/acc"].outcome == "fail"
    assert by["tiny_gen/exact_match,strip"].outcome == "pass"
    assert by["tiny_ppl/word_perplexity"].direction == "lower"
    assert by["tiny_ppl/word_perplexity"].recovery == pytest.approx(10 / 10.2)
    assert all(d.threshold == 0.95 for d in decisions)


def test_accuracy_gates_filter_thresholds_and_missing_named_metrics() -> None:
    s = AccuracyGateSettings(metrics=("tiny_*/acc", "base_only/acc", "tiny_ppl/*", "not_there/acc"),
                             per_suite={"tiny": 0.5}, per_metric={"tiny_ppl/*": 0.99})
    by = {d.metric: d for d in accuracy_gates(BASE, CAND, s, suite="tiny")}
    # cand_only/acc: only one side, matches no name; not_there/acc: in neither run
    assert set(by) == {"tiny_mc/acc", "base_only/acc", "tiny_ppl/word_perplexity"}
    assert (by["tiny_mc/acc"].threshold, by["tiny_mc/acc"].outcome) == (0.5, "pass")  # 0.625 >= 0.5
    assert (by["tiny_ppl/word_perplexity"].threshold, by["tiny_ppl/word_perplexity"].outcome) == (0.99, "fail")
    assert by["base_only/acc"].outcome == "inconclusive"
    assert by["base_only/acc"].reason == "missing in candidate"
    # a pattern alone does not pull in one-sided metrics
    assert [d.metric for d in accuracy_gates(BASE, CAND, AccuracyGateSettings(metrics=("*_only/acc",)))] == []


# -- performance -----------------------------------------------------------------------------------
THROUGHPUT = PerformanceRule(pattern="*/output_tokens_per_s", direction="higher", tolerance=0.10)
LATENCY = PerformanceRule(pattern="*/ttft_ms/median", direction="lower", tolerance=0.15)


def test_throughput_down_beyond_tolerance_fails() -> None:
    d = performance_gate("s/output_tokens_per_s", 100.0, 80.0, THROUGHPUT)
    assert (d.outcome, d.change) == ("fail", pytest.approx(-0.2))
    assert performance_gate("s/output_tokens_per_s", 100.0, 90.0, THROUGHPUT).outcome == "pass"  # exactly -10%
    assert performance_gate("s/output_tokens_per_s", 100.0, 130.0, THROUGHPUT).change == pytest.approx(0.3)


def test_latency_direction() -> None:
    up5 = performance_gate("s/ttft_ms/median", 100.0, 105.0, LATENCY)
    assert (up5.outcome, up5.change) == ("pass", pytest.approx(-0.05))
    up30 = performance_gate("s/ttft_ms/median", 100.0, 130.0, LATENCY)
    assert (up30.outcome, up30.change) == ("fail", pytest.approx(-0.3))
    down = performance_gate("s/ttft_ms/median", 100.0, 50.0, LATENCY)
    assert (down.outcome, down.change) == ("pass", pytest.approx(0.5))


@pytest.mark.parametrize(("reference", "candidate", "reason"), [
    (None, 5.0, "missing in reference"), (5.0, None, "missing in candidate"), (0.0, 5.0, "reference is 0"),
    (float("inf"), 5.0, "missing in reference"),
])
def test_performance_undefined_is_inconclusive(reference: float | None, candidate: float | None,
                                               reason: str) -> None:
    d = performance_gate("s/ttft_ms/median", reference, candidate, LATENCY)
    assert (d.outcome, d.change) == ("inconclusive", None)
    assert reason in d.reason


def test_default_rules_match_real_benchmark_names() -> None:
    ref = {"synchronous/ttft_ms/median": 100.0, "synchronous/output_tokens_per_s": 50.0,
           "synchronous/ttft_ms/p90": 100.0, "synchronous/requests_completed": 10.0,
           "synchronous/request_latency_s/median": 2.0}
    cand = {"synchronous/ttft_ms/median": 110.0, "synchronous/output_tokens_per_s": 52.0,
            "synchronous/ttft_ms/p90": 200.0, "synchronous/requests_completed": 1.0,
            "synchronous/request_latency_s/median": 2.1}
    decisions = performance_gates(ref, cand)
    by = {d.metric: d for d in decisions}
    assert [d.metric for d in decisions] == sorted(by)
    assert "synchronous/requests_completed" not in by  # no rule: not compared
    assert (by["synchronous/ttft_ms/median"].direction, by["synchronous/ttft_ms/median"].gating) == ("lower", True)
    assert by["synchronous/ttft_ms/median"].outcome == "pass"
    assert (by["synchronous/output_tokens_per_s"].direction, by["synchronous/output_tokens_per_s"].outcome) == (
        "higher", "pass")
    p90 = by["synchronous/ttft_ms/p90"]
    assert (p90.gating, p90.outcome) == (False, "fail") and "observation only" in p90.reason
    assert by["synchronous/request_latency_s/median"].gating is False
    # the observation-only failure does not fail the cell
    assert overall([], decisions) == "pass"
    assert PerformanceGateSettings().rules == DEFAULT_PERFORMANCE_RULES


def test_first_matching_rule_wins_and_union_of_names() -> None:
    rules = (PerformanceRule(pattern="fast/*", direction="higher", tolerance=0.5, gating=False),
             PerformanceRule(pattern="*", direction="higher", tolerance=0.0))
    decisions = performance_gates({"fast/x": 10.0, "slow/y": 10.0}, {"fast/x": 6.0, "new/z": 1.0},
                                  PerformanceGateSettings(rules=rules))
    by = {d.metric: d for d in decisions}
    assert (by["fast/x"].gating, by["fast/x"].tolerance, by["fast/x"].outcome) == (False, 0.5, "pass")
    assert by["slow/y"].outcome == by["new/z"].outcome == "inconclusive"
    assert overall([], decisions) == "inconclusive"


# -- overall ---------------------------------------------------------------------------------------
def acc(outcome: str) -> AccuracyDecision:
    return AccuracyDecision.model_validate({"metric": "x/acc", "direction": "higher", "base": None, "candidate": None,
                                            "recovery": None, "threshold": 0.95, "outcome": outcome})


def perf(outcome: str, gating: bool = True) -> PerformanceDecision:
    return PerformanceDecision.model_validate({"metric": "s/x", "direction": "higher", "reference": None,
                                               "candidate": None, "tolerance": 0.1, "gating": gating,
                                               "outcome": outcome})


@pytest.mark.parametrize(("accuracy", "performance", "expected"), [
    ([acc("pass")], [perf("pass")], "pass"),
    ([acc("pass"), acc("fail")], [perf("pass")], "fail"),
    ([acc("pass")], [perf("fail")], "fail"),
    ([acc("inconclusive")], [perf("fail")], "fail"),
    ([acc("pass"), acc("inconclusive")], [perf("pass")], "inconclusive"),
    ([acc("pass")], [perf("inconclusive")], "inconclusive"),
    ([acc("pass")], [perf("fail", gating=False), perf("inconclusive", gating=False)], "pass"),
    ([acc("pass")], [], "pass"),
    ([], [perf("pass")], "pass"),
    ([], [], "inconclusive"),
    ([], [perf("fail", gating=False)], "inconclusive"),
])
def test_overall(accuracy: list[AccuracyDecision], performance: list[PerformanceDecision], expected: str) -> None:
    assert overall(accuracy, performance) == expected
