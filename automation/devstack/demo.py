"""`automation demo`: the main job on the embedded default (the local stack).

Brings the local stack up unless it already runs in the data directory, builds the tiny model
(once, kept in the data directory), and runs the `compress_evaluate_benchmark` flow on it with
w4a16 and fp8_dynamic on the `tiny` suite and the `smoke` profile: real llm-compressor, lm-eval and
GuideLLM, each step a ClearML task run by a real clearml-agent. Compressions and evaluations go to
the `gpu` queue, benchmarks (the longest steps) to `cpu`: two agents, so they run next to each
other. Performance is reported but not gated (CPU timings of a tiny model are noise).
Prints the joined report and where to see it. The run goes to the stack's own Prefect server
(started with the stack, its data in DIR), so it stays inspectable: with `keep` everything is left
running (the ClearML pages and the Prefect UI work at once; `automation local down` stops it);
without it the stack is taken down again if the demo started it, and `automation local up`
brings both back with the run in them.

The flow runs in a child process (the `automation run` command) with the stack's environment,
so the ClearML SDK and Prefect read their settings fresh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
    data_dir: Path
    web_url: str
    prefect_ui_url: str
    running: bool  # the stack is still up (kept, or it was up before the demo)


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
    """The stack's environment (its Prefect server's URL included) over this process's, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, **stack_env, "PREFECT_HOME": str(data_dir / "prefect"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def run_demo(data_dir: Path | None = None, json_out: Path | None = None, refresh: bool = False,
             keep: bool = False) -> DemoOutcome:
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
        # The stack's Prefect server holds the run, so it outlives the demo (not the served
        # deployments: the demo does not need them, and `local up` adds them when wanted).
        # The tiny model builds (a subprocess, ~20 s on 2 cores) while the stack starts (the Prefect
        # server's start is most of that, ~17 s on a fresh database): one no longer waits for the other.
        with ThreadPoolExecutor(max_workers=1) as pool:
            building = pool.submit(ensure_tiny_model, stack.data.root / "models" / "tiny",
                                   demo_env({}, stack.data.root))
            up = stack.up(queues=list(DEMO_QUEUES), prefect=True, serve=False)
            tiny = building.result()
        env = demo_env(up.env, stack.data.root)
        out = json_out or (stack.data.root / "reports" / "demo-report.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "automation.cli", "run", "compress-evaluate-benchmark",
                *demo_arguments(tiny, refresh), "--json", str(out)]
        code = subprocess.run(argv, env=env, check=False).returncode
        report = json.loads(out.read_text()) if out.is_file() else {}
        return DemoOutcome(report=report, wall_s=time.monotonic() - started, exit_code=code,
                           data_dir=stack.data.root, web_url=up.env.get("CLEARML_WEB_HOST", ""),
                           prefect_ui_url=up.env.get("PREFECT_UI_URL", ""), running=keep or was_up)
    finally:
        if not (keep or was_up):
            stack.down()
