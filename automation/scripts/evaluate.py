"""Core script of the `evaluate` kind: lm-eval on a suite, every metric reported.

Reports each metric as a scalar (title = task, series = metric) AND a single value
`<task>/<metric>` with companions `<task>/<metric>:stderr` and `<task>/<metric>:n` (sample count);
lm-eval group averages and the suite's own averages the same way; the summary as artifact
`eval_results` and lm-eval's full results (task configs, versions, n-shot, higher_is_better; no
per-sample outputs) as artifact `lm_eval_results`; each document's score per task and metric (for
the paired comparison of two models on the same documents) as artifact `samples`; and, when the
input is a ClearML model, the values as that model's metadata (so a model carries its scores).
"""

from __future__ import annotations

import time
from typing import Any

from automation.results import SAMPLES_ARTIFACT, SAMPLES_SUFFIX, STDERR_SUFFIX
from automation.scripts.lib import hub_access
from automation.scripts.lib.model_input import has_gpu, local_model_dir, work_dir
from automation.scripts.runtime import Reporter, run
from automation.specs.base import TaskSpec
from automation.specs.evaluate import EvaluateSpec
from automation.standards import suite_averages, tasks_are_local


def _report_metric(report: Reporter, task: str, metric: str, value: float, stderr: float | None,
                   n: int | None, values: dict[str, float]) -> None:
    name = f"{task}/{metric}"
    report.scalar(task, metric, value)
    report.single_value(name, value)
    values[name] = value
    if stderr is not None:
        report.single_value(name + STDERR_SUFFIX, stderr)
        values[name + STDERR_SUFFIX] = stderr
    if n is not None:
        report.single_value(name + SAMPLES_SUFFIX, float(n))
        values[name + SAMPLES_SUFFIX] = float(n)


def _attach_to_model(model_id: str, values: dict[str, float], report: Reporter) -> None:
    from clearml import InputModel

    try:
        model: Any = InputModel(model_id=model_id)
        metadata = {f"eval/{k}": {"key": f"eval/{k}", "type": "float", "value": repr(v)} for k, v in values.items()}
        model.set_all_metadata(metadata, replace=False)
    except Exception as exc:  # scores are already on the task; metadata is a convenience
        report.log(f"warning: could not attach metrics to model {model_id}: {type(exc).__name__}: {exc}")


def main(spec: TaskSpec, report: Reporter) -> None:
    assert isinstance(spec, EvaluateSpec)
    started = time.monotonic()
    from automation.scripts.lib.evaluate_core import evaluate

    suite = spec.resolved_suite()
    extra = [t for t in spec.tasks if not suite or t not in suite.task_names()]
    tasks = [*(suite.task_names() if suite else []), *extra]
    # Decided once for the step, before any HF library is imported; evaluate() keeps it.
    include = suite.include_dir() if suite else None
    hub_access(needed=spec.model.source == "hf" or include is None or not tasks_are_local(include, tasks))
    report.progress(2, f"fetching model {spec.model}")
    model_dir = local_model_dir(spec.model, report)
    gpu = has_gpu()
    backend = spec.backend if spec.backend != "auto" else ("vllm" if gpu else "hf")
    device = spec.device or ("cuda" if gpu else "cpu")
    fewshot = {t.task: t.num_fewshot for t in suite.tasks} if suite else {}
    limit: int | float | None = spec.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    full_results = work_dir(report, "evaluate") / "lm_eval_results.json"
    samples = full_results.with_name(SAMPLES_ARTIFACT + ".json")
    report.progress(10, f"evaluating {', '.join(tasks)} with lm-eval ({backend} on {device})")
    summary = evaluate(model_dir, tasks, include_path=include,
                       num_fewshot=spec.num_fewshot, limit=limit, batch_size=spec.batch_size, backend=backend,
                       device=device, dtype=spec.dtype, vllm_args=spec.vllm_args, seed=spec.seed,
                       task_fewshot=fewshot, full_results_path=full_results, samples_path=samples)
    report.progress(85, "reporting metrics")

    values: dict[str, float] = {}
    for task, entry in sorted(summary["tasks"].items()):
        for metric, mv in sorted(entry["metrics"].items()):
            if mv["value"] is not None:
                _report_metric(report, task, metric, float(mv["value"]), mv["stderr"], entry.get("n_samples"),
                               values)
    for group, entry in sorted(summary["groups"].items()):
        n = sum(int(summary["tasks"].get(t, {}).get("n_samples") or 0) for t in entry.get("subtasks", [])) or None
        for metric, mv in sorted(entry["metrics"].items()):
            if mv["value"] is not None:
                _report_metric(report, group, metric, float(mv["value"]), mv["stderr"], n, values)
    averages = suite_averages(suite, summary) if suite else {}
    for name, value in averages.items():
        _report_metric(report, "suite", name, value, None, None, values)
    wall = round(time.monotonic() - started, 2)
    report.scalar("time", "wall_s", wall)
    report.scalar("memory", "peak_rss_mb", float(summary["peak_rss_mb"]))
    summary.update({"suite": suite.name if suite else None, "suite_averages": averages, "model": str(spec.model),
                    "device": device, "script_wall_s": wall})
    report.artifact("eval_results", summary)
    if full_results.is_file():
        report.artifact("lm_eval_results", full_results)
    if samples.is_file():
        report.artifact(SAMPLES_ARTIFACT, samples)
    if spec.attach_to_model and spec.model.clearml_model_id and getattr(report, "task", None) is not None:
        _attach_to_model(spec.model.clearml_model_id, values, report)
    report.progress(100, "done")


if __name__ == "__main__":
    run(main, kind="evaluate")
