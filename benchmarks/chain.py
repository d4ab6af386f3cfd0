"""chain: the tiny compress -> (evaluate, benchmark) chain, orchestrated vs run directly.

The tiny model (2-layer Llama, local tokenizer) is built first in a subprocess (not timed).

- orchestrated: through the local stack with `flows.bridge.execute` (the body of `run_task`):
  compress w4a16 (calibration `tiny`) on queue `cpu`; then evaluate (suite `tiny`, queue `gpu`)
  and benchmark (profile `smoke`, queue `cpu`) of its output model, concurrently. The
  compressed model goes through ClearML: uploaded to the file server by the compress task,
  downloaded by the two downstream tasks.
- direct: the same three core scripts, `python -m automation.scripts.<kind> --spec spec.json
  --out DIR` in subprocesses (no ClearML), compress first, then evaluate and benchmark of its
  output directory concurrently: the same shape, the same work.

Both run with OMP_NUM_THREADS=1 per process (what each agent gets on 2 cores with 2 agents).
Where the difference goes is read from the ClearML timestamps of the orchestrated tasks:
queue wait (created -> started: the agent's 5 s poll of its queue, plus the agent's own
start-up work before it marks the task started), in-task overhead (started -> completed minus
the direct run of the same step: SDK initialisation, model download/upload, flush/close), and
the orchestrator's gap (compress completed -> downstream created).

Layering: this module imports no ML library; the core scripts run in their own processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from automation.clearml.records import parse_timestamp
from automation.results import TaskResult
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec
from automation.specs.evaluate import EvaluateSpec
from automation.specs.model_ref import ModelRef
from benchmarks.common import Outcome, Row, fmt
from benchmarks.scripts import build_tiny, start_script, wait_script
from benchmarks.stack import Bench

PROJECT = "benchmarks-chain"


def _specs(model: ModelRef | str) -> tuple[EvaluateSpec, BenchmarkSpec]:
    return (EvaluateSpec(project=PROJECT, model=model, suite="tiny", queue="gpu"),
            BenchmarkSpec(project=PROJECT, model=model, profile="smoke", queue="cpu", startup_timeout_s=300))


def _orchestrated(tiny: Path) -> tuple[float, list[TaskResult]]:
    from flows.bridge import backend, execute

    compress = CompressSpec(project=PROJECT, model=str(tiny), recipe="w4a16", calibration="tiny", num_samples=16,
                            max_seq_length=64, queue="cpu")

    async def go() -> list[TaskResult]:
        try:
            c = await execute(compress, max_wait_s=900)
            if c.status != "completed":
                raise RuntimeError(f"compress task {c.task_id}: {c.status} {c.status_message}")
            ev, bm = _specs(ModelRef.from_result(c))
            e, b = await asyncio.gather(execute(ev, max_wait_s=900), execute(bm, max_wait_s=900))
            return [c, e, b]
        finally:
            await backend().aclose()

    started = time.monotonic()
    results = asyncio.run(go())
    return time.monotonic() - started, results


def _direct(tiny: Path, work: Path) -> tuple[float, dict[str, float]]:
    work.mkdir(parents=True, exist_ok=True)
    compress = CompressSpec(project=PROJECT, model=str(tiny), recipe="w4a16", calibration="tiny", num_samples=16,
                            max_seq_length=64, queue="cpu")
    started = time.monotonic()
    t0 = time.monotonic()
    wait_script(start_script(compress, work, "compress"), work, "compress")
    steps = {"compress": time.monotonic() - t0}
    models = json.loads((work / "compress" / "results.json").read_text())["models"]
    model_dir = str(next(iter(models.values())))
    ev, bm = _specs(model_dir)
    t1 = time.monotonic()
    procs = {"evaluate": start_script(ev, work, "evaluate"), "benchmark": start_script(bm, work, "benchmark")}
    for name, proc in procs.items():
        wait_script(proc, work, name)
        steps[name] = time.monotonic() - t1
    return time.monotonic() - started, steps


# A step's time on the agent, in order: created -> the core script's process started (queue poll,
# agent launch, environment), then the phases the script's runtime records, then its process end
# -> completed (the SDK's close).
PHASE_COLUMNS = ("pickup", "imports", "sdk_init", "spec_read", "input_model", "work", "upload", "flush", "close")


def _phases(task: dict[str, Any], created: float, completed: float) -> dict[str, float]:
    from automation.scripts.runtime import PHASE_PREFIX

    props = (task.get("hyperparams") or {}).get("properties") or {}
    got = {k[len(PHASE_PREFIX):]: float(v["value"]) for k, v in props.items() if k.startswith(PHASE_PREFIX)}
    if "start" not in got or "end" not in got:
        return {}
    out = {f"{k}_s": round(got[k + "_s"], 2) for k in PHASE_COLUMNS if k + "_s" in got}
    out["pickup_s"] = round(got["start"] - created, 2)
    out["close_s"] = round(completed - got["end"], 2)
    out["beyond_work_s"] = round(completed - created - got.get("work_s", 0.0), 2)
    return out


def _ts(value: datetime | str | None) -> float | None:
    when = parse_timestamp(value)
    return None if when is None else when.timestamp()


def run(bench: Bench) -> Outcome:
    work = bench.data_dir / f"chain-{bench.run_id}"
    tiny = work / "tiny"
    build_tiny(tiny)
    direct_s, direct_steps = _direct(tiny, work / "direct")
    orchestrated_s, results = _orchestrated(tiny)
    for r in results:
        if r.status != "completed":
            raise RuntimeError(f"{r.kind} task {r.task_id}: {r.status} {r.status_message}")
    tasks = {r.kind: bench.api.call("tasks.get_by_id", {"task": r.task_id})["task"] for r in results}
    steps: dict[str, dict[str, float]] = {}
    for kind, task in tasks.items():
        created, started, completed = (_ts(task.get(k)) for k in ("created", "started", "completed"))
        if created is None or started is None or completed is None:
            continue
        steps[kind] = {"queue_wait_s": round(started - created, 2), "run_s": round(completed - started, 2),
                       "direct_run_s": round(direct_steps.get(kind, float("nan")), 2),
                       **_phases(task, created, completed)}
    comp_done = _ts(tasks["compress"].get("completed"))
    down_created = min(_ts(tasks[k].get("created")) or 0.0 for k in ("evaluate", "benchmark"))
    handoff_s = round(down_created - comp_done, 2) if comp_done else None
    ratio = orchestrated_s / direct_s
    data: dict[str, Any] = {
        "seconds": {"orchestrated": round(orchestrated_s, 1), "direct": round(direct_s, 1)},
        "ratio": round(ratio, 2),
        "steps": steps,
        "handoff_s": handoff_s,
        "task_ids": {r.kind: r.task_id for r in results},
    }
    rows = [Row("seconds orchestrated | direct", f"{fmt(orchestrated_s, 1)} | {fmt(direct_s, 1)}"),
            Row("ratio", f"{ratio:.2f}x")]
    for kind, s in steps.items():
        rows.append(Row(f"{kind}: queue wait | run | direct run (s)",
                        f"{fmt(s['queue_wait_s'], 1)} | {fmt(s['run_s'], 1)} | {fmt(s['direct_run_s'], 1)}"))
        if "work_s" in s:
            rows.append(Row(f"{kind}: {' | '.join(PHASE_COLUMNS)} (s)",
                            " | ".join(fmt(s.get(c + "_s"), 1) for c in PHASE_COLUMNS)))
            rows.append(Row(f"{kind}: on the agent beyond the work (s)", fmt(s["beyond_work_s"], 1)))
    rows.append(Row("compress done -> downstream created (s)", fmt(handoff_s)))
    return Outcome(data=data, rows=rows)
