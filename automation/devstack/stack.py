"""`automation local up|status|down`: the embedded default stack in one data directory.

`up` starts the stand-in (API + file server + web pages on free loopback ports, remembered so
stored URLs stay valid across restarts), creates the queues, starts one real
`clearml-agent daemon --foreground` per queue, and writes `DIR/env` and a fail-fast
`DIR/clearml.conf`. With `prefect=True` (the CLI's default) it also starts a Prefect server
(SQLite under `DIR/prefect`, UI on a remembered loopback port) and a process serving the product's
deployments (`python -m deployments.serve`, defaults on the tiny model in `DIR/models/tiny`), and
adds `PREFECT_API_URL` / `PREFECT_UI_URL` to `DIR/env`. With `prefect_db="postgres"` Prefect keeps
its data in a PostgreSQL cluster of the stack instead (postgres.py), as Prefect recommends for
concurrent runs. It is idempotent: what already runs is left
alone. `down` stops exactly what `up` recorded in PID files, task processes and flow runs included.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from automation.clearml.admin import AdminClient
from automation.devstack import procs
from automation.devstack.layout import DataDir, default_data_dir
from automation.devstack.postgres import LocalPostgres
from automation.devstack.procs import log_tail as _tail
from automation.devstack.procs import port_free as _port_free
from automation.errors import StackError

DEFAULT_QUEUES = ("gpu", "cpu")
HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 30.0
AGENT_SETTLE_S = 3.0
AGENT_POLL_S = "0.5"
PREFECT_START_TIMEOUT_S = 120.0
SERVE_START_TIMEOUT_S = 180.0
# What `python -m deployments.serve` registers (deployment names); `up` waits until the API lists them.
SERVED_DEPLOYMENTS = ("compress-evaluate-benchmark", "sweep", "nightly")
CLEARML_PORTS = ("api", "files", "web")
PREFECT_DBS = ("sqlite", "postgres")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclass
class StackConfig:
    ports: dict[str, int]
    queues: list[str]
    allow_faults: bool = False
    validate: bool = False
    prefect_db: str = "sqlite"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ports['api']}"

    @property
    def files_url(self) -> str:
        return f"http://{HOST}:{self.ports['files']}"

    @property
    def web_url(self) -> str:
        return f"http://{HOST}:{self.ports['web']}"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{HOST}:{self.ports['prefect']}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_ui_url}/api"


@dataclass
class UpReport:
    env: dict[str, str]
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)


class LocalStack:
    def __init__(self, data_dir: Path | None = None) -> None:
        self.data = DataDir(data_dir or default_data_dir())

    # -- persistent configuration ---------------------------------------------------------------
    def _load_config(self) -> StackConfig | None:
        try:
            raw = json.loads(self.data.stack_file.read_text())
            return StackConfig(
                ports={k: int(v) for k, v in raw["ports"].items()},
                queues=list(raw["queues"]),
                allow_faults=bool(raw.get("allow_faults", False)),
                validate=bool(raw.get("validate", False)),
                prefect_db=str(raw.get("prefect_db", "sqlite")),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StackError(f"{self.data.stack_file} is damaged ({exc}); fix or delete it") from exc

    def _save_config(self, cfg: StackConfig) -> None:
        tmp = self.data.stack_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ports": cfg.ports, "queues": cfg.queues, "allow_faults": cfg.allow_faults,
                                   "validate": cfg.validate, "prefect_db": cfg.prefect_db}, indent=2))
        os.replace(tmp, self.data.stack_file)

    def _credentials(self) -> dict[str, str]:
        path = self.data.credentials
        if path.exists():
            try:
                creds = json.loads(path.read_text())
                if not all(isinstance(creds.get(k), str) for k in ("access_key", "secret_key", "token_secret")):
                    raise ValueError("access_key, secret_key and token_secret must be strings")
            except (ValueError, AttributeError) as exc:
                raise StackError(f"{path} is damaged ({exc}); restore it, or delete it for new keys (tasks and "
                                 "agents configured with the old ones then need the new env)") from None
            return dict(creds)
        creds = {
            "access_key": "LOCAL" + secrets.token_hex(8).upper(),
            "secret_key": secrets.token_urlsafe(32),
            "token_secret": secrets.token_urlsafe(32),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
        return creds

    # -- env and clearml.conf ----------------------------------------------------------------
    def env(self, cfg: StackConfig) -> dict[str, str]:
        creds = self._credentials()
        return {
            "CLEARML_API_HOST": cfg.api_url,
            "CLEARML_WEB_HOST": cfg.web_url,
            "CLEARML_FILES_HOST": cfg.files_url,
            "CLEARML_API_ACCESS_KEY": creds["access_key"],
            "CLEARML_API_SECRET_KEY": creds["secret_key"],
            "CLEARML_CONFIG_FILE": str(self.data.clearml_conf),
            "CLEARML_DEFAULT_OUTPUT_URI": cfg.files_url,
            # The local stack's agents run their installed working tree: the flows' default code.
            "AUTOMATION_LOCAL_STACK": "1",
        }

    def _write_conf(self, cfg: StackConfig) -> None:
        creds = self._credentials()
        write_clearml_conf(self.data.clearml_conf, cfg, creds["access_key"], creds["secret_key"])
        write_clearml_conf(self.data.agent_conf, cfg, creds["access_key"], creds["secret_key"],
                           retries=AGENT_RETRIES, cache_dir=self.data.model_cache)
        for folder in (self.data.model_cache.parent, self.data.model_cache):  # the agents' shared cache: private
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)

    def _write_env(self, env: dict[str, str]) -> None:
        lines = ["# source this file to point the clearml SDK and agent at the local stack"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        fd = os.open(self.data.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- up ------------------------------------------------------------------------------------
    def up(
        self,
        queues: Sequence[str] | None = None,
        allow_faults: bool = False,
        validate: bool = False,
        agents: bool = True,
        prefect: bool = False,
        prefect_db: str | None = None,
        serve: bool = True,
    ) -> UpReport:
        """`prefect=True`: also the Prefect server and (with `serve`) the served deployments (the
        CLI's default; off in the Python API, where tests bring their own Prefect server).
        `prefect_db`: where that server keeps its data, "sqlite" or "postgres" (None: as recorded
        for this data directory, else sqlite)."""
        bad = [q for q in queues or () if not QUEUE_NAME.fullmatch(q)]
        if bad:  # a queue name becomes a folder (the agent's HOME) and a file name: nothing else
            raise StackError(f"--queues: {bad} are not queue names (letters, digits, '.', '_', '-'; "
                             "not starting with '.'), e.g. gpu,cpu")
        if prefect_db is not None and prefect_db not in PREFECT_DBS:
            raise StackError(f"--prefect-db: '{prefect_db}' is not one of {', '.join(PREFECT_DBS)}")
        self.data.ensure()
        cfg = self._load_config()
        if cfg is None:
            cfg = StackConfig(ports={n: _free_port() for n in CLEARML_PORTS},
                              queues=list(queues or DEFAULT_QUEUES))
        elif queues:
            cfg.queues = list(dict.fromkeys([*cfg.queues, *queues]))
        cfg.allow_faults = cfg.allow_faults or allow_faults
        cfg.validate = cfg.validate or validate
        report = UpReport(env={})

        if prefect and "prefect" not in cfg.ports:
            cfg.ports["prefect"] = _free_port()
        if prefect and prefect_db is not None and prefect_db != cfg.prefect_db:
            self._switch_prefect_db(cfg, prefect_db)
        if prefect and cfg.prefect_db == "postgres" and "postgres" not in cfg.ports:
            cfg.ports["postgres"] = _free_port()
        server = procs.running(self.data.pid_file("server"))
        if server is None:
            for name, port in [(n, p) for n, p in cfg.ports.items() if n in CLEARML_PORTS]:
                if not _port_free(port):
                    raise StackError(
                        f"port {port} ({name}) recorded in {self.data.stack_file} is taken by another "
                        "process; stop it or delete stack.json to pick new ports (stored URLs would break)"
                    )
            self._save_config(cfg)
            self._credentials()
            self._start_server(cfg)
            report.started.append("server")
        else:
            self._check_server_flags(validate=validate, allow_faults=allow_faults)
            self._save_config(cfg)
            report.already_running.append("server")

        env = self.env(cfg)
        prefect_up = procs.running(self.data.pid_file("prefect-server")) is not None
        if prefect and cfg.prefect_db == "postgres":
            db = self.postgres(cfg)
            if db.running() is None:
                db.start()
                report.started.append("postgres")
            else:
                report.already_running.append("postgres")
        if prefect and not prefect_up:
            self._start_prefect_server(cfg)
            report.started.append("prefect-server")
        elif prefect:
            report.already_running.append("prefect-server")
        if prefect or prefect_up:  # a Prefect server of this stack runs: point everything at it
            env.update(self.prefect_env(cfg))
        self._write_conf(cfg)
        self._write_env(env)
        report.env = env
        api = AdminClient(cfg.api_url, env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
        for queue in cfg.queues:
            api.ensure_queue(queue)
        if agents:
            fresh: list[str] = []
            for queue in cfg.queues:
                name = f"agent-{queue}"
                if procs.running(self.data.pid_file(name)) is not None:
                    report.already_running.append(name)
                    continue
                self._start_agent(queue, env, n_agents=len(cfg.queues))
                report.started.append(name)
                fresh.append(queue)
            self._check_agents_alive(fresh)
        if prefect and serve:
            if procs.running(self.data.pid_file("prefect-serve")) is None:
                self._start_serve(cfg, env)
                report.started.append("prefect-serve")
            else:
                report.already_running.append("prefect-serve")
        return report

    def _check_server_flags(self, validate: bool, allow_faults: bool) -> None:
        """A running stand-in keeps the switches it was started with; asking for one it lacks must
        not look like success (a contract run that validates nothing, fault drills that inject none)."""
        recorded = procs.read_pid_file(self.data.pid_file("server"))
        argv = recorded.argv if recorded else []
        missing = [flag for flag, wanted in (("--validate", validate), ("--allow-faults", allow_faults))
                   if wanted and flag not in argv]
        if missing:
            raise StackError(
                f"the stand-in in {self.data.root} already runs without {' and '.join(missing)}; it takes effect "
                f"only at start: run `automation local down --data-dir {self.data.root}` first, then `up` again "
                "(data is kept)"
            )

    # -- Prefect: server + served deployments ------------------------------------------------------
    @property
    def prefect_home(self) -> Path:
        return self.data.root / "prefect"

    def postgres(self, cfg: StackConfig) -> LocalPostgres:
        return LocalPostgres(self.data, cfg.ports["postgres"])

    def _switch_prefect_db(self, cfg: StackConfig, wanted: str) -> None:
        """A running Prefect server keeps its database; a stopped one may move to the other. Nothing
        is deleted: the other database stays in DIR and switching back shows its runs again."""
        if procs.running(self.data.pid_file("prefect-server")) is not None:
            raise StackError(
                f"the Prefect server of {self.data.root} runs on {cfg.prefect_db}; run `automation local down "
                f"--data-dir {self.data.root}` first, then `up --prefect-db {wanted}` (the {cfg.prefect_db} data "
                "is kept, but the new database starts without its runs and deployments)")
        cfg.prefect_db = wanted

    def prefect_env(self, cfg: StackConfig) -> dict[str, str]:
        return {"PREFECT_API_URL": cfg.prefect_api_url, "PREFECT_UI_URL": cfg.prefect_ui_url}

    def _prefect_base_env(self, cfg: StackConfig) -> dict[str, str]:
        """The caller's environment minus settings of some other Prefect (a test's, a profile's)."""
        env = {k: v for k, v in _clean_env().items() if not k.startswith("PREFECT_")}
        return {**env, "PREFECT_HOME": str(self.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_URL": cfg.prefect_ui_url, "PYTHONUNBUFFERED": "1"}

    def _start_prefect_server(self, cfg: StackConfig) -> None:
        port = cfg.ports["prefect"]
        if not _port_free(port):
            raise StackError(f"port {port} (prefect) recorded in {self.data.stack_file} is taken by another process; "
                             "stop it or delete the 'prefect' entry of stack.json to pick a new port")
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        server_env = self._prefect_base_env(cfg)
        if cfg.prefect_db == "postgres":
            server_env.update(self.postgres(cfg).prefect_env())
        prefect_bin = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect")
        if prefect_bin is None:
            raise StackError("prefect is not installed in this environment")
        log = self.data.logs / "prefect-server.log"
        proc = procs.start_detached([prefect_bin, "server", "start", "--host", HOST, "--port", str(port)],
                                    self.data.pid_file("prefect-server"), log, env=server_env,
                                    cwd=self.prefect_home)
        deadline = time.monotonic() + PREFECT_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{cfg.prefect_api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not proc.is_running() or proc.status() == "zombie":
                raise StackError(f"the Prefect server exited during start-up:\n{_tail(log)}")
            time.sleep(0.5)
        procs.stop_recorded(self.data.pid_file("prefect-server"))
        raise StackError(f"the Prefect server did not answer in {PREFECT_START_TIMEOUT_S:.0f} s:\n{_tail(log)}")

    def _start_serve(self, cfg: StackConfig, env: dict[str, str]) -> None:
        """`python -m deployments.serve` with the stack's env: the UI can run the deployments, each
        run a subprocess of it; defaults use the tiny model (built into DIR/models/tiny once)."""
        from automation.devstack.tiny_model import ensure_tiny_model

        serve_env = {**self._prefect_base_env(cfg), **env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false"}
        tiny = ensure_tiny_model(self.data.root / "models" / "tiny", serve_env)
        log = self.data.logs / "prefect-serve.log"
        proc = procs.start_detached([sys.executable, "-m", "deployments.serve", "--tiny-model", str(tiny)],
                                    self.data.pid_file("prefect-serve"), log, env=serve_env, cwd=_repo_root())
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        missing: set[str] = set(SERVED_DEPLOYMENTS)
        while time.monotonic() < deadline:
            try:
                res = httpx.post(f"{cfg.prefect_api_url}/deployments/filter", json={"limit": 200}, timeout=5)
                missing = set(SERVED_DEPLOYMENTS) - {d["name"] for d in res.json()}
                if res.status_code == 200 and not missing:
                    return
            except (httpx.HTTPError, ValueError, TypeError, KeyError):
                pass
            if not proc.is_running() or proc.status() == "zombie":
                raise StackError(f"serving the deployments failed at start-up:\n{_tail(log)}")
            time.sleep(1.0)
        procs.stop_recorded(self.data.pid_file("prefect-serve"))
        raise StackError(f"the deployments {sorted(missing)} did not appear in {SERVE_START_TIMEOUT_S:.0f} s:\n"
                         f"{_tail(log)}")

    def _check_agents_alive(self, queues: Sequence[str], settle_s: float = AGENT_SETTLE_S) -> None:
        """An agent that cannot start (bad config, a clashing worker id) exits within a second or
        two; say so now instead of leaving tasks queued forever."""
        deadline = time.monotonic() + settle_s
        while queues and time.monotonic() < deadline:
            for queue in queues:
                if procs.running(self.data.pid_file(f"agent-{queue}")) is None:
                    log = self.data.logs / f"agent-{queue}.log"
                    raise StackError(f"the clearml-agent for queue '{queue}' exited at start-up:\n{_tail(log, 15)}")
            time.sleep(0.2)

    def _start_server(self, cfg: StackConfig) -> None:
        self.data.ready_file.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "clearml_standin",
            "--state-dir", str(self.data.standin_state), "--run-dir", str(self.data.run),
            "--api-port", str(cfg.ports["api"]),
            "--files-port", str(cfg.ports["files"]),
            "--web-port", str(cfg.ports["web"]),
        ]
        if cfg.allow_faults:
            argv.append("--allow-faults")
        if cfg.validate:
            argv.append("--validate")
        proc = procs.start_detached(argv, self.data.pid_file("server"), self.data.logs / "server.log",
                                    env=_clean_env())
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.data.ready_file.exists():
                return
            if not proc.is_running() or proc.status() == "zombie":
                raise StackError(f"the stand-in server exited during start-up:\n{_tail(self.data.logs / 'server.log')}")
            time.sleep(0.05)
        procs.stop_tree(proc)
        raise StackError(f"the stand-in server did not become ready in {SERVER_START_TIMEOUT_S:.0f} s:\n"
                         f"{_tail(self.data.logs / 'server.log')}")

    def _start_agent(self, queue: str, env: dict[str, str], n_agents: int = 1) -> None:
        home = self.data.agent_home(queue)
        # The agent copies its configuration, secret key included, into HOME/tmp: private to us.
        for folder in (home, home / "tmp"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
        agent_env = {
            **_clean_env(),
            **env,
            "HOME": str(home),
            # The agent keeps worker-slot files in the temp dir; keep each stack's apart.
            "TMPDIR": str(home / "tmp"),
            "CLEARML_CONFIG_FILE": str(self.data.agent_conf),
            # Unique per data dir: the agent refuses to start next to another with the same id,
            # and two stacks (two test sessions, a developer's and CI's) may share a machine.
            "CLEARML_WORKER_ID": f"local-{queue}-{self._stack_tag()}",
            "CLEARML_WORKER_NAME": f"local-{queue}-{self._stack_tag()}",
            # Run tasks in this very environment (no per-task venv): the local stack is one machine.
            "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1",
            "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": sys.executable,
            "PYTHONUNBUFFERED": "1",
        }
        # The agents' homes are private, and so would be their Hugging Face caches: a hub model or
        # dataset the user (or the other agent) already has would be fetched again for every queue.
        # The caches only: the user's hub token stays theirs (tasks get secrets by reference).
        for key, cache in _user_hf_caches().items():
            agent_env.setdefault(key, cache)
        # The agent's one interval for polling its queue AND, while a task runs, for noticing that
        # the task's process ended (and for checking for a stop): 5 s by default, paid up to twice
        # per step. The stand-in answers a poll in about a millisecond; two idle agents at 0.5 s
        # cost it 4 calls a second.
        agent_env.setdefault("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC", AGENT_POLL_S)
        # Agents share this machine's cores: without a cap each task's torch takes all of them and
        # concurrent tasks thrash (a 14 s model build took 98 s next to another task).
        agent_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, n_agents))))
        agent_bin = shutil.which("clearml-agent", path=str(Path(sys.executable).parent)) or shutil.which(
            "clearml-agent"
        )
        if agent_bin is None:
            raise StackError("clearml-agent is not installed in this environment (pip install clearml-agent)")
        argv = [agent_bin, "daemon", "--queue", queue, "--foreground"]
        procs.start_detached(argv, self.data.pid_file(f"agent-{queue}"),
                             self.data.logs / f"agent-{queue}.log", env=agent_env, cwd=home, umask=0o077)

    def _stack_tag(self) -> str:
        import hashlib

        return hashlib.sha256(str(self.data.root).encode()).hexdigest()[:6]

    # -- down ----------------------------------------------------------------------------------
    def down(self) -> list[str]:
        stopped: list[str] = []
        if not self.data.run.exists():
            return stopped
        # Served flow runs first (their cancel hooks still reach both servers), then agents, so no
        # task is picked up while the servers go away.
        if procs.stop_recorded(self.data.pid_file("prefect-serve"), grace_s=10.0):
            stopped.append("prefect-serve")
        for pid_file in sorted(self.data.run.glob("agent-*.pid")):
            if procs.stop_recorded(pid_file):
                stopped.append(pid_file.stem)
        if procs.stop_recorded(self.data.pid_file("prefect-server"), grace_s=10.0):
            stopped.append("prefect-server")
        # After its only client; found by its PID file, whatever the recorded port.
        if LocalPostgres(self.data, port=0).stop():
            stopped.append("postgres")
        if procs.stop_recorded(self.data.pid_file("server")):
            stopped.append("server")
        self.data.ready_file.unlink(missing_ok=True)
        return stopped

    # -- status --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cfg = self._load_config()
        out: dict[str, Any] = {"data_dir": str(self.data.root), "configured": cfg is not None}
        if cfg is None:
            return out
        server = procs.running(self.data.pid_file("server"))
        out["server"] = {"running": server is not None, "pid": server.pid if server else None,
                         "api": cfg.api_url, "files": cfg.files_url, "web": cfg.web_url}
        out["agents"] = {}
        for queue in cfg.queues:
            proc = procs.running(self.data.pid_file(f"agent-{queue}"))
            out["agents"][queue] = {"running": proc is not None, "pid": proc.pid if proc else None}
        if "prefect" in cfg.ports:
            pserver = procs.running(self.data.pid_file("prefect-server"))
            pserve = procs.running(self.data.pid_file("prefect-serve"))
            out["prefect"] = {"running": pserver is not None, "pid": pserver.pid if pserver else None,
                              "ui": cfg.prefect_ui_url, "api": cfg.prefect_api_url, "home": str(self.prefect_home),
                              "serve": {"running": pserve is not None, "pid": pserve.pid if pserve else None},
                              "db": cfg.prefect_db}
            if cfg.prefect_db == "postgres" and "postgres" in cfg.ports:
                pg = self.postgres(cfg).running()
                out["prefect"]["postgres"] = {"running": pg is not None, "pid": pg.pid if pg else None,
                                              "port": cfg.ports["postgres"]}
        if server is not None:
            env = self.env(cfg)
            try:
                api = AdminClient(cfg.api_url, env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
                out["queues"] = api.queue_summary()
                out["tasks"] = api.task_counts()
                out["workers"] = api.workers()
            except (httpx.HTTPError, StackError) as exc:
                out["api_error"] = str(exc)
        return out


# Orchestrator side: an unreachable server must be an error in about a second, naming the URL.
FAIL_FAST_RETRIES = {"total": 2, "connect": 2, "read": 2, "redirect": 2, "status": 2, "backoff_factor": 0.1}
# Agents and their task processes: ride out a stand-in restart of a few seconds (a running GPU job
# should not die because the tracking server blinked), yet still give up within about a minute.
AGENT_RETRIES = {"total": 8, "connect": 8, "read": 4, "redirect": 2, "status": 4, "backoff_factor": 0.5}


def _user_hf_caches() -> dict[str, str]:
    """The Hugging Face hub and datasets caches of the user who starts the stack (their variables,
    HF_HOME, or the defaults under their home; the datasets library's rule, without importing it),
    resolved here because the agents run with homes of their own."""
    from huggingface_hub import constants

    return {"HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE") or str(constants.HF_HUB_CACHE),
            "HF_DATASETS_CACHE": os.environ.get("HF_DATASETS_CACHE") or str(Path(constants.HF_HOME) / "datasets")}


def write_clearml_conf(
    path: Path,
    cfg: StackConfig,
    access_key: str,
    secret_key: str,
    retries: dict[str, float] | None = None,
    cache_dir: Path | None = None,
) -> None:
    """A clearml.conf for SDK and agent whose retries are bounded: an unreachable server is an
    error within seconds, not hours of silent retrying (the SDK default is 240 retries).
    `cache_dir`: the SDK's download cache (models, artifacts), shared by the processes using it."""
    r = {**FAIL_FAST_RETRIES, **(retries or {})}
    # ClearML's cache is made for sharing (its agents mount one into every container): downloads
    # land under a temporary name and are renamed into place.
    storage = "" if cache_dir is None else f"""
    storage {{
        cache {{ default_base_dir: {json.dumps(str(cache_dir))} }}
    }}"""
    conf = f"""# Written by `automation local up`. Bounded retries: an unreachable server fails in seconds.
api {{
    api_server: "{cfg.api_url}"
    web_server: "{cfg.web_url}"
    files_server: "{cfg.files_url}"
    credentials {{
        access_key: "{access_key}"
        secret_key: "{secret_key}"
    }}
    http {{
        retries {{
            total: {int(r["total"])}
            connect: {int(r["connect"])}
            read: {int(r["read"])}
            redirect: {int(r["redirect"])}
            status: {int(r["status"])}
            backoff_factor: {r["backoff_factor"]}
        }}
        wait_on_maintenance_forever: false
    }}
}}
sdk {{
    development {{
        default_output_uri: "{cfg.files_url}"
        support_stopping: true
        # Report from a thread of the task process, not a subprocess of it: its start-up and
        # its flush handshake cost seconds per task (docs/benchmarks.md, "chain").
        report_use_subprocess: false
    }}{storage}
}}
agent {{
    package_manager {{ type: pip }}
    reload_config: false
}}
"""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(conf)


def _clean_env() -> dict[str, str]:
    """The caller's environment minus ClearML settings of some other server."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}


def _repo_root() -> Path:
    """The checkout (or install) that holds `deployments/`: the served process runs from there."""
    import deployments

    return Path(deployments.__file__ or "deployments/__init__.py").resolve().parents[1]
