"""An SDK round trip through the stack: create -> parameters + configuration -> enqueue -> a real
agent runs a tiny script -> results read back. The contract test uses it to make SDK and agent
traffic when it runs on its own.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from automation.clearml.records import TERMINAL_STATUSES
from testing import REPO
from testing.stacks import standin_stats

HELLO_SCRIPT = REPO / "automation" / "scripts" / "hello.py"
# What idle agents call whatever happens (queue polls, worker reports): not part of a round trip.
AGENT_ENDPOINTS = frozenset({"queues.get_next_task", "workers.register", "workers.unregister",
                             "workers.status_report", "workers.get_runtime_properties", "auth.login"})


@dataclass
class DemoResult:
    task_id: str
    status: str
    status_message: str
    web_url: str
    wall_s: float
    api_calls: int
    calls_by_endpoint: dict[str, int]
    # Calls without AGENT_ENDPOINTS, by phase: create/configure/enqueue, waiting (our status polls
    # and the task process under the agent), reading back.
    calls_by_phase: dict[str, int] = field(default_factory=dict)
    status_polls: int = 0
    scalars: dict[str, dict[str, float]] = field(default_factory=dict)
    single_values: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)


def run_hello(env: dict[str, str], queue: str = "cpu", timeout_s: float = 300.0) -> DemoResult:
    """One create -> run -> read round trip with the real SDK against the stack in env."""
    os.environ.update(env)
    from clearml import Task  # after the env is set: the SDK reads its config once

    before = standin_stats(env)["calls"]
    started = time.monotonic()
    task: Any = Task.create(
        project_name="automation-demo",
        task_name="hello",
        task_type="custom",
        script=str(HELLO_SCRIPT),
        packages=[],
        add_task_init_call=False,
        detect_repository=False,
    )
    task.set_parameters({"Args/greeting": "hello", "Args/steps": 5})
    task.set_configuration_object("demo", config_text='demo { source = "automation demo", seed = 7 }')
    Task.enqueue(task, queue_name=queue)
    enqueued = standin_stats(env)["calls"]
    deadline = time.monotonic() + timeout_s
    status = str(task.get_status())
    polls = 1
    while status not in TERMINAL_STATUSES:
        if time.monotonic() > deadline:
            task.mark_stopped(force=True, status_message="automation demo: timed out")
            raise TimeoutError(f"task {task.id} still '{status}' after {timeout_s:.0f} s; "
                               f"see {task.get_output_log_web_page()}")
        time.sleep(0.5)
        status = str(task.get_status())
        polls += 1
    finished = standin_stats(env)["calls"]
    task.reload()

    scalars: dict[str, dict[str, float]] = {}
    for title, series in task.get_last_scalar_metrics().items():
        scalars[title] = {name: float(vals.get("last", 0.0)) for name, vals in series.items()}
    single_values = {k: float(v) for k, v in (task.get_reported_single_values() or {}).items()}
    artifacts = {name: art.url for name, art in task.artifacts.items()}
    models = {m.name: m.url for m in task.models["output"]}
    log_tail = [line for chunk in task.get_reported_console_output(number_of_reports=3)
                for line in str(chunk).splitlines() if line.strip()][-8:]
    wall = time.monotonic() - started
    after = standin_stats(env)["calls"]
    by_endpoint = _diff(before, after)
    return DemoResult(
        task_id=task.id,
        status=status,
        status_message=str(task.data.status_message or ""),
        web_url=task.get_output_log_web_page(),
        wall_s=wall,
        api_calls=sum(by_endpoint.values()),
        calls_by_endpoint=by_endpoint,
        calls_by_phase={"submit": sum(_diff(before, enqueued).values()),
                        "wait": sum(_diff(enqueued, finished).values()),
                        "read": sum(_diff(finished, after).values())},
        status_polls=polls,
        scalars=scalars,
        single_values=single_values,
        artifacts=artifacts,
        models=models,
        log_tail=log_tail,
    )


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after
            if k not in AGENT_ENDPOINTS and after.get(k, 0) - before.get(k, 0)}
