"""Deployments (issue 6) as people use them: served by `deployments/serve.py` against a real Prefect
server, a schedule that fires by itself, `prefect deployment run -p ...` from the real CLI, and
`automation local up` bringing up its own Prefect server with the deployments served.

The product's flows are the deployments' flows here; there is no cheaper flow to schedule that
would prove anything. So the nightly runs the tiny model (one scheme, the `tiny` suite, the `smoke`
profile: real llm-compressor, lm-eval and GuideLLM through the session's agents) once, and the
CLI-triggered run of `compress-evaluate-benchmark` asks for exactly the same cells: every step is
found by identity and reused, so the second run costs seconds and still goes through the whole
flow (validation, plan, gates, report).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from testing import REPO
from testing.prefect_server import PrefectServer
from testing.processes import OFFLINE, child_env
from testing.stacks import StackHandle
from testing.waits import wait_for

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
NIGHTLY = "nightly-regression/nightly"
CEB = "compress-evaluate-benchmark/compress-evaluate-benchmark"




@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model  # shared with tests/e2e: its finished steps are reused here


@pytest.fixture(scope="module")
def served(local_stack: StackHandle, prefect_server: PrefectServer, tiny: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m deployments.serve` with the local-stack defaults, the nightly every 15 s from now."""
    env = child_env(prefect_server.env, OFFLINE)
    log = prefect_server.home / f"serve-deployments-{RUN}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "deployments.serve", "--tiny-model", str(tiny),
                                 "--nightly-every", "15"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("the served deployments", lambda: proc.poll() is not None or asyncio.run(_deployment_ids()), 120)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield proc
    finally:
        proc.terminate()  # serve pauses its schedules on shutdown: nothing fires after the module
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _deployment_ids() -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, str] = {}
    async with get_client() as client:
        for name in (NIGHTLY, CEB):
            try:
                found[name] = str((await client.read_deployment_by_name(name)).id)
            except ObjectNotFound:
                return {}
    return found


async def _runs(deployment: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        dep = await client.read_deployment_by_name(deployment)
        only = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        return list(await client.read_flow_runs(deployment_filter=only))


async def _run(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(uuid.UUID(flow_run_id))


async def _pause(deployment: str) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.pause_deployment((await client.read_deployment_by_name(deployment)).id)


async def _report(flow_run_id: str) -> Any:
    from automation.regression.baselines import resolve
    from flows.bridge import backend

    return (await resolve(backend(), flow_run_id))[1]


def _finished(flow_run_id: str) -> Any:
    run = asyncio.run(_run(flow_run_id))
    return run if run.state is not None and run.state.is_final() else None


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_nightly_schedule_fires_by_itself_and_completes(served: subprocess.Popen[bytes], tiny: Path) -> None:
    started = time.monotonic()
    first = wait_for("a run created by the nightly's schedule",
                     lambda: [r for r in asyncio.run(_runs(NIGHTLY)) if r.auto_scheduled
                              and r.state is not None and r.state.type.value in ("PENDING", "RUNNING", "COMPLETED",
                                                                                 "FAILED", "CRASHED")], 120)
    run = first[0]
    fired = time.monotonic()
    # Schedule-level parameters over the deployment's: the night's series and gate policy.
    assert run.parameters["series"] == "nightly" and run.parameters["fail_on"] == "regression"
    assert run.parameters["models"] == [str(tiny)] and run.parameters["schemes"] == ["w4a16"]
    done = wait_for("the scheduled nightly run to finish", lambda: _finished(str(run.id)), 1200, every_s=2)
    asyncio.run(_pause(NIGHTLY))  # one night is enough; the CLI test below reuses its cells
    print(f"\n[measure] nightly: fired {fired - started:.0f} s after serving began, finished "
          f"{time.monotonic() - fired:.0f} s later ({done.state.type.value})")
    assert done.state.is_completed(), f"{done.state.type.value}: {done.state.message}"
    report = asyncio.run(_report(str(run.id)))
    assert report.series == "nightly"
    assert {c.scheme for c in report.cells} == {"base", "w4a16"}
    assert report.outcome in ("pass", "inconclusive"), report.outcome
    # Deployment concurrency limit 1 (CANCEL_NEW): no other night ran next to this one.
    others = [r for r in asyncio.run(_runs(NIGHTLY)) if r.id != run.id and r.start_time is not None
              and done.end_time is not None and run.start_time is not None
              and run.start_time < r.start_time < done.end_time]
    assert not others, [(r.name, r.state_type) for r in others]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cli_run_overrides_reach_the_flow_typed(served: subprocess.Popen[bytes], prefect_server: PrefectServer,
                                               tiny: Path) -> None:
    env = {**os.environ, **prefect_server.env}
    cli = subprocess.run([str(REPO / ".venv/bin/prefect"), "deployment", "run", CEB, "-p", "threshold=0.9",
                          "-p", 'schemes=["w4a16"]', "-p", 'step_queues={"evaluate":"cpu"}'],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    found = re.search(r"UUID: ([0-9a-f-]{36})", cli.stdout)
    assert found, cli.stdout
    flow_run_id = found.group(1)
    run = asyncio.run(_run(flow_run_id))
    # As stored on the server: JSON-typed, not strings.
    assert run.parameters["threshold"] == 0.9 and isinstance(run.parameters["threshold"], float)
    assert run.parameters["schemes"] == ["w4a16"]
    assert run.parameters["step_queues"] == {"evaluate": "cpu"}
    assert run.parameters["model"] == str(tiny)  # the deployment's default for what was not overridden
    started = time.monotonic()
    done = wait_for("the CLI-triggered run to finish", lambda: _finished(flow_run_id), 1000, every_s=2)
    print(f"\n[measure] CLI-triggered run finished in {time.monotonic() - started:.0f} s ({done.state.type.value})")
    assert done.state.is_completed(), f"{done.state.type.value}: {done.state.message}"
    # As the flow saw them: the report records its validated settings and parameters.
    report = asyncio.run(_report(flow_run_id))
    assert report.settings["accuracy"]["threshold"] == 0.9
    # A StepQueues model, dumped with all its fields (a plain dict would have kept only "evaluate").
    assert report.settings["parameters"]["step_queues"] == {"compress": None, "evaluate": "cpu", "benchmark": None}
    assert report.settings["parameters"]["schemes"] == ["w4a16"]
    assert {c.scheme for c in report.cells} == {"base", "w4a16"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_up_serves_deployments_on_its_own_prefect_server(tmp_path: Path, tiny: Path) -> None:
    data = tmp_path / "stack"
    shutil.copytree(tiny, data / "models" / "tiny")  # `up` builds it when missing (~5 s on an idle host)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CLEARML_"))}
    automation = str(REPO / ".venv/bin/automation")
    started = time.monotonic()
    up = subprocess.run([automation, "local", "up", "--data-dir", str(data), "--queues", "cpu"],
                        env=env, capture_output=True, text=True, timeout=600)
    up_s = time.monotonic() - started
    print(f"\n[measure] automation local up with Prefect: {up_s:.0f} s")
    tree: list[psutil.Process] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        stack_env = dict(line.removeprefix("export ").split("=", 1) for line in
                         (data / "env").read_text().splitlines() if line.startswith("export "))
        api = stack_env["PREFECT_API_URL"]
        assert stack_env["PREFECT_UI_URL"] == api.removesuffix("/api")
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
        deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
        assert {"compress-evaluate-benchmark", "sweep", "nightly"} <= set(deployments)
        nightly = deployments["nightly"]
        schedule = nightly["schedules"][0]
        assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "Europe/Berlin"
        assert schedule["parameters"] == {"series": "nightly", "fail_on": "regression"}
        assert nightly["global_concurrency_limit"]["limit"] == 1 and "nightly" in nightly["tags"]
        assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        ceb = deployments["compress-evaluate-benchmark"]
        assert ceb["parameters"]["model"] == str((data / "models" / "tiny").resolve())
        assert (data / "prefect" / "prefect.db").is_file()  # Prefect's state lives in the data dir
        status = json.loads(subprocess.run([automation, "local", "status", "--data-dir", str(data), "--json"],
                                           env=env, capture_output=True, text=True, timeout=120).stdout)
        assert status["prefect"]["running"] and status["prefect"]["serve"]["running"]
        for pid_file in (data / "run").glob("*.pid"):
            proc = psutil.Process(json.loads(pid_file.read_text())["pid"])
            tree += [proc, *proc.children(recursive=True)]
        assert len(tree) >= 4
    finally:
        down = subprocess.run([automation, "local", "down", "--data-dir", str(data)], env=env,
                              capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "prefect-server" in down.stdout and "prefect-serve" in down.stdout
    left = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=3)
