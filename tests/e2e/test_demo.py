"""`automation demo`, the main job, through the real console command on a data directory of its own:
with `--keep` everything it printed is live afterwards (the Prefect flow run, the ClearML pages);
without it the stack is gone and `automation local up` brings the run back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def _cli(*args: str, home: Path, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "PREFECT_"))}
    env.update({"HOME": str(home), "COLUMNS": "250"})  # rich wraps at the terminal width
    return subprocess.run([sys.executable, "-m", "automation.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s)


def _flow_runs(api_url: str) -> list[dict[str, object]]:
    res = httpx.post(f"{api_url}/flow_runs/filter", json={"limit": 50}, timeout=10)
    res.raise_for_status()
    return list(res.json())


def test_demo_keep_leaves_what_it_printed_live_and_local_up_brings_it_back(tmp_path: Path,
                                                                            session_home: Path) -> None:
    data = tmp_path / "demo"
    out = tmp_path / "report.json"
    try:
        kept = _cli("demo", "--keep", "--data-dir", str(data), "--json", str(out), home=session_home)
        text = kept.stdout + kept.stderr
        assert kept.returncode == 0, text[-4000:]
        assert "report outcome pass over 3 cells" in text, text[-3000:]
        # every compressed model's evaluation is gated on the documents both models answered
        report = json.loads(out.read_text())
        for cell in (c for c in report["cells"] if c["scheme"] != "base"):
            paired = [g["paired"] for g in cell["accuracy_gates"] if g.get("paired")]
            assert paired and all(p["documents"] > 0 for p in paired), cell["accuracy_gates"]
        assert "R->W" in text, text[-3000:]
        # Both agents read models through one ClearML cache: one extracted copy of each compressed
        # model (its evaluation ran on one agent, its benchmark on the other), none in their homes.
        extracted = sorted((data / "cache" / "clearml").rglob("*_archive_cache"))
        assert len(extracted) == 2 and all((d / "config.json").is_file() or any(d.glob("*/config.json"))
                                           for d in extracted), extracted
        assert not list((data / "agents").glob("*/.clearml/cache")), list((data / "agents").rglob("cache"))
        assert f"stop it with `automation local down --data-dir {data}`" in text, text[-2000:]
        flow_url = re.search(r"Prefect flow run: (\S+)", text)
        pages = re.search(r"ClearML pages: (\S+)", text)
        summary = re.search(r"ClearML summary task: (\S+)", text)
        assert flow_url and pages and summary, text[-2000:]
        # Live after the command ended: the Prefect UI page of the run, its state in the API, the
        # ClearML pages and the summary task's page.
        # (The UI answers a page's path with its app only when asked for HTML, as a browser asks.)
        assert httpx.get(flow_url.group(1), headers={"Accept": "text/html"}, timeout=10).status_code == 200
        ui = flow_url.group(1).split("/flow-runs/")[0]
        runs = _flow_runs(f"{ui}/api")
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        assert httpx.get(pages.group(1), timeout=10).status_code == 200
        assert httpx.get(summary.group(1), timeout=10).status_code == 200

        down = _cli("local", "down", "--data-dir", str(data), home=session_home, timeout_s=120)
        assert down.returncode == 0 and "prefect-server" in down.stdout and "server" in down.stdout, down.stdout

        # Without --keep (every step reused now): the stack it started is stopped, and it says how
        # to bring the run back; `local up` does.
        again = _cli("demo", "--data-dir", str(data), home=session_home)
        text = again.stdout + again.stderr
        assert again.returncode == 0, text[-4000:]
        assert f"the stack is stopped; `automation local up --data-dir {data}` brings it back" in text, text[-2000:]
        with pytest.raises(httpx.HTTPError):
            httpx.get(pages.group(1), timeout=5)
        up = _cli("local", "up", "--data-dir", str(data), "--no-agents", home=session_home, timeout_s=300)
        assert up.returncode == 0, up.stderr[-3000:]
        runs = _flow_runs(f"{ui}/api")  # also the served nightly's scheduled runs now
        demo_runs = [r for r in runs if r["state_type"] == "COMPLETED"]
        assert len(demo_runs) == 2 and any(flow_url.group(1).endswith(str(r["id"])) for r in demo_runs), runs
        assert httpx.get(summary.group(1), timeout=10).status_code == 200
    finally:
        _cli("local", "down", "--data-dir", str(data), home=session_home, timeout_s=120)
