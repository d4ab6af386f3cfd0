"""rerun: a sweep of debug cells run twice through a Prefect flow (50 cells; quick: 6).

The first run creates and runs every cell on the two agents; the second, unchanged, must create
nothing (the ClearML identity lookup is the cache) and is timed end to end (flow call to
results). New tasks are counted twice: the stand-in's `tasks.create` count and the tasks tagged
with the sweep's identities.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import Outcome, Row, fmt
from benchmarks.stack import Bench


def run(bench: Bench) -> Outcome:
    from benchmarks.flows import batch_flow, batch_specs

    cells = 6 if bench.quick else 50
    specs = batch_specs(f"rerun-{bench.run_id}", cells, sleep_s=0.2, steps=1)
    started = time.monotonic()
    first = asyncio.run(batch_flow(specs))
    first_s = time.monotonic() - started
    assert [r.status for r in first] == ["completed"] * cells, [r.status for r in first]
    creates = bench.stats().get("tasks.create", 0)
    tasks_before = sum(len(bench.by_identity(s.identity())) for s in specs)
    started = time.monotonic()
    second = asyncio.run(batch_flow(specs))
    second_s = time.monotonic() - started
    new_by_count = bench.stats().get("tasks.create", 0) - creates
    new_by_tag = sum(len(bench.by_identity(s.identity())) for s in specs) - tasks_before
    new = max(new_by_count, new_by_tag)
    reused = sum(1 for r in second if r.reused)
    same = sum(1 for a, b in zip(first, second, strict=True) if a.task_id == b.task_id)
    data = {"new_tasks_second_run": new, "seconds_second_run": round(second_s, 2), "cells": cells,
            "seconds_first_run": round(first_s, 1), "reused_second_run": reused, "same_task_ids": same}
    target_s = 15.0 * cells / 50
    rows = [Row("new tasks, second run", str(new), "0", new == 0),
            Row(f"seconds, second run ({cells} cells)", fmt(second_s), f"<= {fmt(target_s)}", second_s <= target_s),
            Row("seconds, first run", fmt(first_s, 1))]
    notes = [] if cells == 50 else [f"target scaled to {cells} cells: 15 s x {cells}/50"]
    return Outcome(data=data, rows=rows, notes=notes)
