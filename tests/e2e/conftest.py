"""e2e fixtures: the tiny model, built once per session (its path is part of every spec's identity,
so tests that share it also share finished ClearML work)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-model") / "tiny"
    subprocess.run([sys.executable, "-m", "automation.scripts.lib.tiny_model", "--out", str(out)],
                   cwd=REPO, env=OFFLINE_ENV, check=True, capture_output=True, timeout=300)
    return out
