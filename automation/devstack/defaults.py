"""The flows' parameters on the embedded default, stated once: the served deployments' defaults on
the local stack (deployments/serve.py) and what `automation demo` runs both come from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _observe_performance() -> list[dict[str, Any]]:
    """The default performance rules, reported but not gating: CPU timings of a tiny model are noise."""
    from automation.regression.gates import DEFAULT_PERFORMANCE_RULES

    return [r.model_copy(update={"gating": False}).model_dump(mode="json") for r in DEFAULT_PERFORMANCE_RULES]


def local_parameters(tiny_model: Path) -> dict[str, dict[str, Any]]:
    """Defaults of each deployment on the local stack: the tiny model, the `tiny` suite, the `smoke`
    profile, the built-in calibration set, queues `gpu` and `cpu` (what `automation demo` runs)."""
    compression = {"calibration": "tiny", "num_samples": 16, "max_seq_length": 64}
    common = {"profile": "smoke", "compression": compression, "benchmarking": {"startup_timeout_s": 180},
              "performance_rules": _observe_performance()}
    matrix = {"models": [str(tiny_model)], "schemes": ["w4a16"], "suites": ["tiny"],
              "step_queues": {"evaluate": "cpu"}, **common}
    return {
        # The benchmarks on the second agent: they are the longest steps here (a model server start
        # and GuideLLM, ~35 s each against ~15 s for the others), and with the evaluations there the
        # first agent ran five steps in a row while the second sat idle (154 s against ~115 s).
        "compress-evaluate-benchmark": {"model": str(tiny_model), "schemes": ["w4a16", "fp8_dynamic"],
                                        "suite": "tiny", "queue": "gpu", "step_queues": {"benchmark": "cpu"},
                                        **common},
        "sweep": dict(matrix),
        "nightly": {**matrix, "series": "nightly-manual", "fail_on": "error"},
        "recipe-search": {"model": str(tiny_model), "recipe": "w4a16", "suite": "tiny", "queue": "gpu",
                          "space": {"dampening_frac": "0.001:0.1:log", "actorder": "static,weight"}, "trials": 4,
                          "step_queues": {"evaluate": "cpu"}, "compression": compression},
    }
