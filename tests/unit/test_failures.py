"""Failure classification: what a retry may do depends on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from automation.clearml.client import ClearMLBackend
from automation.clearml.failures import FailureKind, classify, environment_error, install_error
from automation.clearml.settings import ClearMLSettings
from automation.errors import (
    TASK_ERRORS,
    BackendUnavailable,
    BadArtifact,
    CodeError,
    InfrastructureError,
    OutOfMemoryError,
    ServerUnreachable,
)

TRACEBACK = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
             "RuntimeError: debug task asked to fail"]


PIP_FAILURE = ["Collecting packaging==26.3",
               "ERROR: Could not find a version that satisfies the requirement nope==9.9.9 (from versions: none)",
               "ERROR: No matching distribution found for nope==9.9.9"]


def test_the_pip_error_is_what_an_install_failure_says() -> None:
    assert str(install_error(PIP_FAILURE)).startswith("ERROR: Could not find a version that satisfies the requirement")
    assert install_error(["ValueError: Could not install task requirements!"]) == \
        "ValueError: Could not install task requirements!"
    assert install_error(TRACEBACK) is None


def test_the_scripts_line_is_what_an_environment_mismatch_says() -> None:
    line = ("environment: llmcompressor==0.14.0 declared but 0.13.1 is installed (the agent's environment does not "
            "match the task; rebuild it or change the pin)")
    assert environment_error(["Starting Task Execution:", line, "Process failed, exit code 1"]) == line
    assert environment_error([*TRACEBACK, *PIP_FAILURE]) is None


@pytest.mark.parametrize(
    ("status", "message", "reason", "tail", "expected"),
    [
        ("failed", "RuntimeError: boom", "RuntimeError: boom", TRACEBACK, FailureKind.CODE),
        ("failed", "Changed by clearml-agent local-gpu", "", ["Process failed, exit code -9"],
         FailureKind.INFRASTRUCTURE),
        ("failed", "", "", [], FailureKind.INFRASTRUCTURE),  # died without a traceback of its own
        ("stopped", "Forced stop (non-responsive)", "", [], FailureKind.INFRASTRUCTURE),
        ("failed", "SimulatedOutOfMemory: CUDA out of memory. Tried to allocate 2.00 GiB", "", TRACEBACK,
         FailureKind.OUT_OF_MEMORY),
        ("failed", "", "", [*TRACEBACK[:-1], "torch.OutOfMemoryError: CUDA out of memory."],
         FailureKind.OUT_OF_MEMORY),
        ("stopped", "", "oom-kill", [], FailureKind.OUT_OF_MEMORY),
        ("failed", "agent lost", "", TRACEBACK, FailureKind.INFRASTRUCTURE),
        ("failed", "", "", ["Killed process 123 (python) total-vm (oom score)"], FailureKind.OUT_OF_MEMORY),
        # the agent could not build the environment: pip's error, then the agent's own traceback
        ("failed", "Changed by clearml-agent venv-1", "", [*PIP_FAILURE, *TRACEBACK[:-1],
                                                           "ValueError: Could not install task requirements!"],
         FailureKind.INFRASTRUCTURE),
        # the core script found a declared pin the agent's environment contradicts (runtime.py)
        ("failed", "Changed by clearml-agent local-gpu", "",
         ["environment: llmcompressor==0.14.0 declared but 0.13.1 is installed (the agent's environment does not "
          "match the task; rebuild it or change the pin)", "Process failed, exit code 1"],
         FailureKind.INFRASTRUCTURE),
        # the compress script's output checks refused the model it made (scripts/lib/output_checks.py)
        ("failed", "BadArtifactError: compressed model in /w/compressed failed its output checks: no tokenizer",
         "BadArtifactError: compressed model", TRACEBACK, FailureKind.BAD_ARTIFACT),
        # ... or, the agent having replaced the status message on exit, the traceback's last line
        ("failed", "Changed by clearml-agent local-cpu", "", [*TRACEBACK[:-1],
                                                             "automation.errors.BadArtifactError: compressed model in "
                                                             "/w failed its output checks: no tokenizer"],
         FailureKind.BAD_ARTIFACT),
        # ... but a traceback that merely mentions one in its text is a code error
        ("failed", "RuntimeError: could not raise BadArtifactError: ", "", TRACEBACK, FailureKind.CODE),
    ],
)
def test_classify(status: str, message: str, reason: str, tail: list[str], expected: FailureKind) -> None:
    assert classify(status, message, reason, tail) is expected


def test_errors_carry_url_and_log_tail_and_retryability() -> None:
    err = CodeError("t1", "http://web/t1", "failed", "RuntimeError: boom", ["line a", "line b"], queue="gpu")
    assert not err.retryable
    assert "http://web/t1" in str(err) and "line b" in str(err) and "code_error" in str(err)
    assert InfrastructureError("t1", "u", "failed", "", []).retryable
    assert OutOfMemoryError("t1", "u", "failed", "", [], queue="gpu", next_queue="cpu").retryable
    last = OutOfMemoryError("t1", "u", "failed", "", [], queue="cpu", next_queue=None)
    assert not last.retryable and last.next_queue is None
    bad = TASK_ERRORS[FailureKind.BAD_ARTIFACT]("t1", "u", "failed", "BadArtifactError: no tokenizer", [])
    assert isinstance(bad, BadArtifact) and not bad.retryable and "bad_artifact" in str(bad)


# -- transport failures: which end a call at once -------------------------------------------------
def _backend(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> ClearMLBackend:
    settings = ClearMLSettings(api_host="http://10.255.255.1:8008", web_host="http://web.test",
                               files_host="http://files.test", access_key="k", secret_key=SecretStr("s"))
    backend = ClearMLBackend(settings, **kwargs)
    backend._client = httpx.AsyncClient(base_url=settings.api_host, transport=httpx.MockTransport(handler))
    return backend


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ConnectError])
def test_connect_failures_fail_within_seconds_naming_the_url(error: type[httpx.TransportError]) -> None:
    """A host that drops packets shows only as connect timeouts (5 s each with the real client);
    it must fail after `connect_attempts` of them, not after `retry_for_s` (120 s) of retries.
    A real packet-dropping host cannot be simulated here, so the transport raises what httpx
    raises for one, at once."""
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise error("no answer to SYN", request=request)

    async def main() -> None:
        backend = _backend(handler)
        try:
            await backend.call("tasks.get_all", {})
        finally:
            await backend.aclose()

    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as info:
        asyncio.run(main())
    assert attempts == 3 and time.monotonic() - started < 5  # 3 x 5 s connect timeouts in real life
    assert "http://10.255.255.1:8008" in str(info.value)
    assert ("timed out" if error is httpx.ConnectTimeout else "refused") in str(info.value)


def test_connect_failures_after_contact_are_an_outage_and_retried() -> None:
    """Once the client has had an answer, the server is known good: connection failures are an
    outage (a restart, a blip while a finished task's result is read), retried for `retry_for_s`
    and then BackendUnavailable (which Prefect retries), not ServerUnreachable (never retried)."""
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:  # auth.login, then the first call
            return httpx.Response(200, json={"meta": {"result_code": 200}, "data": {"token": "t", "tasks": []}})
        raise httpx.ConnectTimeout("no answer to SYN", request=request)

    async def main() -> None:
        backend = _backend(handler, retry_for_s=1.0)
        try:
            await backend.call("tasks.get_all", {})
            await backend.call("tasks.get_all", {})
        finally:
            await backend.aclose()

    with pytest.raises(BackendUnavailable) as info:
        asyncio.run(main())
    assert not isinstance(info.value, ServerUnreachable) and attempts > 5


def test_pool_and_read_timeouts_stay_transient() -> None:
    """A full local pool or a slow answer is not an unreachable server: retried, then
    BackendUnavailable (which Prefect retries), never ServerUnreachable."""
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise (httpx.PoolTimeout if attempts % 2 else httpx.ReadTimeout)("slow", request=request)

    async def main() -> None:
        backend = _backend(handler, retry_for_s=1.0)
        try:
            await backend.call("tasks.get_all", {})
        finally:
            await backend.aclose()

    with pytest.raises(BackendUnavailable) as info:
        asyncio.run(main())
    assert not isinstance(info.value, ServerUnreachable) and attempts > 3
