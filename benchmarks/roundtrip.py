"""roundtrip: one create -> run -> read round trip with the real clearml SDK through a real agent.

What a user of the SDK alone does (`testing.roundtrip.run_hello`): `Task.create`, typed
parameters and a HOCON configuration object, `Task.enqueue`, wait with `get_status` every 0.5 s,
then read status, scalars, single values, artifacts, models and the log tail. The task is the
`hello` script (no ML library): it reads its Args and configuration back, reports scalars, a single
value, a dict and a file artifact and an uploaded output model.

API calls are the stand-in's counters, without the idle agents' queue polls and worker reports,
by phase: submit (create, configure, enqueue), wait (this process's status polls and everything
the task process under the agent calls), read.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import Outcome, Row, fmt
from benchmarks.stack import Bench
from testing.roundtrip import run_hello

PHASES = ("submit", "wait", "read")


def run(bench: Bench) -> Outcome:
    trials = 1 if bench.quick else 5
    per_trial: list[dict[str, Any]] = []
    for _ in range(trials):
        result = run_hello(bench.env, queue="cpu")
        if result.status != "completed":
            raise RuntimeError(f"hello task {result.task_id}: {result.status} {result.status_message}")
        per_trial.append({"task_id": result.task_id, "wall_s": round(result.wall_s, 2), "calls": result.api_calls,
                          "calls_by_phase": result.calls_by_phase, "status_polls": result.status_polls,
                          "calls_by_endpoint": result.calls_by_endpoint})

    def median(values: list[float]) -> float:
        return round(float(statistics.median(values)), 2)

    walls = [t["wall_s"] for t in per_trial]
    data: dict[str, Any] = {
        "trials": trials,
        "wall_s": {"median": median(walls), "min": min(walls), "max": max(walls)},
        "calls": {"median": median([t["calls"] for t in per_trial]),
                  **{p: median([t["calls_by_phase"].get(p, 0) for t in per_trial]) for p in PHASES},
                  "status_polls": median([t["status_polls"] for t in per_trial])},
        "per_trial": per_trial,
    }
    calls = data["calls"]
    rows = [Row("wall s, create -> completed -> read back (median | min | max)",
                f"{fmt(data['wall_s']['median'], 1)} | {fmt(min(walls), 1)} | {fmt(max(walls), 1)}"),
            Row("API calls (submit | wait | read)",
                f"{fmt(calls['median'])} ({fmt(calls['submit'])} | {fmt(calls['wait'])} | {fmt(calls['read'])})"),
            Row("of the wait: our status polls", fmt(calls["status_polls"]))]
    notes = ["the wall time includes the agent's 5 s queue poll and the task process start-up"]
    return Outcome(data=data, rows=rows, notes=notes)
