"""The three kinds for real, each THROUGH THE LOCAL STACK AND A REAL AGENT (`flows.bridge.execute`).

tiny model (built here) -> compress w4a16 / w8a8 / fp8_dynamic (local-path input) -> evaluate the
base and the w8a8 model on `tiny` (the compressed one as a ClearML model id, so the agent downloads
it from the file server) -> benchmark the w8a8 model with `smoke`. Tasks are spread over the `gpu`
and `cpu` queues (one agent each) so two run at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from automation.results import TaskResult
from automation.specs.base import TaskSpec
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec
from automation.specs.evaluate import EvaluateSpec
from automation.specs.model_ref import ModelRef
from testing.stacks import StackHandle, fetch_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}
PROJECT = "e2e-kinds"
TIMINGS: dict[str, float] = {}


def run_all(*specs: TaskSpec) -> list[TaskResult]:
    """Run specs concurrently through the bridge (find-or-create by identity, then await)."""
    from flows.bridge import backend, execute

    async def go() -> list[TaskResult]:
        try:
            return list(await asyncio.gather(*(
                execute(s, max_wait_s=300)
                for s in specs)))
        finally:
            await backend().aclose()

    return asyncio.run(go())


def ok(result: TaskResult) -> TaskResult:
    assert result.status == "completed", f"{result.kind} task {result.task_id}: {result.status_message}"
    if result.duration_s is not None:
        TIMINGS[f"{result.kind}:{result.task_id[:6]}"] = result.duration_s
    return result


@pytest.fixture(scope="module")
def stack(local_stack: StackHandle) -> Iterator[StackHandle]:
    yield local_stack
    print("\ntask durations (s):", json.dumps(TIMINGS, indent=1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kinds") / "tiny"
    subprocess.run([sys.executable, "-m", "automation.scripts.lib.tiny_model", "--out", str(out)],
                   cwd=REPO, env=ENV, check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def compressed(stack: StackHandle, tiny: Path) -> dict[str, TaskResult]:
    common: dict[str, Any] = {"project": PROJECT, "model": str(tiny), "calibration": "tiny", "num_samples": 16,
                              "max_seq_length": 64}
    specs = {
        "w4a16": CompressSpec(**common, recipe="w4a16", queue="cpu"),
        "w8a8": CompressSpec(**common, recipe="w8a8", queue="gpu"),
    }
    results = dict(zip(specs, run_all(*specs.values()), strict=True))
    # fp8 runs next to the base evaluation (see `evals`) to keep both agents busy.
    return {name: ok(r) for name, r in results.items()}


# A base model's tokenizer has no chat template (the tiny one neither): the spec brings one.
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def chat_calibration_spec(tiny: Path, directory: Path) -> CompressSpec:
    """W4A16 calibrated on a local JSONL set in messages form, rendered with a chat template."""
    from automation.scripts.lib.tiny_model import tiny_corpus

    path = directory / "chat_calibration.jsonl"
    rows = [{"messages": [{"role": "user", "content": text.split("\nA:")[0].removeprefix("Q: ")},
                          {"role": "assistant", "content": text.split("\nA:")[-1].strip()}]}
            for text in tiny_corpus() if text.startswith("Q: ")][:12]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return CompressSpec(project=PROJECT, model=str(tiny), recipe="w4a16_asym", calibration=str(path),
                        num_samples=8, max_seq_length=64, queue="cpu", seed=1,
                        calibration_options={"messages_column": "messages", "apply_chat_template": True,
                                             "chat_template": CHAT_TEMPLATE, "shuffle": True})


@pytest.fixture(scope="module")
def evals_and_fp8(stack: StackHandle, tiny: Path, compressed: dict[str, TaskResult],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, TaskResult]:
    # fp8_dynamic without calibration data: the data-free path (model_free_ptq).
    fp8 = CompressSpec(project=PROJECT, model=str(tiny), recipe="fp8_dynamic", calibration=None, queue="cpu")
    chat = chat_calibration_spec(tiny, tmp_path_factory.mktemp("calibration"))
    base = EvaluateSpec(project=PROJECT, model=str(tiny), suite="tiny", queue="gpu")
    w8a8 = EvaluateSpec(project=PROJECT, model=ModelRef.from_result(compressed["w8a8"]), suite="tiny",
                        queue="gpu")
    r_fp8, r_chat, r_base = run_all(fp8, chat, base)
    bench = BenchmarkSpec(project=PROJECT, model=ModelRef.from_result(compressed["w8a8"]), profile="smoke",
                          queue="cpu", startup_timeout_s=180, repetitions=3)
    r_w8a8, r_bench = run_all(w8a8, bench)
    return {"fp8_dynamic": ok(r_fp8), "chat": ok(r_chat), "base": ok(r_base), "w8a8": ok(r_w8a8),
            "bench": ok(r_bench)}


def test_data_free_and_chat_templated_calibration(evals_and_fp8: dict[str, TaskResult], stack: StackHandle) -> None:
    fp8 = json.loads(fetch_file(stack.env, evals_and_fp8["fp8_dynamic"].artifacts["compress_result"]).text)
    assert fp8["path"] == "model_free_ptq" and fp8["calibration"] is None and fp8["num_samples"] == 0
    assert fp8["output_checks"]["problems"] == []
    chat = json.loads(fetch_file(stack.env, evals_and_fp8["chat"].artifacts["compress_result"]).text)
    data = chat["calibration_data"]
    assert chat["path"] == "oneshot" and data["kind"] == "file" and data["source"] == "file:chat_calibration.jsonl"
    assert data["templated"] and data["rows_available"] == 12 and data["samples"] == chat["num_samples"] == 8
    assert data["messages_column"] == "messages" and len(data["rows_sha256"]) == 64 and data["chat_template_sha256"]
    # The agent rendered the rows with the spec's template (shuffled with seed 1), then tokenized them.
    assert data["first_sample"].startswith("<s>user: ") and "\n<s>assistant: " in data["first_sample"]
    assert data["tokens_mean"] > 5 and chat["output_checks"]["problems"] == []
    assert json.loads(json.dumps(chat["recipe_args"])) == {}


def test_compress_reports_and_uploads_loadable_models(compressed: dict[str, TaskResult],
                                                      evals_and_fp8: dict[str, TaskResult],
                                                      tmp_path: Path) -> None:
    from clearml import InputModel

    results = {**compressed, "fp8_dynamic": evals_and_fp8["fp8_dynamic"]}
    for name, result in results.items():
        assert result.model_id and result.model_url and result.model_url.startswith("http"), name
        assert {"recipe", "compress_result"} <= set(result.artifacts), name
        v = result.values
        assert 0 < v["size/after_mb"].value < v["size/before_mb"].value, name
        assert v["size/ratio"].value < 0.6 and v["memory/peak_rss_mb"].value > 0, name
        assert v["time/compute_s"].value > 0 and v["time/wall_s"].value >= v["time/compute_s"].value, name
    # every model downloadable from the file server and loadable with plain transformers (one
    # process for the three, so torch is imported once)
    model_dirs = []
    for name, result in results.items():
        local = Path(InputModel(model_id=result.model_id).get_local_copy(raise_on_error=True))
        model_dir = local if (local / "config.json").is_file() else next(p.parent for p in local.rglob("config.json"))
        assert (model_dir / "recipe.yaml").is_file(), name
        assert json.loads((model_dir / "config.json").read_text())["quantization_config"], name
        model_dirs.append(str(model_dir))
    code = ("import sys; from automation.scripts.lib.output_checks import load_and_generate\n"
            "for d in sys.argv[1:]:\n"
            "    r = load_and_generate(d, 'Q: What color is the brabel?\\nA:')\n"
            "    assert r['new_tokens'] >= 1, (d, r); print(r)")
    proc = subprocess.run([sys.executable, "-c", code, *model_dirs], cwd=REPO, env=ENV, timeout=180,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("'new_tokens'") == 3


def test_evaluate_reports_metrics_with_stderr_and_counts(evals_and_fp8: dict[str, TaskResult],
                                                         compressed: dict[str, TaskResult], stack: StackHandle) -> None:
    base, w8a8 = evals_and_fp8["base"], evals_and_fp8["w8a8"]
    for result in (base, w8a8):
        v = result.values
        for name in ("tiny_mc/acc", "tiny_mc/acc_norm", "tiny_gen/exact_match,strip", "tiny/acc"):
            assert 0.0 <= v[name].value <= 1.0 and v[name].samples is not None, name
            stderr = v[name].stderr
            assert stderr is not None and stderr >= 0, name
        assert v["tiny_mc/acc"].samples == 32 and v["tiny/acc"].samples == 96
        assert 1.0 <= v["tiny_ppl/word_perplexity"].value < 5.0
        assert "suite/tiny_average" in v and {"eval_results", "lm_eval_results"} <= set(result.artifacts)
        assert result.scalars["tiny_mc/acc"] == v["tiny_mc/acc"].value
    assert base.values["tiny_mc/acc"].value >= 0.9 and base.values["tiny_gen/exact_match,strip"].value >= 0.9
    for name in ("tiny_mc/acc", "tiny_gen/exact_match,strip"):
        assert w8a8.values[name].value / base.values[name].value >= 0.95, name  # recovery near 1
    ratio = w8a8.values["tiny_ppl/word_perplexity"].value / base.values["tiny_ppl/word_perplexity"].value
    assert ratio <= 1.05
    # lm-eval's full results (task configs, versions, n-shot) are downloadable next to the summary
    full = fetch_file(stack.env, base.artifacts["lm_eval_results"]).json()
    assert {"configs", "versions", "n-shot", "higher_is_better"} <= set(full) and "samples" not in full
    # the metrics were attached to the input ClearML model
    from clearml import InputModel

    metadata = InputModel(model_id=compressed["w8a8"].model_id).get_all_metadata()
    assert float(metadata["eval/tiny_mc/acc"]["value"]) == w8a8.values["tiny_mc/acc"].value


def test_benchmark_reports_latencies_and_no_errors(evals_and_fp8: dict[str, TaskResult], stack: StackHandle) -> None:
    bench = evals_and_fp8["bench"]
    v = bench.values
    for metric in ("ttft_ms", "itl_ms", "tpot_ms", "request_latency_s"):
        for stat in ("median", "p90", "p99"):
            assert v[f"synchronous/{metric}/{stat}"].value > 0, (metric, stat)
    assert v["synchronous/requests_per_s"].value > 0 and v["synchronous/output_tokens_per_s"].value > 0
    # three runs against one server start: each value their median, its spread beside it; totals summed
    assert v["synchronous/requests_errored"].value == 0
    # summed over the runs; a run may end with its last request cut off (incomplete, not an error)
    totals = {k: v[f"synchronous/requests_{k}"].value for k in ("successful", "incomplete", "total")}
    assert totals["successful"] >= 3 * 5 and totals["total"] == totals["successful"] + totals["incomplete"], totals
    for name in ("synchronous/ttft_ms/median", "synchronous/output_tokens_per_s"):
        assert v[f"{name}:spread"].value >= 0
    result = json.loads(fetch_file(stack.env, bench.artifacts["benchmark_result"]).text)
    assert result["repetitions"] == 3 and len(result["spreads"]) == len(result["benchmarks"])
    assert v["error_fraction"].value == 0
    assert {"server_log", "guidellm_report", "guidellm_report_html", "benchmark_result"} <= set(bench.artifacts)
    html = fetch_file(stack.env, bench.artifacts["guidellm_report_html"])
    assert html.status_code == 200 and "<html" in html.text[:2000].lower()
    assert html.headers["content-disposition"].startswith("attachment")  # never run as a page of the server


def test_a_second_run_reuses_finished_work(compressed: dict[str, TaskResult], tiny: Path) -> None:
    started = time.monotonic()
    (again,) = run_all(CompressSpec(project=PROJECT, model=str(tiny), recipe="w4a16", calibration="tiny",
                                    num_samples=16, max_seq_length=64, queue="gpu"))  # queue is not identity
    assert again.reused and again.task_id == compressed["w4a16"].task_id
    assert time.monotonic() - started < 10


def test_a_bad_artifact_fails_the_step_typed_and_is_not_retried(stack: StackHandle, tiny: Path,
                                                                evals_and_fp8: dict[str, TaskResult]) -> None:
    """A recipe that quantizes nothing (every module ignored) saves a model whose config names a
    scheme but whose weights are all 32-bit: the output checks refuse it, the step fails as a bad
    artifact (one task, no retry) and nothing is uploaded."""
    from automation.errors import BadArtifact
    from flows.bridge import backend, execute
    from testing.stacks import admin_client

    spec = CompressSpec(project=PROJECT, model=str(tiny), recipe="int8", calibration=None, queue="cpu",
                        recipe_args={"ignore": ["re:.*"]})

    async def go() -> None:
        try:
            await execute(spec, max_wait_s=300)
        finally:
            await backend().aclose()

    with pytest.raises(BadArtifact, match=r"bad_artifact") as info:
        asyncio.run(go())
    assert not info.value.retryable
    assert any("no weight is stored quantized" in line for line in info.value.log_tail), info.value.log_tail
    tasks = admin_client(stack.env).call("tasks.get_all", {"tags": [f"identity:{spec.identity()}"],
                                                           "only_fields": ["id", "status", "models"]})["tasks"]
    assert len(tasks) == 1 and tasks[0]["status"] == "failed", tasks
    assert not (tasks[0].get("models") or {}).get("output"), tasks[0]
