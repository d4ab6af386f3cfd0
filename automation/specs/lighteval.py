"""The `lighteval` kind: Hugging Face LightEval (0.13, transformers backend) on a model.

Tasks are LightEval's own (`gsm8k|5`, which read their data from the hub) or those of a shipped
task file (`custom_tasks: tiny`, under `automation/scripts/lighteval_tasks/`, over local data): only
files of this repository run, never task code sent with a spec. The flows run it as an extra
evaluation of every cell (`EvaluationOptions.lighteval_tasks`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, field_validator

from automation.specs.base import TaskSpec
from automation.specs.model_ref import ModelRef

# LightEval 0.13 hashes prompt text with xxhash, which 4.x refuses for str; it pins nltk itself.
LIGHTEVAL_PACKAGES = ("lighteval==0.13.0", "transformers==5.17.0", "xxhash==3.6.0")
TASKS_DIR = Path(__file__).resolve().parents[1] / "scripts" / "lighteval_tasks"
_TASK = re.compile(r"^[A-Za-z0-9_.:-]+(\|[A-Za-z0-9_.:-]+)?\|\d{1,3}$")


def task_files() -> list[str]:
    """The shipped LightEval task files, by name."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.py") if p.stem != "__init__")


def _data_files(card: Path) -> list[Path]:
    """The files a local dataset card's `configs` name (its front matter), relative to its folder."""
    if not card.is_file():
        return []
    text = card.read_text()
    meta = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else {}
    paths = [entry["path"] for config in (meta or {}).get("configs", [])
             for entry in config.get("data_files", []) if isinstance(entry, dict) and "path" in entry]
    return [(card.parent / p).resolve() for p in paths]


def task_file_digest(name: str) -> str:
    """sha256 over a task file, its local dataset card and every data file the card names: what the
    tasks are, wherever the package is installed."""
    source = TASKS_DIR / f"{name}.py"
    card = TASKS_DIR / name / "README.md"
    digest = hashlib.sha256()
    for path in (source, card, *_data_files(card)):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class LightEvalSpec(TaskSpec):
    kind: ClassVar[str] = "lighteval"
    script_module: ClassVar[str] = "automation.scripts.lighteval"
    base_packages: ClassVar[tuple[str, ...]] = LIGHTEVAL_PACKAGES
    reports: ClassVar[str] = ("lighteval.TASK/METRIC with :stderr and :n; artifacts lighteval_summary (with "
                              "LightEval's example and prompt hashes), lighteval_results")
    task_type: ClassVar[str] = "testing"

    model: ModelRef = Field(description="model to evaluate: hf:org/name[@rev], a local path, clearml:<model id>")
    tasks: tuple[str, ...] = Field(min_length=1, description="LightEval tasks as TASK|FEWSHOT (e.g. tiny_mc|0, "
                                                            "gsm8k|5)")
    custom_tasks: str | None = Field(None, description="a shipped LightEval task file by name (tiny) whose tasks "
                                                       "`tasks` may name")
    max_samples: int | None = Field(None, ge=1, description="samples per task (default: all)")
    batch_size: int = Field(8, ge=1, le=1024, description="batch size")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="model dtype")
    device: str | None = Field(None, description="device (default: cuda if present, else cpu)")
    use_chat_template: bool = Field(False, description="format prompts with the model's chat template")
    system_prompt: str | None = Field(None, min_length=1, description="system prompt before every request")

    @field_validator("tasks")
    @classmethod
    def _task_form(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for task in value:
            if not _TASK.match(task):
                raise ValueError(f"{task!r} is not TASK|FEWSHOT (e.g. 'tiny_mc|0', 'gsm8k|5')")
        if len(set(value)) != len(value):
            raise ValueError(f"{list(value)} names a task twice")
        return value

    @field_validator("custom_tasks")
    @classmethod
    def _shipped(cls, value: str | None) -> str | None:
        if value is not None and value not in task_files():
            raise ValueError(f"no shipped LightEval task file {value!r} (have: {', '.join(task_files())}); task "
                             "code runs from this repository only: add a file under "
                             "automation/scripts/lighteval_tasks/")
        return value

    def task_names(self) -> list[str]:
        return [t.rsplit("|", 1)[0] for t in self.tasks]

    def custom_tasks_file(self) -> Path | None:
        return TASKS_DIR / f"{self.custom_tasks}.py" if self.custom_tasks else None

    def is_local(self) -> bool:
        """Every task is one of the shipped task file's (read from its text: the file imports
        LightEval, which a spec does not), so nothing is read from the hub."""
        path = self.custom_tasks_file()
        if path is None:
            return False
        defined = set(re.findall(r'LightevalTaskConfig\(\s*name="([^"]+)"', path.read_text()))
        return set(self.task_names()) <= defined

    def standards_content(self) -> dict[str, Any]:
        return {"custom_tasks": task_file_digest(self.custom_tasks)} if self.custom_tasks else {}

    def input_model_id(self) -> str | None:
        return self.model.clearml_model_id

    def task_name(self) -> str:
        what = "+".join(self.task_names())[:40]
        return self.name or f"lighteval-{self.model.short_name()}-{what}-{self.identity()[:8]}"
