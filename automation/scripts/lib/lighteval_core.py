"""Run LightEval 0.13 (transformers backend) on a model directory and summarise its results.

Three things of LightEval 0.13 are worked around here, each for a reason that is LightEval's:
- Building its task registry imports every built-in task module, and one of them
  (`tasks/tiny_benchmarks.py`) downloads a file from GitHub at import: offline that import
  fails. When every task asked for is in the shipped task file, only that file is registered.
- Its response cache lives under `cache_dir/<model_name>`, and an absolute model path as the
  name puts it inside the model's folder, keyed by the configuration only: a model rebuilt at the
  same path would get the old answers. The cache is turned off; a step runs once per identity.
- Its results use `task:fewshot` keys for the scores and `task|fewshot` for the configs.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from automation.scripts.lib import peak_rss_mb, write_json


def _only_custom_tasks() -> None:
    from lighteval.tasks.registry import Registry

    def load(custom_tasks: Any = None, load_multilingual: bool = False) -> dict[str, Any]:
        if custom_tasks is None:
            return {}
        return dict(Registry._extract_configs(Registry.create_custom_tasks_module(custom_tasks)))

    Registry.load_all_task_configs = staticmethod(load)  # type: ignore[method-assign]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(float(value)) else None


def summarise(results: dict[str, Any], counts: dict[str, int], hashes: dict[str, Any]) -> dict[str, Any]:
    """`{"tiny_mc:0": {"acc": v, "acc_stderr": s}, "all": {...}}` -> per task (without the few-shot
    suffix) its metrics with their stderr, the number of samples scored and LightEval's hashes of
    the examples and prompts (two runs with equal hashes saw the same prompts)."""
    tasks: dict[str, Any] = {}
    for key, entry in (results.get("results") or {}).items():
        if key == "all" or not isinstance(entry, dict):
            continue
        task = key.rsplit(":", 1)[0].split("|")[-1]
        metrics = {name: {"value": _number(value), "stderr": _number(entry.get(f"{name}_stderr"))}
                   for name, value in entry.items() if not name.endswith("_stderr")}
        tasks[task] = {"metrics": metrics, "n_samples": counts.get(key), "hashes": hashes.get(key)}
    return {"tasks": tasks}


def evaluate(model_dir: Path, tasks: list[str], custom_tasks: Path | None, local_only: bool, out_dir: Path,
             max_samples: int | None = None, batch_size: int = 8, dtype: str = "auto", device: str = "cpu",
             use_chat_template: bool = False, system_prompt: str | None = None) -> dict[str, Any]:
    """LightEval's Pipeline over `tasks` (TASK|FEWSHOT); its whole results dict goes to
    `out_dir/lighteval_results.json`, a summary is returned."""
    started = time.monotonic()
    if local_only:
        _only_custom_tasks()
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.transformers.transformers_model import TransformersModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = EvaluationTracker(output_dir=str(out_dir / "lighteval"), save_details=False, push_to_hub=False)
    params = PipelineParameters(launcher_type=ParallelismManager.ACCELERATE,
                                custom_tasks_directory=str(custom_tasks) if custom_tasks else None,
                                max_samples=max_samples)
    config = TransformersModelConfig(model_name=str(model_dir), device=device, batch_size=batch_size,
                                     dtype=None if dtype == "auto" else dtype,
                                     override_chat_template=use_chat_template, system_prompt=system_prompt)
    pipeline = Pipeline(tasks=",".join(tasks), pipeline_parameters=params, evaluation_tracker=tracker,
                        model_config=config)
    pipeline.model._cache = None  # see the module docstring
    eval_started = time.monotonic()
    pipeline.evaluate()
    results = pipeline.get_results()
    full = out_dir / "lighteval_results.json"
    full.write_text(json.dumps(results, indent=2, default=str))
    logger = tracker.details_logger
    # the details are keyed `task|fewshot`, the scores `task:fewshot`
    counts = {str(task).replace("|", ":"): len(details) for task, details in logger.details.items()}
    hashes = {str(task).replace("|", ":"): dict(getattr(compiled, "hashes", {}) or {})
              for task, compiled in logger.compiled_details.items()}
    summary = summarise(results, counts, hashes)
    import lighteval

    summary.update({"model_dir": str(model_dir), "requested_tasks": list(tasks), "max_samples": max_samples,
                    "lighteval_version": getattr(lighteval, "__version__", "unknown"),
                    "eval_s": round(time.monotonic() - eval_started, 2),
                    "wall_s": round(time.monotonic() - started, 2), "peak_rss_mb": peak_rss_mb()})
    write_json(out_dir / "lighteval_summary.json", summary)
    return summary
