"""handoff: time from an upstream task's completion to its downstream task being enqueued.

M concurrent two-step chains (quick: 2, full: 10) in one Prefect flow (`run_task`, default
settings: the shared poller, 0.5-5 s adaptive interval), spread over the two agents. The
downstream spec takes a value from the upstream result, so it cannot be submitted earlier.

- completion: the upstream task's `completed` timestamp on the ClearML server;
- enqueued: the moment the downstream `tasks.enqueue` call returned in the orchestrator
  (`ClearMLBackend.enqueue` is wrapped in this process to record it; same machine, same clock).

What lies between: the poller noticing the status (it polls at its minimum interval once a
task is past its expected end), reading the result (2 calls), Prefect's task-run bookkeeping for
the downstream task, the identity lookup, `tasks.create`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from automation.clearml.client import ClearMLBackend
from benchmarks.common import Outcome, Row, fmt
from benchmarks.stack import Bench, percentile


def run(bench: Bench) -> Outcome:
    from benchmarks.flows import handoff_flow

    chains = 2 if bench.quick else 10
    enqueued: dict[str, float] = {}
    original = ClearMLBackend.enqueue

    async def recording_enqueue(self: ClearMLBackend, task_id: str, queue: str) -> None:
        await original(self, task_id, queue)
        enqueued[task_id] = time.time()

    ClearMLBackend.enqueue = recording_enqueue  # type: ignore[method-assign]
    try:
        pairs = asyncio.run(handoff_flow(f"handoff-{bench.run_id}", chains))
    finally:
        ClearMLBackend.enqueue = original  # type: ignore[method-assign]
    gaps_ms: list[float] = []
    for up, down in pairs:
        assert up.completed is not None and down.task_id in enqueued, (up, down)
        gaps_ms.append(1000 * (enqueued[down.task_id] - up.completed.timestamp()))
    p50, p95 = percentile(gaps_ms, 50), percentile(gaps_ms, 95)
    data: dict[str, Any] = {"ms": {"p50": round(p50), "p95": round(p95), "max": round(max(gaps_ms)),
                                   "all": [round(g) for g in gaps_ms]}, "chains": chains}
    rows = [Row(f"ms p50 ({chains} chains)", fmt(p50, 0), "<= 2000", p50 <= 2000),
            Row("ms p95", fmt(p95, 0), "<= 5000", p95 <= 5000)]
    return Outcome(data=data, rows=rows)
