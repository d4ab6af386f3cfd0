"""polling: API requests per poll tick with N in-flight tasks, ours vs the naive SDK loop.

N long debug tasks are created and enqueued on a queue no agent serves, so they stay `queued`
for the whole measurement (status polling costs the same whatever the status).

- ours: a fresh `flows.poller.StatusPoller` (the shared poller's class, default settings) watches
  the N tasks; every call its own client makes is counted (the client counts its requests) over
  its ticks after the first, and cross-checked against the stand-in's `tasks.get_all` count.
- naive: the way the SDK and the replaced tool wait: one `Task.get_task(id)` per task once
  (not counted), then per tick `task.get_status()` for every task (one `tasks.get_all` each,
  FACTS.md); counted on the stand-in over real ticks at every N (500 included).

Per minute: calls per tick times ticks per minute at the poller's steady interval (5 s, its
`max_interval_s`; the same interval is assumed for the naive loop, whose `wait_for_status`
default is 60 s and whose tick at N=500 alone takes longer than 5 s here).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from automation.clearml.client import ClearMLBackend
from benchmarks.common import Outcome, Row, create_queued, fmt, parked_specs
from benchmarks.stack import Bench

FULL_N = (1, 10, 100, 500)
QUICK_N = (1, 10, 50)
OURS_TICKS = 4  # measured ticks after the first (the first also logs in)
NAIVE_TICKS = 2


def _ours(ids: list[str], bench: Bench) -> dict[str, float]:
    from flows.poller import StatusPoller

    poller = StatusPoller()
    futures = [poller.watch(i) for i in ids]
    try:
        while poller.ticks < 1:
            time.sleep(0.02)
        # the first tick logs in; start counting once it is done
        while poller._backend is None or not poller._backend.endpoint_calls.get("tasks.get_all"):
            time.sleep(0.02)
        client = poller._backend
        t0, calls0 = poller.ticks, dict(client.endpoint_calls)
        server0 = bench.stats().get("tasks.get_all", 0)
        started = time.monotonic()
        while poller.ticks < t0 + OURS_TICKS:
            time.sleep(0.02)
        time.sleep(0.3)  # let the last tick's call finish (a tick is one call, well under 0.3 s)
        t1, calls1 = poller.ticks, dict(client.endpoint_calls)
        server1 = bench.stats().get("tasks.get_all", 0)
        elapsed = time.monotonic() - started
    finally:
        for f in futures:
            f.cancel()
        poller.stop()
    ticks = t1 - t0
    calls = sum(calls1.values()) - sum(calls0.values()) - (calls1.get("auth.login", 0) - calls0.get("auth.login", 0))
    return {"calls_per_tick": calls / ticks, "server_get_all_per_tick": (server1 - server0) / ticks,
            "ticks": ticks, "seconds": elapsed}


def _naive(ids: list[str], bench: Bench) -> dict[str, float]:
    from clearml import Task

    setup0 = bench.stats()
    tasks: list[Any] = [Task.get_task(task_id=i) for i in ids]
    setup1 = bench.stats()
    setup_calls = sum(v - setup0.get(k, 0) for k, v in setup1.items()
                      if k.startswith(("tasks.", "projects.", "models.")))
    durations = []
    before = bench.stats()
    for _ in range(NAIVE_TICKS):
        started = time.monotonic()
        for t in tasks:
            t.get_status()
        durations.append(time.monotonic() - started)
    after = bench.stats()
    calls = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(("tasks.", "projects.", "models.")))
    return {"calls_per_tick": calls / NAIVE_TICKS, "setup_calls": setup_calls,
            "seconds_per_tick": sum(durations) / len(durations)}


def run(bench: Bench) -> Outcome:
    sizes = QUICK_N if bench.quick else FULL_N
    queue = f"bench-idle-{bench.run_id}"
    bench.idle_queue(queue)
    tag = f"bench-polling-{bench.run_id}"

    async def create() -> list[str]:
        client = ClearMLBackend()
        try:
            return await create_queued(client, parked_specs(queue, max(sizes), f"poll-{bench.run_id}"), tags=[tag])
        finally:
            await client.aclose()

    ids = asyncio.run(create())
    ours: dict[str, float] = {}
    naive: dict[str, float] = {}
    ratio: dict[str, float] = {}
    per_minute: dict[str, dict[str, float]] = {"ours": {}, "naive": {}}
    detail: dict[str, Any] = {}
    steady_ticks_per_min = 60.0 / 5.0
    try:
        for n in sizes:
            o = _ours(ids[:n], bench)
            v = _naive(ids[:n], bench)
            key = str(n)
            ours[key] = round(o["calls_per_tick"], 3)
            naive[key] = round(v["calls_per_tick"], 3)
            ratio[key] = round(v["calls_per_tick"] / o["calls_per_tick"], 1) if o["calls_per_tick"] else float("inf")
            per_minute["ours"][key] = round(o["calls_per_tick"] * steady_ticks_per_min, 1)
            per_minute["naive"][key] = round(v["calls_per_tick"] * steady_ticks_per_min, 1)
            detail[key] = {"ours": o, "naive": v}
    finally:
        bench.stop_active(tag)
    n_max = str(max(sizes))
    rows = [Row(f"calls/tick N={n} ours | naive", f"{fmt(ours[str(n)])} | {fmt(naive[str(n)])}  "
                f"({fmt(ratio[str(n)], 1)}x)",
                "<= 2 ours" if str(n) == n_max else "", ours[str(n)] <= 2 if str(n) == n_max else None)
            for n in sizes]
    if n_max == "500":
        rows.append(Row("ratio at N=500", f"{fmt(ratio[n_max], 1)}x", ">= 250x", ratio[n_max] >= 250))
    return Outcome(
        data={"calls_per_tick": {"ours": ours, "naive": naive}, "ratio": ratio, "calls_per_minute": per_minute,
              "detail": detail},
        rows=rows,
        notes=["per minute = per tick x 12 (the poller's steady 5 s interval, assumed for the naive loop too)"])
