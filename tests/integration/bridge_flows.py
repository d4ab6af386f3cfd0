"""Flows the bridge tests run: in the test process, served as a deployment, or as an orchestrator
subprocess that a test SIGKILLs.

    python -m tests.integration.bridge_flows serve NAME        # serve `hold_flow` as a deployment
    python -m tests.integration.bridge_flows run SALT N SLEEP  # run `batch_flow`, print JSON results
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

from prefect import flow

from automation.results import TaskResult
from automation.specs.debug import DebugSpec
from flows.bridge import BRIDGE_FLOW_HOOKS, backend, run_task
from testing.flows import batch_specs, flow_cli, print_results, run_all


@flow(name="bridge-batch", **BRIDGE_FLOW_HOOKS)
async def batch_flow(specs: list[DebugSpec]) -> dict[str, Any]:
    """Await every spec concurrently; also hand back this run's API calls by endpoint and its id."""
    from prefect.runtime import flow_run

    results = await run_all(specs)
    return {"results": results, "calls": dict(backend().endpoint_calls), "flow_run_id": str(flow_run.id)}


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


@flow(name="bridge-step", **BRIDGE_FLOW_HOOKS)
async def step_flow(spec: DebugSpec, max_queue_s: float | None, max_run_s: float | None) -> dict[str, Any]:
    """One step of a plan as the flows run it (flows.run.run_step): its failure as its cell reports it."""
    from flows.run import run_step

    outcome = await run_step("evaluate", spec, False, "step-under-limits", (max_queue_s, max_run_s))
    return {"failure": outcome.failure.model_dump() if outcome.failure else None,
            "result": outcome.result.model_dump() if outcome.result else None}


@flow(name="bridge-hold", **BRIDGE_FLOW_HOOKS)
async def hold_flow(salt: str, n: int = 3, sleep_s: float = 300.0) -> list[TaskResult]:
    """Long tasks on both queues (more than the agents can run at once: some stay queued)."""
    return await run_all(batch_specs(salt, n, sleep_s=sleep_s))


def _run(salt: str, n: int, sleep_s: float) -> None:
    out = asyncio.run(batch_flow(batch_specs(salt, n, sleep_s=sleep_s)))
    print(f"FLOW_RUN {out['flow_run_id']}", flush=True)
    print_results(out["results"])


def main(argv: list[str]) -> None:
    flow_cli(argv, hold=hold_flow, run=_run)


if __name__ == "__main__":
    main(sys.argv[1:])
