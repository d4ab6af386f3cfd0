"""Failure classification: what a retry may do depends on it."""

from __future__ import annotations

import pytest

from automation.failures import FailureKind, classify
from flows.errors import CodeError, InfrastructureError, OutOfMemoryError

TRACEBACK = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
             "RuntimeError: debug task asked to fail"]


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
