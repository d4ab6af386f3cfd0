"""footprint: RSS and CPU of one flow run awaiting 500 in-flight tasks (quick: 100).

A subprocess (`python -m benchmarks.flows await ...`) runs one Prefect flow with N `run_task`
calls on a queue no agent serves, so all N stay queued. Once every task is queued (counted on
the stand-in) and 3 s have passed, the process's RSS is sampled every second and its CPU time
is measured over a window of 30 s (quick: 10 s); CPU percent is of one core. Then the process is
killed and the tasks are stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psutil

from benchmarks.common import Outcome, Row, fmt
from benchmarks.stack import Bench
from testing import REPO
from testing.waits import wait_for


def run(bench: Bench) -> Outcome:
    n, window_s = (100, 10.0) if bench.quick else (500, 30.0)
    queue = f"bench-idle-{bench.run_id}"
    bench.idle_queue(queue)
    tag = f"bench-footprint-{bench.run_id}"
    log = bench.data_dir / "footprint.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.flows", "await", queue, str(n),
                                 f"foot-{bench.run_id}", tag], cwd=REPO, env=bench.subprocess_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def all_queued() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the flow process exited:\n{log.read_text()[-3000:]}")
            tasks = bench.api.call("tasks.get_all", {"tags": [tag], "status": ["queued"], "only_fields": ["id"],
                                                     "page": 0, "page_size": 1000})["tasks"]
            return len(tasks) >= n

        wait_for(f"{n} tasks queued", all_queued, 600, every_s=1.0)
        submit_s = time.monotonic() - started
        time.sleep(3.0)
        p = psutil.Process(proc.pid)
        rss: list[float] = []
        cpu0 = p.cpu_times()
        t0 = time.monotonic()
        while time.monotonic() - t0 < window_s:
            rss.append(p.memory_info().rss / 2**20)
            time.sleep(1.0)
        cpu1 = p.cpu_times()
        elapsed = time.monotonic() - t0
        cpu_percent = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / elapsed
        threads = p.num_threads()
    finally:
        proc.kill()
        proc.wait()
        bench.stop_active(tag)
    data: dict[str, Any] = {"rss_mb": round(max(rss), 1), "cpu_percent": round(cpu_percent, 2), "tasks": n,
                            "window_s": window_s, "seconds_to_submit_all": round(submit_s, 1), "threads": threads}
    rows = [Row(f"RSS MB ({n} tasks)", fmt(max(rss), 0), "<= 300", max(rss) <= 300),
            Row("CPU % of one core", fmt(cpu_percent), "<= 5", cpu_percent <= 5),
            Row(f"s to submit {n} through Prefect", fmt(submit_s, 1))]
    return Outcome(data=data, rows=rows)
