"""Recovery and performance gates: pure functions over reported values (no I/O, no Prefect).

The same functions serve "compressed vs the base model" and "this run vs the last accepted run".

Direction
- `metric_direction` reads the name: split on `/` into parts (scanned from the last one), each
  part into words on `,`, `:` and `_`. Perplexity-, loss-, error- and latency-like words
  (perplexity, ppl, loss, bits_per_byte, bpb, nll, error, err, latency, ttft, itl, tpot, the unit
  `ms`, or a seconds unit `*_s` such as `request_latency_s`) mean lower-is-better; a rate
  (`*_per_s`) or a score word (acc, exact_match, f1, mc1/mc2, em, pass@k, ...) means
  higher-is-better; the last part that says either decides, so `tiny_ppl/word_perplexity` is
  lower and `synchronous/output_tokens_per_s` higher. Names that say neither are higher-is-better.

Accuracy (recovery) gates
- recovery r = candidate / base for higher-is-better metrics, base / candidate for lower-is-better
  (perplexity-like) ones, so 1.0 = fully recovered and < 1 = worse, whatever the direction.
- Three outcomes. With `t` the threshold and `z` the two-sided normal quantile of `confidence`:
    fail          the recovery is below t beyond sampling noise (the upper end of its interval < t)
    inconclusive  the point recovery is below t but its interval reaches t (could be noise), or
                  the recovery is undefined (a denominator <= 0, a value missing or not finite)
    pass          the point recovery is >= t
  Without any uncertainty on either side (no stderr, no usable sample count) the decision is on
  the point alone (pass or fail), and the decision's `reason` says so; `low`/`high` are then None.
- Uncertainty per value: for a proportion (value in [0, 1] with a sample count n, for metrics
  that are proportions: acc, acc_norm, exact_match with any `,filter`, f1, mc1/mc2, em, accuracy,
  pass@k, and `suite/*` averages), the larger of the reported stderr and the Wilson score
  interval's half-width / z (which stays > 0 at p = 0 and p = 1, where lm-eval's binomial stderr
  is 0); else the reported stderr; else none (a value without uncertainty counts as exact).
- The recovery interval is the delta method on the ratio r = x / y (x, y the numerator and
  denominator above): se_r = sqrt(se_x^2 + r^2 se_y^2) / y (= r sqrt((se_x/x)^2 + (se_y/y)^2) for
  x != 0); low / high = r -/+ z se_r (low clipped at 0).
- Thresholds: default 0.95 (llm-compressor's own recovery gate); overridable per suite and per
  metric (fnmatch patterns allowed); a metric override wins over a suite override, which wins over
  the default. Thresholds must lie in (0, 1].
- Which metrics: every metric both sides report (companions `:stderr` / `:n` excluded), or those
  matching `settings.metrics`. A metric reported on one side only is skipped, unless
  `settings.metrics` names it exactly: it then gets an inconclusive decision ("missing in ...").

Performance gates
- relative change = (candidate - reference) / reference, signed so that negative = worse
  (throughput down, latency up): (c - r) / r for higher-is-better, (r - c) / r for lower. Outcome
  fail when the change is worse than -tolerance, pass otherwise, inconclusive when the reference
  or the value is missing (or not finite) or the reference is 0.
- Repetitions: a value measured over several runs (median) carries its spread (half the range,
  companion `<name>:spread`); the spreads of both sides relative to the reference are the noise
  band, and the tolerance is the wider of the rule's and the band.
- Metrics are matched by name patterns (fnmatch on the single-value name, e.g.
  `*/output_tokens_per_s`, `*/ttft_ms/median`); the first matching rule says direction, tolerance
  and whether it gates or is observation-only (observation-only metrics are reported, never fail
  a cell: tail latencies are too noisy to gate on). Names no rule matches are not compared.

Paired accuracy gates
- Where both runs scored the same documents (the evaluate kind's `samples` artifact) a 0/1 metric
  is decided on the pairs instead (`paired_gate`): the flips right->wrong and wrong->right, an
  interval on the per-document difference, and McNemar's exact test; a fail needs both to say the
  drop is beyond noise. Documents both get right (or wrong) add no noise, so the paired test
  decides where two independent intervals overlap.

Overall
- fail if any gating decision fails (every accuracy decision gates; a performance one when its
  rule does); else inconclusive if any gating decision is inconclusive, or if there is no gating
  decision at all (nothing was compared); else pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from itertools import pairwise
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from automation.results import SAMPLES_SUFFIX, SPREAD_SUFFIX, STDERR_SUFFIX, DocumentScores, MetricValue

Outcome = Literal["pass", "fail", "inconclusive"]
Direction = Literal["higher", "lower"]


class AccuracyGateSettings(BaseModel):
    """Recovery thresholds (the UI form exposes these)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.95, gt=0, le=1, description="minimum recovery (compressed / base) per metric")
    per_suite: dict[str, float] = Field(default_factory=dict, description="threshold per suite name")
    per_metric: dict[str, float] = Field(default_factory=dict,
                                         description="threshold per metric name (fnmatch patterns allowed)")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence of the noise interval")
    metrics: tuple[str, ...] = Field((), description="metrics that gate (fnmatch patterns); empty = every "
                                                     "metric both runs report, except companions")
    baseline_threshold: float = Field(0.98, gt=0, le=1, description="minimum ratio of a value to the same "
                                                                    "cell's accepted run (baseline registry)")

    def versus_accepted(self) -> AccuracyGateSettings:
        """The settings of the comparison with an accepted run of the same cell: one threshold."""
        return AccuracyGateSettings(threshold=self.baseline_threshold, confidence=self.confidence,
                                    metrics=self.metrics, baseline_threshold=self.baseline_threshold)

    @field_validator("per_suite", "per_metric")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        for key, threshold in value.items():
            if not 0 < threshold <= 1:
                fix = (f"{threshold!r} looks like a percentage: write {threshold / 100:g}" if 5 <= threshold <= 100
                       else "give e.g. 0.95 for 95%")
                raise ValueError(f"{info.field_name}[{key!r}] = {threshold!r}: a recovery threshold (compressed / "
                                 f"base) must lie in (0, 1]; {fix}")
        return value


class PerformanceRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: str = Field(description="fnmatch pattern on the benchmark value name")
    direction: Direction
    tolerance: float = Field(0.10, ge=0, description="allowed relative change for the worse (0.10 = 10%)")
    gating: bool = Field(True, description="False: observation only, never fails a cell")


class PerformanceGateSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[PerformanceRule, ...] = Field(default_factory=lambda: DEFAULT_PERFORMANCE_RULES)


class PairedStats(BaseModel):
    """Base and candidate scored on the same documents: the flips, and McNemar's exact test."""

    model_config = ConfigDict(frozen=True)

    documents: int = Field(description="documents both runs scored")
    right_to_wrong: int = Field(description="right under the base model, wrong under the candidate")
    wrong_to_right: int = Field(description="wrong under the base model, right under the candidate")
    mcnemar_p: float = Field(description="two-sided exact McNemar p-value on the discordant pairs")
    examples: list[str] = Field(default_factory=list, description="a few documents that went right -> wrong")


class AccuracyDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    direction: Direction
    base: MetricValue | None
    candidate: MetricValue | None
    recovery: float | None
    low: float | None = Field(None, description="lower end of the recovery interval")
    high: float | None = Field(None, description="upper end of the recovery interval")
    threshold: float
    outcome: Outcome
    reason: str = ""
    paired: PairedStats | None = Field(None, description="set when decided on per-document pairs")


class PerformanceDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    direction: Direction
    reference: float | None
    candidate: float | None
    change: float | None = Field(None, description="relative change, negative = worse")
    tolerance: float
    gating: bool
    outcome: Outcome
    reason: str = ""


DEFAULT_PERFORMANCE_RULES: tuple[PerformanceRule, ...] = (
    PerformanceRule(pattern="*/output_tokens_per_s", direction="higher", tolerance=0.10),
    PerformanceRule(pattern="*/requests_per_s", direction="higher", tolerance=0.10),
    PerformanceRule(pattern="*/ttft_ms/median", direction="lower", tolerance=0.15),
    PerformanceRule(pattern="*/itl_ms/median", direction="lower", tolerance=0.15),
    PerformanceRule(pattern="*/tpot_ms/median", direction="lower", tolerance=0.15, gating=False),
    PerformanceRule(pattern="*/ttft_ms/p9*", direction="lower", tolerance=0.25, gating=False),
    PerformanceRule(pattern="*/itl_ms/p9*", direction="lower", tolerance=0.25, gating=False),
    PerformanceRule(pattern="*/request_latency_s/*", direction="lower", tolerance=0.25, gating=False),
)


_WORD_SPLIT = re.compile(r"[,:_]")
_PASS_AT_K = re.compile(r"pass@\d+")
_LOWER_WORDS = frozenset({"perplexity", "ppl", "loss", "bpb", "nll", "error", "errors", "err", "errored",
                          "latency", "ttft", "itl", "tpot", "ms"})
_HIGHER_WORDS = frozenset({"acc", "accuracy", "exact", "match", "f1", "mc1", "mc2", "em", "bleu", "rouge1",
                           "rouge2", "rougel", "score", "throughput"})
_PROPORTIONS = frozenset({"acc", "acc_norm", "exact_match", "f1", "mc1", "mc2", "em", "accuracy"})
_PROPORTION_PATTERN = re.compile(r"pass(@|_at_)\d+")
_COMPANIONS = (STDERR_SUFFIX, SAMPLES_SUFFIX)
_EPS = 1e-9  # float slack on threshold comparisons (0.95 * 0.8 / 0.8 must still pass 0.95)


def metric_direction(name: str) -> Direction:
    """Perplexity-, loss-, latency- and error-like names are lower-is-better; the rest higher."""
    for part in reversed(name.lower().split("/")):
        said = _part_direction(part)
        if said is not None:
            return said
    return "higher"


def _part_direction(part: str) -> Direction | None:
    words = [w for w in _WORD_SPLIT.split(part) if w]
    pairs = list(pairwise(words))
    if ("per", "s") in pairs or ("per", "second") in pairs:
        return "higher"  # a rate: tokens or requests per second
    if "bits_per_byte" in part or any(w in _LOWER_WORDS for w in words):
        return "lower"
    metric_words = [w for w in part.split(",", 1)[0].split("_") if w]
    if len(metric_words) > 1 and metric_words[-1] == "s":
        return "lower"  # a duration in seconds (request_latency_s, wall_s)
    if any(w in _HIGHER_WORDS or _PASS_AT_K.fullmatch(w) for w in words):
        return "higher"
    return None


def _is_proportion(name: str) -> bool:
    """Metrics whose values are fractions of samples (so a sample count gives a Wilson interval)."""
    parts = name.split("/")
    metric = parts[-1].split(",", 1)[0].lower()
    if len(parts) > 1 and parts[0] == "suite":  # suite averages of proportions (used when the value is in [0, 1])
        return metric_direction(name) == "higher"
    return metric in _PROPORTIONS or bool(_PROPORTION_PATTERN.fullmatch(metric))


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatchcase(name, pattern)


def threshold_for(metric: str, settings: AccuracyGateSettings, suite: str | None = None) -> float:
    """The recovery threshold of `metric`: a per-metric override (exact name first, then fnmatch
    patterns in the order given) beats a per-suite override, which beats the default."""
    if metric in settings.per_metric:
        return settings.per_metric[metric]
    for pattern, value in settings.per_metric.items():
        if fnmatchcase(metric, pattern):
            return value
    if suite is not None and suite in settings.per_suite:
        return settings.per_suite[suite]
    return settings.threshold


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _wilson_stderr(p: float, n: int, z: float) -> float:
    """Half-width of the Wilson score interval of a proportion p over n samples, divided by z.

    Unlike the plain binomial sqrt(p (1 - p) / n) it is > 0 at p = 0 and p = 1."""
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return half / z


def _uncertainty(metric: str, value: MetricValue, z: float) -> tuple[float | None, str]:
    """(standard error, where it came from) of one reported value; (None, ...) when there is none."""
    reported = value.stderr if value.stderr is not None and math.isfinite(value.stderr) and value.stderr >= 0 \
        else None
    if value.samples is not None and value.samples > 0 and 0 <= value.value <= 1 and _is_proportion(metric):
        # lm-eval's binomial stderr is 0 at p = 0 or 1 (every sample right): 32 of 32 is not certainty.
        wilson = _wilson_stderr(value.value, value.samples, z)
        if reported is None or reported < wilson:
            return wilson, f"Wilson n={value.samples}"
    if reported is not None:
        return reported, "stderr"
    return None, "no stderr or sample count"


def _usable(value: MetricValue | None) -> bool:
    return value is not None and math.isfinite(value.value)


def recovery_gate(metric: str, base: MetricValue | None, candidate: MetricValue | None,
                  threshold: float = 0.95, confidence: float = 0.95,
                  direction: Direction | None = None) -> AccuracyDecision:
    """Recovery of one metric (candidate vs base) against `threshold`, with a noise interval."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold {threshold!r} for {metric!r} must lie in (0, 1]")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence!r} must lie in (0, 1)")
    direction = direction or metric_direction(metric)

    def undecided(reason: str) -> AccuracyDecision:
        return AccuracyDecision(metric=metric, direction=direction, base=base, candidate=candidate, recovery=None,
                                threshold=threshold, outcome="inconclusive", reason=reason)

    missing = [side for side, value in (("base", base), ("candidate", candidate)) if not _usable(value)]
    if missing:
        return undecided(f"missing in {' and '.join(missing)}")
    assert base is not None and candidate is not None
    z = _z(confidence)
    (se_b, src_b), (se_c, src_c) = _uncertainty(metric, base, z), _uncertainty(metric, candidate, z)
    if direction == "higher":
        num, se_num, den, se_den, den_side = candidate.value, se_c, base.value, se_b, "base"
    else:
        num, se_num, den, se_den, den_side = base.value, se_b, candidate.value, se_c, "candidate"
    if den <= 0:
        return undecided(f"recovery undefined: {den_side} value is {den:g}")
    r = num / den
    verdict = f"recovery {r:.4g} {'>=' if r >= threshold - _EPS else '<'} threshold {threshold:g}"

    if se_num is None and se_den is None:
        outcome: Outcome = "pass" if r >= threshold - _EPS else "fail"
        return AccuracyDecision(metric=metric, direction=direction, base=base, candidate=candidate, recovery=r,
                                threshold=threshold, outcome=outcome,
                                reason=f"{verdict}; no stderr or sample count on either side: decided on the point")
    se_r = math.sqrt((se_num or 0.0) ** 2 + (r * (se_den or 0.0)) ** 2) / den
    low, high = r - z * se_r, r + z * se_r
    if r >= 0:
        low = max(0.0, low)
    interval = f"{confidence * 100:g}% interval [{low:.4g}, {high:.4g}]"
    if r >= threshold - _EPS:
        outcome, why = "pass", f"{verdict} ({interval})"
    elif high < threshold - _EPS:
        outcome, why = "fail", f"{verdict} beyond noise ({interval})"
    else:
        outcome, why = "inconclusive", f"{verdict} but its {interval} reaches it (could be noise)"
    sources = f"uncertainty: base {src_b}, candidate {src_c}"
    return AccuracyDecision(metric=metric, direction=direction, base=base, candidate=candidate, recovery=r,
                            low=low, high=high, threshold=threshold, outcome=outcome, reason=f"{why}; {sources}")


def accuracy_gates(base: Mapping[str, MetricValue], candidate: Mapping[str, MetricValue],
                   settings: AccuracyGateSettings | None = None, suite: str | None = None) -> list[AccuracyDecision]:
    """One decision per gated metric (sorted by name)."""
    settings = settings or AccuracyGateSettings()
    named = set(settings.metrics)
    decisions = []
    for name in sorted(set(base) | set(candidate)):
        if name.endswith(_COMPANIONS):
            continue
        if settings.metrics and not any(_matches(name, pattern) for pattern in settings.metrics):
            continue
        if (name not in base or name not in candidate) and name not in named:
            continue  # reported on one side only and not asked for by name: not comparable
        decisions.append(recovery_gate(name, base.get(name), candidate.get(name),
                                       threshold=threshold_for(name, settings, suite),
                                       confidence=settings.confidence))
    return decisions


def performance_gate(metric: str, reference: float | None, candidate: float | None,
                     rule: PerformanceRule, noise: float | None = None) -> PerformanceDecision:
    """Relative change of one benchmark value (negative = worse) against the rule's tolerance, or
    against `noise` (the measured spread of both sides relative to the reference, from
    repetitions) where that is wider: a change within the runs' own spread is not a regression."""
    tolerance = max(rule.tolerance, noise) if noise is not None and math.isfinite(noise) else rule.tolerance
    band = " (the measured noise band)" if tolerance > rule.tolerance else ""

    def decision(outcome: Outcome, change: float | None, reason: str) -> PerformanceDecision:
        return PerformanceDecision(metric=metric, direction=rule.direction, reference=reference, candidate=candidate,
                                   change=change, tolerance=tolerance, gating=rule.gating, outcome=outcome,
                                   reason=reason if rule.gating else f"{reason} (observation only)")

    missing = [side for side, value in (("reference", reference), ("candidate", candidate))
               if value is None or not math.isfinite(value)]
    if missing:
        return decision("inconclusive", None, f"missing in {' and '.join(missing)}")
    assert reference is not None and candidate is not None
    if reference == 0:
        return decision("inconclusive", None, "relative change undefined: reference is 0")
    delta = candidate - reference if rule.direction == "higher" else reference - candidate
    change = delta / abs(reference)
    text = f"{abs(change):.1%} {'better' if change > 0 else 'worse'}" if change else "unchanged"
    if change < -tolerance - _EPS:
        return decision("fail", change, f"{text}, beyond the {tolerance:.0%} tolerance{band}")
    return decision("pass", change, f"{text}, within the {tolerance:.0%} tolerance{band}")


def performance_gates(reference: Mapping[str, float], candidate: Mapping[str, float],
                      settings: PerformanceGateSettings | None = None) -> list[PerformanceDecision]:
    """One decision per value name matched by a rule (first matching rule wins), sorted by name."""
    rules = (settings or PerformanceGateSettings()).rules
    decisions = []
    for name in sorted(set(reference) | set(candidate)):
        if name.endswith(SPREAD_SUFFIX):
            continue
        rule = next((r for r in rules if _matches(name, r.pattern)), None)
        if rule is not None:
            ref = reference.get(name)
            spreads = [side.get(name + SPREAD_SUFFIX) for side in (reference, candidate)]
            noise = (sum(x for x in spreads if x is not None) / abs(ref)
                     if ref and any(x is not None for x in spreads) else None)
            decisions.append(performance_gate(name, ref, candidate.get(name), rule, noise))
    return decisions


def overall(accuracy: list[AccuracyDecision], performance: list[PerformanceDecision]) -> Outcome:
    """fail if any gating decision fails; else inconclusive if any gating decision is; else pass.

    With no gating decision at all (nothing was compared, or only observation-only values) the
    outcome is inconclusive, never a vacuous pass."""
    gating = [d.outcome for d in accuracy] + [d.outcome for d in performance if d.gating]
    if "fail" in gating:
        return "fail"
    if not gating or "inconclusive" in gating:
        return "inconclusive"
    return "pass"


# -- paired per-document comparison -------------------------------------------------------------
PAIRED_EXAMPLES = 3


def mcnemar_exact_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar test: under "both models are as good", each discordant pair goes
    either way with probability 1/2, so the smaller count is Binomial(b + c, 1/2)."""
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    k = min(right_to_wrong, wrong_to_right)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_gate(metric: str, base: Mapping[str, float], candidate: Mapping[str, float],
                threshold: float = 0.95, confidence: float = 0.95) -> AccuracyDecision | None:
    """Recovery of a 0/1 metric decided on the documents both models answered; None when there
    are no such documents or the scores are not all 0 or 1 (the independent gate decides then).

    With t the threshold, r = candidate / base accuracy over the common documents. Per document
    d_i = c_i - t b_i, so r >= t exactly when mean(d) >= 0; its interval mean(d) +/- z sd(d)/sqrt(n)
    uses the pairing (documents both get right or both get wrong add no noise), which is what
    makes it narrower than two independent intervals. Outcomes:
      pass          r >= t
      fail          the interval of mean(d) lies below 0 AND McNemar's exact test says the
                    candidate differs from the base (p < 1 - confidence): a drop beyond noise
      inconclusive  otherwise
    The interval is reported as a recovery interval: r = t + mean(d) / base accuracy."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold {threshold!r} for {metric!r} must lie in (0, 1]")
    common = sorted(set(base) & set(candidate))
    if not common or any(base[k] not in (0.0, 1.0) or candidate[k] not in (0.0, 1.0) for k in common):
        return None
    if metric_direction(metric) != "higher":
        return None
    n = len(common)
    b_right = sum(base[k] for k in common)
    c_right = sum(candidate[k] for k in common)
    flips_down = [k for k in common if base[k] == 1.0 and candidate[k] == 0.0]
    flips_up = sum(1 for k in common if base[k] == 0.0 and candidate[k] == 1.0)
    p = mcnemar_exact_p(len(flips_down), flips_up)
    stats = PairedStats(documents=n, right_to_wrong=len(flips_down), wrong_to_right=flips_up, mcnemar_p=p,
                        examples=flips_down[:PAIRED_EXAMPLES])
    base_value = MetricValue(value=b_right / n, samples=n)
    cand_value = MetricValue(value=c_right / n, samples=n)

    def decision(outcome: Outcome, recovery: float | None, low: float | None, high: float | None,
                 reason: str) -> AccuracyDecision:
        return AccuracyDecision(metric=metric, direction="higher", base=base_value, candidate=cand_value,
                                recovery=recovery, low=low, high=high, threshold=threshold, outcome=outcome,
                                reason=reason, paired=stats)

    flips = f"{len(flips_down)} right->wrong, {flips_up} wrong->right of {n} documents, McNemar p={p:.3g}"
    if b_right == 0:
        return decision("inconclusive", None, None, None, f"recovery undefined: base is 0 on every document; {flips}")
    r = c_right / b_right
    d = [candidate[k] - threshold * base[k] for k in common]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = _z(confidence) * sd / math.sqrt(n)
    scale = n / b_right  # mean(d) -> recovery: r = t + mean(d) * n / b_right
    low, high = max(0.0, threshold + (mean - half) * scale), threshold + (mean + half) * scale
    interval = f"paired {confidence * 100:g}% interval [{low:.4g}, {high:.4g}]"
    verdict = f"recovery {r:.4g} {'>=' if r >= threshold - _EPS else '<'} threshold {threshold:g}"
    if r >= threshold - _EPS:
        return decision("pass", r, low, high, f"{verdict} ({interval}); {flips}")
    if high < threshold - _EPS and p < 1 - confidence:
        return decision("fail", r, low, high, f"{verdict} beyond noise ({interval}); {flips}")
    why = "its interval reaches it" if high >= threshold - _EPS else "McNemar does not tell the models apart"
    return decision("inconclusive", r, low, high, f"{verdict} but {why} (could be noise; {interval}); {flips}")


def with_paired(decisions: list[AccuracyDecision], base: DocumentScores, candidate: DocumentScores,
                confidence: float = 0.95) -> list[AccuracyDecision]:
    """`decisions` with each metric both sides have per-document scores for decided by
    `paired_gate` instead, its flipped examples spelled out (target, base and candidate answer)."""
    out = []
    for d in decisions:
        paired = None
        if d.metric in base.scores and d.metric in candidate.scores:
            paired = paired_gate(d.metric, base.scores[d.metric], candidate.scores[d.metric],
                                 threshold=d.threshold, confidence=confidence)
        if paired is not None and paired.paired is not None:
            shown = []
            for doc in paired.paired.examples:
                b, c = base.example(d.metric, doc), candidate.example(d.metric, doc)
                shown.append(f"target {b.get('target', '?')!r}: base {b.get('response', '?')!r} -> "
                             f"candidate {c.get('response', '?')!r}")
            paired = paired.model_copy(update={"paired": paired.paired.model_copy(update={"examples": shown})})
        out.append(paired or d)
    return out
