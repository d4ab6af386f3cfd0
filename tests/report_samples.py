"""Hand-built reports for the report/baseline tests: real MetricValues and real gate decisions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from automation.regression.gates import accuracy_gates, overall, performance_gates
from automation.regression.report_model import BASE_SCHEME, Report, ReportCell, StepFailure, StepLink
from automation.results import MetricValue

WEB = "http://web.example/projects/p/experiments"

BASE_ACCURACY = {
    "suite/tiny_average": MetricValue(value=0.90),
    "tiny/acc": MetricValue(value=0.80, stderr=0.02, samples=400),
    "tiny/acc_norm": MetricValue(value=0.78, stderr=0.02, samples=400),
    "tiny_mc/acc": MetricValue(value=0.85, stderr=0.03, samples=200),
    "tiny_gen/exact_match,strip": MetricValue(value=0.95, samples=100),
    "tiny_ppl/word_perplexity": MetricValue(value=12.0),
}
BASE_PERF = {
    "synchronous/ttft_ms/median": 100.0,
    "synchronous/itl_ms/median": 10.0,
    "synchronous/output_tokens_per_s": 50.0,
    "synchronous/ttft_ms/p99": 180.0,
    "concurrent@8/ttft_ms/median": 400.0,
    "concurrent@8/output_tokens_per_s": 300.0,
}


def steps(tag: str, *names: Literal["compress", "evaluate", "benchmark"]) -> list[StepLink]:
    return [StepLink(step=n, task_id=f"{tag}-{n}", status="completed", web_url=f"{WEB}/{tag}-{n}/output/log",
                     duration_s=12.0) for n in names]


def compressed_cell(model: str, scheme: str, accuracy: dict[str, MetricValue], perf: dict[str, float],
                    suite: str = "tiny", profile: str = "smoke") -> ReportCell:
    acc_gates = accuracy_gates(BASE_ACCURACY, accuracy, suite=suite)
    perf_gates = performance_gates(BASE_PERF, perf)
    return ReportCell(model=model, scheme=scheme, suite=suite, profile=profile, queue="gpu",
                      output_model_id=f"model-{scheme}", accuracy=accuracy, performance=perf,
                      accuracy_gates=acc_gates, performance_gates=perf_gates, outcome=overall(acc_gates, perf_gates),
                      steps=steps(scheme, "compress", "evaluate", "benchmark"))


def sample_report(model: str = "hf:org/tiny-llama", series: str = "nightly-test", title: str = "tiny nightly",
                  created: datetime | None = None, flow_run_id: str | None = "flow-run-1",
                  ttft_factor: float = 1.2, with_failure: bool = True) -> Report:
    base = ReportCell(model=model, scheme=BASE_SCHEME, suite="tiny", profile="smoke", queue="gpu",
                      accuracy=BASE_ACCURACY, performance=BASE_PERF, outcome="baseline",
                      steps=steps("base", "evaluate", "benchmark"))
    good_acc = {k: MetricValue(value=v.value * 0.99, stderr=v.stderr, samples=v.samples)
                for k, v in BASE_ACCURACY.items()}
    good_acc["tiny_ppl/word_perplexity"] = MetricValue(value=12.2)
    good_perf = {k: v * (ttft_factor if "ttft" in k else 1.0) for k, v in BASE_PERF.items()}
    good_perf["synchronous/output_tokens_per_s"] = 60.0
    w4 = compressed_cell(model, "w4a16", good_acc, good_perf)
    bad_acc = {k: MetricValue(value=v.value * 0.5, stderr=None, samples=None) for k, v in BASE_ACCURACY.items()}
    bad_acc["tiny_ppl/word_perplexity"] = MetricValue(value=30.0)
    w8 = compressed_cell(model, "w8a8", bad_acc, {k: v * 0.5 for k, v in BASE_PERF.items()})
    cells = [base, w4, w8]
    if with_failure:
        cells.append(ReportCell(
            model=model, scheme="fp8", suite="tiny", profile="smoke", outcome="error",
            steps=steps("fp8", "compress"),
            failures=[StepFailure(step="evaluate", error="CUDA out of memory on queue gpu", task_id="fp8-evaluate",
                                  web_url=f"{WEB}/fp8-evaluate/output/log")]))
    outcome: Literal["error", "fail"] = "error" if with_failure else "fail"
    return Report(title=title, series=series, created=created or datetime(2026, 11, 3, 2, 0, tzinfo=UTC),
                  flow_run_id=flow_run_id, flow_run_url=f"http://prefect.example/runs/flow-run/{flow_run_id}",
                  cells=cells, outcome=outcome,
                  settings={"accuracy": {"threshold": 0.95}}, provenance={"code": "abc123", "started_by": "ci"})
