"""Harness processes: this process's environment and its subprocesses', stopping a process group,
killing the process that runs a task."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

import psutil

from testing import REPO

# No Hugging Face hub for what the harness starts (the tiny model is built locally)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
DEBUG_SCRIPT = "-m automation.scripts.debug"  # the command line of the debug kind's task process


def child_env(*envs: dict[str, str], **extra: str) -> dict[str, str]:
    """This process's environment with `envs` over it (a stack's, a Prefect server's), the checkout on
    PYTHONPATH, unbuffered output, then `extra`."""
    merged: dict[str, str] = dict(os.environ)
    for env in envs:
        merged.update(env)
    return {**merged, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """`env` set in this process's environment for the block; what was there before is put back."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stop_process_group(proc: subprocess.Popen[bytes], term_wait_s: float = 20.0, kill_wait_s: float = 5.0) -> None:
    """SIGTERM to the process group of `proc` (started with start_new_session=True), SIGKILL after
    `term_wait_s`; a group that is already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=term_wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=kill_wait_s)


def kill_task_process(task_id: str) -> int:
    """SIGKILL the agent's child that runs the task's core script (found by CLEARML_TASK_ID); its pid,
    0 when there is none (yet)."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if DEBUG_SCRIPT not in cmd:
                continue
            if proc.environ().get("CLEARML_TASK_ID") != task_id:
                continue
            parent = proc.parent()
            if parent is not None and DEBUG_SCRIPT in " ".join(parent.cmdline()):
                continue  # a helper the script forked; the script itself is its parent
            proc.send_signal(signal.SIGKILL)
            return int(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return 0
