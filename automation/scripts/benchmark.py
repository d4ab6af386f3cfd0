"""Core script of the `benchmark` kind: managed server + GuideLLM with a workload profile.

Reports, per benchmark (one per rate of the profile; a sweep's synchronous, throughput and
constant-rate runs): TTFT, ITL, TPOT (ms) and request latency (s) at median/p90/p99, requests/s and
output tokens/s, as scalars (title = metric, series = `<rate label> <stat>`) and single values
`<rate label>/<metric>/<stat>`; with the profile's SLOs, `slo_attainment` (0-1) and
`goodput_requests_per_s`; with saturation detection, `over_saturated` (0/1); errored/total request
counts; with `evaluation` (serve once), lm-eval's metrics against the same server first, named and
uploaded as the evaluate kind names them; GuideLLM's JSON and HTML reports and the server log as
artifacts. Fails the task when more requests errored than allowed (GuideLLM itself exits 0 then).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from automation.errors import ModelInputError
from automation.results import SAMPLES_ARTIFACT, SPREAD_SUFFIX
from automation.scripts.lib import hub_access
from automation.scripts.lib.model_input import has_gpu, local_model_dir, work_dir
from automation.scripts.runtime import Reporter, run
from automation.serving import ManagedServer
from automation.specs.base import TaskSpec
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.evaluate import ServedEvaluation
from automation.standards import tasks_are_local

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_LATENCIES = ("ttft_ms", "itl_ms", "tpot_ms", "request_latency_s")
_STATS = ("median", "p90", "p99")


def _label(bench: dict[str, Any]) -> str:
    strategy = str(bench.get("strategy") or "run")
    rate = bench.get("rate")
    return f"{strategy}@{rate:g}" if isinstance(rate, int | float) else strategy


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]  # an odd count: the middle run itself


def combine_repetitions(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Several runs of one profile as one result: each benchmark (by position: the profile is the
    same) gets the median over the runs of every number, and a spread (half the range) of each;
    request totals are summed, so the error fraction covers every request sent."""
    def merge(items: list[Any], spread: bool) -> Any:
        first = items[0]
        if isinstance(first, dict):
            return {k: merge([i.get(k) for i in items], spread) for k in first}
        numbers = [float(i) for i in items if isinstance(i, int | float) and not isinstance(i, bool)]
        if len(numbers) != len(items) or not numbers:
            return first if not spread else None
        return (max(numbers) - min(numbers)) / 2 if spread else _median(numbers)

    combined = dict(runs[0])
    benchmarks, spreads = [], []
    for position, bench in enumerate(runs[0]["benchmarks"]):
        same = [run["benchmarks"][position] for run in runs if len(run["benchmarks"]) > position]
        merged = merge(same, spread=False)
        merged["request_totals"] = {k: sum(b["request_totals"].get(k, 0) for b in same)
                                    for k in bench["request_totals"]}
        merged.update({"strategy": bench.get("strategy"), "rate": bench.get("rate")})
        benchmarks.append(merged)
        spreads.append(merge(same, spread=True))
    errored = sum(b["request_totals"].get("errored", 0) for b in benchmarks)
    sent = errored + sum(b["request_totals"].get("successful", 0) for b in benchmarks)
    combined.update({"benchmarks": benchmarks, "spreads": spreads, "repetitions": len(runs),
                     "error_fraction": round(errored / sent, 4) if sent else 1.0,
                     "wall_s": round(sum(float(r.get("wall_s") or 0) for r in runs), 2)})
    return combined, spreads


def report_benchmarks(report: Reporter, benchmarks: list[dict[str, Any]],
                      spreads: list[dict[str, Any]] | None = None) -> None:
    """Every value as a scalar and a single value; with `spreads` (repetitions), each value's
    spread as companion `<name>:spread`."""
    for index, bench in enumerate(benchmarks):
        label = _label(bench)
        spread = (spreads or [])[index] if spreads and index < len(spreads) else {}

        def single(name: str, value: float, companion: Any) -> None:
            report.single_value(name, value)
            if isinstance(companion, int | float):
                report.single_value(name + SPREAD_SUFFIX, float(companion))

        for metric in _LATENCIES:
            for stat in _STATS:
                value = (bench.get(metric) or {}).get(stat)
                if value is not None:
                    report.scalar(metric, f"{label} {stat}", float(value), iteration=index)
                    single(f"{label}/{metric}/{stat}", float(value), (spread.get(metric) or {}).get(stat))
        for metric in ("requests_per_s", "output_tokens_per_s", "goodput_requests_per_s"):
            if bench.get(metric) is not None:
                report.scalar("throughput", f"{label} {metric}", float(bench[metric]), iteration=index)
                single(f"{label}/{metric}", float(bench[metric]), spread.get(metric))
        for metric in ("slo_attainment", "over_saturated"):
            if bench.get(metric) is not None:
                report.scalar("serving", f"{label} {metric}", float(bench[metric]), iteration=index)
                single(f"{label}/{metric}", float(bench[metric]), spread.get(metric))
        for key, count in (bench.get("request_totals") or {}).items():
            report.scalar("requests", f"{label} {key}", float(count), iteration=index)
            report.single_value(f"{label}/requests_{key}", float(count))


def _evaluate_against(server: ManagedServer, model_dir: Path, evaluation: ServedEvaluation, report: Reporter,
                      work: Path) -> None:
    """lm-eval against the running server (serve once): its metrics are reported as the evaluate
    kind reports them, its results uploaded as the same artifacts."""
    from automation.scripts.lib.evaluate_core import Backend, evaluate
    from automation.scripts.lib.evaluation_report import report_summary, upload_results

    backend: Backend = "local-chat-completions" if evaluation.endpoint == "chat" else "local-completions"
    tasks = evaluation.task_names()
    suite = evaluation.resolved_suite()
    report.progress(31, f"evaluating {', '.join(tasks)} with lm-eval against the server ({backend})")
    full_results = work / "evaluate" / "lm_eval_results.json"
    samples = full_results.with_name(SAMPLES_ARTIFACT + ".json")
    summary = evaluate(model_dir, tasks, include_path=suite.include_dir() if suite else None, backend=backend,
                       server=(server.base_url, server.model_name, evaluation.num_concurrent),
                       full_results_path=full_results, samples_path=samples, **evaluation.lm_eval_kwargs())
    _, averages = report_summary(report, suite, summary)
    summary.update({"suite": suite.name if suite else None, "suite_averages": averages,
                    "server_url": server.openai_base_url, "served_model": server.model_name})
    upload_results(report, summary, full_results, samples)


def main(spec: TaskSpec, report: Reporter) -> None:
    assert isinstance(spec, BenchmarkSpec)
    started = time.monotonic()
    from automation.errors import BenchmarkError
    from automation.scripts.lib import peak_rss_mb
    from automation.scripts.lib.benchmark_core import benchmark

    evaluation = spec.evaluation
    eval_suite = evaluation.resolved_suite() if evaluation else None
    eval_include = eval_suite.include_dir() if eval_suite else None
    hub_access(needed=spec.model.source == "hf" or (spec.tokenizer is not None and spec.tokenizer.source == "hf")
               or (evaluation is not None and (eval_include is None
                                               or not tasks_are_local(eval_include, evaluation.task_names()))))
    report.progress(2, f"fetching model {spec.model}")
    model_dir = local_model_dir(spec.model, report)
    tokenizer_dir = local_model_dir(spec.tokenizer, report) if spec.tokenizer else model_dir
    if not has_tokenizer(tokenizer_dir):
        # Without one GuideLLM looks the served model's name up on the hub and fails obscurely.
        what = f"tokenizer {spec.tokenizer}" if spec.tokenizer else f"model {spec.model}"
        raise ModelInputError(f"no tokenizer found: {what} ({tokenizer_dir}) holds no tokenizer files "
                              f"({', '.join(TOKENIZER_FILES)}); give `tokenizer` (GuideLLM needs one to build "
                              "its prompts)")
    # gpus=0 asks for CPU serving, which only transformers serve does.
    gpu = has_gpu() and spec.gpus != 0
    engine = spec.engine if spec.engine != "auto" else ("vllm" if gpu else "transformers")
    profile = spec.resolved_profile().model_dump(exclude_none=True)
    work = work_dir(report, "benchmark")
    server_log = work / "server.log"
    server = ManagedServer(model_dir, engine=engine, gpus=spec.gpus, server_args=spec.server_args,
                           env=spec.server_env, startup_timeout_s=spec.startup_timeout_s, log_path=server_log,
                           served_model_name=spec.model.short_name() if engine == "vllm" else None)
    report.progress(5, f"starting {engine} server for {model_dir}")
    result: dict[str, Any] | None = None
    spreads: list[dict[str, Any]] | None = None
    failure: BaseException | None = None
    try:
        with server:
            report.progress(30, f"server ready in {server.startup_s} s; running GuideLLM profile {profile['name']}")
            report.scalar("time", "server_startup_s", float(server.startup_s or 0))
            if evaluation is not None:
                _evaluate_against(server, model_dir, evaluation, report, work)
                report.progress(45, f"evaluated; running GuideLLM profile {profile['name']}")
            runs = []
            try:
                for rep in range(spec.repetitions):  # one server start for all: the runs differ only by noise
                    if spec.repetitions > 1:
                        report.progress(30 + 60 * rep // spec.repetitions,
                                        f"GuideLLM run {rep + 1} of {spec.repetitions}")
                    out = work / "guidellm" if rep == 0 else work / f"guidellm-{rep + 1}"
                    runs.append(benchmark(server.base_url, server.model_name, tokenizer_dir, profile, out,
                                          engine=engine, max_error_fraction=spec.max_error_fraction,
                                          timeout_s=spec.benchmark_timeout_s, seed=spec.seed))
            except BenchmarkError as exc:
                failure = exc
            if runs and failure is None:
                result, spreads = combine_repetitions(runs) if len(runs) > 1 else (runs[0], None)
    finally:
        if server_log.is_file():
            report.artifact("server_log", server_log)
    report.progress(90, "reporting")
    if result is None:
        saved = work / "guidellm" / "benchmark_result.json"
        result = json.loads(saved.read_text()) if saved.is_file() else None
    if result is not None:
        report_benchmarks(report, result["benchmarks"], spreads)
        report.scalar("requests", "error_fraction", float(result["error_fraction"]))
        report.single_value("error_fraction", float(result["error_fraction"]))
        result.update({"engine": engine, "model": str(spec.model), "server_startup_s": server.startup_s})
        report.artifact("benchmark_result", result)
    for artifact, name in (("guidellm_report", "guidellm_report.json"),
                           ("guidellm_report_html", "guidellm_report.html"),
                           ("guidellm_scenario", "guidellm_scenario.json"), ("guidellm_log", "guidellm.log")):
        path = work / "guidellm" / name
        if path.is_file():
            report.artifact(artifact, path)
    wall = round(time.monotonic() - started, 2)
    report.scalar("time", "wall_s", wall)
    report.scalar("memory", "peak_rss_mb", peak_rss_mb())
    if failure is not None:
        raise failure
    report.progress(100, "done")


if __name__ == "__main__":
    run(main, kind="benchmark")
