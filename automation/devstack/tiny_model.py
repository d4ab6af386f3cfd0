"""The tiny model of the embedded default, built once per data directory by the core script that
builds it (`automation.scripts.lib.tiny_model`, in a child process: this side imports no ML library)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from automation.errors import StackError


def ensure_tiny_model(target: Path, env: dict[str, str]) -> Path:
    """The tiny model, built on first use (~5 s) and kept: same path, same weights, same identity."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "automation.scripts.lib.tiny_model", "--out", str(target)],
                         env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise StackError(f"building the tiny model failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return target
