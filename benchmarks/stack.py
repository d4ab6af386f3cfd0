"""The harness's own environment: a local ClearML stack (stand-in + real agents), and, for the
benchmarks that need Prefect runs, one real `prefect server start`.

Everything lives under one data directory (default: a fresh temporary one) and is taken down by
`Bench.close()`: agents and stand-in through `LocalStack.down()`, the Prefect server by its pid.
The environment of this process is pointed at both BEFORE clearml or prefect is imported (the
SDK reads its configuration once per process), and it gets its own HOME so SDK caches never
touch the user's.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automation.clearml.admin import AdminClient
from automation.devstack.stack import LocalStack
from testing import REPO
from testing.prefect_server import PrefectServer
from testing.prefect_server import start_prefect_server as _start_prefect_server
from testing.processes import OFFLINE, child_env
from testing.stacks import ACTIVE, admin_client, set_faults, standin_stats, start_stack

PREFECT_START_TIMEOUT_S = 120.0


def start_prefect_server(home: Path) -> PrefectServer:
    return _start_prefect_server(home, cwd=REPO, logging_level="WARNING", timeout_s=PREFECT_START_TIMEOUT_S)


@dataclass
class Bench:
    """What every benchmark gets: the stack, its API, counters, fault switch, Prefect."""

    data_dir: Path
    quick: bool
    stack: LocalStack
    env: dict[str, str]
    api: AdminClient
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    prefect: PrefectServer | None = None
    trials: int | None = None  # drill trials; None = the mode's default
    drills: list[str] | None = None  # which drills to run; None = all
    notes: dict[str, list[str]] = field(default_factory=dict)

    # -- counters and switches --------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return self.env["CLEARML_API_HOST"]

    def stats(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in standin_stats(self.env)["calls"].items()}

    def faults(self, **settings: Any) -> dict[str, Any]:
        return set_faults(self.env, **settings)

    # -- queries --------------------------------------------------------------------------
    def by_tag(self, tag: str, fields: Iterable[str] = ("id", "status", "tags")) -> list[dict[str, Any]]:
        return list(self.api.call("tasks.get_all", {"tags": [tag], "search_hidden": True, "order_by": ["created"],
                                                    "only_fields": list(fields)})["tasks"])

    def by_identity(self, identity: str) -> list[dict[str, Any]]:
        from automation.clearml.client import IDENTITY_TAG

        return self.by_tag(f"{IDENTITY_TAG}{identity}",
                           ("id", "status", "status_message", "tags", "created", "started", "completed"))

    def idle_queue(self, name: str) -> str:
        """A queue no agent serves: tasks put there stay queued (for polling/footprint)."""
        return self.api.ensure_queue(name)

    def stop_active(self, tag: str) -> int:
        """Stop (or dequeue) every still-active task with `tag`: benchmarks clean up after themselves."""
        return self._stop_active({"tags": [tag]}, page_size=500)

    def stop_everything_active(self) -> int:
        """Between benchmarks: no task of an earlier one may keep an agent busy (this stack is ours)."""
        return self._stop_active({}, page_size=1000)

    def _stop_active(self, query: dict[str, Any], page_size: int) -> int:
        stopped = 0
        for t in self.api.call("tasks.get_all", {**query, "status": sorted(ACTIVE), "search_hidden": True,
                                                 "only_fields": ["id", "status"], "page_size": page_size,
                                                 "page": 0})["tasks"]:
            with contextlib.suppress(Exception):
                if t["status"] == "queued":
                    self.api.call("tasks.dequeue", {"task": t["id"]})
                self.api.call("tasks.stopped", {"task": t["id"], "force": True, "status_reason": "benchmark cleanup"})
                stopped += 1
        return stopped

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        return child_env(self.env, *([self.prefect.env] if self.prefect is not None else []), **extra)

    def note(self, bench: str, text: str) -> None:
        self.notes.setdefault(bench, []).append(text)

    def close(self) -> None:
        if self.prefect is not None:
            self.prefect.stop()
            self.prefect = None
        self.stack.down()


def open_bench(data_dir: Path, quick: bool, need_prefect: bool) -> Bench:
    """Bring the stack up (and Prefect if needed) and point this process at them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    home = data_dir / "home"
    home.mkdir(exist_ok=True)
    os.environ["HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for key, value in {**OFFLINE, "GUIDELLM__MAX_WORKER_PROCESSES": "1"}.items():
        os.environ.setdefault(key, value)  # inherited by the agents and their task processes
    prefect: PrefectServer | None = None
    try:
        if need_prefect:
            prefect = start_prefect_server(data_dir / "prefect")
            os.environ.update(prefect.env)
        else:
            # No Prefect server: nothing in this process may start an ephemeral one by accident.
            os.environ["PREFECT_HOME"] = str(data_dir / "prefect")
        handle = start_stack(data_dir / "stack")
    except BaseException:
        if prefect is not None:
            prefect.stop()
        raise
    os.environ.update(handle.env)
    return Bench(data_dir=data_dir, quick=quick, stack=handle.stack, env=handle.env,
                 api=admin_client(handle.env, timeout=60), prefect=prefect)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): p95 of 20 values is the 19th smallest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]
