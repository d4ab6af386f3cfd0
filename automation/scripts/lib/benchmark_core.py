"""Benchmark a running OpenAI-compatible server with GuideLLM 0.8.1 and summarise its report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from automation.errors import BenchmarkError
from automation.scripts.lib import peak_rss_mb, write_json

Engine = Literal["vllm", "transformers"]
_RATE_FIELDS = {"concurrent": "streams", "constant": "rate", "poisson": "rate", "async": "rate"}
_SHAPE_KEYS = ("stdev", "min", "max")


def _synthetic_data(profile: dict[str, Any], engine: Engine) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": "synthetic_text", "prompt_tokens": int(profile["prompt_tokens"])}
    for key in _SHAPE_KEYS:
        if profile.get(f"prompt_tokens_{key}") is not None:
            data[f"prompt_tokens_{key}"] = int(profile[f"prompt_tokens_{key}"])
    # Per-request output lengths become a vLLM-only request field that transformers serve rejects
    # with 422; there the backend's max_tokens caps the output instead.
    if engine == "vllm":
        data["output_tokens"] = int(profile["output_tokens"])
        for key in _SHAPE_KEYS:
            if profile.get(f"output_tokens_{key}") is not None:
                data[f"output_tokens_{key}"] = int(profile[f"output_tokens_{key}"])
    return data


def _profile_args(profile: dict[str, Any]) -> dict[str, Any]:
    """GuideLLM 0.8.1's `spec.profile` for a profile's rate type (its keys per kind: `streams`
    for concurrent, `rate` for constant/poisson/async, `sweep_size` and `strategy_type` for a
    sweep; `max_concurrency` is required for throughput, null meaning none)."""
    kind = profile.get("rate_type", "synchronous")
    args: dict[str, Any] = {"kind": kind}
    if kind in _RATE_FIELDS:
        rates = profile.get("rates")
        if not rates:
            raise ValueError(f"profile rate_type {kind!r} needs 'rates'")
        args[_RATE_FIELDS[kind]] = [int(r) if kind == "concurrent" else float(r) for r in rates]
    elif kind == "sweep":
        args["sweep_size"] = int(profile.get("sweep_size", 5))
        args["strategy_type"] = profile.get("sweep_strategy", "constant")
    if kind in ("throughput", "constant", "poisson", "async", "sweep") and (
            profile.get("max_concurrency") is not None or kind == "throughput"):
        args["max_concurrency"] = profile.get("max_concurrency")
    if profile.get("rampup_s") is not None:
        args["rampup_duration"] = float(profile["rampup_s"])
    return args


def build_scenario(
    target_url: str,
    model_name: str,
    tokenizer_dir: Path | str,
    profile: dict[str, Any],
    report_path: Path,
    engine: Engine = "vllm",
    seed: int = 42,
    html_path: Path | None = None,
) -> dict[str, Any]:
    """A GuideLLM scenario (the same schema as its `--scenario` files) for one profile.

    Outputs: the JSON report at `report_path` (what is parsed) and, with `html_path`, GuideLLM's
    self-contained HTML report (its `html` output kind, 0.8.x).
    """
    backend: dict[str, Any] = {
        "kind": "openai_http",
        "target": target_url.rstrip("/").removesuffix("/v1"),
        "model": model_name,
        "request_format": profile.get("request_format", "/v1/completions"),
        "timeout": float(profile.get("request_timeout_s", 120)),
    }
    if engine != "vllm":
        backend["max_tokens"] = int(profile["output_tokens"])
    constraints: list[dict[str, Any]] = []
    if profile.get("max_requests"):
        constraints.append({"kind": "max_requests", "count": int(profile["max_requests"])})
    if profile.get("max_seconds"):
        constraints.append({"kind": "max_duration", "seconds": float(profile["max_seconds"])})
    if not constraints:
        raise ValueError("profile needs max_requests and/or max_seconds, or the benchmark never ends")
    if profile.get("saturation"):
        constraints.append({"kind": "over_saturation", "mode": profile["saturation"]})
    extra: dict[str, Any] = {}
    if profile.get("slo"):
        extra["metrics"] = {"kind": "generative", "slo": {k: float(v) for k, v in profile["slo"].items()
                                                          if v is not None}}
    return {
        "metadata": {"name": str(profile.get("name", "custom"))},
        "spec": {
            "backend": backend,
            "profile": _profile_args(profile),
            "data": [_synthetic_data(profile, engine)],
            "constraints": constraints,
            # A local tokenizer, or GuideLLM looks the model name up on the hub.
            "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer_dir)},
            "seed": {"kind": "static", "value": seed},
            "outputs": [{"kind": "json", "path": str(report_path)},
                        *([{"kind": "html", "path": str(html_path)}] if html_path is not None else [])],
            **extra,
        },
    }


def _percentiles(dist: dict[str, Any] | None) -> dict[str, float | None]:
    """median / p90 / p99 / mean of one GuideLLM distribution (milliseconds or per-second units)."""
    if not dist:
        return {"mean": None, "median": None, "p90": None, "p99": None}
    pct = dist.get("percentiles") or {}
    return {
        "mean": dist.get("mean"),
        "median": dist.get("median"),
        "p90": pct.get("p90"),
        "p99": pct.get("p99"),
    }


def _successful(metric: dict[str, Any] | None) -> dict[str, Any] | None:
    return (metric or {}).get("successful")


def summarise_benchmark(bench: dict[str, Any]) -> dict[str, Any]:
    metrics = bench.get("metrics", {})
    totals = metrics.get("request_totals") or bench.get("request_totals") or {}
    strategy = bench.get("config", {}).get("strategy", {}) or bench.get("scheduler", {}).get("strategy", {})
    return {
        "strategy": strategy.get("type_") or strategy.get("kind") or strategy.get("type"),
        "rate": strategy.get("rate") or strategy.get("streams"),
        "ttft_ms": _percentiles(_successful(metrics.get("time_to_first_token_ms"))),
        "itl_ms": _percentiles(_successful(metrics.get("inter_token_latency_ms"))),
        "tpot_ms": _percentiles(_successful(metrics.get("time_per_output_token_ms"))),
        "request_latency_s": _percentiles(_successful(metrics.get("request_latency"))),
        "requests_per_s": (_successful(metrics.get("requests_per_second")) or {}).get("mean"),
        "output_tokens_per_s": (_successful(metrics.get("output_tokens_per_second")) or {}).get("mean"),
        "output_tokens_per_request": (_successful(metrics.get("output_token_count")) or {}).get("mean"),
        "duration_s": bench.get("duration"),
        # With the profile's SLOs: the fraction of measured requests that met all of them, and the
        # conforming requests per second (goodput).
        "slo_attainment": metrics.get("slo_attainment"),
        "goodput_requests_per_s": (_successful(metrics.get("request_goodput")) or {}).get("mean"),
        "over_saturated": _over_saturated(bench),
        "request_totals": {k: totals.get(k, 0) for k in ("successful", "errored", "incomplete", "total")},
    }


def _over_saturated(bench: dict[str, Any]) -> float | None:
    """1.0 when GuideLLM's over-saturation constraint found the server saturated, 0.0 when it
    watched and did not, None when it did not watch."""
    state = ((bench.get("scheduler_state") or {}).get("scheduler_constraints") or {}).get("over_saturation")
    if not isinstance(state, dict):
        return None
    flag = (state.get("metadata") or {}).get("is_over_saturated")
    return None if flag is None else float(bool(flag))


def parse_report(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [summarise_benchmark(b) for b in report.get("benchmarks", [])]


def _error_fraction(benchmarks: list[dict[str, Any]]) -> float:
    errored = sum(b["request_totals"]["errored"] for b in benchmarks)
    total = sum(b["request_totals"]["successful"] + b["request_totals"]["errored"] for b in benchmarks)
    return errored / total if total else 1.0


# AF_UNIX socket paths hold at most 107 bytes, and GuideLLM's multiprocessing managers put theirs
# under TMPDIR (TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX, about 30 more): an agent whose temp dir
# lives deep in a data directory made GuideLLM die with "AF_UNIX path too long".
MAX_TMPDIR_LEN = 60


@contextlib.contextmanager
def _socket_safe_tmpdir() -> Iterator[dict[str, str]]:
    """{} when TMPDIR is short enough, else {"TMPDIR": a fresh private folder in /tmp}, removed after."""
    if len(tempfile.gettempdir()) <= MAX_TMPDIR_LEN or not os.access("/tmp", os.W_OK):
        yield {}
        return
    short = tempfile.mkdtemp(prefix="guidellm-", dir="/tmp")  # mode 0700
    try:
        yield {"TMPDIR": short}
    finally:
        shutil.rmtree(short, ignore_errors=True)


def benchmark(
    target_url: str,
    model_name: str,
    tokenizer_dir: Path | str,
    profile: dict[str, Any],
    out_dir: Path,
    *,
    engine: Engine = "vllm",
    max_error_fraction: float | None = None,
    timeout_s: float | None = None,
    seed: int = 42,
) -> dict[str, Any]:
    """Run GuideLLM's CLI on a scenario built from `profile` (synthetic data drawn with `seed`);
    summarise its JSON report. GuideLLM's HTML report lands next to it (guidellm_report.html).

    GuideLLM exits 0 even when every request failed, so success is judged from the report's
    request totals: more than `max_error_fraction` (default: the profile's) errored -> error.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "guidellm_report.json"
    scenario_path = out_dir / "guidellm_scenario.json"
    scenario = build_scenario(target_url, model_name, tokenizer_dir, profile, report_path, engine, seed=seed,
                              html_path=out_dir / "guidellm_report.html")
    scenario_path.write_text(json.dumps(scenario, indent=2))
    env = {
        **os.environ,
        # The tokenizer is a local directory and the data synthetic: nothing to fetch.
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        # One worker process: on small hosts more workers only fight the server for cores.
        "GUIDELLM__MAX_WORKER_PROCESSES": os.environ.get("GUIDELLM__MAX_WORKER_PROCESSES", "1"),
    }
    cmd = [str(Path(sys.executable).with_name("guidellm")), "run", "--scenario", str(scenario_path)]
    cmd += ["--disable-console-interactive"]
    log_path = out_dir / "guidellm.log"
    with _socket_safe_tmpdir() as tmp, log_path.open("wb") as log:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, **tmp}, timeout=timeout_s, check=False
        )
    if proc.returncode != 0 or not report_path.is_file():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise BenchmarkError(f"guidellm exited {proc.returncode}, report {report_path}; log tail:\n{tail}")
    benchmarks = parse_report(json.loads(report_path.read_text()))
    if not benchmarks:
        raise BenchmarkError(f"guidellm report {report_path} holds no benchmarks")
    threshold = float(
        profile.get("max_error_fraction", 0.0) if max_error_fraction is None else max_error_fraction
    )
    fraction = _error_fraction(benchmarks)
    result = {
        "profile": profile.get("name"),
        "target_url": target_url,
        "model_name": model_name,
        "engine": engine,
        "benchmarks": benchmarks,
        "error_fraction": round(fraction, 4),
        "report_path": str(report_path),
        "wall_s": round(time.monotonic() - start, 2),
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(out_dir / "benchmark_result.json", result)
    if fraction > threshold:
        raise BenchmarkError(
            f"{fraction:.1%} of requests errored (threshold {threshold:.1%}); see {report_path}"
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--profile", required=True, help="a shipped profile name or a YAML file")
    parser.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import yaml

    from automation.standards import load_profile

    path = Path(args.profile)
    profile = yaml.safe_load(path.read_text()) if path.is_file() else load_profile(args.profile)
    print(
        json.dumps(
            benchmark(args.target, args.model_name, args.tokenizer, profile, args.out, engine=args.engine,
                      seed=args.seed)
        )
    )


if __name__ == "__main__":
    main()
