"""drills: counts over repeated trials (20 in full mode, 2 quick; `--trials N` overrides).

- kill: an orchestrator subprocess (`python -m benchmarks.flows run`, a Prefect flow awaiting two
  debug tasks, one per agent queue) is SIGKILLed at a random moment (uniform over 1-14 s after
  its start: before, during and after submission, while the tasks run), then the same flow is
  run again to completion. Duplicates: tasks beyond one per identity; lost results: cells the
  re-run did not hand back as completed.
- faults: the stand-in injects 10% transient faults (HTTP 503 before processing, a lost answer
  after processing, a 0.5 s delay; a fresh seed per trial) on every endpoint, for everyone (the
  orchestrator, the agents and the task processes), while a flow runs three debug tasks.
  Failed flows and duplicates by identity are counted. The poller's check for lost dequeues
  runs every 3 s (AUTOMATION_QUEUE_ENTRY_CHECK_S; default 30 s) so a lost agent pop costs seconds.
- cancel: a deployment served from a subprocess (`flow.serve`, real `prefect server`) runs three
  long tasks (two running, one queued); once they are on the agents the run is cancelled through
  the Prefect API (`set_flow_run_state(Cancelling)`, what the UI and `prefect flow-run cancel`
  do); seconds until every ClearML task of the run is stopped or dequeued.
- agent_kill: the agent's task process of a running debug task is SIGKILLed (two trials at a
  time, one per agent); recovered = the flow's task ended completed via the bridge's retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from typing import Any

from automation.clearml.client import FLOW_RUN_TAG
from benchmarks.common import Outcome, Row, fmt
from benchmarks.stack import Bench
from testing import REPO
from testing.flows import deployment_id, serve, start_run
from testing.processes import kill_task_process, stop_process_group
from testing.stacks import ACTIVE
from testing.waits import wait_for

ENTRY_CHECK_S = 3.0
SETTLE_S = 15.0  # how long the cancel drill watches that stopped tasks stay stopped (> the bridge's 10 s hold)
STOP_WAIT_S = 60.0  # a run whose tasks are not all stopped by then counts as "never stopped"


def _trials(bench: Bench) -> int:
    return bench.trials if bench.trials is not None else (2 if bench.quick else 20)


def _duplicates(bench: Bench, identities: list[str]) -> int:
    return sum(max(0, len(bench.by_identity(i)) - 1) for i in identities)


# -- kill the orchestrator ------------------------------------------------------------------------
def kill_drill(bench: Bench, trials: int) -> dict[str, Any]:
    from benchmarks.flows import batch_flow, batch_specs

    rng = random.Random(7)
    env = bench.subprocess_env(AUTOMATION_QUEUE_ENTRY_CHECK_S=str(ENTRY_CHECK_S))
    duplicates = lost = 0
    moments: list[float] = []
    states_at_kill: list[list[str]] = []
    for trial in range(trials):
        salt = f"kill-{bench.run_id}-{trial}"
        specs = batch_specs(salt, 2, sleep_s=2.0)
        moment = rng.uniform(1.0, 14.0)
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.flows", "run", salt, "2", "2.0"], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=moment)
        finally:
            proc.kill()  # SIGKILL: no hook, no finally, no stop
            proc.wait()
        moments.append(round(moment, 2))
        states_at_kill.append([t["status"] for s in specs for t in bench.by_identity(s.identity())])
        try:
            results = asyncio.run(batch_flow(specs))
            lost += sum(1 for r in results if r.status != "completed")
        except Exception:
            lost += len(specs)
        duplicates += _duplicates(bench, [s.identity() for s in specs])
    return {"duplicates": duplicates, "lost_results": lost, "trials": trials, "kill_after_s": moments,
            "task_states_at_kill": states_at_kill}


# -- transient faults -----------------------------------------------------------------------------
def faults_drill(bench: Bench, trials: int) -> dict[str, Any]:
    from benchmarks.flows import batch_flow, batch_specs
    from flows.poller import shared_poller

    poller = shared_poller()
    saved, poller.entry_check_s = poller.entry_check_s, ENTRY_CHECK_S
    failed = duplicates = 0
    injected: dict[str, int] = {}
    seconds: list[float] = []
    errors: list[str] = []
    try:
        for trial in range(trials):
            specs = batch_specs(f"faults-{bench.run_id}-{trial}", 3, sleep_s=0.5, steps=1)
            before = bench.faults(rate=0.0)["injected"]
            bench.faults(rate=0.1, kinds=["error", "drop", "delay"], delay_s=0.5, seed=1000 + trial)
            started = time.monotonic()
            try:
                results = asyncio.run(batch_flow(specs))
                if [r.status for r in results] != ["completed"] * len(specs):
                    failed += 1
                    errors.append(f"trial {trial}: {[r.status for r in results]}")
            except Exception as exc:
                failed += 1
                errors.append(f"trial {trial}: {type(exc).__name__}: {str(exc)[:300]}")
            finally:
                after = bench.faults(rate=0.0)["injected"]
            seconds.append(round(time.monotonic() - started, 1))
            for kind, count in after.items():
                injected[kind] = injected.get(kind, 0) + count - before.get(kind, 0)
            duplicates += _duplicates(bench, [s.identity() for s in specs])
    finally:
        poller.entry_check_s = saved
        bench.faults(rate=0.0)
    return {"failed_flows": failed, "duplicates": duplicates, "trials": trials, "injected": injected,
            "lost_dequeues_put_back": poller.put_back, "seconds_per_trial": seconds, "errors": errors}


# -- cancel a deployment run ----------------------------------------------------------------------
async def _cancel(flow_run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)


def cancel_drill(bench: Bench, trials: int) -> dict[str, Any]:
    assert bench.prefect is not None, "the cancel drill needs the Prefect server"
    env = bench.subprocess_env()
    name = f"hold-{bench.run_id}"
    log = bench.data_dir / f"serve-{name}.log"
    seconds: list[float] = []
    before_cancel: list[list[str]] = []
    tags: list[str] = []
    late: list[dict[str, Any]] = []
    flickered: list[dict[str, Any]] = []
    server = serve("benchmarks.flows", name, env, log)
    try:
        deployment = asyncio.run(deployment_id(f"bench-hold/{name}", server, log, timeout_s=90))
        for trial in range(trials):
            flow_run_id = asyncio.run(start_run(deployment, {"salt": f"cancel-{bench.run_id}-{trial}", "n": 3}))
            tag = f"{FLOW_RUN_TAG}{flow_run_id}"
            tags.append(tag)

            def submitted(tag: str = tag) -> bool:
                statuses = [t["status"] for t in bench.by_tag(tag)]
                return len(statuses) == 3 and "in_progress" in statuses and all(
                    s in ("queued", "in_progress") for s in statuses)

            wait_for("3 tasks of the run queued or running", submitted, 120)
            before_cancel.append(sorted(t["status"] for t in bench.by_tag(tag)))
            started = time.monotonic()
            asyncio.run(_cancel(flow_run_id))

            def all_stopped(tag: str = tag) -> bool:
                return all(t["status"] not in ACTIVE for t in bench.by_tag(tag))

            try:
                wait_for("every task of the run stopped or dequeued", all_stopped, STOP_WAIT_S, every_s=0.05)
                stopped_s = time.monotonic() - started
            except TimeoutError:  # a miss, not the end of the drill: count it and clean up
                late.append({"trial": trial, "not_stopped_within_s": STOP_WAIT_S,
                             "statuses": [t["status"] for t in bench.by_tag(tag)]})
                bench.stop_active(tag)
                seconds.append(STOP_WAIT_S)  # a lower bound: max reads ">= 60" then
                continue
            # Stopped must stay stopped: watch the run's tasks for a while (a task an agent had
            # just popped can still be started after the stop; a retry can create a new one).
            # A forced start can flip a stopped task back to in_progress for a moment (the bridge
            # then stops it again): counted as `revived`; a task still active at the end of the
            # window is a stop that did not hold (`late`).
            settle_end = time.monotonic() + SETTLE_S
            revived: set[str] = set()
            while time.monotonic() < settle_end:
                revived |= {str(t["id"]) for t in bench.by_tag(tag) if t["status"] in ACTIVE}
                time.sleep(0.25)
            if revived:
                flickered.append({"trial": trial, "tasks": sorted(revived)})
            still = [t for t in bench.by_tag(tag) if t["status"] in ACTIVE]
            if still:
                late.append({"trial": trial, "tasks": sorted(str(t["id"]) for t in still),
                             "statuses": [t["status"] for t in bench.by_tag(tag)]})
                bench.stop_active(tag)
            seconds.append(round(stopped_s, 2))
    finally:
        stop_process_group(server)
        for tag in tags:  # nothing of the drill may keep the agents busy
            bench.stop_active(tag)
    return {"seconds_to_stop_all": {"max": max(seconds), "p50": sorted(seconds)[len(seconds) // 2],
                                    "all": seconds}, "trials": trials, "stop_wait_s": STOP_WAIT_S,
            "statuses_before_cancel": before_cancel,
            "active_again_after_stop": len(late), "active_again_detail": late, "settle_s": SETTLE_S,
            "revived_then_stopped_again": len(flickered), "revived_detail": flickered}


# -- kill the agent's task process ----------------------------------------------------------------
def agent_kill_drill(bench: Bench, trials: int) -> dict[str, Any]:
    from benchmarks.flows import batch_specs, states_flow

    recovered = 0
    killed_total = 0
    details: list[dict[str, Any]] = []
    batch_no = 0
    remaining = trials
    while remaining > 0:
        n = min(2, remaining)  # one per agent queue
        specs = batch_specs(f"akill-{bench.run_id}-{batch_no}", n, sleep_s=6.0, steps=6)
        identities = [s.identity() for s in specs]
        killed: dict[str, int] = {}
        done = threading.Event()

        def killer(identities: list[str] = identities, killed: dict[str, int] = killed,
                   done: threading.Event = done) -> None:
            deadline = time.monotonic() + 300
            while not done.is_set() and len(killed) < len(identities) and time.monotonic() < deadline:
                for identity in identities:
                    if identity in killed:
                        continue
                    tasks = bench.by_identity(identity)
                    if tasks and tasks[0]["status"] == "in_progress":
                        pid = kill_task_process(str(tasks[0]["id"]))
                        if pid:
                            killed[identity] = pid
                time.sleep(0.3)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            states = asyncio.run(states_flow(specs))["states"]
        finally:
            done.set()
            thread.join(timeout=10)
        for spec, state in zip(specs, states, strict=True):
            statuses = [t["status"] for t in bench.by_identity(spec.identity())]
            ok = spec.identity() in killed and state.is_completed() and statuses[-1:] == ["completed"]
            recovered += int(ok)
            killed_total += int(spec.identity() in killed)
            details.append({"killed": spec.identity() in killed, "state": state.name, "tasks": statuses})
        remaining -= n
        batch_no += 1
    return {"recovered": recovered, "trials": trials, "killed": killed_total, "details": details}


def run(bench: Bench) -> Outcome:
    trials = _trials(bench)
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    drills = (("kill", kill_drill), ("faults", faults_drill), ("cancel", cancel_drill),
              ("agent_kill", agent_kill_drill))
    for name, drill in drills:
        if bench.drills and name not in bench.drills:
            continue
        started = time.monotonic()
        print(f"   drill {name} ({trials} trials) ...", flush=True)
        try:
            data[name] = drill(bench, trials)
        except Exception as exc:  # one broken drill must not hide the others' figures
            import traceback

            errors[name] = f"{type(exc).__name__}: {exc}"
            data[name] = {"error": traceback.format_exc()}
        data[name]["seconds"] = round(time.monotonic() - started, 1)
    rows: list[Row] = []
    if "duplicates" in data.get("kill", {}):
        k = data["kill"]
        rows += [Row(f"kill: duplicates | lost ({k['trials']} trials)", f"{k['duplicates']} | {k['lost_results']}",
                     "0 | 0", k["duplicates"] == 0 and k["lost_results"] == 0)]
    if "failed_flows" in data.get("faults", {}):
        f = data["faults"]
        rows += [Row(f"faults 10%: failed flows | duplicates ({f['trials']} trials)",
                     f"{f['failed_flows']} | {f['duplicates']}", "0 | 0",
                     f["failed_flows"] == 0 and f["duplicates"] == 0)]
    if "seconds_to_stop_all" in data.get("cancel", {}):
        c = data["cancel"]["seconds_to_stop_all"]
        again = data["cancel"]["active_again_after_stop"]
        rows += [Row(f"cancel: s to stop all, max ({data['cancel']['trials']} trials)", fmt(c["max"]),
                     "<= 5", c["max"] <= 5.0),
                 Row(f"cancel: trials with a task still active {fmt(SETTLE_S)} s after the stop", str(again), "0",
                     again == 0)]
    if "recovered" in data.get("agent_kill", {}):
        a = data["agent_kill"]
        rows += [Row("agent task kill: recovered", f"{a['recovered']}/{a['trials']}", "all",
                     a["recovered"] == a["trials"])]
    for name, err in errors.items():
        rows.append(Row(f"{name}: error", err[:60], "", False))
    notes = [json.dumps({"errors": errors})] if errors else []
    return Outcome(data=data, rows=rows, notes=notes)
