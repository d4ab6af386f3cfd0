"""`ModelRef`: the model a task reads.

Four sources, one string form each (the CLI and the ClearML UI take these):

    hf:org/name[@revision]   or a bare  org/name[@revision]   a Hugging Face model id
    /abs/or/relative/path    a local directory (must exist; stored absolute)
    clearml:<model id>       a ClearML model (connected as the task's input model: lineage)
    ModelRef.from_result(r)  an upstream task's TaskResult: its output model (a ClearML model)

A ClearML model is what flows between steps: weights never travel through the orchestrator; the
agent downloads them with `InputModel(id).get_local_copy()`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from automation.results import TaskResult

ModelSource = Literal["hf", "path", "clearml"]
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_CLEARML_ID = re.compile(r"^[\w\-]{6,64}$")


class ModelRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: ModelSource = Field(description="hf (hub id), path (local directory) or clearml (model id)")
    id: str = Field(min_length=1, description="hub id, absolute path, or ClearML model id")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit); hf only")
    upstream_task: str | None = Field(None, description="the ClearML task that produced the model (lineage)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = parse_model_ref(value)
        elif isinstance(value, TaskResult):
            return cls.from_result(value)
        if isinstance(value, dict) and value.get("source") == "path" and isinstance(value.get("id"), str):
            path = Path(value["id"]).expanduser()
            if path.exists():  # stored absolute, so identity does not depend on the CWD
                value = {**value, "id": str(path.resolve())}
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelRef:
        if self.source == "path":
            if not Path(self.id).expanduser().exists():
                raise ValueError(f"model path '{self.id}' does not exist (a local path must exist both where the "
                                 "spec is built and on the agent that runs the task; upload the model to ClearML "
                                 "and give clearml:<id> otherwise)")
        elif self.source == "hf":
            if not _HF_ID.match(self.id):
                raise ValueError(f"'{self.id}' is not a Hugging Face model id (org/name)")
        elif self.source == "clearml" and not _CLEARML_ID.match(self.id):
            raise ValueError(f"'{self.id}' is not a ClearML model id")
        if self.revision is not None and self.source != "hf":
            raise ValueError("revision applies to Hugging Face models only")
        return self

    @classmethod
    def from_result(cls, result: TaskResult) -> ModelRef:
        """The output model of a finished upstream task."""
        if not result.model_id:
            raise ValueError(f"task {result.task_id} ({result.kind}) has no output model to take as input")
        return cls(source="clearml", id=result.model_id, upstream_task=result.task_id)

    @property
    def clearml_model_id(self) -> str | None:
        return self.id if self.source == "clearml" else None

    def local_path(self) -> Path | None:
        return Path(self.id) if self.source == "path" else None

    def config(self) -> dict[str, Any] | None:
        """The model's config.json when it is readable here without downloading anything
        (a local directory, or a hub model already in the local cache); else None."""
        directory = self.local_path()
        if directory is None and self.source == "hf":
            directory = _hf_cache_dir(self.id, self.revision)
        if directory is None:
            return None
        path = directory / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def pinned(self) -> bool:
        """A hub model at a full commit id (the only revision that cannot move)."""
        return self.source == "hf" and bool(self.revision) and bool(_COMMIT.match(self.revision or ""))

    def at_revision(self, commit: str) -> ModelRef:
        return ModelRef(source=self.source, id=self.id, revision=commit)

    def cached_commit(self) -> str | None:
        """The commit the local hub cache holds for this model's revision (None when not cached)."""
        directory = _hf_cache_dir(self.id, self.revision) if self.source == "hf" else None
        return directory.name if directory is not None else None

    def has_tokenizer(self) -> bool | None:
        """True/False for a local directory; None when it cannot be known here."""
        directory = self.local_path()
        if directory is None:
            return None
        names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        return any((directory / n).is_file() for n in names)

    def __str__(self) -> str:
        if self.source == "hf":
            return f"hf:{self.id}" + (f"@{self.revision}" if self.revision else "")
        if self.source == "clearml":
            return f"clearml:{self.id}"
        return self.id

    def short_name(self) -> str:
        """A readable name for output models and task names."""
        if self.source == "clearml":
            return f"clearml-{self.id[:8]}"
        return Path(self.id).name or self.id


def parse_model_ref(text: str) -> dict[str, Any]:
    """The string form -> ModelRef fields (validation happens in the model)."""
    text = text.strip()
    if not text:
        raise ValueError("empty model reference")
    if text.startswith("clearml:"):
        return {"source": "clearml", "id": text.removeprefix("clearml:").strip()}
    if text.startswith("hf:"):
        ident, _, revision = text.removeprefix("hf:").strip().partition("@")
        return {"source": "hf", "id": ident, "revision": revision or None}
    if text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists():
        return {"source": "path", "id": text}
    ident, _, revision = text.partition("@")
    if _HF_ID.match(ident) and "/" in ident:
        return {"source": "hf", "id": ident, "revision": revision or None}
    # Neither a hub id nor an existing path: treat it as a path, which then fails naming it.
    return {"source": "path", "id": text}


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _hf_cache_dir(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot directory of a cached hub model, without network access (or None)."""
    import os

    root = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface"))
                / "hub").expanduser()
    repo = root / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    try:
        commit = ref.read_text().strip() if ref.is_file() else (revision or "")
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None
