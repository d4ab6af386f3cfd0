"""Typed failures of a ClearML task awaited by the bridge; each carries the URL and the log tail."""

from __future__ import annotations

from collections.abc import Sequence

from automation.failures import FailureKind


class ClearMLTaskError(RuntimeError):
    """Base: the ClearML task did not complete."""

    failure: FailureKind = FailureKind.CODE
    retryable = False

    def __init__(self, task_id: str, url: str, status: str, message: str,
                 log_tail: Sequence[str] = (), queue: str | None = None) -> None:
        self.task_id = task_id
        self.url = url
        self.status = status
        self.message = message
        self.log_tail = list(log_tail)
        self.queue = queue
        tail = "\n".join(f"    {line}" for line in self.log_tail[-20:]) or "    (no log lines)"
        super().__init__(
            f"ClearML task {task_id} ended '{status}' ({self.failure.value}) on queue '{queue}': "
            f"{message or 'no status message'}\n  task: {url}\n  last log lines:\n{tail}"
        )


class CodeError(ClearMLTaskError):
    """The core script raised: the same code on the same input fails again, so no retry."""

    failure = FailureKind.CODE


class InfrastructureError(ClearMLTaskError):
    """Agent lost, process killed, task stopped/reset by the server, preempted: retried."""

    failure = FailureKind.INFRASTRUCTURE
    retryable = True


class OutOfMemoryError(ClearMLTaskError):
    """Out of memory; retried on the next queue of the spec's escalation list, if any."""

    failure = FailureKind.OUT_OF_MEMORY

    def __init__(self, *args: object, next_queue: str | None = None, **kwargs: object) -> None:
        self.next_queue = next_queue
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retryable = next_queue is not None


class TaskTimeout(ClearMLTaskError):
    """The task did not finish within the bridge's max wait; it was stopped."""

    failure = FailureKind.INFRASTRUCTURE


ERRORS: dict[FailureKind, type[ClearMLTaskError]] = {
    FailureKind.CODE: CodeError,
    FailureKind.INFRASTRUCTURE: InfrastructureError,
    FailureKind.OUT_OF_MEMORY: OutOfMemoryError,
}
