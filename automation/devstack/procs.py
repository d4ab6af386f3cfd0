"""Background processes of the local stack: start detached, record in PID files, stop for sure.

A PID file holds the pid AND the process start time, so `down` never signals a process that
merely reused a recorded pid. Stopping takes the whole tree (an agent's task processes too):
SIGTERM first, then SIGKILL for whatever ignores it (a clearml-agent daemon did not exit on
SIGTERM within several seconds on these machines).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Recorded:
    pid: int
    create_time: float
    argv: list[str]

    def alive(self) -> psutil.Process | None:
        """The live process this record names, or None if it is gone or the pid was reused."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


def read_pid_file(path: Path) -> Recorded | None:
    try:
        raw = json.loads(path.read_text())
        return Recorded(pid=int(raw["pid"]), create_time=float(raw["create_time"]), argv=list(raw["argv"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def running(path: Path) -> psutil.Process | None:
    rec = read_pid_file(path)
    return rec.alive() if rec else None


def start_detached(
    argv: Sequence[str],
    pid_file: Path,
    log_file: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    umask: int = -1,
) -> psutil.Process:
    """Start argv in its own session (so its whole group can be signalled) and record it; `umask`
    for what the process writes (-1: inherit)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
            umask=umask,
        )
    proc = psutil.Process(popen.pid)
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": popen.pid, "create_time": proc.create_time(), "argv": list(argv)}))
    os.replace(tmp, pid_file)
    return proc


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(proc: psutil.Process, grace_s: float = 3.0) -> list[int]:
    """SIGTERM the process, its group and every descendant; SIGKILL survivors after grace_s."""
    victims = _tree(proc)
    # Descendants may have started their own sessions (an agent's task process does).
    groups = set()
    for p in victims:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            groups.add(os.getpgid(p.pid))
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(victims, timeout=grace_s)
    # Children spawned while we waited are caught by a second look at the tree and the groups.
    late = [c for p in alive for c in _tree(p)]
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pgid != os.getpgid(0):
                os.killpg(pgid, signal.SIGKILL)
    for p in {*alive, *late}:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs([*alive, *late], timeout=5)
    return [p.pid for p in victims]


def stop_recorded(pid_file: Path, grace_s: float = 3.0) -> list[int]:
    proc = running(pid_file)
    killed: list[int] = []
    if proc is not None:
        killed = stop_tree(proc, grace_s=grace_s)
    pid_file.unlink(missing_ok=True)
    return killed


def wait_for(predicate: object, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval_s)
    return bool(predicate())  # type: ignore[operator]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option as the servers' own bind: connections in TIME_WAIT from a killed server
        # must not make its port look taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a process's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
