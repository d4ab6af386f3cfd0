"""Prefect flows the benchmarks run: in the harness process, served as a deployment, or as an
orchestrator subprocess (SIGKILLed by the kill drill, measured by the footprint benchmark).

    python -m benchmarks.flows serve NAME                 # serve `hold_flow` as a deployment
    python -m benchmarks.flows run SALT N SLEEP           # run `batch_flow`, print RESULTS <json>
    python -m benchmarks.flows await QUEUE N SALT TAG     # one flow run awaiting N parked tasks
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

from prefect import flow

from automation.results import TaskResult
from automation.specs.debug import DebugSpec
from benchmarks.common import PROJECT
from flows.bridge import BRIDGE_FLOW_HOOKS, run_task
from testing import flows as harness
from testing.flows import flow_cli, print_results, run_all
from testing.stacks import AGENT_QUEUES


def batch_specs(salt: str, n: int, sleep_s: float = 2.0, steps: int = 2, **fields: Any) -> list[DebugSpec]:
    """`n` distinct debug specs spread over both agent queues, in the benchmarks' project."""
    return harness.batch_specs(salt, n, sleep_s=sleep_s, steps=steps, project=PROJECT, **fields)


@flow(name="bench-batch", **BRIDGE_FLOW_HOOKS)
async def batch_flow(specs: list[DebugSpec]) -> list[TaskResult]:
    """Await every spec concurrently (a sweep's shape)."""
    return await run_all(specs)


@flow(name="bench-states", **BRIDGE_FLOW_HOOKS)
async def states_flow(specs: list[DebugSpec]) -> dict[str, Any]:
    """Every spec concurrently; hands back each task's final Prefect state (wrapped: a flow
    returning bare States would take them as its own)."""
    return {"states": list(await asyncio.gather(*[cast(Any, run_task)(s, return_state=True) for s in specs]))}


@flow(name="bench-hold", **BRIDGE_FLOW_HOOKS)
async def hold_flow(salt: str, n: int = 3, sleep_s: float = 300.0) -> list[TaskResult]:
    """Long tasks on both queues (more than the agents run at once: some stay queued)."""
    return await run_all(batch_specs(salt, n, sleep_s=sleep_s))


@flow(name="bench-await", **BRIDGE_FLOW_HOOKS)
async def await_flow(queue: str, n: int, salt: str, tag: str) -> list[TaskResult]:
    """One flow run awaiting `n` tasks parked on a queue no agent serves (footprint)."""
    return await run_all([DebugSpec(project=PROJECT, queue=queue, sleep_s=3600.0, steps=1, salt=f"{salt}-{i}",
                                    tags=(tag,)) for i in range(n)])


@flow(name="bench-handoff", **BRIDGE_FLOW_HOOKS)
async def handoff_flow(salt: str, chains: int, sleep_s: float = 1.0) -> list[tuple[TaskResult, TaskResult]]:
    """`chains` concurrent two-step chains: the downstream spec takes a value from the upstream
    result, so it can only be submitted once the upstream task has finished."""

    async def chain(i: int) -> tuple[TaskResult, TaskResult]:
        queue = AGENT_QUEUES[i % len(AGENT_QUEUES)]
        up = await run_task(DebugSpec(project=PROJECT, queue=queue, sleep_s=sleep_s, steps=1, value=float(i),
                                      salt=f"{salt}-up-{i}"))
        down = await run_task(DebugSpec(project=PROJECT, queue=queue, sleep_s=0.1, steps=1,
                                        value=up.scalars["debug/value"] + 1, salt=f"{salt}-down-{i}"))
        return up, down

    return list(await asyncio.gather(*(chain(i) for i in range(chains))))


def _run(salt: str, n: int, sleep_s: float) -> None:
    print_results(asyncio.run(batch_flow(batch_specs(salt, n, sleep_s=sleep_s))))


def _await(queue: str, n: str, salt: str, tag: str) -> None:
    asyncio.run(await_flow(queue, int(n), salt, tag))


def main(argv: list[str]) -> None:
    flow_cli(argv, hold=hold_flow, run=_run, **{"await": _await})


if __name__ == "__main__":
    main(sys.argv[1:])
