"""`automation demo`: the main job on the embedded default (the local stack).

Brings the local stack up unless it already runs in the data directory, builds the tiny model
(once, kept in the data directory), and runs the `compress_evaluate_benchmark` flow on it with
w4a16 and fp8_dynamic on the `tiny` suite and the `smoke` profile: real llm-compressor, lm-eval and
GuideLLM, each step a ClearML task run by a real clearml-agent. Compressions and benchmarks go to
the `gpu` queue, evaluations to `cpu` (two agents, so the base evaluation runs next to the
compressions). Performance is reported but not gated (CPU timings of a tiny model are noise).
Prints the joined report and where to see it; takes the stack down again if it
started it.

The flow runs in a child process (the `automation run` command) with the stack's environment,
so the ClearML SDK and Prefect read their settings fresh. Without PREFECT_API_URL it uses a
Prefect home inside the data directory, so the runs stay inspectable
(`PREFECT_HOME=DIR/prefect prefect server start`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automation.devstack.defaults import local_parameters
from automation.devstack.stack import LocalStack
from automation.devstack.tiny_model import ensure_tiny_model

DEMO_QUEUES = ("gpu", "cpu")


@dataclass
class DemoOutcome:
    report: dict[str, Any]
    wall_s: float
    exit_code: int
    prefect_home: str | None
    web_url: str


def demo_parameters(tiny: Path, refresh: bool = False) -> dict[str, Any]:
    """The local deployment's defaults (automation/devstack/defaults.py), in a project of its own."""
    return {**local_parameters(tiny)["compress-evaluate-benchmark"], "project": "automation-demo", "series": "demo",
            **({"refresh": True} if refresh else {})}


def demo_arguments(tiny: Path, refresh: bool = False) -> list[str]:
    """The `automation run compress-evaluate-benchmark` options that give the flow those parameters."""
    from automation.cli.flow_options import cli_arguments
    from flows.compress_evaluate_benchmark import compress_evaluate_benchmark

    return cli_arguments(compress_evaluate_benchmark.fn, demo_parameters(tiny, refresh))


def demo_env(stack_env: dict[str, str], data_dir: Path) -> dict[str, str]:
    env = {**os.environ, **stack_env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if not env.get("PREFECT_API_URL"):
        env["PREFECT_HOME"] = str(data_dir / "prefect")
        # The temporary server's telemetry heartbeat races the flow for SQLite ("database is locked").
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # Its default 20 s start-up deadline was missed once on a loaded 2-core host: the demo
        # then failed before any step ran. A slow start is no reason to fail the main job.
        env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    return env


def run_demo(data_dir: Path | None = None, json_out: Path | None = None, refresh: bool = False) -> DemoOutcome:
    # Everything the demo runs is local (tiny model, built-in calibration set, local suite): the
    # agents this starts inherit offline hub settings too, so no step can wait on a network.
    # The core scripts go offline for such steps by themselves; this covers anything before them.
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    stack = LocalStack(data_dir)
    was_up = stack.status().get("server", {}).get("running", False)
    started = time.monotonic()
    try:
        # Inside the try: an `up` that fails half-way (an agent exiting at start) is taken down too.
        up = stack.up(queues=list(DEMO_QUEUES))
        env = demo_env(up.env, stack.data.root)
        tiny = ensure_tiny_model(stack.data.root / "models" / "tiny", env)
        out = json_out or (stack.data.root / "reports" / "demo-report.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "automation.cli", "run", "compress-evaluate-benchmark",
                *demo_arguments(tiny, refresh), "--json", str(out)]
        code = subprocess.run(argv, env=env, check=False).returncode
        report = json.loads(out.read_text()) if out.is_file() else {}
        return DemoOutcome(report=report, wall_s=time.monotonic() - started, exit_code=code,
                           prefect_home=env.get("PREFECT_HOME"), web_url=up.env.get("CLEARML_WEB_HOST", ""))
    finally:
        if not was_up:
            stack.down()
