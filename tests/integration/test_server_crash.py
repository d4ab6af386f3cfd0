"""`kill -9` the stand-in mid-run, start it again: the task completes and nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from automation.local import procs
from tests.conftest import StackHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from clearml import OutputModel, Task

    task = Task.init()
    marker = Path(task.get_parameters_as_dict(cast=True)["Args"]["marker"])
    logger = task.get_logger()
    for i in range(5):
        logger.report_scalar("crash", "value", value=float(i), iteration=i)
    task.upload_artifact("before_crash", artifact_object={"phase": 1})
    task.flush(wait_for_uploads=True)
    marker.write_text("phase 1 acknowledged")
    # The test kills and restarts the server now; wait until it is back before phase 2.
    while not Path(str(marker) + ".restarted").exists():
        time.sleep(0.2)
    for i in range(5, 10):
        logger.report_scalar("crash", "value", value=float(i), iteration=i)
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
        time.sleep(0.2)

    server = procs.running(local_stack.data_dir / "run" / "server.pid")
    assert server is not None
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    report = local_stack.stack.up(queues=["gpu", "cpu"])
    assert "server" in report.started
    Path(str(marker) + ".restarted").write_text("go")

    assert _wait_status(task, {"completed", "failed", "stopped"}, 180) == "completed"
    task.reload()
    scalars = task.get_reported_scalars()
    assert scalars["crash"]["value"]["x"] == list(range(10))
    assert task.artifacts["before_crash"].get() == {"phase": 1}
    models = task.models["output"]
    assert [m.name for m in models] == ["after-crash"]
    assert Path(models[0].get_local_copy()).read_bytes() == b"after-restart" * 100
