"""The production path of a task: a real `clearml-agent daemon` in its normal venv mode (no
`CLEARML_AGENT_SKIP_*`: it clones the task's repository at its commit and pip-installs the task's
requirements into a fresh venv) runs a debug task to completion from a pinned commit of this
repository; a second task of the same kind runs from the agent's venv cache.

The repository is a bare clone of this checkout's HEAD served as `file://` (what the agent sees
of a git server). The agent's pip reaches the package index the machine is configured with.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from automation.devstack import procs
from automation.results import TaskResult
from automation.specs.base import CodeRef
from automation.specs.debug import DebugSpec
from testing.stacks import StackHandle, admin_client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QUEUE = "venv-build"
RUN_DEADLINE_S = 600.0  # a cold venv: clone + pip install of the core runtime from the index


@dataclass
class VenvAgent:
    home: Path
    log: Path
    proc: psutil.Process
    code: CodeRef


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def venv_agent(local_stack: StackHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VenvAgent]:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the agent needs a repository to clone")
    root = tmp_path_factory.mktemp("venv-agent")
    bare = root / "code.git"
    _git("clone", "--quiet", "--bare", str(REPO), str(bare))
    code = CodeRef(repository=f"file://{bare}", commit=_git("rev-parse", "HEAD"))
    home = root / "home"
    (home / "tmp").mkdir(parents=True, mode=0o700)
    conf = home / "clearml.conf"
    # The stack's agent settings (server, key pair, bounded retries) plus what a production agent
    # sets for spin-up time: a venv cache and a git cache.
    conf.write_text(local_stack.stack.data.agent_conf.read_text() + f"""
agent {{
    venvs_cache {{ path: "{home}/venvs-cache", max_entries: 4, free_space_threshold_gb: 0 }}
    vcs_cache {{ enabled: true, path: "{home}/vcs-cache" }}
    package_manager {{ type: pip, system_site_packages: false }}
}}
""")
    conf.chmod(0o600)
    admin_client(local_stack.env).call("queues.create", {"name": QUEUE})  # the agent needs it to exist
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_", "VIRTUAL_ENV"))}
    env.update({k: v for k, v in local_stack.env.items() if k.startswith("CLEARML_")})
    env.update({"HOME": str(home), "TMPDIR": str(home / "tmp"), "CLEARML_CONFIG_FILE": str(conf),
                "CLEARML_WORKER_ID": f"venv-{os.getpid()}", "CLEARML_WORKER_NAME": f"venv-{os.getpid()}",
                "PYTHONUNBUFFERED": "1"})
    agent_bin = shutil.which("clearml-agent", path=str(Path(sys.executable).parent))
    assert agent_bin, "clearml-agent is not installed next to this interpreter"
    log = root / "agent.log"
    proc = procs.start_detached([agent_bin, "daemon", "--queue", QUEUE, "--foreground"], root / "agent.pid", log,
                                env=env, cwd=home, umask=0o077)
    try:
        yield VenvAgent(home=home, log=log, proc=proc, code=code)
    finally:
        procs.stop_tree(proc)


def _run(spec: DebugSpec) -> tuple[TaskResult, float]:
    from flows.bridge import backend, execute

    async def go() -> TaskResult:
        try:
            return await execute(spec, max_wait_s=RUN_DEADLINE_S)
        finally:
            await backend().aclose()

    started = time.monotonic()
    result = asyncio.run(go())
    return result, time.monotonic() - started


def _log_events(local_stack: StackHandle, task_id: str) -> list[dict[str, object]]:
    answer = admin_client(local_stack.env).call("events.get_task_log", {"task": task_id, "batch_size": 10_000,
                                                                        "navigate_earlier": False})
    return sorted(answer.get("events", []), key=lambda e: float(str(e.get("timestamp") or 0)))


def _task_log(local_stack: StackHandle, task_id: str) -> str:
    return "\n".join(str(e.get("msg", "")) for e in _log_events(local_stack, task_id))


# Where the time goes, read from the task's console log: the first line that shows each phase.
PHASES = (("clone", "cloning:"), ("venv", "Collecting"), ("script", "Starting Task Execution"),
          ("done", "core script wall time"))


def _phases(local_stack: StackHandle, task_id: str) -> str:
    events = _log_events(local_stack, task_id)
    if not events:
        return "(no log)"
    t0 = float(str(events[0].get("timestamp") or 0))
    marks = []
    for name, marker in PHASES:
        hit = next((e for e in events if marker in str(e.get("msg", ""))), None)
        if hit is not None:
            marks.append(f"{name} +{(float(str(hit.get('timestamp') or 0)) - t0) / 1000:.1f} s")
    return ", ".join(marks)


def test_a_task_runs_from_its_pinned_commit_in_a_venv_the_agent_builds(local_stack: StackHandle,
                                                                       venv_agent: VenvAgent) -> None:
    spec = DebugSpec(project="venv-agent-tests", queue=QUEUE, code=venv_agent.code, sleep_s=0.2, steps=2,
                     value=7.0, salt="cold")
    cold, cold_s = _run(spec)
    assert cold.status == "completed", (cold, venv_agent.log.read_text()[-4000:])
    assert cold.scalars["debug/value"] == 7.0 and not cold.reused
    log = _task_log(local_stack, cold.task_id)
    assert venv_agent.code.commit and venv_agent.code.commit[:8] in log + venv_agent.log.read_text(), \
        "the agent did not report checking out the pinned commit"
    assert "CLEARML_AGENT_SKIP" not in log

    warm_spec = DebugSpec(**{**spec.model_dump(), "salt": "warm", "value": 8.0})
    warm, warm_s = _run(warm_spec)
    assert warm.status == "completed" and warm.scalars["debug/value"] == 8.0, (warm, venv_agent.log.read_text()[-4000:])
    warm_log = _task_log(local_stack, warm.task_id)
    assert "Using Cached environment" in warm_log + venv_agent.log.read_text(), "the venv cache was not used"
    print(f"\nvenv-mode agent, debug kind: cold {cold_s:.1f} s, warm {warm_s:.1f} s (enqueue to completed)")
    print(f"  cold, from the agent's first log line: {_phases(local_stack, cold.task_id)}")
    print(f"  warm, from the agent's first log line: {_phases(local_stack, warm.task_id)}")


def test_a_requirement_the_agent_cannot_install_is_an_infrastructure_failure_naming_pip(
        local_stack: StackHandle, venv_agent: VenvAgent) -> None:
    """Not the task's code: the same task may well install on another agent (index down, no wheel
    for this platform), so it is retried as an infrastructure failure, and the pip error is what
    the failure says."""
    from automation.errors import InfrastructureError, TaskFailed

    spec = DebugSpec(project="venv-agent-tests", queue=QUEUE, code=venv_agent.code, sleep_s=0.1, steps=1,
                     packages=("automation-no-such-package==9.9.9",), salt="uninstallable")
    with pytest.raises(TaskFailed) as caught:
        _run(spec)
    print("\nuninstallable requirement:", type(caught.value).__name__, str(caught.value)[:600])
    assert isinstance(caught.value, InfrastructureError), caught.value
    first = str(caught.value).splitlines()[0]
    assert "could not install the task's requirements: ERROR: " in first and "automation-no-such-package" in first


@pytest.mark.slow
@pytest.mark.e2e
def test_compress_runs_in_a_venv_the_agent_builds(local_stack: StackHandle, venv_agent: VenvAgent,
                                                   tiny_model: Path) -> None:
    """The compress kind the same way, cold then warm: a measurement more than a check (its venv
    holds torch, transformers and llm-compressor, about 2 GB), so it runs only when asked for with
    AUTOMATION_VENV_COMPRESS=1; figures in docs/benchmarks.md."""
    if os.environ.get("AUTOMATION_VENV_COMPRESS") != "1":
        pytest.skip("set AUTOMATION_VENV_COMPRESS=1 to build a compress venv (about 2 GB; a measurement)")
    from automation.specs.compress import CompressSpec
    from flows.bridge import backend, execute

    times: list[float] = []
    for samples in (16, 8):  # two identities: the second is computed, not reused
        spec = CompressSpec(project="venv-agent-tests", queue=QUEUE, code=venv_agent.code, model=str(tiny_model),
                            recipe="w4a16", calibration="tiny", num_samples=samples, max_seq_length=64)

        async def go(spec: CompressSpec = spec) -> TaskResult:
            try:
                return await execute(spec, max_wait_s=1800)
            finally:
                await backend().aclose()

        started = time.monotonic()
        result = asyncio.run(go())
        times.append(time.monotonic() - started)
        assert result.status == "completed" and result.model_id, (result, venv_agent.log.read_text()[-4000:])
        print(f"\ncompress in a venv ({samples} samples): {times[-1]:.1f} s; "
              f"{_phases(local_stack, result.task_id)}")
    warm_log = _task_log(local_stack, result.task_id)
    assert "Using Cached environment" in warm_log + venv_agent.log.read_text(), "the venv cache was not used"
    print(f"venv-mode agent, compress kind: cold {times[0]:.1f} s, warm {times[1]:.1f} s (enqueue to completed)")
