"""`automation local up|status|down` through the real console command, and fail-fast config."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from automation.clearml.admin import AdminClient
from automation.devstack import procs
from automation.devstack.layout import DataDir
from automation.devstack.stack import LocalStack
from testing.stacks import admin_client, fetch_file, stack_auth
from testing.waits import wait_for

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


# A task that outlives `down` unless the whole tree is stopped: it ignores SIGTERM like a busy
# GPU job can, and says which process it is.
LONG_TASK = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(sys.argv[0]).with_name("long-task.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.2)
    """
)
QUICK_TASK = 'print("lifecycle quick task ran")\n'
# Creates and enqueues a task with the real SDK in a fresh process (the SDK's config is
# process-global, and this test's stack is not the session's).
SUBMIT = textwrap.dedent(
    """
    import sys
    from clearml import Task

    script, name, queue = sys.argv[1:4]
    task = Task.create(project_name="lifecycle-check", task_name=name, script=script, packages=[],
                       add_task_init_call=False, detect_repository=False)
    Task.enqueue(task, queue_name=queue)
    print(task.id)
    """
)
BLOB = bytes(range(256)) * 64


def _stack_env(data: DataDir, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    for line in data.env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0]
    env["HOME"] = str(home)
    return env


def _submit(env: dict[str, str], script: Path, name: str, queue: str) -> str:
    done = subprocess.run([sys.executable, "-c", SUBMIT, str(script), name, queue], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _task(api: AdminClient, task_id: str) -> dict[str, Any]:
    return dict(api.call("tasks.get_all", {"id": [task_id], "only_fields": ["status", "status_message",
                                                                            "project", "last_worker"]})["tasks"][0])


def _fresh_workers(api: AdminClient, since: float) -> list[str]:
    """Workers that registered (again) after `since` (epoch seconds)."""
    workers = api.call("workers.get_all")["workers"]
    return [w["id"] for w in workers
            if datetime.fromisoformat(str(w["register_time"]).replace("Z", "+00:00")).timestamp() >= since]


@pytest.fixture()
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "stack"
    yield data_dir
    LocalStack(data_dir).down()  # a failed assertion must not leave a stack running (no-op otherwise)


def test_up_twice_status_down_up_keeps_data_and_leaves_no_strays(
    tmp_path: Path, stack_dir: Path, session_home: Path
) -> None:
    data_dir = stack_dir
    data = DataDir(data_dir)

    first = _cli("local", "up", "--data-dir", str(data_dir), "--queues", "q1", "--no-prefect", home=session_home)
    assert first.returncode == 0, first.stderr
    assert "started: server, agent-q1" in first.stderr
    exports = [line for line in first.stdout.splitlines() if line.startswith("export ")]
    names = {line.split("=", 1)[0].removeprefix("export ") for line in exports}
    assert {"CLEARML_API_HOST", "CLEARML_WEB_HOST", "CLEARML_FILES_HOST", "CLEARML_API_ACCESS_KEY",
            "CLEARML_CONFIG_FILE"} <= names
    # The secret is in DIR/env (0600) but never printed, not even masked: `eval "$(automation local
    # up)"` must not set a wrong key. The line naming it is a comment pointing at DIR/env.
    assert "CLEARML_API_SECRET_KEY" not in names
    assert any(line.startswith("# CLEARML_API_SECRET_KEY") and str(data.env_file) in line
               for line in first.stdout.splitlines())
    env_text = data.env_file.read_text()
    secret = json.loads(data.credentials.read_text())["secret_key"]
    assert secret in env_text and secret not in first.stdout + first.stderr
    assert oct(data.env_file.stat().st_mode & 0o777) == "0o600"
    # The agent copies its configuration (the secret key in it) into its HOME: private to this user.
    home = data.agent_home("q1")
    assert oct(home.stat().st_mode & 0o777) == oct((home / "tmp").stat().st_mode & 0o777) == "0o700"
    wait_for("the agent's config copy", lambda: any((home / "tmp").glob(".clearml_agent*")), timeout_s=60)
    leaked = [str(f) for f in home.rglob("*") if f.is_file() and f.stat().st_mode & 0o077
              and secret.encode() in f.read_bytes()]
    assert leaked == []
    # The agent's per-step settings (docs/benchmarks.md, "chain per phase"): a 0.5 s poll of its
    # queue and of a task's process, an SDK that reports from a thread, not a subprocess, and caches
    # shared with the other agents (ClearML's downloads) and with the user (the Hugging Face hub's).
    agent = procs.running(data.pid_file("agent-q1"))
    assert agent is not None and agent.environ().get("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC") == "0.5"
    from pyhocon import ConfigFactory

    users_caches = subprocess.run(  # what the Hugging Face libraries resolve for the user who ran `local up`
        [sys.executable, "-c", "import datasets.config as d, huggingface_hub.constants as h; "
         "print(h.HF_HUB_CACHE); print(d.HF_DATASETS_CACHE)"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(session_home)}).stdout.split()
    assert len(users_caches) == 2, users_caches
    assert [agent.environ().get("HF_HUB_CACHE"), agent.environ().get("HF_DATASETS_CACHE")] == users_caches
    agent_conf = ConfigFactory.parse_file(str(data.agent_conf))
    assert agent_conf.get("sdk.development.report_use_subprocess") is False
    assert agent_conf.get("sdk.storage.cache.default_base_dir") == str(data.model_cache)
    assert oct(data.model_cache.stat().st_mode & 0o777) == "0o700"
    # What `eval "$(automation local up)"` then `source DIR/env` leaves in a shell is DIR/env's env.
    shell = subprocess.run(["bash", "-c", f'eval "$1" && source {shlex.quote(str(data.env_file))} && env', "_",
                            first.stdout], capture_output=True, text=True, timeout=30)
    assert f"CLEARML_API_SECRET_KEY={secret}" in shell.stdout.splitlines()

    pids_before = _recorded_tree(data)
    second = _cli("local", "up", "--data-dir", str(data_dir), "--queues", "q1", "--no-prefect", home=session_home)
    assert second.returncode == 0, second.stderr
    assert "started: nothing new" in second.stderr
    assert second.stdout == first.stdout
    assert {p for p in _recorded_tree(data)} >= {p for p in pids_before if psutil.pid_exists(p)}
    # A switch that only takes effect at start is refused, not silently recorded.
    validating = _cli("local", "up", "--data-dir", str(data_dir), "--queues", "q1", "--no-prefect", "--validate",
                      home=session_home)
    assert validating.returncode == 1 and "--validate" in validating.stderr and "down" in validating.stderr
    assert json.loads(data.stack_file.read_text())["validate"] is False

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

    env = _stack_env(data, session_home)
    api = admin_client(env)
    project_id = api.call("projects.create", {"name": "lifecycle-check"})["id"]
    files = env["CLEARML_FILES_HOST"]
    upload = {"kept/blob.bin": ("blob.bin", BLOB)}
    assert httpx.post(f"{files}/lifecycle/", files=upload, timeout=10).status_code == 401  # anonymous
    assert httpx.post(f"{files}/lifecycle/", files=upload, auth=stack_auth(env), timeout=10).status_code == 200

    # A task that ignores SIGTERM is running under the agent when `down` comes.
    long_script = tmp_path / "long_task.py"
    long_script.write_text(LONG_TASK)
    long_id = _submit(env, long_script, "lifecycle long", "q1")
    pid_file = tmp_path / "long-task.pid"
    deadline = time.monotonic() + 240  # a fresh agent's first task, on a loaded CI host
    while not pid_file.exists():
        assert time.monotonic() < deadline, f"the long task never started: {_task(api, long_id)}"
        time.sleep(0.5)
    long_pid = int(pid_file.read_text())
    assert _task(api, long_id)["status"] == "in_progress"

    tree = _recorded_tree(data)
    assert long_pid in tree, "the task process is not below a recorded process"
    down = _cli("local", "down", "--data-dir", str(data_dir), home=session_home)
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    strays = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not strays, f"processes left after down: {strays}"
    assert not psutil.pid_exists(long_pid) or psutil.Process(long_pid).status() == psutil.STATUS_ZOMBIE
    assert not list(data.run.glob("*.pid"))

    # Up again WITH the agent: same ports and keys, the agent registers again and runs a task
    # against the data written before `down`.
    restarted = time.time() - 1
    third = _cli("local", "up", "--data-dir", str(data_dir), "--queues", "q1", "--no-prefect", home=session_home)
    assert third.returncode == 0, third.stderr
    assert "started: server, agent-q1" in third.stderr
    assert third.stdout == first.stdout  # same ports, same credentials
    api = admin_client(env)
    projects = api.call("projects.get_all", {"name": "^lifecycle-check$"})["projects"]
    assert [p["id"] for p in projects] == [project_id]
    assert fetch_file(env, f"{files}/lifecycle/kept/blob.bin").content == BLOB
    deadline = time.monotonic() + 30
    while not _fresh_workers(api, restarted):
        assert time.monotonic() < deadline, "the agent did not register again after up"
        time.sleep(0.5)

    quick_script = tmp_path / "quick_task.py"
    quick_script.write_text(QUICK_TASK)
    quick_id = _submit(env, quick_script, "lifecycle quick", "q1")
    deadline = time.monotonic() + 120
    while (quick := _task(api, quick_id))["status"] not in ("completed", "failed", "stopped"):
        assert time.monotonic() < deadline, f"the task did not finish after up: {quick}"
        time.sleep(0.5)
    assert quick["status"] == "completed", quick
    assert quick["project"] == project_id and quick["last_worker"] in _fresh_workers(api, restarted)
    assert _cli("local", "down", "--data-dir", str(data_dir), home=session_home).returncode == 0


def test_unreachable_server_fails_fast_naming_the_url(tmp_path: Path, session_home: Path) -> None:
    from automation.devstack.stack import StackConfig, write_clearml_conf

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
