"""Evaluation and benchmark breadth, each THROUGH THE LOCAL STACK AND A REAL AGENT, on the tiny model:

- an evaluation with every new lm-eval option (chat template, fewshot_as_multiturn, system
  instruction, gen_kwargs, model_args, per-task few-shot, limit, seed), read back from lm-eval's own
  record in the task's `lm_eval_results` artifact;
- serve once: a benchmark that also evaluates against its `transformers serve` server (lm-eval's
  `local-completions`), one server start, both results on one task, under a `sweep` profile; and
  the same on the chat endpoint (`local-chat-completions`);
- a `concurrent` profile with SLOs (goodput) and over-saturation monitoring.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from automation.results import TaskResult
from automation.specs.base import TaskSpec
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.evaluate import EvaluateSpec
from automation.standards import suite_dir
from testing.stacks import StackHandle, fetch_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROJECT = "e2e-eval-bench-breadth"
# The tiny tokenizer has no chat template; this one shows each turn's role, so a prompt read back
# shows where the system instruction and the few-shot turns went.
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
SYSTEM = "Answer with one word."


def run_all(*specs: TaskSpec) -> list[TaskResult]:
    from flows.bridge import backend, execute

    async def go() -> list[TaskResult]:
        try:
            return list(await asyncio.gather(*(execute(s, max_wait_s=600) for s in specs)))
        finally:
            await backend().aclose()

    return asyncio.run(go())


def suite_yaml(*tasks: str) -> str:
    """An inline suite over the tiny suite's local task files, with tasks one by one (the shipped
    suite names their group), so few-shot can be set per task."""
    lines = [f"include_path: {suite_dir('tiny')}", "tasks:", *(f"  - task: {t}" for t in tasks)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def chat_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(tiny_model, target)
    (target / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return target


@pytest.fixture(scope="module")
def results(local_stack: StackHandle, chat_model: Path, tiny_model: Path) -> dict[str, TaskResult]:
    evaluate = EvaluateSpec(
        project=PROJECT, model=str(chat_model), suite=suite_yaml("tiny_mc", "tiny_gen"), queue="gpu", limit=6,
        seed=7, apply_chat_template=True, fewshot_as_multiturn=False, system_instruction=SYSTEM,
        gen_kwargs={"max_gen_toks": 6}, model_args={"max_length": 256}, task_fewshot={"tiny_gen": 2})
    sweep = ("rate_type: sweep\nsweep_size: 3\nprompt_tokens: 16\noutput_tokens: 8\nmax_requests: 5\n"
             "max_seconds: 60\n")
    served = BenchmarkSpec(project=PROJECT, model=str(tiny_model), profile=sweep, queue="cpu", startup_timeout_s=180,
                           evaluation={"suite": suite_yaml("tiny_gen"), "limit": 8})
    concurrent = ("rate_type: concurrent\nrates: [1, 2]\nprompt_tokens: 16\noutput_tokens: 8\nmax_requests: 6\n"
                  "max_seconds: 60\nslo: {ttft_ms: 60000, e2el_ms: 120000}\nsaturation: monitor\n")
    bench = BenchmarkSpec(project=PROJECT, model=str(tiny_model), profile=concurrent, queue="gpu",
                          startup_timeout_s=180)
    # the chat endpoint (local-chat-completions): messages built with the model's chat template
    chat = BenchmarkSpec(project=PROJECT, model=str(chat_model), profile="smoke", queue="cpu", startup_timeout_s=180,
                         evaluation={"suite": suite_yaml("tiny_gen"), "limit": 4, "endpoint": "chat",
                                     "apply_chat_template": True, "system_instruction": SYSTEM})
    r_eval, r_served = run_all(evaluate, served)
    r_bench, r_chat = run_all(bench, chat)
    out = {"evaluate": r_eval, "served": r_served, "concurrent": r_bench, "chat": r_chat}
    for name, result in out.items():
        assert result.status == "completed", f"{name}: task {result.task_id}: {result.status_message}"
    return out


def test_every_evaluate_option_reaches_lm_eval(results: dict[str, TaskResult], local_stack: StackHandle) -> None:
    result = results["evaluate"]
    full = fetch_file(local_stack.env, result.artifacts["lm_eval_results"]).json()
    config = full["config"]
    assert config["model_args"]["max_length"] == 256 and config["model_args"]["dtype"] == "auto"
    assert config["gen_kwargs"] == {"max_gen_toks": 6} and config["limit"] == 6
    assert config["random_seed"] == config["numpy_seed"] == config["torch_seed"] == config["fewshot_seed"] == 7
    assert full["n-shot"]["tiny_gen"] == 2 and full["n-shot"]["tiny_mc"] == 0
    assert full["configs"]["tiny_gen"]["generation_kwargs"]["max_gen_toks"] == 6
    # lm-eval's general config record: the template it applied, the instruction, the multi-turn flag
    assert full["chat_template"] == CHAT_TEMPLATE and full["system_instruction"] == SYSTEM
    assert full["fewshot_as_multiturn"] is False
    assert set(full["task_hashes"]) == {"tiny_mc", "tiny_gen"}
    # the prompt as sent: the system turn first, then two few-shot examples folded into one user turn
    prompt = full["first_prompts"]["tiny_gen"]
    assert prompt.startswith(f"<system> {SYSTEM}\n<user> ") and prompt.count("<user>") == 1, prompt
    assert prompt.count("\nA:") == 3, prompt  # two answered examples and the question
    assert result.values["tiny_gen/exact_match,strip"].samples == 6


def test_serve_once_gives_accuracy_and_speed_from_one_server_start(results: dict[str, TaskResult],
                                                                   local_stack: StackHandle) -> None:
    result = results["served"]
    v = result.values
    # lm-eval's generation task through local-completions against the benchmark's server
    assert 0.0 <= v["tiny_gen/exact_match,strip"].value <= 1.0 and v["tiny_gen/exact_match,strip"].samples == 8
    full = fetch_file(local_stack.env, result.artifacts["lm_eval_results"]).json()
    assert full["config"]["model"] == "local-completions"
    assert full["config"]["model_args"]["base_url"].endswith("/v1/completions")
    assert "eval_results" in result.artifacts
    # the sweep: synchronous, throughput, then constant rates up to the throughput rate
    labels = {name.split("/")[0] for name in v if name.endswith("/requests_per_s")}
    assert "synchronous" in labels and "throughput" in labels and any(lb.startswith("constant@") for lb in labels)
    for label in labels:
        assert v[f"{label}/requests_per_s"].value > 0 and v[f"{label}/ttft_ms/median"].value > 0
    # one server start for both: the server log shows a single startup
    log = fetch_file(local_stack.env, result.artifacts["server_log"]).text
    assert log.count("Uvicorn running on") == 1, log[-2000:]


def test_serve_once_on_the_chat_endpoint(results: dict[str, TaskResult], local_stack: StackHandle) -> None:
    result = results["chat"]
    assert result.values["tiny_gen/exact_match,strip"].samples == 4
    assert result.values["synchronous/requests_per_s"].value > 0
    full = fetch_file(local_stack.env, result.artifacts["lm_eval_results"]).json()
    assert full["config"]["model"] == "local-chat-completions"
    assert full["config"]["model_args"]["base_url"].endswith("/v1/chat/completions")
    assert full["system_instruction"] == SYSTEM


def test_concurrent_profile_reports_goodput_and_saturation(results: dict[str, TaskResult],
                                                           local_stack: StackHandle) -> None:
    v = results["concurrent"].values
    for label in ("concurrent@1", "concurrent@2"):
        assert v[f"{label}/requests_per_s"].value > 0
        # generous SLOs on the tiny model: every measured request meets them
        assert v[f"{label}/slo_attainment"].value == 1.0
        assert v[f"{label}/goodput_requests_per_s"].value > 0
        assert v[f"{label}/over_saturated"].value in (0.0, 1.0)
    scenario = json.loads(fetch_file(local_stack.env, results["concurrent"].artifacts["guidellm_scenario"]).text)
    assert scenario["spec"]["metrics"]["slo"] == {"ttft_ms": 60000.0, "e2el_ms": 120000.0}
    assert {"kind": "over_saturation", "mode": "monitor"} in scenario["spec"]["constraints"]
