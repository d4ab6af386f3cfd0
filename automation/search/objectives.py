"""What a recipe search optimises, read from a trial's ordinary task results.

- `recovery`: the smallest recovery (compressed / base, direction-aware) over the gated metrics
  of the suite: the worst metric decides, as the accuracy gates do. Maximised.
- `recovery_mean`: the mean recovery over the same metrics. Maximised.
- `size`: the compressed model's weights in MiB (`size/after_mb` of the compress step). Minimised.
- `throughput`: output tokens/s at the profile's first rate (benchmark step). Maximised.
- `ttft`: median time to first token in ms at the profile's first rate (benchmark step). Minimised.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Literal

from automation.errors import FlowInputError
from automation.regression.gates import AccuracyGateSettings, accuracy_gates
from automation.results import MetricValue

ObjectiveName = Literal["recovery", "recovery_mean", "size", "throughput", "ttft"]
DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    "recovery": "maximize", "recovery_mean": "maximize", "size": "minimize", "throughput": "maximize",
    "ttft": "minimize"}
NEEDS_BENCHMARK = frozenset({"throughput", "ttft"})
THROUGHPUT, TTFT = "*/output_tokens_per_s", "*/ttft_ms/median"


def check_objectives(names: Sequence[str]) -> list[str]:
    if not names:
        raise FlowInputError(f"objectives: give at least one of {', '.join(DIRECTIONS)}")
    unknown = [n for n in names if n not in DIRECTIONS]
    if unknown:
        raise FlowInputError(f"objectives: unknown {unknown[0]!r}; known: {', '.join(DIRECTIONS)}")
    if len(set(names)) != len(names):
        raise FlowInputError("objectives: an objective is given twice")
    return list(names)


def recoveries(base: Mapping[str, MetricValue], candidate: Mapping[str, MetricValue],
               gated_metrics: Sequence[str]) -> dict[str, float]:
    """Recovery per gated metric (the gates' own computation, direction-aware)."""
    decisions = accuracy_gates(base, candidate, AccuracyGateSettings(metrics=tuple(gated_metrics)))
    return {d.metric: d.recovery for d in decisions if d.recovery is not None}


def _first(values: Mapping[str, MetricValue], pattern: str) -> float | None:
    for name, value in values.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value.value
    return None


def objective_values(names: Sequence[str], recovery_by_metric: Mapping[str, float], size_mb: float | None,
                     bench: Mapping[str, MetricValue] | None) -> dict[str, float]:
    """Every objective's value; a ValueError names one that cannot be computed."""
    out: dict[str, float] = {}
    for name in names:
        value: float | None
        if name in ("recovery", "recovery_mean"):
            if not recovery_by_metric:
                raise ValueError("no metric could be compared with the base model (none reported on both sides)")
            found = list(recovery_by_metric.values())
            value = min(found) if name == "recovery" else sum(found) / len(found)
        elif name == "size":
            value = size_mb
        else:
            value = _first(bench or {}, THROUGHPUT if name == "throughput" else TTFT)
        if value is None:
            raise ValueError(f"objective {name}: the step results hold no value for it")
        out[name] = float(value)
    return out
