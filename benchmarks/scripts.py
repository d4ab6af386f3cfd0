"""Running the core scripts directly (`python -m automation.scripts.<kind> --spec ... --out ...`)
in subprocesses, with no ClearML: the baseline the orchestrated runs are compared with.

Layering: no ML library is imported here; the scripts run in their own processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from automation.specs.base import TaskSpec
from testing import REPO

# What each agent's task process gets on 2 cores with 2 agents: one thread, offline hub.
ML_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
          "OMP_NUM_THREADS": "1", "GUIDELLM__MAX_WORKER_PROCESSES": "1"}
TIMEOUT_S = 900


@dataclass
class Finished:
    """One direct run: outside wall time (interpreter start included) and the process tree's peak RSS."""

    name: str
    out: Path
    wall_s: float
    peak_rss_mb: float
    results: dict[str, object]


def build_tiny(target: Path) -> Path:
    """The tiny Llama the tests use (hidden size 128, local tokenizer), built in a subprocess."""
    subprocess.run([sys.executable, "-m", "automation.scripts.lib.tiny_model", "--out", str(target)], cwd=REPO,
                   env={**os.environ, **ML_ENV}, check=True, capture_output=True, timeout=600)
    return target


def start_script(spec: TaskSpec, work: Path, name: str) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / f"{name}.json"
    spec_file.write_text(json.dumps({"kind": spec.kind, **spec.model_dump(mode="json")}))
    log = (work / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", spec.script_module, "--spec", str(spec_file),
                             "--out", str(work / name)], cwd=REPO, env={**os.environ, **ML_ENV},
                            stdout=log, stderr=subprocess.STDOUT)


def wait_script(proc: subprocess.Popen[bytes], work: Path, name: str) -> float:
    """Seconds until `proc` ends; a failed script raises with its log tail."""
    started = time.monotonic()
    if proc.wait(timeout=TIMEOUT_S) != 0:
        raise RuntimeError(f"direct {name} failed:\n{(work / f'{name}.log').read_text()[-3000:]}")
    return time.monotonic() - started


def run_script(spec: TaskSpec, work: Path, name: str) -> Finished:
    """Run one core script alone and measure it.

    Peak RSS comes from wait4's rusage of that child: the largest peak of the script and of every
    process it waited for (the benchmark kind's model server included), not their sum.
    """
    started = time.monotonic()
    proc = start_script(spec, work, name)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"direct {name} failed:\n{(work / f'{name}.log').read_text()[-3000:]}")
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    results = json.loads((work / name / "results.json").read_text())
    return Finished(name=name, out=work / name, wall_s=round(wall, 2),
                    peak_rss_mb=round(usage.ru_maxrss * scale, 1), results=results)

