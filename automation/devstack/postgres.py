"""The local stack's PostgreSQL for Prefect (`automation local up --prefect-db postgres`).

Prefect recommends PostgreSQL over SQLite for anything concurrent: under 30 concurrent flow runs
SQLite lost runs to "database is locked" on these machines (docs/benchmarks.md, "Prefect
database"). This runs the distribution's own server binaries (Debian's `postgresql` package), one
cluster per data directory:

- data in `DIR/postgres/data`, its log in `DIR/logs/postgres.log`, a PID file like every other
  process of the stack; TCP on a remembered loopback port only (no Unix socket to clash with
  another cluster);
- password authentication for every connection (scram-sha-256), with a generated password kept
  in `DIR/postgres/password` (mode 0600) and handed to the Prefect server in its environment only;
- PostgreSQL refuses to run as root. As root (containers, CI) it runs in a user namespace of its
  own (`unshare --user`), where it is an ordinary user while its files stay the caller's; as any
  other user it runs as that user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from automation.devstack import procs
from automation.devstack.layout import DataDir
from automation.devstack.procs import log_tail as _tail
from automation.devstack.procs import port_free as _port_free
from automation.errors import StackError

DB_USER = "prefect"
DB_NAME = "prefect"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# The uid PostgreSQL sees inside its user namespace when the caller is root: any non-zero one.
NAMESPACE_UID = 1000
BIN_ENV = "AUTOMATION_POSTGRES_BIN"
NEEDED = ("initdb", "postgres", "pg_isready", "createdb")


def find_bin_dir() -> Path:
    """The folder holding initdb, postgres, pg_isready and createdb of one PostgreSQL version."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    else:
        pg_config = shutil.which("pg_config")
        if pg_config:
            try:
                out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
                candidates.append(Path(out.stdout.strip()))
            except (OSError, subprocess.SubprocessError):
                pass
        # Debian and Ubuntu keep each major version's server binaries apart; newest first.
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True)
        postgres = shutil.which("postgres")
        if postgres:
            candidates.append(Path(postgres).resolve().parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in NEEDED):
            return folder
    where = f"{BIN_ENV}={os.environ[BIN_ENV]} lacks one of {', '.join(NEEDED)}" if os.environ.get(BIN_ENV) else (
        "no PostgreSQL server binaries found")
    raise StackError(f"--prefect-db postgres: {where}; install the server (Debian: apt install postgresql) or set "
                     f"{BIN_ENV} to the folder with {', '.join(NEEDED)}; or use --prefect-db sqlite")


def _major(path: Path) -> int:
    name = path.parent.name
    return int(name) if name.isdigit() else 0


class LocalPostgres:
    """One cluster under the stack's data directory: created on first start, kept across restarts."""

    def __init__(self, data: DataDir, port: int) -> None:
        self.data = data
        self.port = port
        self.root = data.root / "postgres"
        self.cluster = self.root / "data"
        self.password_file = self.root / "password"
        self.pid_file = data.pid_file("postgres")
        self.log = data.logs / "postgres.log"

    # -- what clients need --------------------------------------------------------------------
    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            raise StackError(f"{self.password_file} is missing: the cluster in {self.cluster} cannot be opened "
                             f"without it; restore it, or delete {self.root} for a new, empty database") from None

    def prefect_env(self) -> dict[str, str]:
        """Settings that point a Prefect server at this database (the password only here)."""
        return {
            # Prefect fills the placeholder from the password setting, which it keeps a SecretStr.
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://{DB_USER}:${{PREFECT_SERVER_DATABASE_PASSWORD}}@127.0.0.1:{self.port}/{DB_NAME}"),
            "PREFECT_SERVER_DATABASE_PASSWORD": self.password(),
        }

    def running(self) -> psutil.Process | None:
        return procs.running(self.pid_file)

    # -- start / stop ---------------------------------------------------------------------------
    def start(self) -> None:
        """Initialise the cluster if there is none, start the server, create Prefect's database;
        return once it accepts password logins."""
        if self.running() is not None:
            return
        bin_dir = find_bin_dir()
        if not _port_free(self.port):
            raise StackError(f"port {self.port} (postgres) recorded in {self.data.stack_file} is taken by another "
                             "process; stop it or delete the 'postgres' entry of stack.json to pick a new port")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.cluster / "PG_VERSION").exists():
            self._initdb(bin_dir)
        stale = self.cluster / "postmaster.pid"
        if stale.exists():  # left by a killed server; PostgreSQL itself refuses while its pid lives
            stale.unlink()
        argv = [*self._as_user(), str(bin_dir / "postgres"), "-D", str(self.cluster), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                "-c", "max_connections=200"]
        proc = procs.start_detached(argv, self.pid_file, self.log, env=self._env(), cwd=self.root, umask=0o077)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._ready(bin_dir):
                self._ensure_database(bin_dir)
                return
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(f"PostgreSQL exited during start-up:\n{_tail(self.log, 20)}")
            time.sleep(0.2)
        self.stop()
        raise StackError(f"PostgreSQL did not accept connections in {START_TIMEOUT_S:.0f} s:\n{_tail(self.log, 20)}")

    def stop(self) -> bool:
        """Fast shutdown (SIGINT: sessions end, a checkpoint is written); a kill after STOP_TIMEOUT_S
        (the write-ahead log still makes that safe)."""
        proc = self.running()
        if proc is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            procs.stop_tree(proc)
        self.pid_file.unlink(missing_ok=True)
        return True

    # -- internals --------------------------------------------------------------------------------
    def _initdb(self, bin_dir: Path) -> None:
        if self.cluster.exists() and any(self.cluster.iterdir()):
            raise StackError(f"{self.cluster} holds files but no PostgreSQL cluster (no PG_VERSION); move it "
                             "away or delete it")
        password = secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        self.cluster.mkdir(mode=0o700, exist_ok=True)
        argv = [*self._as_user(), str(bin_dir / "initdb"), "-D", str(self.cluster), "-U", DB_USER,
                f"--pwfile={self.password_file}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=self._env())
            ok, detail = out.returncode == 0, (out.stdout + out.stderr)[-2000:]
        except (OSError, subprocess.SubprocessError) as exc:
            ok, detail = False, str(exc)
        if not ok:
            shutil.rmtree(self.cluster, ignore_errors=True)  # nothing half-created stays behind
            self.password_file.unlink(missing_ok=True)
            raise StackError(f"initdb of {self.cluster} failed:\n{detail}")

    def _ready(self, bin_dir: Path) -> bool:
        res = subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                              "-U", DB_USER, "-d", "postgres"], capture_output=True, timeout=10, env=self._env())
        return res.returncode == 0

    def _ensure_database(self, bin_dir: Path) -> None:
        env = {**self._env(), "PGPASSWORD": self.password()}
        res = subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER,
                              DB_NAME], capture_output=True, text=True, timeout=30, env=env)
        if res.returncode != 0 and "already exists" not in res.stderr:
            raise StackError(f"creating the database '{DB_NAME}' failed: {res.stderr.strip()}")

    @staticmethod
    def _as_user() -> list[str]:
        """The command prefix that makes PostgreSQL not root (it refuses to run as root)."""
        if os.geteuid() != 0:
            return []
        unshare = shutil.which("unshare")
        if unshare is None:
            raise StackError("--prefect-db postgres: PostgreSQL refuses to run as root and `unshare` (util-linux) "
                             "is not installed; install it, run as a non-root user, or use --prefect-db sqlite")
        probe = subprocess.run([unshare, "--user", f"--map-user={NAMESPACE_UID}", f"--map-group={NAMESPACE_UID}",
                                "true"], capture_output=True, text=True, timeout=10)
        if probe.returncode != 0:
            raise StackError("--prefect-db postgres: PostgreSQL refuses to run as root and this machine allows no "
                             f"user namespace ({probe.stderr.strip()}); run as a non-root user, or use "
                             "--prefect-db sqlite")
        return [unshare, "--user", f"--map-user={NAMESPACE_UID}", f"--map-group={NAMESPACE_UID}"]

    @staticmethod
    def _env() -> dict[str, str]:
        # No PG* of the caller (a PGHOST or PGPASSWORD of another database) and a locale that exists.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**env, "LC_ALL": "C", "LANG": "C"}
