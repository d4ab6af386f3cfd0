"""prefect_db: N concurrent flow runs against a Prefect server on SQLite and on PostgreSQL, side by side.

Each flow run is its own process (as a `process` worker runs them): `python -m benchmarks.prefect_db
load TASKS SLEEP`, a flow of TASKS concurrent tasks with persisted results, each logging a few lines
and sleeping SLEEP seconds in steps, so every run writes flow-run and task-run states, results and
logs at once. All N processes start together against one server; then the server is asked how many
flow runs and task runs COMPLETED. A run is "lost" when its process failed or the server does not
hold it as completed. The PostgreSQL server is the local stack's own (`automation.devstack.postgres`,
the cluster that `automation local up --prefect-db postgres` runs). N is 30 in both modes (the issue's
floor); TASKS is 10 (quick: 4).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Outcome, Row, fmt
from benchmarks.stack import Bench, percentile
from testing import REPO
from testing.prefect_server import PrefectServer, free_port, start_prefect_server
from testing.processes import child_env

RUNS = 30
LOCKED = re.compile(r"database is locked", re.IGNORECASE)
SERVER_ERROR = re.compile(r"Server error '5\d\d")
PROCESS_TIMEOUT_S = 900.0
SETTLE_TIMEOUT_S = 120.0
SETTLE_QUIET_S = 15.0


def run(bench: Bench) -> Outcome:
    tasks, sleep_s = (4, 0.2) if bench.quick else (10, 0.5)
    data: dict[str, Any] = {"runs": RUNS, "tasks_per_run": tasks}
    rows: list[Row] = []
    for db in ("sqlite", "postgres"):
        figures = _one(bench, db, tasks, sleep_s)
        data[db] = figures
        rows += [
            Row(f"{db}: flow runs lost of {RUNS}", str(figures["lost"]), "0" if db == "postgres" else "",
                figures["lost"] == 0 if db == "postgres" else None),
            Row(f"{db}: task runs completed", f"{figures['task_runs_completed']}/{RUNS * tasks}"),
            Row(f"{db}: wall s (all {RUNS})", fmt(figures["wall_s"], 1)),
            Row(f"{db}: per run s p50 / p95", f"{fmt(figures['run_s_p50'], 1)} / {fmt(figures['run_s_p95'], 1)}"),
            Row(f"{db}: 'database is locked' / server 5xx lines",
                f"{figures['locked_lines']} / {figures['server_5xx_lines']}"),
        ]
    return Outcome(data=data, rows=rows)


def _one(bench: Bench, db: str, tasks: int, sleep_s: float) -> dict[str, Any]:
    root = bench.data_dir / f"prefect-{db}"
    server_env: dict[str, str] = {}
    pg = None
    if db == "postgres":
        from automation.devstack.layout import DataDir
        from automation.devstack.postgres import LocalPostgres

        layout = DataDir(root / "stack")
        layout.ensure()
        pg = LocalPostgres(layout, free_port())
        pg.start()
        server_env = pg.prefect_env()
    server: PrefectServer | None = None
    try:
        server = start_prefect_server(root / "home", cwd=REPO, logging_level="WARNING", timeout_s=180,
                                      server_env=server_env)
        return _load(server, root, tasks, sleep_s)
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()


def _load(server: PrefectServer, root: Path, tasks: int, sleep_s: float) -> dict[str, Any]:
    env = child_env(server.env, PREFECT_LOGGING_LEVEL="WARNING")
    logs = [root / f"run-{i}.log" for i in range(RUNS)]
    started = time.monotonic()
    procs: list[tuple[subprocess.Popen[bytes], float]] = []
    for log in logs:
        with log.open("wb") as out:
            procs.append((subprocess.Popen([sys.executable, "-m", "benchmarks.prefect_db", "load", str(tasks),
                                            str(sleep_s)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT),
                          time.monotonic()))
    durations: dict[int, float] = {}
    codes: dict[int, int] = {}
    deadline = started + PROCESS_TIMEOUT_S
    while len(codes) < len(procs):
        for i, (proc, t0) in enumerate(procs):
            if i not in codes and proc.poll() is not None:
                codes[i], durations[i] = proc.returncode, time.monotonic() - t0
        if time.monotonic() > deadline:
            for i, (proc, t0) in enumerate(procs):
                if i not in codes:
                    proc.kill()
                    codes[i], durations[i] = -9, time.monotonic() - t0
        time.sleep(0.2)
    wall_s = time.monotonic() - started
    failed = sum(code != 0 for code in codes.values())
    counts = _settled_counts(server.api_url, expected_tasks=(RUNS - failed) * tasks)
    texts = [p.read_text(errors="replace") for p in [*logs, server.log]]
    return {
        "failed_processes": failed,
        "flow_runs_completed": counts["flow_runs"],
        "task_runs_completed": counts["task_runs"],
        "lost": max(failed, RUNS - counts["flow_runs"]),
        "wall_s": round(wall_s, 1),
        "run_s_p50": round(percentile(list(durations.values()), 50), 1),
        "run_s_p95": round(percentile(list(durations.values()), 95), 1),
        "locked_lines": sum(len(LOCKED.findall(t)) for t in texts),
        "server_5xx_lines": sum(len(SERVER_ERROR.findall(t)) for t in texts),
        "settle_s": counts["settle_s"],
    }


def _settled_counts(api_url: str, expected_tasks: int) -> dict[str, Any]:
    """Counts once the server has recorded what the clients sent: task-run states reach the
    database through the server's event pipeline, a moment after the client is done."""
    t0 = time.monotonic()
    last, stable_since = _counts(api_url), time.monotonic()
    while time.monotonic() - t0 < SETTLE_TIMEOUT_S and last["task_runs"] < expected_tasks:
        time.sleep(1.0)
        now = _counts(api_url)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > SETTLE_QUIET_S:
            break
    return {**last, "settle_s": round(time.monotonic() - t0, 1)}


def _counts(api_url: str) -> dict[str, int]:
    completed = {"state": {"type": {"any_": ["COMPLETED"]}}}
    with httpx.Client(base_url=api_url, timeout=30) as client:
        flows = client.post("/flow_runs/count", json={"flow_runs": completed})
        task_runs = client.post("/task_runs/count", json={"task_runs": completed})
        flows.raise_for_status()
        task_runs.raise_for_status()
        return {"flow_runs": int(flows.json()), "task_runs": int(task_runs.json())}


# -- the load: one flow run per process ----------------------------------------------------------------
def _load_flow(tasks: int, sleep_s: float) -> None:
    from prefect import flow, get_run_logger, task

    @task(persist_result=True, retries=0)
    async def step(i: int) -> dict[str, float]:
        logger = get_run_logger()
        for k in range(3):
            logger.warning("step %d part %d", i, k)
            await asyncio.sleep(sleep_s / 3)
        return {"i": float(i)}

    @flow(name="db-load", persist_result=True)
    async def db_load() -> int:
        results = await asyncio.gather(*(step(i) for i in range(tasks)))
        return len(results)

    done = asyncio.run(db_load())
    if done != tasks:
        raise SystemExit(f"{done} of {tasks} tasks returned")


if __name__ == "__main__":
    if sys.argv[1:2] != ["load"]:
        raise SystemExit("usage: python -m benchmarks.prefect_db load TASKS SLEEP_S")
    _load_flow(int(sys.argv[2]), float(sys.argv[3]))
