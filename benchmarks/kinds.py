"""kinds: wall time and peak memory of each task kind's core script on CPU, on the tiny model.

Each step runs alone (nothing else of ours runs meanwhile), directly as a user would run it
without ClearML: `python -m automation.scripts.<kind> --spec spec.json --out DIR`, one thread
(what an agent's task process gets on 2 cores). Three figures per step:

- wall_s: outside wall time of the process, interpreter and library imports included;
- script_wall_s: the script's own `time/wall_s` scalar (the work after imports);
- peak_rss_mb: wait4's peak RSS of the process tree's largest process (for `benchmark`, the
  larger of the GuideLLM client and the model server it waited for).

Steps: compress with w4a16, w8a8 and fp8_dynamic (calibration `tiny`, 16 samples); evaluate the
base and the w4a16 model on the `tiny` suite; benchmark the base and the w4a16 model with the
`smoke` profile. Running under an agent adds the queue wait and 20-40 s of SDK work per step (the
`chain` benchmark measures that). Quick mode: w4a16 only.
"""

from __future__ import annotations

from typing import Any

from automation.specs.base import TaskSpec
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec
from automation.specs.evaluate import EvaluateSpec
from benchmarks.common import Outcome, Row, fmt
from benchmarks.scripts import Finished, build_tiny, run_script
from benchmarks.stack import Bench

PROJECT = "benchmarks-kinds"


def _scalar(done: Finished, key: str) -> float | None:
    series = done.results.get("scalars", {})
    values = series.get(key) if isinstance(series, dict) else None
    return float(next(iter(values.values()))) if isinstance(values, dict) and values else None


def _figures(done: Finished) -> dict[str, Any]:
    return {"wall_s": done.wall_s, "script_wall_s": _scalar(done, "time/wall_s"), "peak_rss_mb": done.peak_rss_mb,
            "script_peak_rss_mb": _scalar(done, "memory/peak_rss_mb")}


def run(bench: Bench) -> Outcome:
    work = bench.data_dir / f"kinds-{bench.run_id}"
    tiny = build_tiny(work / "tiny")
    schemes = ["w4a16"] if bench.quick else ["w4a16", "w8a8", "fp8_dynamic"]
    steps: dict[str, dict[str, Any]] = {}
    compressed: dict[str, str] = {}
    for scheme in schemes:
        spec: TaskSpec = CompressSpec(project=PROJECT, model=str(tiny), recipe=scheme, calibration="tiny",
                                      num_samples=16, max_seq_length=64, queue="cpu")
        done = run_script(spec, work, f"compress-{scheme}")
        steps[f"compress {scheme}"] = _figures(done)
        models = done.results.get("models")
        if isinstance(models, dict) and models:
            compressed[scheme] = str(next(iter(models.values())))
    inputs = {"base": str(tiny), "w4a16": compressed["w4a16"]}
    for label, model in inputs.items():
        done = run_script(EvaluateSpec(project=PROJECT, model=model, suite="tiny", queue="cpu"), work,
                          f"evaluate-{label}")
        steps[f"evaluate {label} (tiny)"] = _figures(done)
    for label, model in inputs.items():
        done = run_script(BenchmarkSpec(project=PROJECT, model=model, profile="smoke", queue="cpu",
                                        startup_timeout_s=300), work, f"benchmark-{label}")
        steps[f"benchmark {label} (smoke)"] = _figures(done)
    rows = [Row(f"{name}: wall s | script s | peak RSS MiB",
                f"{fmt(f['wall_s'], 1)} | {fmt(f['script_wall_s'], 1)} | {fmt(f['peak_rss_mb'], 0)}")
            for name, f in steps.items()]
    return Outcome(data={"steps": steps, "threads": 1}, rows=rows)
