"""The stand-in as a process, under hostile requests: each gets a 4xx, while the API, the file
server and the web pages keep answering other clients within a second and the server's memory
stays bounded.

One real server (uvicorn, the three ports) is started for the module; the hostile request runs in a
thread while the main thread probes the three servers and samples the server's RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from testing.prefect_server import free_port
from testing.processes import stop_process_group
from testing.waits import wait_for

REPO = Path(__file__).resolve().parents[2]
KEY, SECRET = "hostile-key", "hostile-secret"
RESPONSIVE_S = 1.0
MEMORY_GROWTH_MAX = 256 * 1024 * 1024  # 100 MB bodies come in; at most the 32 MiB limit is ever held


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    api: str
    files: str
    web: str
    token: str = ""
    task_id: str = ""

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, endpoint: str, body: dict[str, object], timeout: float = 30) -> httpx.Response:
        return httpx.post(f"{self.api}/{endpoint}", json=body, headers=self.bearer, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("attacked")
    state, run = root / "state", root / "run"
    state.mkdir()
    (state / "credentials.json").write_text(json.dumps(
        {"access_key": KEY, "secret_key": SECRET, "token_secret": "t" * 48}))
    ports = {"api": free_port(), "files": free_port(), "web": free_port()}
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clearml_standin", "--state-dir", str(state), "--run-dir", str(run),
         "--api-port", str(ports["api"]), "--files-port", str(ports["files"]), "--web-port", str(ports["web"])],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True)
    try:
        wait_for("the stand-in to listen", lambda: (run / "server.ready").exists() or proc.poll() is not None,
                 timeout_s=60, every_s=0.1)
        assert proc.poll() is None, (root / "server.log").read_text()
        api, files, web = (f"http://127.0.0.1:{ports[n]}" for n in ("api", "files", "web"))
        srv = Server(proc, api, files, web)
        srv.token = httpx.post(f"{srv.api}/auth.login", auth=(KEY, SECRET), json={}, timeout=10).json()["data"]["token"]
        project = srv.call("projects.create", {"name": "attacked"}).json()["data"]["id"]
        for i in range(50):  # names a catastrophic pattern chews on
            srv.task_id = srv.call("tasks.create", {"name": "a" * 25 + f"!{i}", "project": project,
                                                    "type": "testing"}).json()["data"]["id"]
        upload = httpx.post(f"{srv.files}/probe/", files={"ok.txt": ("ok.txt", b"ok")}, auth=(KEY, SECRET), timeout=10)
        assert upload.status_code == 200, upload.text
        yield srv
    finally:
        stop_process_group(proc)
        log.close()
    assert "Traceback" not in (root / "server.log").read_text(), (root / "server.log").read_text()[-3000:]


@dataclass
class Probe:
    slowest: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    peak_rss: int = 0


def _probe_while(srv: Server, hostile: Callable[[], httpx.Response], min_probe_s: float = 1.5) -> tuple[
        httpx.Response, Probe]:
    """Run `hostile` in a thread; meanwhile ask each server for something small, over and over, and
    keep each one's slowest answer and the server's peak RSS."""
    result: dict[str, httpx.Response | BaseException] = {}

    def attack() -> None:
        try:
            result["response"] = hostile()
        except BaseException as exc:  # reported by the test, not lost in the thread
            result["response"] = exc

    probes = {
        "api": lambda: httpx.post(f"{srv.api}/tasks.get_by_id", json={"task": srv.task_id}, headers=srv.bearer,
                                  timeout=10),
        "files": lambda: httpx.get(f"{srv.files}/probe/ok.txt", headers=srv.bearer, timeout=10),
        "web": lambda: httpx.get(f"{srv.web}/", timeout=10),
    }
    process = psutil.Process(srv.proc.pid)
    probe = Probe()
    thread = threading.Thread(target=attack, daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive() or time.monotonic() - started < min_probe_s:
        for name, ask in probes.items():
            t0 = time.monotonic()
            try:
                res = ask()
                if res.status_code != 200:
                    probe.failures.append(f"{name}: HTTP {res.status_code}")
            except httpx.HTTPError as exc:
                probe.failures.append(f"{name}: {type(exc).__name__}")
            probe.slowest[name] = max(probe.slowest.get(name, 0.0), time.monotonic() - t0)
            probe.peak_rss = max(probe.peak_rss, process.memory_info().rss)
        time.sleep(0.05)
        assert time.monotonic() - started < 120, "the hostile request did not finish in two minutes"
    thread.join()
    response = result["response"]
    if isinstance(response, BaseException):
        raise response
    return response, probe


def _stream(total: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """A body without a Content-Length (chunked): the server only learns its size by reading it."""
    yield b'{"name": "'
    for _ in range(total // chunk):
        yield b"a" * chunk
    yield b'"}'


def _catastrophic(srv: Server) -> httpx.Response:
    return srv.call("tasks.get_all", {"name": "(a|a)+$"})


HOSTILE: dict[str, Callable[[Server], httpx.Response]] = {
    "a 2 MB regex name": lambda srv: srv.call("tasks.get_all", {"name": "b" * 2 * 1024 * 1024}),
    "a declared 100 MB body": lambda srv: httpx.post(
        f"{srv.api}/tasks.get_all", content=b"{" + b" " * (100 * 1024 * 1024) + b"}", headers=srv.bearer, timeout=60),
    "a streamed 100 MB body": lambda srv: httpx.post(
        f"{srv.api}/tasks.get_all", content=_stream(100 * 1024 * 1024), headers=srv.bearer, timeout=60),
    "a catastrophic regex": _catastrophic,
    "a lone surrogate": lambda srv: httpx.post(
        f"{srv.api}/tasks.create", content=b'{"name": "model-\\udcff-run", "type": "testing"}', headers=srv.bearer,
        timeout=30),
    "a 100 MB anonymous upload": lambda srv: httpx.post(
        f"{srv.files}/big/", files={"x.bin": ("x.bin", b"\0" * (100 * 1024 * 1024))}, timeout=60),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_request_gets_a_4xx_and_the_others_keep_being_served(server: Server, case: str) -> None:
    baseline = psutil.Process(server.proc.pid).memory_info().rss
    response, probe = _probe_while(server, lambda: HOSTILE[case](server))
    print(case, response.status_code, {k: round(v, 3) for k, v in probe.slowest.items()},
          (probe.peak_rss - baseline) // 2**20, "MiB")
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    assert probe.failures == [], probe.failures
    assert max(probe.slowest.values()) < RESPONSIVE_S, (case, probe.slowest)
    assert probe.peak_rss - baseline < MEMORY_GROWTH_MAX, (case, probe.peak_rss - baseline)


def test_the_server_is_still_whole_afterwards(server: Server) -> None:
    listing = server.call("tasks.get_all", {"only_fields": ["name"]})
    assert listing.status_code == 200 and len(listing.json()["data"]["tasks"]) == 50
    assert httpx.get(f"{server.files}/big/x.bin", auth=(KEY, SECRET), timeout=10).status_code == 404
