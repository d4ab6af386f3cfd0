"""The one error tree of the product. Every error a user or a flow can see is one of these:

    AutomationError                 root; `retryable`, `exit_code`, `label` on every class
    ├── InputError (ValueError)     bad input or configuration: the message names the field and the fix
    │   ├── SpecError               a spec that cannot be built or read back
    │   ├── HoconError, PackageError, SecretError, HookError
    │   ├── StandardError           a recipe / suite / profile that cannot be found or read
    │   │   └── StandardNotFoundError (also LookupError)
    │   ├── RecipeError
    │   ├── FlowInputError          bad flow parameters, found before anything is queued
    │   ├── ClearMLConfigError      no usable ClearML configuration
    │   ├── QueueNotFound           a queue the spec names does not exist
    │   └── ModelInputError         the input model cannot be made available (core scripts)
    ├── BackendError                a ClearML call failed
    │   ├── BackendUnavailable      the server kept failing (retryable)
    │   │   └── ServerUnreachable   no connection at all: a wrong URL or a server that is down
    │   └── ApiCallError            the server refused the call
    ├── TaskFailed                  a ClearML task did not complete (carries URL and log tail)
    │   ├── CodeError               the core script raised: the same input fails again
    │   ├── BadArtifact             the step's output failed its checks (BadArtifactError); not retried
    │   ├── InfrastructureError     agent lost, process killed, preempted (retryable)
    │   ├── OutOfMemoryError        retryable while the spec has a next queue to escalate to
    │   └── TaskTimeout             ran out of time (`phase`: "queue" or "run"); stopped, not retried
    ├── RunFailed                   a flow run ended failing (`fail_on`), after its report was published
    ├── RegistryError               a baselines-registry operation that cannot be done
    │   ├── ReportNotFound, PromotionRefused
    ├── NotifyError                 notifications could not be set up or sent
    ├── StackError                  the local stack could not be brought up or down
    └── ToolError                   a library or server run by a core script failed
        ├── BenchmarkError          GuideLLM failed, produced no report, or too many requests errored
        ├── ServerError             the model server could not start, died, or never became ready
        ├── BadArtifactError        an output failed its checks (a compressed model that is not usable)
        ├── AcceleratorRequired     the step needs a GPU and the host has none
        └── ServerCannotScore       the inference server returns no log-probabilities

`retryable` is what the bridge's Prefect retry condition reads; `exit_code` and `label` are what
the CLI prints (one line, no traceback). Input errors subclass ValueError so that pydantic turns
one raised inside a validator into a validation error naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from automation.clearml.failures import FailureKind

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class AutomationError(Exception):
    """Root of every error of the product."""

    retryable: bool = False
    exit_code: ClassVar[int] = EXIT_FAILED
    label: ClassVar[str] = "error"


# -- bad input / configuration -------------------------------------------------------------------

class InputError(AutomationError, ValueError):
    """Bad input or configuration; the message names the field and the fix. Never retried."""

    exit_code = EXIT_BAD_INPUT
    label = "invalid input"


class SpecError(InputError):
    """A spec that cannot be built or read back; the message names the field(s) and the fix."""


class HoconError(InputError):
    """A configuration text that is not valid HOCON."""


class PackageError(InputError):
    """A package requirement that cannot be merged or parsed."""


class SecretError(InputError):
    """A secret given by value where a reference is required, or a reference that cannot resolve."""


class HookError(InputError):
    """An unknown submit hook or a bad hook argument."""


class StandardError(InputError):
    """A standard that cannot be found or read; the message names it and what is known."""


class StandardNotFoundError(StandardError, LookupError):
    """No standard of that name."""


class RecipeError(InputError):
    """A recipe name, template or argument is invalid; the message names the culprit."""


class FlowInputError(InputError):
    """Bad flow input, found before anything was queued; the message names the parameter."""


class ClearMLConfigError(InputError):
    """No usable ClearML configuration (no clearml.conf, no CLEARML_* variables, or a bad one)."""

    label = "ClearML configuration"


class QueueNotFound(InputError):
    """A queue named by a spec does not exist on the ClearML server."""

    label = "ClearML queue"


class ModelInputError(InputError):
    """The model named by the spec could not be made available locally."""


# -- the ClearML backend ---------------------------------------------------------------------------

class BackendError(AutomationError):
    """A ClearML call that failed; the message names the server and the call."""

    label = "ClearML server"


class BackendUnavailable(BackendError):
    """The server could not be reached (after bounded retries)."""

    retryable = True


class ServerUnreachable(BackendUnavailable):
    """No connection to the server could be made (refused or timed out): a wrong URL, a server
    that is down, or a host that drops packets. Not retried: the same URL fails again."""

    retryable = False


class ApiCallError(BackendError):
    """The server refused a call (a ClearML error code); the same call fails again."""

    def __init__(self, endpoint: str, code: int, subcode: int, msg: str) -> None:
        super().__init__(f"{endpoint} failed: {code}/{subcode} {msg}")
        self.endpoint = endpoint
        self.code = code
        self.subcode = subcode
        self.msg = msg


# -- a ClearML task that did not complete ------------------------------------------------------------

class TaskFailed(AutomationError):
    """Base: the ClearML task did not complete; carries the URL and the log tail."""

    failure: ClassVar[FailureKind] = FailureKind.CODE
    label = "task failed"

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


class CodeError(TaskFailed):
    """The core script raised: the same code on the same input fails again, so no retry."""

    failure = FailureKind.CODE


class InfrastructureError(TaskFailed):
    """Agent lost, process killed, task stopped/reset by the server, preempted: retried."""

    failure = FailureKind.INFRASTRUCTURE
    retryable = True


class OutOfMemoryError(TaskFailed):
    """Out of memory; retried on the next queue of the spec's escalation list, if any."""

    failure = FailureKind.OUT_OF_MEMORY

    def __init__(self, *args: Any, next_queue: str | None = None, **kwargs: Any) -> None:
        self.next_queue = next_queue
        super().__init__(*args, **kwargs)
        self.retryable = next_queue is not None


class BadArtifact(TaskFailed):
    """The core script's output checks failed (its status message starts `BadArtifactError:`):
    the same input makes the same artifact, so no retry, and nothing is queued on it."""

    failure = FailureKind.BAD_ARTIFACT


TimeoutPhase = Literal["queue", "run"]


class TaskTimeout(TaskFailed):
    """The task ran out of time and was stopped (dequeued while still queued). `phase` is where it
    was: "queue" (no agent picked it up within `max_queue_s`, or `max_wait_s` ran out first),
    "run" (an agent ran it longer than `max_run_s` or `max_wait_s`), None when its status was
    never seen. Not retried: the same step would wait or run as long again."""

    failure = FailureKind.INFRASTRUCTURE
    retryable = False

    def __init__(self, *args: Any, phase: TimeoutPhase | None = None, **kwargs: Any) -> None:
        self.phase = phase
        super().__init__(*args, **kwargs)


TASK_ERRORS: dict[FailureKind, type[TaskFailed]] = {
    FailureKind.CODE: CodeError,
    FailureKind.INFRASTRUCTURE: InfrastructureError,
    FailureKind.OUT_OF_MEMORY: OutOfMemoryError,
    FailureKind.BAD_ARTIFACT: BadArtifact,
}


# -- flows, registry, notifications, local stack -------------------------------------------------------

class RunFailed(AutomationError):
    """Raised at the very end (after the report is published) when `fail_on` says so."""

    label = "run failed"

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report  # the published `Report` (typed loosely: the error tree imports no model)


class RegistryError(AutomationError):
    """A registry operation that cannot be done; the message says why and what to do."""

    label = "baselines"


class ReportNotFound(RegistryError):
    """No report with that id or flow-run id."""


class PromotionRefused(RegistryError):
    """A promotion the registry refuses (failed or missing cells) unless forced."""


class NotifyError(AutomationError):
    """Notifications could not be set up, listed or sent."""

    label = "notifications"


class StackError(AutomationError):
    """The local stack could not be brought up, checked or taken down."""

    label = "local stack"


# -- tools run by the core scripts -------------------------------------------------------------------

class ToolError(AutomationError):
    """A library or server run by a core script failed."""


class BenchmarkError(ToolError):
    """GuideLLM failed, produced no report, or too many requests errored."""


class ServerError(ToolError):
    """The model server could not start, died, or did not become ready in time."""


class BadArtifactError(ToolError):
    """A step's output failed its checks (a compressed model that lacks files, does not match its
    recipe, does not reload, or generates garbage). The same input makes the same artifact: not
    retried, and nothing downstream is queued on it."""

    label = "bad artifact"

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class AcceleratorRequired(ToolError):
    """The step needs a GPU (an algorithm or kernel with no CPU path) and the host has none."""

    label = "no accelerator"


class ServerCannotScore(ToolError):
    """The inference server cannot give what an lm-eval task needs: log-probabilities of the prompt
    (`transformers serve` ignores `echo`/`logprobs`), which log-likelihood tasks are scored by."""

    label = "server cannot score"
