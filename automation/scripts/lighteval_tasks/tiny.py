"""LightEval tasks over the tiny suite's local data (no hub): multiple choice scored by
log-likelihood accuracy, and short generation scored by exact match. Loaded by LightEval from this
file (`custom_tasks_directory`); a shipped standard of the `lighteval` kind, named `tiny`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lighteval.metrics.metrics import Metrics
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

DATA = str(Path(__file__).resolve().parent / "tiny")


def mc_prompt(line: dict[str, Any], task_name: str = "") -> Doc:
    return Doc(task_name=task_name, query=f"Q: {line['question']}\nA:", choices=[f" {c}" for c in line["choices"]],
               gold_index=int(line["label"]))


def gen_prompt(line: dict[str, Any], task_name: str = "") -> Doc:
    return Doc(task_name=task_name, query=f"Q: {line['question']}\nA:", choices=[f" {line['answer']}"], gold_index=0)


TASKS_TABLE = [
    LightevalTaskConfig(name="tiny_mc", prompt_function=mc_prompt, hf_repo=DATA, hf_subset="mc",
                        hf_avail_splits=["test"], evaluation_splits=["test"], few_shots_split="test",
                        few_shots_select="sequential", metrics=[Metrics.loglikelihood_acc]),
    LightevalTaskConfig(name="tiny_gen", prompt_function=gen_prompt, hf_repo=DATA, hf_subset="gen",
                        hf_avail_splits=["test"], evaluation_splits=["test"], few_shots_split="test",
                        few_shots_select="sequential", generation_size=8, stop_sequence=["\n"],
                        metrics=[Metrics.exact_match]),
]
