"""`kill -9` the stand-in mid-run, start it again: the task completes, nothing acknowledged is lost,
and scalars reported across the outage (no flush barrier) arrive exactly once each."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from automation.devstack import procs
from testing.stacks import StackHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Iterations 0..4 are acknowledged before the kill; from 5 on the script streams until it learns
# of the kill, then reports this many more while the server is down or restarting.
DURING_OUTAGE = 50

SCRIPT = textwrap.dedent(
    f"""
    import sys, time
    from pathlib import Path
    from clearml import OutputModel, Task

    task = Task.init()
    marker = Path(task.get_parameters_as_dict(cast=True)["Args"]["marker"])
    logger = task.get_logger()
    for i in range(5):
        logger.report_scalar("crash", "value", value=float(i), iteration=i)
    task.upload_artifact("before_crash", artifact_object={{"phase": 1}})
    task.flush(wait_for_uploads=True)
    marker.write_text("phase 1 acknowledged")
    # The test kills the server now, while this keeps reporting with no flush barrier (and goes on
    # reporting while it is down): the SDK's background sender retries through the outage, and
    # nothing may be lost or counted twice.
    i = 5
    while not Path(str(marker) + ".killed").exists() and i < 5000:
        logger.report_scalar("crash", "value", value=float(i), iteration=i)
        i += 1
        time.sleep(0.02)
    for _ in range({DURING_OUTAGE}):
        logger.report_scalar("crash", "value", value=float(i), iteration=i)
        i += 1
        time.sleep(0.02)
    marker.with_name("reported.txt").write_text(str(i))
    while not Path(str(marker) + ".restarted").exists():
        time.sleep(0.2)
    weights = marker.with_name("weights.bin")
    weights.write_bytes(b"after-restart" * 100)
    OutputModel(task=task, name="after-crash").update_weights(weights_filename=str(weights),
                                                              auto_delete_file=False)
    task.flush(wait_for_uploads=True)
    print("phase 2 done")
    """
)


def _wait_status(task: object, statuses: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = str(task.get_status())  # type: ignore[attr-defined]
    while status not in statuses and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(task.get_status())  # type: ignore[attr-defined]
    return status


def test_kill_9_mid_run_loses_nothing_acknowledged(local_stack: StackHandle, tmp_path: Path) -> None:
    from clearml import Task

    script = tmp_path / "crash_script.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "phase1.txt"
    task: Any = Task.create(project_name="tests/crash", task_name="kill-9", script=str(script), packages=[],
                       add_task_init_call=False, detect_repository=False)
    task.set_parameters({"Args/marker": str(marker)})
    Task.enqueue(task, queue_name="cpu")

    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, "the task never reached phase 1"
        assert str(task.get_status()) not in ("failed", "stopped"), task.get_status_message()
        time.sleep(0.05)  # the kill must land while the script is still streaming scalars

    server = procs.running(local_stack.data_dir / "run" / "server.pid")
    assert server is not None
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    Path(str(marker) + ".killed").write_text("down")
    report = local_stack.stack.up(queues=["gpu", "cpu"])
    assert "server" in report.started
    Path(str(marker) + ".restarted").write_text("go")

    assert _wait_status(task, {"completed", "failed", "stopped"}, 180) == "completed"
    task.reload()
    reported = int(marker.with_name("reported.txt").read_text())
    assert reported >= 5 + DURING_OUTAGE
    scalars = task.get_reported_scalars(x_axis="iter", max_samples=0)
    # exactly once each: the acknowledged ones, and the ones in flight or queued during the outage
    assert scalars["crash"]["value"]["x"] == list(range(reported))
    assert scalars["crash"]["value"]["y"] == [float(i) for i in range(reported)]
    assert task.artifacts["before_crash"].get() == {"phase": 1}
    models = task.models["output"]
    assert [m.name for m in models] == ["after-crash"]
    assert Path(models[0].get_local_copy()).read_bytes() == b"after-restart" * 100
