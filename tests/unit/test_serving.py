"""ManagedServer without ML: its command line and environment per engine, GPU count, server args
and env; and stopping, with dummy processes that ignore SIGTERM or leave workers behind."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import automation.serving as serving
from automation.errors import ServerError
from automation.serving import ManagedServer


@pytest.fixture(autouse=True)
def _fake_executables(monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM is not installed on CPU hosts; the command line is what is under test.
    monkeypatch.setattr(serving, "_executable", lambda name: f"/bin/{name}")


def test_vllm_command_with_gpus_args_and_name(tmp_path: Path) -> None:
    server = ManagedServer(tmp_path, engine="vllm", port=8123, gpus=2, served_model_name="tiny-w8a8",
                           server_args=("--max-num-seqs", "8"))
    assert server.command() == ["/bin/vllm", "serve", str(tmp_path), "--host", "127.0.0.1", "--port", "8123",
                                "--served-model-name", "tiny-w8a8", "--tensor-parallel-size", "2",
                                "--max-num-seqs", "8"]
    assert server.model_name == "tiny-w8a8" and server.environment()["CUDA_VISIBLE_DEVICES"] == "0,1"
    # an explicit tensor-parallel size in server_args wins; one GPU needs none
    explicit = ManagedServer(tmp_path, engine="vllm", port=1, gpus=[2, 3], server_args=("--tensor-parallel-size", "1"))
    assert explicit.command().count("--tensor-parallel-size") == 1
    assert explicit.environment()["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "--tensor-parallel-size" not in ManagedServer(tmp_path, engine="vllm", port=1, gpus=1).command()


def test_vllm_needs_a_gpu(tmp_path: Path) -> None:
    no_gpus: tuple[int | list[int], ...] = (0, [])
    for gpus in no_gpus:
        with pytest.raises(ValueError, match="gpus: vLLM needs at least one GPU"):
            ManagedServer(tmp_path, engine="vllm", gpus=gpus)
    assert ManagedServer(tmp_path, engine="vllm").gpus is None  # all visible GPUs


def test_transformers_command_is_cpu_unless_given_gpus(tmp_path: Path) -> None:
    cpu = ManagedServer(tmp_path, port=8124, server_args=("--log-level", "debug"))
    assert cpu.command() == ["/bin/transformers", "serve", str(tmp_path), "--device", "cpu", "--host", "127.0.0.1",
                             "--port", "8124", "--log-level", "debug"]
    assert cpu.model_name == str(tmp_path)
    assert cpu.environment()["CUDA_VISIBLE_DEVICES"] == ""  # never grab a GPU by accident
    gpu = ManagedServer(tmp_path, port=1, gpus=1)
    assert "auto" in gpu.command() and gpu.environment()["CUDA_VISIBLE_DEVICES"] == "0"
    with pytest.raises(ValueError, match="vLLM-only"):
        ManagedServer(tmp_path, served_model_name="x")


def test_environment_hub_settings_and_server_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    local = ManagedServer(tmp_path, env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "3"})
    env = local.environment()
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1"  # a local model needs no hub
    assert env["OMP_NUM_THREADS"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "3"  # server_env wins
    hub = ManagedServer("org/model", engine="vllm").environment()
    assert "HF_HUB_OFFLINE" not in hub and "HF_DATASETS_OFFLINE" not in hub  # a hub id may download
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert local.environment()["HF_HUB_OFFLINE"] == "0"  # the caller's explicit setting wins
    assert ManagedServer(tmp_path, env={"HF_HUB_OFFLINE": "0"}).environment()["HF_HUB_OFFLINE"] == "0"
    assert ManagedServer(tmp_path / "missing").environment()["HF_DATASETS_OFFLINE"] == "1"  # still a path


class _Dummy(ManagedServer):
    """A 'server' that is a plain Python program; start() and stop() as for a real one."""

    def __init__(self, tmp_path: Path, program: str, stop_timeout_s: float = 0.5) -> None:
        super().__init__(tmp_path, stop_timeout_s=stop_timeout_s, log_path=tmp_path / "server.log")
        self.program = program

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.program]


def _wait_for(path: Path, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    server = _Dummy(tmp_path, "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              f"open({str(ready)!r}, 'w').write('ok\\n'); time.sleep(60)")
    server.start()
    _wait_for(ready)  # SIGTERM is ignored from here on
    pid = server.pid
    started = time.monotonic()
    code = server.stop()
    assert code == -9 and time.monotonic() - started < 3
    assert pid is not None and not _alive(pid)
    assert server.stop() is None  # stopping twice is harmless


def test_stop_kills_workers_that_outlive_the_leader(tmp_path: Path) -> None:
    # As vLLM's engine workers: children in the server's process group that ignore SIGTERM,
    # while the leader exits on it at once.
    pids = tmp_path / "pids"
    worker = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    leader = ("import subprocess, sys, time; "
              f"w = subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(0.3); "
              f"open({str(pids)!r}, 'w').write(str(w.pid) + '\\n'); time.sleep(60)")
    server = _Dummy(tmp_path, leader, stop_timeout_s=1.0)
    server.start()
    worker_pid = int(_wait_for(pids))
    assert _alive(worker_pid)
    started = time.monotonic()
    code = server.stop()
    assert code == -15, "the leader exits on SIGTERM"
    assert not _alive(worker_pid), "a worker outlived stop()"
    assert time.monotonic() - started < 3


def test_stop_after_the_leader_died_still_reaps_its_workers(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    worker = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    leader = ("import subprocess, sys, time; "
              f"w = subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(0.3); "
              f"open({str(pids)!r}, 'w').write(str(w.pid) + '\\n'); sys.exit(3)")
    server = _Dummy(tmp_path, leader)
    server.start()
    worker_pid = int(_wait_for(pids))
    deadline = time.monotonic() + 5
    while server._proc is not None and server._proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stop() == 3
    assert not _alive(worker_pid)


def test_a_server_that_exits_fails_readiness_with_its_log(tmp_path: Path) -> None:
    server = _Dummy(tmp_path, "import sys; print('cannot load the model', flush=True); sys.exit(4)")
    server.startup_timeout_s = 30
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"(?s)exited with code 4 .*cannot load the model"), server:
        pass
    assert time.monotonic() - started < 10
    assert os.path.exists(server.log_path)
