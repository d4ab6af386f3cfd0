"""A throwaway `prefect server start` owned by the calling process: one per test session, one per
benchmark run. (The stack's own Prefect server is a PID-file daemon that outlives `automation
local up`; see stack.py.)

It runs on a free loopback port with its own PREFECT_HOME (SQLite), analytics off, the UI off
unless asked for, and a 1 s runner poll, so served deployments pick up runs quickly. `env` holds the settings that point
a client (this process or a subprocess) at it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from testing.processes import environment, stop_process_group

START_TIMEOUT_S = 90.0


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 15 s."""
        stop_process_group(self.proc, term_wait_s=15.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prefect_server(home: Path, cwd: Path, logging_level: str = "INFO",
                         timeout_s: float = START_TIMEOUT_S, ui: bool = False,
                         server_env: dict[str, str] | None = None) -> PrefectServer:
    """Start the server and return once it answers /health (and serves its UI page with `ui`);
    `cwd` is also put on its PYTHONPATH (the checkout whose flows the clients run); `server_env`
    only for the server process (a database URL and password)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": logging_level,
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    log = home / "server.log"
    proc_env = {**os.environ, **env, "PYTHONPATH": str(cwd), **(server_env or {})}
    proc_env.pop("PREFECT_API_URL")  # the server itself must not talk to a server
    if ui:
        proc_env.update({"PREFECT_UI_API_URL": api_url,  # the UI's default is port 4200
                           "PREFECT_UI_STATIC_DIRECTORY": str(home / "ui-static")})  # not the venv's shared copy
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
             "--port", str(port), *([] if ui else ["--no-ui"])],
            cwd=cwd, env=proc_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = PrefectServer(api_url=api_url, home=home, env=env, proc=proc, log=log)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200 and (
                    not ui or "<html" in httpx.get(env["PREFECT_UI_URL"], timeout=5).text):
                return server
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"prefect server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def pointed_at(server: PrefectServer) -> Iterator[PrefectServer]:
    """This process pointed at `server` for the block: its environment (inherited by subprocesses:
    served deployments, orchestrators) and Prefect's settings in this process; both put back after."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_UI_URL,
        temporary_settings,
    )

    with environment(server.env), temporary_settings(updates={
            PREFECT_API_URL: server.api_url, PREFECT_HOME: server.home, PREFECT_UI_URL: server.env["PREFECT_UI_URL"],
            PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        yield server
