"""A managed OpenAI-compatible inference server for evaluation and benchmark steps.

`vllm serve` on GPU hosts; `transformers serve` (transformers[serving]) on CPU, where vLLM does not
run. The server is a subprocess, so this module imports no ML library.

transformers serve, seen with 5.17: the model directory is passed as FORCE_MODEL, which preloads it
and pins the server to it; requests must name the model exactly as that string (or omit it), and
`/v1/models` lists the hub cache rather than the pinned model, so readiness is `/health` there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from automation.errors import ServerError

Engine = Literal["transformers", "vllm"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, max_chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) processes of a process group from /proc; None where there is no /proc."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return None
    members = []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _executable(name: str) -> str:
    # Prefer the CLI that sits next to this interpreter, so a venv's server is the one launched.
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ServerError(f"{name!r} not found next to {sys.executable} nor on PATH")
    return found


class ManagedServer:
    """Start a server for `model_dir`, wait until it answers, stop it on exit.

    >>> with ManagedServer(model_dir, engine="transformers") as server:
    ...     server.openai_base_url, server.model_name
    """

    def __init__(
        self,
        model_dir: Path | str,
        engine: Engine = "transformers",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        gpus: int | Sequence[int] | None = None,
        server_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        served_model_name: str | None = None,
        startup_timeout_s: float = 300.0,
        stop_timeout_s: float = 15.0,
        log_path: Path | None = None,
    ) -> None:
        if engine not in ("transformers", "vllm"):
            raise ValueError(f"unknown engine {engine!r}; expected 'transformers' or 'vllm'")
        if served_model_name is not None and engine == "transformers":
            raise ValueError("transformers serve names the model by its path; served_model_name is vLLM-only")
        if engine == "vllm" and gpus is not None and (gpus if isinstance(gpus, int) else len(gpus)) < 1:
            raise ValueError(f"gpus: vLLM needs at least one GPU, got {gpus!r} (engine 'transformers' serves on CPU)")
        self.model_dir = str(model_dir)
        self.engine: Engine = engine
        self.host = host
        self.port = port
        self.gpus = gpus
        self.server_args = list(server_args)
        self.env = dict(env or {})
        self.served_model_name = served_model_name
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="serve-")) / "server.log"
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def model_name(self) -> str:
        """The `model` value requests must carry."""
        return self.served_model_name or self.model_dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- command and environment -----------------------------------------------------------
    def command(self) -> list[str]:
        if self.engine == "transformers":
            device = "auto" if self.gpus else "cpu"
            base = [_executable("transformers"), "serve", self.model_dir, "--device", device]
            return [*base, "--host", self.host, "--port", str(self.port), *self.server_args]
        cmd = [_executable("vllm"), "serve", self.model_dir, "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        gpu_count = self.gpus if isinstance(self.gpus, int) else len(self.gpus or [0])
        if gpu_count > 1 and "--tensor-parallel-size" not in self.server_args:
            cmd += ["--tensor-parallel-size", str(gpu_count)]
        return [*cmd, *self.server_args]

    def serves_local_model(self) -> bool:
        """A model directory rather than a hub id (a path-like name counts even when missing, so
        that the server fails on the path instead of asking the hub for it)."""
        return self.model_dir.startswith(("/", ".", "~")) or Path(self.model_dir).expanduser().exists()

    def environment(self) -> dict[str, str]:
        # A local model needs nothing from the hub: offline, unless the caller's environment or
        # the spec's server_env says otherwise. A hub id is left to the environment as it is.
        offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} if self.serves_local_model() else {}
        env = {**offline, **os.environ, **self.env}
        if self.gpus is not None:
            ids = list(range(self.gpus)) if isinstance(self.gpus, int) else list(self.gpus)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids)
        elif self.engine == "transformers" and "CUDA_VISIBLE_DEVICES" not in self.env:
            env["CUDA_VISIBLE_DEVICES"] = ""  # CPU serving: never grab a GPU by accident
        return env

    def _ready_url(self) -> str:
        # transformers serve's /v1/models lists the hub cache, not the pinned model.
        return f"{self.base_url}/health" if self.engine == "transformers" else f"{self.base_url}/v1/models"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> ManagedServer:
        if self._proc is not None:
            raise ServerError("server already started")
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.port, self.host):
            raise ServerError(f"port {self.port} on {self.host} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,  # own process group: stop() reaches worker children too
            )
        finally:
            log.close()
        return self

    def wait_ready(self) -> None:
        assert self._proc is not None, "start() first"
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        url = self._ready_url()
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise ServerError(
                        f"{self.engine} server exited with code {code} before it was ready; "
                        f"log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        self.startup_s = round(time.monotonic() - started, 2)
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(
                        f"{self.engine} server not ready after {self.startup_timeout_s:.0f} s; "
                        f"log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                time.sleep(0.5)

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL what is left of it after `stop_timeout_s`; return
        the leader's exit code.

        The whole group, not only the leader: vLLM's engine and tensor-parallel workers are its
        children and can outlive a leader that exits first (or that died before stop()), holding
        GPU memory the next task needs.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        deadline = time.monotonic() + self.stop_timeout_s
        self._signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.stop_timeout_s)
        # Members get the rest of the same grace period to exit on their own.
        while self._group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=self.stop_timeout_s)
        # SIGKILL lands asynchronously: return once the group is gone (its memory with it).
        killed_by = time.monotonic() + min(self.stop_timeout_s, 5.0)
        while self._group_alive(proc) and time.monotonic() < killed_by:
            time.sleep(0.02)
        return proc.returncode

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the group id is the pid: start_new_session=True

    @staticmethod
    def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        members = _group_members(proc.pid)
        # Where /proc can tell, zombies do not count: an orphan's zombie waits for a reaper that
        # a container's PID 1 may never be, and would hold stop() for the whole grace period.
        return members is None or bool(members)

    def log_tail(self, max_chars: int = 4000) -> str:
        return _tail(self.log_path, max_chars)

    def __enter__(self) -> ManagedServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
