"""Core script of the `lighteval` kind: LightEval on a model, every metric reported.

Reports each metric as a scalar (title = `lighteval.<task>`, series = metric) and as a single value
`lighteval.<task>/<metric>` with companions `:stderr` and `:n` (samples scored), prefixed so that
they stand beside lm-eval's metrics of the same task names in one cell; the summary as artifact
`lighteval_summary` and LightEval's whole results (configs, versions, hashes) as
`lighteval_results`.
"""

from __future__ import annotations

import time

from automation.scripts.lib import hub_access
from automation.scripts.lib.evaluation_report import report_metric
from automation.scripts.lib.model_input import has_gpu, local_model_dir, work_dir
from automation.scripts.runtime import Reporter, run
from automation.specs.base import TaskSpec
from automation.specs.lighteval import LightEvalSpec

PREFIX = "lighteval."


def main(spec: TaskSpec, report: Reporter) -> None:
    assert isinstance(spec, LightEvalSpec)
    started = time.monotonic()
    local = spec.is_local()
    hub_access(needed=spec.model.source == "hf" or not local)
    from automation.scripts.lib.lighteval_core import evaluate

    report.progress(2, f"fetching model {spec.model}")
    model_dir = local_model_dir(spec.model, report)
    device = spec.device or ("cuda" if has_gpu() else "cpu")
    out = work_dir(report, "lighteval")
    report.progress(10, f"evaluating {', '.join(spec.tasks)} with LightEval on {device}")
    summary = evaluate(model_dir, list(spec.tasks), spec.custom_tasks_file(), local, out,
                       max_samples=spec.max_samples, batch_size=spec.batch_size, dtype=spec.dtype, device=device,
                       use_chat_template=spec.use_chat_template, system_prompt=spec.system_prompt)
    report.progress(85, "reporting metrics")
    values: dict[str, float] = {}
    for task, entry in sorted(summary["tasks"].items()):
        for metric, mv in sorted(entry["metrics"].items()):
            if mv["value"] is not None:
                report_metric(report, PREFIX + task, metric, float(mv["value"]), mv["stderr"], entry.get("n_samples"),
                              values)
    wall = round(time.monotonic() - started, 2)
    report.scalar("time", "wall_s", wall)
    report.scalar("memory", "peak_rss_mb", float(summary["peak_rss_mb"]))
    summary.update({"model": str(spec.model), "device": device, "script_wall_s": wall})
    report.artifact("lighteval_summary", summary)
    full = out / "lighteval_results.json"
    if full.is_file():
        report.artifact("lighteval_results", full)
    report.progress(100, "done")


if __name__ == "__main__":
    run(main, kind="lighteval")
