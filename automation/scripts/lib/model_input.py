"""Turn a spec's ModelRef into a local directory inside a core script."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from automation.errors import ModelInputError
from automation.specs.model_ref import ModelRef


def _task_input_model(report: Any, model_id: str) -> Path | None:
    """The task's connected input model, when it is the one the spec names (lineage path)."""
    task = getattr(report, "task", None)
    if task is None:
        return None
    for model in (task.models.get("input") or []):
        if str(getattr(model, "id", "")) == model_id:
            return Path(model.get_local_copy(raise_on_error=True))
    return None


def _model_dir(path: Path) -> Path:
    """A downloaded package may hold the model one directory down."""
    if path.is_dir() and not (path / "config.json").is_file():
        subdirs = [p for p in path.iterdir() if p.is_dir()]
        if len(subdirs) == 1 and (subdirs[0] / "config.json").is_file():
            return subdirs[0]
    return path


def local_model_dir(ref: ModelRef, report: Any) -> Path:
    """A local directory holding the model `ref` names (downloaded or read from a cache as needed).

    Hub access is the caller's to set (`hub_access`) before this: it knows the whole step.
    """
    if ref.source == "path":
        local = Path(ref.id).expanduser()
        if not local.is_dir():
            raise ModelInputError(f"model path '{ref.id}' does not exist on this host ({socket.gethostname()}): a "
                                  "local path must exist on the agent that runs the task (upload the model to "
                                  "ClearML and give clearml:<model id> instead)")
        return local
    started = time.monotonic()
    try:
        return _fetch(ref, report)
    finally:
        spent = getattr(report, "spent", None)  # the task's phase timings (runtime.ClearMLReporter)
        if isinstance(spent, dict):
            spent["input_model_s"] = spent.get("input_model_s", 0.0) + time.monotonic() - started


def _fetch(ref: ModelRef, report: Any) -> Path:
    if ref.source == "hf":
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(ref.id, revision=ref.revision))
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            hint = ("HF_HUB_OFFLINE is set: it must be in the local Hugging Face cache" if offline else
                    "check the id, the revision, network access and HF_TOKEN for gated models")
            raise ModelInputError(f"model hf:{ref.id} is not available ({type(exc).__name__}: {exc}); "
                                  f"{hint}") from exc
    path = _task_input_model(report, ref.id)
    if path is None:
        from clearml import InputModel

        try:
            model = InputModel(model_id=ref.id)
            path = Path(model.get_local_copy(raise_on_error=True))
        except Exception as exc:
            raise ModelInputError(f"ClearML model {ref.id} could not be fetched ({type(exc).__name__}: {exc})") \
                from exc
    return _model_dir(path)


def work_dir(report: Any, kind: str) -> Path:
    """Where a script writes its outputs: the --out directory of a direct run, else a temp dir."""
    out = getattr(report, "out_dir", None)
    if out is not None:
        path = Path(out) / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"automation-{kind}-"))


def has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False
