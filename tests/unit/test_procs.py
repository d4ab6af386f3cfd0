"""Stopping a process tree for sure: SIGTERM first, SIGKILL for whatever ignores it, descendants
in their own sessions included, and never a process that merely reuses a recorded pid."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from automation.devstack import procs

# parent -> child (ignores SIGTERM) -> grandchild in its own session (setsid; ignores SIGTERM too).
# Each writes its pid to DIR/<role>.pid once its signal disposition is in place.
TREE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    from pathlib import Path

    role, out = sys.argv[1], Path(sys.argv[2])
    if role != "parent":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    nxt = {"parent": ("child", False), "child": ("grandchild", True)}.get(role)
    if nxt:
        subprocess.Popen([sys.executable, __file__, nxt[0], str(out)], start_new_session=nxt[1])
    (out / f"{role}.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
    """
)
ROLES = ("parent", "child", "grandchild")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_tree(tmp_path: Path) -> tuple[psutil.Process, dict[str, int]]:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    proc = procs.start_detached([sys.executable, str(script), "parent", str(tmp_path)], tmp_path / "tree.pid",
                                tmp_path / "tree.log", env=os.environ)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"{r}.pid").exists() for r in ROLES):
        assert time.monotonic() < deadline, (tmp_path / "tree.log").read_text()
        time.sleep(0.05)
    return proc, {r: int((tmp_path / f"{r}.pid").read_text()) for r in ROLES}


def test_stop_tree_escalates_to_sigkill_and_leaves_no_survivors(tmp_path: Path) -> None:
    proc, pids = _start_tree(tmp_path)
    grandchild = psutil.Process(pids["grandchild"])
    assert os.getsid(grandchild.pid) != os.getsid(proc.pid)  # really in a session of its own
    assert os.getsid(pids["child"]) == os.getsid(proc.pid)

    started = time.monotonic()
    stopped = procs.stop_tree(proc, grace_s=0.5)
    elapsed = time.monotonic() - started

    assert set(pids.values()) <= set(stopped)
    survivors = [role for role, pid in pids.items() if not _gone(pid)]
    assert not survivors, f"still running after stop_tree: {survivors}"
    # SIGTERM took the parent; the two that ignore it were killed right after the grace period.
    assert elapsed < 5, f"stop_tree took {elapsed:.1f} s"


def test_stop_recorded_removes_the_pid_file_and_stops_the_tree(tmp_path: Path) -> None:
    _, pids = _start_tree(tmp_path)
    procs.stop_recorded(tmp_path / "tree.pid", grace_s=0.5)
    assert not (tmp_path / "tree.pid").exists()
    assert all(_gone(pid) for pid in pids.values())
    assert procs.stop_recorded(tmp_path / "tree.pid") == []  # nothing recorded: nothing to do


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """A PID file whose start time does not match the live process names someone else."""
    me = psutil.Process()
    pid_file = tmp_path / "stale.pid"
    pid_file.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 1000, "argv": ["gone"]}))
    assert procs.running(pid_file) is None
    assert procs.stop_recorded(pid_file) == []
    assert me.is_running() and not pid_file.exists()


@pytest.mark.parametrize("content", ["", "not json", json.dumps({"pid": "x"})])
def test_damaged_pid_files_read_as_nothing_running(tmp_path: Path, content: str) -> None:
    pid_file = tmp_path / "bad.pid"
    pid_file.write_text(content)
    assert procs.read_pid_file(pid_file) is None and procs.running(pid_file) is None
