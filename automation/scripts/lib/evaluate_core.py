"""Evaluate a model directory on lm-eval tasks (local YAML suites or lm-eval's own)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from automation.errors import ServerCannotScore, ToolError
from automation.scripts.lib import hub_access, peak_rss_mb, write_json

Backend = Literal["hf", "vllm", "local-completions", "local-chat-completions"]
SERVER_BACKENDS = ("local-completions", "local-chat-completions")
# Loaders whose data_files lm-eval resolves against the CWD rather than the YAML's directory.
_FILE_LOADERS = {"json", "csv", "parquet", "text", "arrow"}


class _Tagged:
    """A YAML node with a custom tag (`!function module.fn`) kept verbatim across the rewrite."""

    def __init__(self, tag: str, value: str) -> None:
        self.tag, self.value = tag, value


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: _Tagged("!" + suffix, node.value))
_Dumper.add_representer(_Tagged, lambda dumper, data: dumper.represent_scalar(data.tag, data.value))


def _absolutise(data_files: Any, base: Path) -> Any:
    if isinstance(data_files, str):
        candidate = base / data_files
        return str(candidate.resolve()) if candidate.exists() else data_files
    if isinstance(data_files, list):
        return [_absolutise(item, base) for item in data_files]
    if isinstance(data_files, dict):
        return {split: _absolutise(files, base) for split, files in data_files.items()}
    return data_files


def resolve_include_path(include_path: Path, dest: Path) -> Path:
    """Copy a suite's YAMLs (and helper .py files) to `dest` with absolute `data_files`.

    Data files themselves are not copied: the rewritten YAML points at them where they are.
    """
    include_path = Path(include_path).resolve()
    for src in include_path.rglob("*"):
        rel = src.relative_to(include_path)
        target = dest / rel
        if src.is_dir():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".py":
            shutil.copy2(src, target)
        elif src.suffix in {".yaml", ".yml"}:
            doc = yaml.load(src.read_text(), Loader=_Loader)  # a SafeLoader subclass
            if isinstance(doc, dict) and doc.get("dataset_path") in _FILE_LOADERS:
                kwargs = doc.get("dataset_kwargs") or {}
                if "data_files" in kwargs:
                    kwargs["data_files"] = _absolutise(kwargs["data_files"], src.parent)
            target.write_text(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True))
    return dest


def _model_spec(
    model_dir: Path, backend: Backend, dtype: str, vllm_args: dict[str, Any] | None,
    model_args: dict[str, Any] | None = None, tensor_parallel_size: int | None = None,
    server: tuple[str, str, int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """lm-eval's model name and arguments: ours, then the user's `model_args` (the spec refuses a
    key it sets through a field, so nothing here is set twice)."""
    extra = dict(model_args or {})
    if backend == "hf":
        # device goes to simple_evaluate, which forwards it; also naming it here is an error.
        return "hf", {"pretrained": str(model_dir), "dtype": dtype, **extra}
    if backend == "vllm":
        args = {
            "pretrained": str(model_dir),
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size or visible_gpus(),
            "gpu_memory_utilization": 0.8,
            "max_model_len": 4096,
        }
        args.update(vllm_args or {})
        args.update(extra)
        return "vllm", args
    if backend in SERVER_BACKENDS:
        # `server` = (base URL without /v1, served model name, requests in flight). The request text
        # goes as text (transformers serve refuses token ids), one prompt per request (it refuses
        # lists); the tokenizer serves log-likelihood requests, which lm-eval scores itself.
        if server is None:
            raise ValueError(f"backend {backend!r} needs the server it calls")
        url, served, concurrent = server
        path = "/v1/chat/completions" if backend == "local-chat-completions" else "/v1/completions"
        return backend, {"base_url": url.rstrip("/") + path, "model": served, "tokenizer": str(model_dir),
                         "tokenizer_backend": "huggingface", "tokenized_requests": False,
                         "num_concurrent": concurrent, "max_retries": 3, **extra}
    raise ValueError(f"unknown backend {backend!r}; expected 'hf', 'vllm' or a server backend")


def visible_gpus() -> int:
    """The GPUs this process sees (CUDA_VISIBLE_DEVICES applied), at least 1."""
    import torch

    return max(1, torch.cuda.device_count())


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _clean(value: Any) -> Any:
    # lm-eval reports "N/A" stderrs and NaN/inf for undefined ones; JSON wants null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, int | float) else None


def _metrics_of(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"acc,none": v, "acc_stderr,none": s}` -> `{"acc": {"value": v, "stderr": s}}`.

    The filter name is dropped for the default filter "none" and kept otherwise
    (`exact_match,strip`), so names are stable and reversible.
    """
    metrics: dict[str, dict[str, Any]] = {}
    for key, value in entry.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else key
        metrics[name] = {"value": _clean(value), "stderr": _clean(entry.get(f"{metric}_stderr,{filt}"))}
    return metrics


# Per-sample records: the bulk of a results dict (and absent with log_samples=False).
_PER_SAMPLE_KEYS = ("samples",)


def write_full_results(results: dict[str, Any], path: Path) -> None:
    """lm-eval's results dict as strict JSON, the way lm-eval's own tracker writes it (values it
    cannot serialise, such as a task config's functions, become strings; NaN becomes null)."""
    default: Callable[[Any], Any] = str
    try:
        from lm_eval.utils import handle_non_serializable

        default = handle_non_serializable
    except ImportError:  # a future lm-eval that moved it: plain strings will do
        pass
    data = {k: v for k, v in results.items() if k not in _PER_SAMPLE_KEYS}
    text = json.dumps(data, indent=2, default=default, ensure_ascii=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(json.loads(text)), indent=2, ensure_ascii=False))


def _simple_evaluate(lm_eval: Any, backend: str, tasks: list[str], kwargs: dict[str, Any]) -> Any:
    """lm-eval's `simple_evaluate`, with a server's missing log-probabilities said plainly: an
    OpenAI server that ignores `echo`/`logprobs` (transformers serve) makes lm-eval fail on a
    KeyError deep in its response parser."""
    try:
        return lm_eval.simple_evaluate(tasks=list(tasks), **kwargs)
    except KeyError as exc:
        if backend in SERVER_BACKENDS and exc.args and exc.args[0] == "logprobs":
            raise ServerCannotScore(
                f"the server returned no log-probabilities, which log-likelihood tasks need (among "
                f"{', '.join(tasks)}); serve with vLLM, or evaluate only generative tasks against this "
                "server") from None
        raise


def lm_eval_record(results: dict[str, Any], tracker: Any) -> dict[str, Any]:
    """What lm-eval's own tracker adds to a results file: a hash per task over its samples
    (document, prompt and target: two runs with equal hashes saw the same prompts), the general
    config (chat template and its hash, system instruction and its hash, fewshot_as_multiturn,
    model source); and per task the first prompt as sent, to read a template's effect."""
    from dataclasses import asdict

    from lm_eval.utils import hash_string

    hashes, prompts = {}, {}
    for task, samples in (results.get("samples") or {}).items():
        if samples:
            hashes[task] = hash_string("".join(str(s.get("doc_hash", "")) + str(s.get("prompt_hash", "")) +
                                               str(s.get("target_hash", "")) for s in samples))
            prompts[task] = _prompt_of(samples[0])
    general = {k: v for k, v in asdict(tracker.general_config_tracker).items()
               if k not in ("start_time", "end_time", "total_evaluation_time_seconds")}
    return {"task_hashes": hashes, "first_prompts": prompts, **general}


def _prompt_of(sample: dict[str, Any]) -> str:
    arguments = sample.get("arguments")
    first = arguments[0] if isinstance(arguments, list | tuple) and arguments else arguments
    if isinstance(first, dict):  # lm-eval >= 0.4.9 names the request's parts
        first = first.get("gen_args_0", first)
    if isinstance(first, dict):
        first = first.get("arg_0", first)
    if isinstance(first, list | tuple) and first:
        first = first[0]
    return str(first)[:4000]


SAMPLES_VERSION = 1
_EXAMPLE_CHARS = 160


def _doc_key(sample: dict[str, Any]) -> str:
    # lm-eval's hash of the document: the same question under both models whatever the order
    return str(sample.get("doc_hash") or f"doc-{sample.get('doc_id')}")


def _response(responses: list[Any]) -> str:
    """A model's answer, short: the generated text, or for a multiple-choice task (one
    (log-likelihood, is-greedy) pair per choice) the index of the likeliest choice."""
    if len(responses) > 1 and all(isinstance(r, list | tuple) and r and isinstance(r[0], int | float)
                                  for r in responses):
        return f"choice {max(range(len(responses)), key=lambda i: float(responses[i][0]))}"
    return str(responses[0] if len(responses) == 1 else responses)[:_EXAMPLE_CHARS]


def per_sample(results: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's logged samples reduced to what a paired comparison needs: per task and metric
    (named as the single values are: `metric`, or `metric,filter` for a filter other than
    "none"), each document's score; and per document a short target and response, to show flipped
    examples. Scores that are not plain numbers (perplexity's (loglik, length) pairs) are left out."""
    tasks: dict[str, dict[str, dict[str, float]]] = {}
    examples: dict[str, dict[str, dict[str, str]]] = {}
    for task, samples in (results.get("samples") or {}).items():
        scores = tasks.setdefault(task, {})
        for sample in samples:
            key = _doc_key(sample)
            filt = str(sample.get("filter") or "none")
            for metric in sample.get("metrics") or []:
                value = sample.get(metric)
                if isinstance(value, bool | int | float) and math.isfinite(float(value)):
                    name = metric if filt == "none" else f"{metric},{filt}"
                    scores.setdefault(name, {})[key] = float(value)
            examples.setdefault(task, {})[key] = {"target": str(sample.get("target"))[:_EXAMPLE_CHARS],
                                                  "response": _response(sample.get("filtered_resps") or [])}
        if not scores:
            tasks.pop(task)
    return {"version": SAMPLES_VERSION, "tasks": tasks, "examples": {t: examples[t] for t in tasks}}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Reduce lm-eval's results to per-task metrics, sample counts and group averages."""
    group_names = set(results.get("groups", {}))
    tasks: dict[str, Any] = {}
    for task, entry in results.get("results", {}).items():
        if task in group_names:
            continue
        n = results.get("n-samples", {}).get(task, {})
        tasks[task] = {
            "metrics": _metrics_of(entry),
            "higher_is_better": results.get("higher_is_better", {}).get(task, {}),
            "n_samples": n.get("effective"),
            "n_samples_total": n.get("original"),
        }
    groups = {
        name: {"metrics": _metrics_of(entry), "subtasks": results.get("group_subtasks", {}).get(name, [])}
        for name, entry in results.get("groups", {}).items()
    }
    return {"tasks": tasks, "groups": groups}


def evaluate(
    model_dir: Path,
    tasks: list[str],
    include_path: Path | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    backend: Backend = "hf",
    device: str = "cpu",
    dtype: str = "auto",
    vllm_args: dict[str, Any] | None = None,
    seed: int = 0,
    task_fewshot: dict[str, int | None] | None = None,
    full_results_path: Path | None = None,
    samples_path: Path | None = None,
    apply_chat_template: bool | str = False,
    fewshot_as_multiturn: bool = True,
    system_instruction: str | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    tensor_parallel_size: int | None = None,
    server: tuple[str, str, int] | None = None,
) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` and return a small summary.

    `include_path` is a directory of task YAMLs (e.g. `automation.standards.suite_dir("tiny")`);
    with it, when it defines every task asked for, only those tasks are indexed
    (`include_defaults=False`, ~5 s faster); otherwise lm-eval's built-in tasks are indexed too.
    `task_fewshot` sets a few-shot count per task (suites such as openllm use a different one per
    task); `num_fewshot`, when given, applies to all. Tasks are run in one `simple_evaluate` per
    distinct few-shot count, sharing one loaded model.
    `apply_chat_template`, `fewshot_as_multiturn`, `system_instruction` and `gen_kwargs` go to
    lm-eval as they are, defaults included (lm-eval's own defaults have changed between releases);
    `model_args` are merged over ours. lm-eval's record of them (its general config tracker, the
    task hashes) goes into the full results, as its own `--output_path` run writes them.
    With `full_results_path`, lm-eval's whole results dict (configs, versions, n-shot,
    higher_is_better, ...; no per-sample outputs) is written there as JSON; with `samples_path`,
    the per-document scores (`per_sample`) are.
    """
    from automation.standards import tasks_are_local, tasks_defined_in

    if backend == "vllm" and not vllm_available():
        raise ToolError("backend 'vllm' needs vLLM, which this environment lacks: install the project's `gpu` "
                        "extra on a GPU host (a task with backend 'vllm' lists it in its requirements)")

    # Local task YAMLs over local files need nothing from the hub; lm-eval's own tasks do. A step
    # whose main already decided (knowing the whole step: the model too) keeps its decision.
    hub_access(needed=include_path is None or not tasks_are_local(Path(include_path), tasks))
    start = time.monotonic()
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="lmeval-suite-") as tmp:
        if include_path is not None:
            resolved = resolve_include_path(Path(include_path), Path(tmp))
            # lm-eval's own tasks are indexed too only when a task asked for is not defined here.
            defaults = not tasks_defined_in(Path(include_path), tasks)
            manager = TaskManager(include_path=str(resolved), include_defaults=defaults)
        else:
            manager = TaskManager()
        model, lm_args = _model_spec(Path(model_dir).resolve(), backend, dtype, vllm_args, model_args,
                                     tensor_parallel_size, server)
        if backend in SERVER_BACKENDS:
            batch_size = 1  # one prompt per request: an OpenAI server takes no prompt lists
        tracker = EvaluationTracker()
        eval_start = time.monotonic()
        batches: dict[int | None, list[str]] = {}
        for task in tasks:
            shots = num_fewshot if num_fewshot is not None else (task_fewshot or {}).get(task)
            batches.setdefault(shots, []).append(task)
        lm: Any = model
        if len(batches) > 1:  # load the model once for all few-shot batches
            from lm_eval.api.registry import get_model

            lm = get_model(model).create_from_arg_obj(lm_args, {"batch_size": batch_size, "device": device})
        results: dict[str, Any] = {}
        for shots, batch in batches.items():
            part = _simple_evaluate(lm_eval, backend, batch, dict(
                model=lm,
                model_args=lm_args if isinstance(lm, str) else None,
                num_fewshot=shots,
                limit=limit,
                batch_size=batch_size,
                device=device,
                task_manager=manager,
                log_samples=samples_path is not None,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                apply_chat_template=apply_chat_template,
                fewshot_as_multiturn=fewshot_as_multiturn,
                system_instruction=system_instruction,
                gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
                evaluation_tracker=tracker,
            ))
            if part is None:  # only non-zero ranks of a distributed run get None
                raise RuntimeError("lm-eval returned no results")
            for key, value in part.items():
                if isinstance(value, dict) and isinstance(results.get(key), dict):
                    results[key].update(value)
                else:
                    results.setdefault(key, value)
    results.update(lm_eval_record(results, tracker))
    if isinstance(results.get("config"), dict) and not results["config"].get("model_args"):
        results["config"]["model_args"] = lm_args  # the shared model of several few-shot batches
    if full_results_path is not None:
        write_full_results(results, Path(full_results_path))
    if samples_path is not None:
        write_json(Path(samples_path), per_sample(results))
    summary = summarise(results)
    summary.update(
        {
            "model_dir": str(model_dir),
            "backend": backend,
            "requested_tasks": list(tasks),
            "num_fewshot": num_fewshot,
            "limit": limit,
            "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
            "eval_s": round(time.monotonic() - eval_start, 2),
            "wall_s": round(time.monotonic() - start, 2),
            "peak_rss_mb": peak_rss_mb(),
        }
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tasks", required=True, help="comma-separated task or group names")
    parser.add_argument("--include-path", type=Path, default=None)
    parser.add_argument("--suite", default=None, help="named suite under automation/standards/suites")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--limit", type=float, default=None)
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="summary JSON; lm-eval's full results go next to it as <stem>.lm_eval.json")
    args = parser.parse_args(argv)
    include = args.include_path
    if args.suite:
        from automation.standards import suite_dir

        include = suite_dir(args.suite)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    batch = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    full = args.out.with_name(f"{args.out.stem}.lm_eval.json") if args.out else None
    result = evaluate(
        args.model, args.tasks.split(","), include, args.num_fewshot, limit, batch, args.backend, args.device,
        full_results_path=full,
    )
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
