"""What every core script shares: reading its spec back, reporting, and failing clearly.

Under an agent the spec comes from the ClearML task (`spec_from_current_task`); run directly
(`python -m automation.scripts.<kind> --spec spec.json [--out DIR]`) it comes from a JSON file
and goes through the same reading code (encoded to the task form and decoded again), and results
land in `DIR/results.json` instead of ClearML.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, Protocol

from automation.errors import InputError, SpecError
from automation.specs.base import META_CONFIG, TaskSpec
from automation.specs.hocon import loads
from automation.specs.registry import get_kind


class Reporter(Protocol):
    """Where a core script's results go: the ClearML task, or a local directory."""

    def progress(self, percent: float, message: str = "") -> None: ...
    def scalar(self, title: str, series: str, value: float, iteration: int = 0) -> None: ...
    def single_value(self, name: str, value: float) -> None: ...
    def artifact(self, name: str, obj: Any) -> None: ...
    def output_model(self, path: Path, name: str, framework: str = "PyTorch",
                     tags: tuple[str, ...] = ()) -> str | None: ...
    def input_model(self) -> Path | None: ...
    def log(self, message: str) -> None: ...


def spec_from_task(task: Any) -> TaskSpec:
    """Rebuild a spec from a clearml Task object (Args with their types + configuration)."""
    data = task.data
    hyper = data.hyperparams or {}
    args_section = hyper.get("Args") or {}
    args = {name: (getattr(p, "value", None), getattr(p, "type", None)) for name, p in args_section.items()}
    configuration = {name: (item.value or "") for name, item in (data.configuration or {}).items()}
    if META_CONFIG not in configuration:
        raise SpecError(f"task {task.id} has no '{META_CONFIG}' configuration object: it was not "
                        "created from a TaskSpec (submit it with `automation task submit`)")
    kind = loads(configuration[META_CONFIG], what=META_CONFIG).get("kind")
    return get_kind(str(kind)).from_task_form(args, configuration)


def spec_from_current_task() -> TaskSpec:
    from clearml import Task

    task: Any = Task.current_task() or Task.init()
    return spec_from_task(task)


def spec_from_file(path: Path, expected_kind: str | None = None) -> TaskSpec:
    """A spec.json (`{"kind": ..., ...fields}`) read through the same task-form decoding.

    With `expected_kind` (the script being run), a file holding another kind is an error.
    """
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read a spec JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec file holds a JSON object of fields, got {type(raw).__name__}")
    kind = raw.pop("kind", expected_kind)
    if kind is None:
        raise SpecError(f"{path}: no 'kind' field")
    if expected_kind is not None and kind != expected_kind:
        raise SpecError(f"{path} holds a '{kind}' spec but runs the '{expected_kind}' script "
                        f"(run it with `python -m automation.scripts.{kind}`)")
    cls = get_kind(str(kind))
    from automation.specs.base import build

    spec = build(cls, raw)
    return cls.from_task_form(spec.to_args(), spec.to_configuration())


class ClearMLReporter:
    def __init__(self, task: Any) -> None:
        self.task = task
        self.logger = task.get_logger()
        # Seconds spent moving models and artifacts to and from the file server: not the work.
        self.spent = {"input_model_s": 0.0, "upload_s": 0.0}

    def progress(self, percent: float, message: str = "") -> None:
        self.task.set_progress(int(max(0, min(100, percent))))
        if message:
            print(f"[progress {percent:.0f}%] {message}", flush=True)

    def scalar(self, title: str, series: str, value: float, iteration: int = 0) -> None:
        self.logger.report_scalar(title=title, series=series, value=float(value), iteration=iteration)

    def single_value(self, name: str, value: float) -> None:
        self.logger.report_single_value(name, float(value))

    def artifact(self, name: str, obj: Any) -> None:
        # Uploaded in the SDK's background thread while the script goes on; `run` flushes with
        # wait_for_uploads before the task can complete, so what is left shows as the flush phase.
        t0 = time.monotonic()
        self.task.upload_artifact(name=name, artifact_object=str(obj) if isinstance(obj, Path) else obj,
                                  wait_on_upload=False)
        self.spent["upload_s"] += time.monotonic() - t0

    def output_model(self, path: Path, name: str, framework: str = "PyTorch",
                     tags: tuple[str, ...] = ()) -> str | None:
        from clearml import OutputModel

        t0 = time.monotonic()
        model = OutputModel(task=self.task, name=name, framework=framework, tags=list(tags))
        model.update_weights_package(weights_path=str(path), auto_delete_file=False) if path.is_dir() else \
            model.update_weights(weights_filename=str(path), auto_delete_file=False)
        self.spent["upload_s"] += time.monotonic() - t0
        return str(model.id)

    def input_model(self) -> Path | None:
        t0 = time.monotonic()
        models = self.task.models.get("input") or []
        if not models:
            return None
        local = Path(models[-1].get_local_copy(raise_on_error=True))
        self.spent["input_model_s"] += time.monotonic() - t0
        return local

    def log(self, message: str) -> None:
        print(message, flush=True)


class LocalReporter:
    """Direct runs: everything goes to DIR/results.json (artifacts and models as paths)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {"scalars": {}, "single_values": {}, "artifacts": {}, "models": {}}

    def _save(self) -> None:
        (self.out_dir / "results.json").write_text(json.dumps(self.results, indent=2, default=str))

    def progress(self, percent: float, message: str = "") -> None:
        print(f"[progress {percent:.0f}%] {message}", flush=True)

    def scalar(self, title: str, series: str, value: float, iteration: int = 0) -> None:
        self.results["scalars"].setdefault(f"{title}/{series}", {})[str(iteration)] = float(value)
        self._save()

    def single_value(self, name: str, value: float) -> None:
        self.results["single_values"][name] = float(value)
        self._save()

    def artifact(self, name: str, obj: Any) -> None:
        if isinstance(obj, Path):
            self.results["artifacts"][name] = str(obj)
        else:
            target = self.out_dir / f"{name}.json"
            target.write_text(json.dumps(obj, indent=2, default=str))
            self.results["artifacts"][name] = str(target)
        self._save()

    def output_model(self, path: Path, name: str, framework: str = "PyTorch",
                     tags: tuple[str, ...] = ()) -> str | None:
        self.results["models"][name] = str(path)
        self._save()
        return None

    def input_model(self) -> Path | None:
        return None

    def log(self, message: str) -> None:
        print(message, flush=True)


CoreMain = Callable[[TaskSpec, Reporter], None]
PHASE_PREFIX = "phase."


def _record_phases(task: Any, marks: dict[str, float], spent: dict[str, float],
                   extra: dict[str, str] | None = None) -> None:
    """Where this task's time went, as user properties `phase.*` (seconds; `start` and `end` as
    epoch seconds, so queue wait, agent launch and the SDK's close can be read off the task's own
    timestamps). `extra` properties go with them (one call). Best effort: a task whose figures
    cannot be written is still a finished task."""
    import psutil  # a dependency of clearml

    now_epoch, now = time.time(), time.monotonic()
    process_start = psutil.Process().create_time()
    work = marks["main_done"] - marks["env_recorded"] - spent["input_model_s"] - spent["upload_s"]
    phases = {
        "start": process_start,
        "imports_s": (now_epoch - (now - marks["entered"])) - process_start,
        "sdk_init_s": marks["sdk_ready"] - marks["entered"],
        "spec_read_s": marks["spec_read"] - marks["sdk_ready"],
        # recording the environment and checking the declared pins, and the GPU read at the end
        "env_s": marks["env_recorded"] - marks["spec_read"] + spent.get("env_s", 0.0),
        "input_model_s": spent["input_model_s"],
        "work_s": max(0.0, work),
        "upload_s": spent["upload_s"],
        "flush_s": marks["flushed"] - marks["main_done"],
        "end": now_epoch,
    }
    try:
        task.set_user_properties(**(extra or {}), **{f"{PHASE_PREFIX}{k}": f"{v:.3f}" for k, v in phases.items()})
    except Exception as exc:  # the figures are a report, not the result
        print(f"could not record the phase timings: {exc}", flush=True)


# -- the environment a task ran in, and the pins it declares --------------------------------
ENV_PREFIX = "env."
# Recorded when installed, whatever the kind declares (the libraries a result depends on).
KEY_DISTRIBUTIONS = ("torch", "transformers", "compressed-tensors", "llmcompressor", "lm-eval", "guidellm",
                     "vllm", "clearml")
NVIDIA_SMI_TIMEOUT_S = 5.0
NOT_INSTALLED = "not installed"
# automation/clearml/failures.py recognises this line as an infrastructure failure.
MISMATCH_ADVICE = "(the agent's environment does not match the task; rebuild it or change the pin)"


@functools.cache  # each lookup scans sys.path (ms); the record and the pin check ask for the same names
def installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def pin_mismatches(requirements: Iterable[str],
                   installed: Callable[[str], str | None] = installed_version,
                   environment: dict[str, str] | None = None) -> list[str]:
    """`name==X declared but Y is installed` (or `... but it is not installed`) for every exact
    pin (`==`, `===`) the environment contradicts; requirements whose marker does not apply here
    (`environment`: marker variables, default this interpreter) are skipped."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion

    from automation.specs.packages import is_pinned

    out = []
    for raw in requirements:
        req = Requirement(raw)
        if not is_pinned(req) or (req.marker is not None and not req.marker.evaluate(environment)):
            continue
        pin = f"{req.name}{req.specifier}"
        have = installed(req.name)
        if have is None:
            out.append(f"{pin} declared but it is {NOT_INSTALLED}")
            continue
        try:
            ok = req.specifier.contains(have, prereleases=True)  # `==2.3` holds `2.3.0+cu121`
        except InvalidVersion:  # not a PEP 440 version: only an identical string holds it
            ok = all(have == s.version for s in req.specifier)
        if not ok:
            out.append(f"{pin} declared but {have} is installed")
    return out


def mismatch_message(mismatches: list[str]) -> str:
    """The one line a task that runs in the wrong environment fails with: not the task's code (the
    same task runs on an agent whose environment is right), so an infrastructure failure."""
    return f"environment: {'; '.join(mismatches)} {MISMATCH_ADVICE}"


def environment_mismatch(requirements: Iterable[str]) -> str | None:
    """That line when this environment contradicts a pin of `requirements`, else None."""
    mismatches = pin_mismatches(requirements)
    return mismatch_message(mismatches) if mismatches else None


def _torch_cuda_build() -> str | None:
    """`torch.version.cuda` ("none" for a CPU build), without importing torch (seconds) when this
    process has not loaded it yet: `torch/version.py` is a file of plain assignments."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.version.cuda or "none")
    from importlib.util import find_spec

    try:
        found = find_spec("torch")  # a top-level name: finds, imports nothing
        if found is None or not found.submodule_search_locations:
            return None
        source = (Path(next(iter(found.submodule_search_locations))) / "version.py").read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id == "cuda":
                return str(ast.literal_eval(value) or "none")
    except (OSError, ValueError, SyntaxError, ImportError):
        pass
    return None


def start_driver_query() -> subprocess.Popen[str] | None:
    """`nvidia-smi` asked for the driver version, left running (tens to hundreds of ms on a GPU
    host: started before the SDK's init, it costs the task nothing); None without the binary."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        return subprocess.Popen([binary, "--query-gpu=driver_version", "--format=csv,noheader"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError as exc:
        print(f"nvidia-smi did not start: {exc}", flush=True)
        return None


def _driver_version(query: subprocess.Popen[str] | None) -> str | None:
    if query is None:
        return None
    try:
        out, _ = query.communicate(timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        query.kill()  # and no reading to the end: a child of it may hold the pipe open
        if query.stdout is not None:
            query.stdout.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            query.wait(timeout=1)
        print(f"nvidia-smi gave no driver version within {NVIDIA_SMI_TIMEOUT_S:g} s", flush=True)
        return None
    if query.returncode != 0:
        print(f"nvidia-smi gave no driver version (exit status {query.returncode})", flush=True)
        return None
    versions = list(dict.fromkeys(line.strip() for line in out.splitlines() if line.strip()))
    return ", ".join(versions) or None


def environment_record(spec: TaskSpec, driver_query: subprocess.Popen[str] | None = None) -> dict[str, str]:
    """What this process runs with (cheap: no import of torch): interpreter, platform, the
    installed versions of the distributions the task declares and of the key ML libraries,
    torch's CUDA build, the NVIDIA driver (`driver_query`: a `start_driver_query` already under
    way), the agent's worker and the queue. Keys without the `env.` prefix; GPUs come from
    `gpu_record` once the script has loaded torch."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    declared = [canonicalize_name(Requirement(r).name) for r in spec.task_requirements()]
    record: dict[str, str] = {}
    for name in dict.fromkeys([*declared, *KEY_DISTRIBUTIONS]):
        have = installed_version(name)
        if have is not None or name in declared:
            record[name] = have or NOT_INSTALLED
    record["python"] = platform.python_version()
    record["platform"] = platform.platform()
    cuda = _torch_cuda_build()
    if cuda is not None:
        record["torch_cuda"] = cuda
    driver = _driver_version(driver_query or start_driver_query())
    if driver is not None:
        record["nvidia_driver"] = driver
    worker = os.environ.get("CLEARML_WORKER_ID") or os.environ.get("CLEARML_WORKER_NAME")
    if worker:
        record["worker"] = worker
    record["queue"] = spec.queue
    return record


def gpu_record() -> dict[str, str]:
    """GPU count and names from torch.cuda, only when the script has loaded torch itself (the
    compress, evaluate and benchmark scripts do; importing it here would cost seconds)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        cuda = torch.cuda
        if not cuda.is_available():
            return {"gpu_count": "0"}
        count = int(cuda.device_count())
        return {"gpu_count": str(count), "gpus": ", ".join(str(cuda.get_device_name(i)) for i in range(count))}
    except Exception as exc:  # a broken CUDA state after a failure: the rest is still worth recording
        print(f"could not read the GPUs: {exc}", flush=True)
        return {}


def _env_properties(record: dict[str, str]) -> dict[str, str]:
    return {f"{ENV_PREFIX}{k}": v for k, v in record.items()}


def _record_environment(task: Any, spec: TaskSpec, driver_query: subprocess.Popen[str] | None) -> None:
    """`env.*` user properties at the start, so a task that fails still says what it ran in."""
    record = environment_record(spec, driver_query)
    try:
        task.set_user_properties(**_env_properties(record))
    except Exception as exc:  # a report, not the result
        print(f"could not record the environment: {exc}", flush=True)


def _load_secrets(spec: TaskSpec) -> None:
    """Secret references -> this process's environment (values are never printed or reported)."""
    if spec.secret_env:
        from automation.secrets import resolve

        os.environ.update(resolve(spec.secret_env))
        print(f"secrets loaded into the environment: {', '.join(sorted(spec.secret_env))}", flush=True)


FAILURE_LOG_WAIT_S = 10.0


def _log_before_failing(task: Any, text: str) -> None:
    """The traceback in the task's log before the task turns failed. What the script prints
    reaches the log only when the agent next looks at the process, after it has ended, and the
    SDK's flush only nudges its log thread: a reader that sees "failed" (the bridge, classifying
    an OOM from the log) would find nothing yet. So send it through the SDK and read it back."""
    task.get_logger().report_text(text, level=logging.ERROR, print_console=False)
    task.flush(wait_for_uploads=True)
    last_line = text.splitlines()[-1]
    deadline = time.monotonic() + FAILURE_LOG_WAIT_S
    while time.monotonic() < deadline:
        try:
            if any(last_line in str(msg) for msg in task.get_reported_console_output(number_of_reports=5)):
                return
        except Exception:  # the server blinking: the status message still carries the cause
            pass
        time.sleep(0.2)
    print("the traceback did not show in the task's log in time; the status message carries the cause", flush=True)


def _fail_task(task: Any, message: str, text: str) -> NoReturn:
    """Mark the task failed with `message` once `text` (the traceback) is in its log; exit."""
    gpus = gpu_record()
    if gpus:
        with contextlib.suppress(Exception):
            task.set_user_properties(**_env_properties(gpus))
    _log_before_failing(task, text)
    # status_message carries the cause (the bridge classifies failures from it).
    task.mark_failed(status_reason=message[:255], status_message=message[:2000], force=True)
    os._exit(1)  # mark_failed already told the server; skip the SDK's own atexit re-marking


def _exit_now(code: int) -> NoReturn:
    """End the process once everything is out, without the interpreter's teardown: unloading the
    modules of torch, transformers and llm-compressor takes about 3 s per process on 2 cores (8.4
    s against 11.7 s for `import llmcompressor` alone), seconds an agent's GPU would sit idle. Exit
    handlers still run (logging's flush among them); the files a script writes are closed by then."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(main: CoreMain, kind: str, argv: list[str] | None = None) -> None:
    """Entry point of every core script."""
    parser = argparse.ArgumentParser(prog=f"automation.scripts.{kind}")
    parser.add_argument("--spec", type=Path, help="run directly from a spec JSON file (no ClearML)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="results directory for --spec runs")
    args = parser.parse_args(argv)
    if args.spec:
        try:
            spec = spec_from_file(args.spec, expected_kind=kind)
        except SpecError as exc:
            parser.exit(2, f"error: {exc}\n")  # bad input: the message, not a traceback
        _load_secrets(spec)
        try:
            main(spec, LocalReporter(args.out))
        except InputError as exc:  # the user's mistake, found by the script: one line, no traceback
            parser.exit(2, f"error: {exc}\n")
        _exit_now(0)

    marks = {"entered": time.monotonic()}
    driver_query = start_driver_query()  # runs while the SDK initialises
    from clearml import Task

    task: Any = Task.init()  # under an agent: attaches to the task the agent runs
    started = marks["sdk_ready"] = time.monotonic()
    try:
        spec = spec_from_task(task)
        if spec.kind != kind:
            raise SpecError(f"task holds a '{spec.kind}' spec but runs the '{kind}' script")
        _load_secrets(spec)
        marks["spec_read"] = time.monotonic()
        _record_environment(task, spec, driver_query)
        mismatch = environment_mismatch(spec.task_requirements())
        if mismatch:  # before the work; the one line is all the log and the status say, no traceback
            _fail_task(task, mismatch, mismatch)
        marks["env_recorded"] = time.monotonic()
        reporter = ClearMLReporter(task)
        main(spec, reporter)
        marks["main_done"] = time.monotonic()
        task.flush(wait_for_uploads=True)
        marks["flushed"] = time.monotonic()
        gpus = gpu_record()
        reporter.spent["env_s"] = time.monotonic() - marks["flushed"]
        _record_phases(task, marks, reporter.spent, _env_properties(gpus))
        print(f"core script wall time: {time.monotonic() - started:.2f} s", flush=True)
        # The SDK's own shutdown (uploads, reports, the log), now rather than at interpreter exit.
        # Under an agent it leaves the status alone: the agent completes the task once we exit.
        task.close()
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        print(f"core script wall time: {time.monotonic() - started:.2f} s", flush=True)
        _fail_task(task, f"{type(exc).__name__}: {exc}", traceback.format_exc().rstrip())
    _exit_now(0)
