"""Plain, typed ML building blocks for the core scripts (compress, evaluate, benchmark).

Each module returns a small JSON-serialisable dict. Heavy libraries are imported inside the
functions, so importing this package (or `tiny_model.tiny_corpus`) stays cheap.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and of its waited-for children) in MiB.

    Each step runs in its own process, so the lifetime peak is the step's peak.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss is KiB on Linux but bytes on macOS.
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return round(max(own, children) * scale, 1)


def dir_size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def weights_size_bytes(path: Path) -> int:
    """Bytes of weight files only, so that tokenizer and config files do not blur the ratio."""
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) + sum(
        p.stat().st_size for p in Path(path).glob("*.bin")
    )


# This process's hub decision, once made (see `hub_access`); None until then.
_hub_decision: bool | None = None


def hub_access(needed: bool) -> bool:
    """Set this step's Hugging Face hub access, once, before any HF library is imported.

    A step that needs nothing from the hub (local or ClearML model, built-in calibration set,
    local suite) goes offline: without a network a hub call can hang, and with one it only
    checks for updates. A step that downloads a hub model or dataset leaves the environment as
    it is. Either way a variable the user set explicitly wins (HF_HUB_OFFLINE=1 with a warm
    cache).

    The first call decides for the whole process (each step runs in its own): the script's main
    knows the whole step, while a library function called later sees only its part of it (the
    suite's directory, not the extra hub tasks), so a later call is a no-op. The libraries read
    these variables at import anyway. Returns the decision in force.
    """
    global _hub_decision
    if _hub_decision is not None:
        return _hub_decision
    _hub_decision = needed
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not needed:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
    return needed


def write_json(path: Path, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))
