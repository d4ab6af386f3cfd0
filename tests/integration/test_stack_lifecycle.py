"""`automation local up|status|down` through the real console command, and fail-fast config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from automation.local import procs
from automation.local.layout import DataDir
from automation.local.stack import StandInClient

pytestmark = pytest.mark.integration


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "automation.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def _recorded_tree(data: DataDir) -> set[int]:
    pids: set[int] = set()
    for pid_file in data.run.glob("*.pid"):
        proc = procs.running(pid_file)
        if proc is not None:
            pids.add(proc.pid)
            pids.update(c.pid for c in proc.children(recursive=True))
    return pids


def test_up_twice_status_down_up_keeps_data_and_leaves_no_strays(tmp_path: Path, session_home: Path) -> None:
    data_dir = tmp_path / "stack"
    data = DataDir(data_dir)

    first = _cli("local", "up", "--data-dir", str(data_dir), "--queues", "q1", "--no-prefect", home=session_home)
    assert first.returncode == 0, first.stderr
    assert "started: server, agent-q1" in first.stderr
    exports = [line for line in first.stdout.splitlines() if line.startswith("export ")]
    names = {line.split("=", 1)[0].removeprefix("export ") for line in exports}
    assert {"CLEARML_API_HOST", "CLEARML_WEB_HOST", "CLEARML_FILES_HOST", "CLEARML_API_ACCESS_KEY",
            "CLEARML_API_SECRET_KEY", "CLEARML_CONFIG_FILE"} <= names
    # The secret is in DIR/env (0600) but never printed.
    env_text = data.env_file.read_text()
    secret = json.loads(data.credentials.read_text())["secret_key"]
    assert secret in env_text and secret not in first.stdout + first.stderr
    assert oct(data.env_file.stat().st_mode & 0o777) == "0o600"

    pids_before = _recorded_tree(data)
    second = _cli("local", "up", "--data-dir", str(data_dir), "--queues", "q1", "--no-prefect", home=session_home)
    assert second.returncode == 0, second.stderr
    assert "started: nothing new" in second.stderr
    assert second.stdout == first.stdout
    assert {p for p in _recorded_tree(data)} >= {p for p in pids_before if psutil.pid_exists(p)}

    status = _cli("local", "status", "--data-dir", str(data_dir), "--json", home=session_home)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["server"]["running"] and info["agents"]["q1"]["running"]
    assert {q["name"] for q in info["queues"]} == {"q1"}
    # The agent registers itself as a worker shortly after it starts.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not info.get("workers"):
        time.sleep(1)
        info = json.loads(_cli("local", "status", "--data-dir", str(data_dir), "--json",
                               home=session_home).stdout)
    assert info.get("workers"), info

    env = dict(line.removeprefix("export ").split("=", 1) for line in env_text.splitlines()
               if line.startswith("export "))
    api = StandInClient(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"],
                        env["CLEARML_API_SECRET_KEY"].strip("'"))
    project_id = api.call("projects.create", {"name": "lifecycle-check"})["id"]

    tree = _recorded_tree(data)
    down = _cli("local", "down", "--data-dir", str(data_dir), home=session_home)
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    strays = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not strays, f"processes left after down: {strays}"
    assert not list(data.run.glob("*.pid"))

    third = _cli("local", "up", "--data-dir", str(data_dir), "--queues", "q1", "--no-prefect", "--no-agents",
                 home=session_home)
    assert third.returncode == 0, third.stderr
    assert third.stdout == first.stdout  # same ports, same credentials
    api = StandInClient(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"],
                        env["CLEARML_API_SECRET_KEY"].strip("'"))
    projects = api.call("projects.get_all", {"name": "^lifecycle-check$"})["projects"]
    assert [p["id"] for p in projects] == [project_id]
    assert _cli("local", "down", "--data-dir", str(data_dir), home=session_home).returncode == 0


def test_unreachable_server_fails_fast_naming_the_url(tmp_path: Path, session_home: Path) -> None:
    from automation.local.stack import StackConfig, write_clearml_conf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    cfg = StackConfig(ports={"api": dead_port, "files": dead_port, "web": dead_port}, queues=["x"])
    conf = tmp_path / "clearml.conf"
    write_clearml_conf(conf, cfg, access_key="KEY", secret_key="SECRET")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env.update({"HOME": str(session_home), "CLEARML_CONFIG_FILE": str(conf)})
    code = "from clearml import Task; Task.get_tasks(project_name='x')"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    output = proc.stderr + proc.stdout
    # The SDK names the server as "host='127.0.0.1', port=N" in its connection error.
    assert "127.0.0.1" in output and str(dead_port) in output, output[-2000:]
    assert "SECRET" not in output
    assert elapsed < 30, f"took {elapsed:.1f} s to fail"
