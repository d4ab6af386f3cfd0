"""Flows the bridge tests run: in the test process, served as a deployment, or as an orchestrator
subprocess that a test SIGKILLs.

    python -m tests.integration.bridge_flows serve NAME        # serve `hold_flow` as a deployment
    python -m tests.integration.bridge_flows run SALT N SLEEP  # run `batch_flow`, print JSON results
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, cast

from prefect import flow

from automation.results import TaskResult
from automation.specs.debug import DebugSpec
from flows.bridge import BRIDGE_FLOW_HOOKS, backend, run_task

QUEUES = ("gpu", "cpu")


def batch_specs(salt: str, n: int, sleep_s: float = 2.0, **fields: Any) -> list[DebugSpec]:
    """`n` distinct debug specs spread over both queues."""
    return [DebugSpec(queue=QUEUES[i % len(QUEUES)], sleep_s=sleep_s, steps=2, value=float(i + 1),
                      salt=f"{salt}-{i}", **fields) for i in range(n)]


@flow(name="bridge-batch", **BRIDGE_FLOW_HOOKS)
async def batch_flow(specs: list[DebugSpec]) -> dict[str, Any]:
    """Await every spec concurrently; also hand back this run's API calls by endpoint and its id."""
    from prefect.runtime import flow_run

    results = await asyncio.gather(*[run_task(s) for s in specs])
    return {"results": list(results), "calls": dict(backend().endpoint_calls), "flow_run_id": str(flow_run.id)}


@flow(name="bridge-timeout", **BRIDGE_FLOW_HOOKS)
async def timeout_flow(spec: DebugSpec, timeout_s: float) -> dict[str, Any]:
    """One run_task with a Prefect task timeout (no retries: one attempt to look at)."""
    task = run_task.with_options(timeout_seconds=timeout_s, retries=0)
    return {"state": await cast(Any, task)(spec, return_state=True)}


@flow(name="bridge-one", **BRIDGE_FLOW_HOOKS)
async def one_flow(spec: DebugSpec) -> dict[str, Any]:
    """One run_task; hands back its final Prefect state (so tests can look at failures and attempts),
    wrapped: a flow returning a bare State takes that state as its own."""
    return {"state": await cast(Any, run_task)(spec, return_state=True)}  # async task: a coroutine


@flow(name="bridge-hold", **BRIDGE_FLOW_HOOKS)
async def hold_flow(salt: str, n: int = 3, sleep_s: float = 300.0) -> list[TaskResult]:
    """Long tasks on both queues (more than the agents can run at once: some stay queued)."""
    return list(await asyncio.gather(*[run_task(s) for s in batch_specs(salt, n, sleep_s=sleep_s)]))


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        hold_flow.serve(name=argv[1], print_starting_message=True)
    elif argv[0] == "run":
        salt, n, sleep_s = argv[1], int(argv[2]), float(argv[3])
        out = asyncio.run(batch_flow(batch_specs(salt, n, sleep_s=sleep_s)))
        print(f"FLOW_RUN {out['flow_run_id']}", flush=True)
        print("RESULTS " + json.dumps([r.model_dump(mode="json") for r in out["results"]]), flush=True)
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
