"""Recipe search on the local stack (real stand-in, agents, Prefect server), from the command line:
`automation run hpo` with three trials, its JSON; the same search again creates no ClearML task;
a search killed mid-way and started again continues its study without rerunning a finished trial
(counted as ClearML tasks by identity)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from testing.prefect_server import PrefectServer
from testing.processes import OFFLINE
from testing.stacks import StackHandle, admin_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:6]
PROJECT = f"e2e-search-{RUN}"


def hpo_argv(tiny: Path, storage: str, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "automation.cli", "run", "hpo", "--model", str(tiny), "--trials", str(trials),
            "--suite", "tiny", "--queue", "cpu", "--evaluate-queue", "gpu", "--json", str(out),
            "--calibration", "tiny", "--num-samples", "16", "--max-seq-length", "64", "--project", PROJECT,
            "--storage", storage, *extra]


def work_tasks(stack: StackHandle) -> list[dict[str, Any]]:
    api = admin_client(stack.env)
    projects = api.call("projects.get_all", {"name": f"^{PROJECT}$", "only_fields": ["id"]})["projects"]
    if not projects:
        return []
    tasks = api.call("tasks.get_all", {"project": [projects[0]["id"]], "search_hidden": True,
                                       "only_fields": ["id", "type", "status", "tags", "name"]})["tasks"]
    return [t for t in tasks if "recipe-search" not in (t.get("tags") or [])]


def identities(tasks: list[dict[str, Any]]) -> Counter[str]:
    return Counter(tag for t in tasks for tag in (t.get("tags") or []) if tag.startswith("identity:"))


def statuses_on_server(stack: StackHandle, identity: str) -> list[str]:
    """The statuses of every ClearML task with this identity, in any project: the bridge reuses a
    step by identity server-wide, so a step another test ran counts here too."""
    api = admin_client(stack.env)
    found = api.call("tasks.get_all", {"tags": [f"identity:{identity}"], "search_hidden": True,
                                       "only_fields": ["id", "status"]})["tasks"]
    return [t["status"] for t in found]


@pytest.fixture(scope="module")
def env(local_stack: StackHandle, prefect_server: PrefectServer) -> dict[str, str]:
    return {**os.environ, **OFFLINE, **prefect_server.env}


@pytest.fixture(scope="module")
def first(tiny_model: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("search")
    storage = f"sqlite:///{work / 'studies.db'}"
    out = work / "out.json"
    argv = hpo_argv(tiny_model, storage, out, 3, "--space", "dampening_frac=0.001:0.1:log",
                    "--space", "actorder=static,weight")
    started = time.monotonic()
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return {"report": json.loads(out.read_text()), "argv": argv, "out": out, "stdout": res.stdout,
            "seconds": time.monotonic() - started}


def test_three_trials_run_as_clearml_tasks_with_a_pareto_front(first: dict[str, Any],
                                                               local_stack: StackHandle) -> None:
    report = first["report"]
    trials = report["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3, trials
    assert report["objectives"] == {"recovery": "maximize", "size": "minimize"} and report["pareto"]
    for trial in trials:
        assert 0.001 <= trial["params"]["dampening_frac"] <= 0.1 and trial["params"]["actorder"] in ("static", "weight")
        assert trial["recipe"] == "w4a16" and trial["recipe_args"] == trial["params"]
        assert set(trial["tasks"]) == {"compress", "evaluate"} and trial["model_id"]
        assert 0 < trial["values"]["recovery"] <= 1.5 and trial["values"]["size"] > 0 and trial["recoveries"]
    assert all(trials[n]["pareto"] for n in report["pareto"])
    assert set(report["best"]) == {"recovery", "size"} and report["summary_task_url"].startswith("http")
    # Per trial a compression and an evaluation, each one ClearML task (found by identity on the
    # whole server: a step another test already ran, such as the base evaluation, is reused from
    # its own project); none twice in this project.
    steps = [trial["identities"][step] for trial in trials for step in ("compress", "evaluate")]
    assert len(set(steps)) == 6, steps
    for identity in steps:
        assert statuses_on_server(local_stack, identity) == ["completed"], identity
    assert all(count == 1 for count in identities(work_tasks(local_stack)).values())
    assert "Pareto front: trial" in first["stdout"] and "ClearML summary task:" in first["stdout"]


def test_a_rerun_of_a_finished_search_creates_no_clearml_task(first: dict[str, Any], env: dict[str, str],
                                                              local_stack: StackHandle) -> None:
    before = work_tasks(local_stack)
    api = admin_client(local_stack.env)
    summaries = api.call("tasks.get_all", {"tags": ["recipe-search"], "only_fields": ["id"]})["tasks"]
    res = subprocess.run(first["argv"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    again = json.loads(first["out"].read_text())
    assert [t["values"] for t in again["trials"]] == [t["values"] for t in first["report"]["trials"]]
    assert again["summary_task_url"] == first["report"]["summary_task_url"]
    assert len(work_tasks(local_stack)) == len(before)
    assert len(api.call("tasks.get_all", {"tags": ["recipe-search"], "only_fields": ["id"]})["tasks"]) == \
        len(summaries)


def _study_states(storage: str) -> Counter[str]:
    import optuna

    names = optuna.get_all_study_names(storage=storage)
    if not names:
        return Counter()
    study = optuna.load_study(study_name=names[0], storage=storage)
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def test_killed_search_continues_its_study_without_rerunning_finished_trials(
        tiny_model: Path, env: dict[str, str], local_stack: StackHandle, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    out = tmp_path / "out.json"
    # Another study (num_samples searched, the grid sampler): nothing of the first search is reused.
    argv = hpo_argv(tiny_model, storage, out, 3, "--space", "num_samples=8:12:2", "--sampler", "grid",
                    "--concurrency", "1")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            states = _study_states(storage)
            if states["COMPLETE"] >= 1 and states["RUNNING"] >= 1:
                break
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no trial completed in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed = _study_states(storage)
    assert killed["COMPLETE"] == 1 and killed["RUNNING"] == 1, killed
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    report = json.loads(out.read_text())
    complete = [t for t in report["trials"] if t["state"] == "complete"]
    # the trial in flight at the kill was run again under its own number: the grid is whole
    assert [t["number"] for t in complete] == [0, 1, 2] == [t["number"] for t in report["trials"]]
    assert sorted(t["params"]["num_samples"] for t in complete) == [8, 10, 12]
    # every compression identity ran as exactly one ClearML task on the whole server, killed or not
    # (a compression another test ran with the same arguments is reused, not run again)
    for identity in {t["identities"]["compress"] for t in complete}:
        assert statuses_on_server(local_stack, identity) == ["completed"], identity
    assert all(count == 1 for count in identities(work_tasks(local_stack)).values())
