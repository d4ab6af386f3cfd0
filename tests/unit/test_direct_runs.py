"""A core script run directly (`python -m automation.scripts.<kind> --spec spec.json --out DIR`),
in a subprocess as a user would, through the same task-form decoding as under an agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import automation.scripts.lib as lib
from automation.scripts.lib import hub_access
from automation.specs.debug import DebugSpec

REPO = Path(__file__).resolve().parents[2]
# No ClearML server here: a direct run must not need one.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}


def run_script(kind: str, spec_path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"automation.scripts.{kind}", "--spec", str(spec_path),
                           "--out", str(out)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_debug_kind_runs_from_a_spec_file(tmp_path: Path) -> None:
    spec = DebugSpec(sleep_s=0.2, steps=2, value=2.5, salt="direct")
    spec_path = tmp_path / "debug.json"
    spec_path.write_text(json.dumps({"kind": "debug", **spec.model_dump(mode="json")}))
    proc = run_script("debug", spec_path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "[progress 100%] step 2/2" in proc.stdout
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["scalars"]["debug/value"] == {"2": 2.5}
    assert results["scalars"]["debug/step"] == {"0": 0.0, "1": 1.0}
    assert results["single_values"]["debug_value"] == 2.5
    summary = json.loads(Path(results["artifacts"]["debug_summary"]).read_text())
    assert summary == {"sleep_s": 0.2, "steps": 2, "value": 2.5, "allocated_mb": 0}


def test_a_spec_file_of_another_kind_is_refused_naming_both(tmp_path: Path) -> None:
    spec_path = tmp_path / "debug.json"
    spec_path.write_text(json.dumps({"kind": "debug", "sleep_s": 0}))
    proc = run_script("compress", spec_path, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "holds a 'debug' spec but runs the 'compress' script" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_bad_spec_file_is_an_error_that_names_the_field(tmp_path: Path) -> None:
    spec_path = tmp_path / "debug.json"
    spec_path.write_text(json.dumps({"kind": "debug", "sleep_s": -1}))
    proc = run_script("debug", spec_path, tmp_path / "out")
    assert proc.returncode == 2 and "sleep_s: Input should be greater than or equal to 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    spec_path.write_text("{not json")
    proc = run_script("debug", spec_path, tmp_path / "out")
    assert proc.returncode == 2 and "cannot read a spec JSON file" in proc.stderr


@pytest.fixture
def fresh_hub(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No hub decision made yet and no HF variables set (all restored afterwards)."""
    monkeypatch.setattr(lib, "_hub_decision", None)
    for key in (*lib.OFFLINE_ENV, "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        monkeypatch.setenv(key, "x")  # recorded, so the teardown removes what the test sets
        monkeypatch.delenv(key)
    return monkeypatch


def test_the_first_hub_decision_of_a_step_holds(fresh_hub: pytest.MonkeyPatch) -> None:
    assert hub_access(needed=True) is True
    assert hub_access(needed=False) is True  # a later, partial view of the step changes nothing
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    fresh_hub.setattr(lib, "_hub_decision", None)
    assert hub_access(needed=False) is False and hub_access(needed=True) is False
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_an_explicit_hub_setting_wins(fresh_hub: pytest.MonkeyPatch) -> None:
    fresh_hub.setenv("HF_HUB_OFFLINE", "0")
    hub_access(needed=False)
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["HF_DATASETS_OFFLINE"] == "1"


@pytest.mark.parametrize(("decided", "tasks", "online"), [
    (True, ["tiny", "arc_easy"], True),  # the evaluate script decided for the whole step
    (True, ["tiny"], True),  # e.g. a hub model: evaluate() cannot see that
    (None, ["tiny", "arc_easy"], True),  # evaluate() alone: arc_easy is not a local task
    (None, ["tiny"], False),
])
def test_evaluate_keeps_the_step_hub_decision(fresh_hub: pytest.MonkeyPatch, decided: bool | None,
                                              tasks: list[str], online: bool) -> None:
    from automation.scripts.lib.evaluate_core import evaluate
    from automation.standards import suite_dir

    if decided is not None:
        hub_access(needed=decided)
    fresh_hub.setitem(sys.modules, "lm_eval", None)  # stop right where lm-eval would be imported
    with pytest.raises(ImportError):
        evaluate(Path("model"), tasks, include_path=suite_dir("tiny"))
    assert ("HF_HUB_OFFLINE" not in os.environ) is online
