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

from automation.errors import AcceleratorRequired
from automation.results import SAMPLES_ARTIFACT
from automation.scripts.lib import hub_access
from automation.scripts.lib.evaluation_report import report_summary, upload_results
from automation.scripts.lib.model_input import has_gpu, local_model_dir, work_dir
from automation.scripts.runtime import Reporter, run
from automation.specs.base import TaskSpec
from automation.specs.evaluate import EvaluateSpec
from automation.standards import tasks_are_local


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
    from automation.scripts.lib.evaluate_core import evaluate, vllm_available

    suite = spec.resolved_suite()
    tasks = spec.task_names()
    # Decided once for the step, before any HF library is imported; evaluate() keeps it.
    include = suite.include_dir() if suite else None
    hub_access(needed=spec.model.source == "hf" or include is None or not tasks_are_local(include, tasks))
    report.progress(2, f"fetching model {spec.model}")
    model_dir = local_model_dir(spec.model, report)
    gpu = has_gpu()
    if spec.backend == "vllm" and not gpu:
        raise AcceleratorRequired("backend 'vllm' needs a GPU and this host has none; send the step to a GPU "
                                  "queue, or use backend 'hf' (or 'auto') on CPU")
    # auto: vLLM where it can run (a GPU, and vLLM installed: a task with backend 'vllm' lists it)
    backend = spec.backend if spec.backend != "auto" else ("vllm" if gpu and vllm_available() else "hf")
    device = spec.device or ("cuda" if gpu else "cpu")
    full_results = work_dir(report, "evaluate") / "lm_eval_results.json"
    samples = full_results.with_name(SAMPLES_ARTIFACT + ".json")
    report.progress(10, f"evaluating {', '.join(tasks)} with lm-eval ({backend} on {device})")
    summary = evaluate(model_dir, tasks, include_path=include, batch_size=spec.batch_size, backend=backend,
                       device=device, dtype=spec.dtype, vllm_args=spec.vllm_args, model_args=spec.model_args,
                       tensor_parallel_size=spec.tensor_parallel_size, full_results_path=full_results,
                       samples_path=samples, **spec.lm_eval_kwargs())
    report.progress(85, "reporting metrics")
    values, averages = report_summary(report, suite, summary)
    wall = round(time.monotonic() - started, 2)
    report.scalar("time", "wall_s", wall)
    report.scalar("memory", "peak_rss_mb", float(summary["peak_rss_mb"]))
    summary.update({"suite": suite.name if suite else None, "suite_averages": averages, "model": str(spec.model),
                    "device": device, "script_wall_s": wall})
    upload_results(report, summary, full_results, samples)
    if spec.attach_to_model and spec.model.clearml_model_id and getattr(report, "task", None) is not None:
        _attach_to_model(spec.model.clearml_model_id, values, report)
    report.progress(100, "done")


if __name__ == "__main__":
    run(main, kind="evaluate")
