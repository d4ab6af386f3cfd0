"""Smoke of the benchmark harness (`python -m benchmarks ... --quick`), so it cannot rot.

Runs the harness as a user would, in a subprocess with its own local stack and Prefect server,
and checks that the JSON has the keys the issue names with sane values. Not a timed test: no
speed target is asserted here (the full run's figures live in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testing import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = ["roundtrip", "polling", "submission", "rerun", "drills"]


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"missing key {dotted} (at {part}) in {json.dumps(data)[:2000]}"
        node = node[part]
    return node


def test_quick_benchmarks_write_every_key(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "PREFECT_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *NAMES, "--quick", "--trials", "1", "--json", str(out),
         "--data-dir", str(tmp_path / "data")],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert set(NAMES) <= set(data), data.keys()

    assert _get(data, "roundtrip.wall_s.median") > 0
    for phase in ("submit", "wait", "read"):
        assert _get(data, f"roundtrip.calls.{phase}") > 0, phase
    assert _get(data, "roundtrip.per_trial")[0]["calls_by_endpoint"].get("tasks.create") == 1

    ours, naive = _get(data, "polling.calls_per_tick.ours"), _get(data, "polling.calls_per_tick.naive")
    ratio = _get(data, "polling.ratio")
    assert set(ours) == set(naive) == set(ratio) and "1" in ours and len(ours) >= 2
    for n in ours:
        assert 1 <= ours[n] <= 2, ours  # one tasks.get_all per tick, whatever N
        assert naive[n] >= int(n), naive  # at least one call per task per tick
    assert _get(data, "polling.calls_per_minute.ours")

    for key in ("submission.calls_per_task.ours", "submission.calls_per_task.sdk",
                "submission.ms_per_task.ours", "submission.ms_per_task.sdk"):
        assert _get(data, key) > 0, key
    assert _get(data, "submission.calls_per_task.ours") < _get(data, "submission.calls_per_task.sdk")

    assert _get(data, "rerun.new_tasks_second_run") == 0
    assert _get(data, "rerun.seconds_second_run") > 0

    assert _get(data, "drills.kill.duplicates") == 0
    assert _get(data, "drills.kill.lost_results") == 0
    assert _get(data, "drills.faults.failed_flows") == 0
    assert _get(data, "drills.faults.duplicates") == 0
    assert sum(_get(data, "drills.faults.injected").values()) > 0
    assert _get(data, "drills.cancel.seconds_to_stop_all.max") >= 0
    assert _get(data, "drills.cancel.active_again_after_stop") == 0  # every stop held (a correctness property)
    recovered, killed = _get(data, "drills.agent_kill.recovered"), _get(data, "drills.agent_kill.killed")
    assert isinstance(recovered, int) and recovered == killed  # every killed task process was recovered
    assert "benchmarks (quick mode)" in proc.stdout
