"""Small pieces shared by the benchmarks: the result type, table rows, task creation in bulk."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from automation.clearml.client import ClearMLBackend
from automation.specs.debug import DebugSpec

PROJECT = "benchmarks"


@dataclass
class Row:
    metric: str
    measured: str
    target: str = ""
    ok: bool | None = None  # None: no target


@dataclass
class Outcome:
    data: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}f}"


def parked_specs(queue: str, n: int, salt: str, sleep_s: float = 3600.0) -> list[DebugSpec]:
    """`n` distinct long debug specs for a queue no agent serves: they stay queued."""
    return [DebugSpec(project=PROJECT, queue=queue, sleep_s=sleep_s, steps=1, salt=f"{salt}-{i}") for i in range(n)]


async def create_queued(client: ClearMLBackend, specs: Sequence[DebugSpec], tags: Sequence[str] = (),
                        parallel: int = 8) -> list[str]:
    """Create and enqueue every spec (a few at a time); returns the task ids in order."""
    gate = asyncio.Semaphore(parallel)

    async def one(spec: DebugSpec) -> str:
        async with gate:
            task_id = await client.create(spec, tags=tags)
            await client.enqueue(task_id, spec.queue)
            return task_id

    return list(await asyncio.gather(*(one(s) for s in specs)))
