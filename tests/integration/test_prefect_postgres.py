"""`automation local up --prefect-db postgres`: the stack's Prefect server on a PostgreSQL cluster of
its own (Debian's server binaries), started and stopped with the stack, data kept across restarts,
its password in one private file only. The concurrency comparison with SQLite is a benchmark
(`python -m benchmarks prefect_db`), not a test."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from automation.devstack import procs
from automation.devstack.postgres import LocalPostgres, find_bin_dir
from automation.devstack.stack import LocalStack
from automation.errors import StackError
from testing import REPO
from testing.processes import child_env

pytestmark = pytest.mark.integration


def _why_no_postgres() -> str | None:
    """Why PostgreSQL cannot run here at all (no binaries; root without user namespaces), else None."""
    try:
        find_bin_dir()
        LocalPostgres._as_user()
    except StackError as exc:
        return str(exc)
    return None


@pytest.fixture()
def pg_stack(tmp_path: Path) -> Iterator[LocalStack]:
    why = _why_no_postgres()
    if why:
        pytest.skip(why)
    stack = LocalStack(tmp_path / "stack")
    try:
        yield stack
    finally:
        stack.down()


def _completed_flow_runs(api_url: str, expected: int, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        res = httpx.post(f"{api_url}/flow_runs/count", json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
                         timeout=10)
        res.raise_for_status()
        if int(res.json()) >= expected or time.monotonic() > deadline:
            return int(res.json())
        time.sleep(1.0)


def _optuna_on_postgres(port: int, password: str, root: Path) -> None:
    import os

    import psycopg

    from automation.devstack.postgres import DB_USER
    from automation.search import study as studies
    from automation.search.space import SearchSpace

    with psycopg.connect(f"postgresql://{DB_USER}:{password}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE studies")
    url = f"postgresql+psycopg://{DB_USER}:{password}@127.0.0.1:{port}/studies"
    old = os.environ.get("AUTOMATION_SEARCH_STORAGE")
    os.environ["AUTOMATION_SEARCH_STORAGE"] = url
    try:
        storage = studies.default_storage()
        assert storage == url and password not in studies.masked(storage)
        space = SearchSpace.parse(["w4a16"], {"dampening_frac": "0.001:0.1:log"})
        sampler = studies.make_sampler("auto", space, ["recovery", "size"], seed=0)
        study = studies.open_study(storage, "pg-search", ["recovery", "size"], sampler)
        trial = study.ask(studies.distributions(space))
        studies.save_record(study, trial.number, {"recipe": "w4a16", "recipe_args": dict(trial.params)})
        study.tell(trial.number, [0.97, 1.5])
        running = study.ask(studies.distributions(space))  # left in flight, as a killed search leaves it
        again = studies.open_study(storage, "pg-search", ["recovery", "size"], sampler)
        assert studies.finished_count(again) == 1 and [t.number for t in studies.interrupted(again)] == [running.number]
        (done,) = [r for r in studies.records(again) if r.state == "complete"]
        assert done.recipe == "w4a16" and done.pareto
    finally:
        if old is None:
            os.environ.pop("AUTOMATION_SEARCH_STORAGE", None)
        else:
            os.environ["AUTOMATION_SEARCH_STORAGE"] = old
    assert not [p for p in root.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".pid")
                and password in p.read_text(errors="replace")]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_postgres_mode_starts_keeps_data_and_stops(pg_stack: LocalStack) -> None:
    stack = pg_stack
    report = stack.up(agents=False, prefect=True, prefect_db="postgres", serve=False)
    assert "postgres" in report.started and "prefect-server" in report.started, report
    status = stack.status()
    assert status["prefect"]["db"] == "postgres" and status["prefect"]["postgres"]["running"], status
    port = status["prefect"]["postgres"]["port"]
    api_url = report.env["PREFECT_API_URL"]

    # A flow run (its own process, as a worker runs it) lands in PostgreSQL, not in a SQLite file.
    run = subprocess.run([sys.executable, "-m", "benchmarks.prefect_db", "load", "3", "0.1"], cwd=REPO,
                         env=child_env({"PREFECT_API_URL": api_url}), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert _completed_flow_runs(api_url, 1) == 1
    assert not list(stack.prefect_home.glob("*.db")), list(stack.prefect_home.iterdir())

    # The password lives in one 0600 file; not in the env file, stack.json, a log or a command line.
    pw_file = stack.data.root / "postgres" / "password"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = pw_file.read_text().strip()
    assert len(password) >= 24
    exposed = [p for p in [stack.data.env_file, stack.data.stack_file, *stack.data.logs.iterdir(),
                           *stack.data.run.glob("*.pid")] if password in p.read_text(errors="replace")]
    assert not exposed, exposed

    # A recipe search's study on PostgreSQL (a database of its own: Optuna and Prefect both keep an
    # `alembic_version` table), given as the workers' AUTOMATION_SEARCH_STORAGE: kept across opens.
    _optuna_on_postgres(port, password, stack.data.root)

    # A running server keeps its database: asking for the other is an error that says what to do.
    with pytest.raises(StackError, match=r"local down .*--prefect-db sqlite"):
        stack.up(agents=False, prefect=True, prefect_db="sqlite", serve=False)

    stopped = stack.down()
    assert "postgres" in stopped and "prefect-server" in stopped, stopped
    assert procs.running(stack.data.pid_file("postgres")) is None
    assert not _port_open(port)
    assert "database system is shut down" in (stack.data.logs / "postgres.log").read_text()

    # Up again without the option: the recorded database, with last time's flow run in it.
    report = stack.up(agents=False, prefect=True, serve=False)
    assert "postgres" in report.started, report
    assert json.loads(stack.data.stack_file.read_text())["prefect_db"] == "postgres"
    assert _completed_flow_runs(report.env["PREFECT_API_URL"], 1, timeout_s=5) == 1
