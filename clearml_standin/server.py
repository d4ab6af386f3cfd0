"""Process entry of the stand-in: API, file server and web pages on three loopback ports.

    python -m clearml_standin --state-dir DIR --run-dir RUN --api-port P --files-port P --web-port P

State (SQLite store, uploaded files, `credentials.json`) lives in the state directory; once all
three sockets listen, `RUN/server.ready` is written so whoever started the process can go on, and
the call log is kept in `RUN/calls.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from clearml_standin.api import Credentials, StandInApp
from clearml_standin.faults import FaultInjector
from clearml_standin.files import FileServer
from clearml_standin.services import tasks as task_service
from clearml_standin.store import Store
from clearml_standin.web import WebUI


@dataclass(frozen=True)
class Paths:
    """Where one stand-in keeps its state (survives restarts) and its run files (this process)."""

    state: Path
    run: Path

    @property
    def db(self) -> Path:
        return self.state / "standin.db"

    @property
    def files(self) -> Path:
        return self.state / "files"

    @property
    def credentials(self) -> Path:
        return self.state / "credentials.json"

    @property
    def ready_file(self) -> Path:
        return self.run / "server.ready"

    @property
    def calls_file(self) -> Path:
        return self.run / "calls.json"

    def ensure(self) -> None:
        for d in (self.state, self.files, self.run):
            d.mkdir(parents=True, exist_ok=True)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _server(app: object) -> uvicorn.Server:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        limit_concurrency=2000,
    )
    server = uvicorn.Server(config)
    # Signals are handled once for all three servers in serve(); uvicorn must not install its own.
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
    return server


# clearml-server's default: in_progress tasks not heard of for 2 hours are stopped.
NON_RESPONSIVE_S = 7200.0
NON_RESPONSIVE_ENV = "AUTOMATION_NON_RESPONSIVE_S"
WATCH_INTERVAL_MAX_S = 900.0

log = logging.getLogger("clearml_standin.server")


def non_responsive_default() -> float:
    raw = os.environ.get(NON_RESPONSIVE_ENV, "")
    try:
        return float(raw) if raw.strip() else NON_RESPONSIVE_S
    except ValueError:
        log.warning("ignoring %s=%r (not a number of seconds)", NON_RESPONSIVE_ENV, raw)
        return NON_RESPONSIVE_S


async def watch_non_responsive(standin: StandInApp, threshold_s: float, stop: asyncio.Event) -> None:
    """Stop in_progress tasks not heard of for threshold_s (0 or less: never); see
    task_service.stop_non_responsive. Runs in the event loop like the handlers, so it never races them."""
    if threshold_s <= 0:
        return
    started = time.time()
    interval = min(max(threshold_s / 4, 0.1), WATCH_INTERVAL_MAX_S)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        try:
            stopped = await standin.store.run(functools.partial(
                task_service.stop_non_responsive, standin.ctx("watchdog"), threshold_s, alive_since=started))
        except Exception:  # a bad document must not end the watchdog for good
            log.exception("non-responsive task watchdog failed")
            continue
        for task_id in stopped:
            log.warning("stopped task %s: no update for more than %.0f s (non-responsive)", task_id, threshold_s)


async def serve(
    data: Paths,
    host: str,
    ports: dict[str, int],
    allow_faults: bool,
    validate: bool,
    non_responsive_s: float = NON_RESPONSIVE_S,
) -> None:
    creds = Credentials(**json.loads(data.credentials.read_text()))
    store = Store(data.db)
    api_url = f"http://{host}:{ports['api']}"
    files_url = f"http://{host}:{ports['files']}"
    web_url = f"http://{host}:{ports['web']}"
    standin = StandInApp(
        store,
        creds,
        api_url=api_url,
        files_url=files_url,
        web_url=web_url,
        faults=FaultInjector(allowed=allow_faults),
        validate=validate,
    )
    calls_file = data.calls_file
    open_call_log(standin, calls_file)
    apps = {
        "api": standin.app,
        "files": FileServer(data.files, auth=standin.auth, own_urls=(files_url,), web_url=web_url).app,
        "web": WebUI(store, files_url=files_url, web_url=web_url, files_root=data.files).app,
    }
    socks = {name: _bind(host, ports[name]) for name in apps}
    servers = [_server(apps[name]) for name in apps]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(s.serve(sockets=[socks[n]])) for s, n in zip(servers, apps, strict=True)]
    while not all(s.started for s in servers):
        if any(t.done() for t in tasks):
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()  # type: ignore[misc]
            raise RuntimeError("a stand-in server stopped during start-up")
        await asyncio.sleep(0.02)
    data.ready_file.write_text(json.dumps({"pid": os.getpid(), "ports": ports, "host": host}))
    saver = asyncio.create_task(_save_calls(standin, calls_file, stop))
    watchdog = asyncio.create_task(watch_non_responsive(standin, non_responsive_s, stop))
    logging.getLogger("clearml_standin").warning("stand-in listening: %s", ports)
    await stop.wait()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks, saver, watchdog, return_exceptions=True)
    store.close()
    with contextlib.suppress(FileNotFoundError):
        data.ready_file.unlink()


def open_call_log(standin: StandInApp, path: Path) -> None:
    """Continue the call log a previous server process left in `path`, and keep it there."""
    if path.exists():
        with contextlib.suppress(ValueError):
            standin.calls.load(json.loads(path.read_text()))
    standin.calls.persist = functools.partial(write_calls, standin, path)


def write_calls(standin: StandInApp, path: Path) -> str:
    """Write the call log atomically (a reader never sees half a file); returns what was written."""
    snapshot = json.dumps(standin.calls.dump(), sort_keys=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(snapshot)
    os.replace(tmp, path)
    return snapshot


async def _save_calls(standin: StandInApp, path: Path, stop: asyncio.Event) -> None:
    """Persist the call counts twice a second, so they survive a restart (kill -9 included).
    Contract errors and unsupported calls do not wait for this: CallLog.persist writes them at once."""
    last = None
    while True:
        snapshot = json.dumps(standin.calls.dump(), sort_keys=True)
        if snapshot != last:
            last = write_calls(standin, path)
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clearml_standin.server")
    parser.add_argument("--state-dir", required=True, type=Path, help="store, files and credentials.json")
    parser.add_argument("--run-dir", required=True, type=Path, help="server.ready and the call log")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--files-port", type=int, required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--allow-faults", action="store_true", help="test-only: allow fault injection")
    parser.add_argument("--validate", action="store_true",
                        help="check every response against the clearml SDK's response classes")
    parser.add_argument("--non-responsive-s", type=float, default=None,
                        help=f"stop in_progress tasks not heard of for this long (default: ${NON_RESPONSIVE_ENV} "
                             f"or {NON_RESPONSIVE_S:.0f}; 0 disables)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data = Paths(args.state_dir.expanduser().resolve(), args.run_dir.expanduser().resolve())
    data.ensure()
    ports = {"api": args.api_port, "files": args.files_port, "web": args.web_port}
    threshold = non_responsive_default() if args.non_responsive_s is None else args.non_responsive_s
    asyncio.run(serve(data, args.host, ports, args.allow_faults, args.validate, threshold))


if __name__ == "__main__":
    main()
