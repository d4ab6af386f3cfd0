"""Why a ClearML task did not complete: code error, infrastructure, out of memory, or a bad artifact.

The classification decides what a retry may do: a code error is not retried (the same code on the
same input fails the same way), an infrastructure failure is retried as is, and an out-of-memory
failure is retried on the next, larger queue of the spec's escalation list. A bad artifact (the
core script's output checks refused what it made) is not retried either: the same input makes
the same artifact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum


class FailureKind(StrEnum):
    CODE = "code_error"
    INFRASTRUCTURE = "infrastructure"
    OUT_OF_MEMORY = "out_of_memory"
    BAD_ARTIFACT = "bad_artifact"


_OOM = re.compile(
    r"(CUDA out of memory|OutOfMemoryError|out of memory|CUBLAS_STATUS_ALLOC_FAILED|"
    r"HIP out of memory|Killed process .* \(oom|oom-kill|MemoryError)",
    re.IGNORECASE,
)
# Signs that the process was taken away rather than failing on its own.
_INFRA = re.compile(
    r"(agent (lost|disconnected|restarted)|worker (lost|died)|preempt|spot instance|"
    r"killed by signal|signal 9|SIGKILL|exit code -9|returned -9|process (was )?killed|"
    r"Task was reset|reset by|No heartbeat|connection (reset|refused)|Docker.*(failed|error))",
    re.IGNORECASE,
)
# The agent could not build the task's environment (venv or docker mode): pip's own error lines.
# Not the task's code, and the same task may install elsewhere (an index back up, another platform).
_INSTALL = re.compile(
    r"^\s*(ERROR: (Could not find a version|No matching distribution|Cannot install|ResolutionImpossible|"
    r"Could not install packages|Failed building wheel|pip's dependency resolver)[^\n]*|"
    r"[^\n]*Could not install task requirements[^\n]*)",
    re.MULTILINE,
)
# The core script found the agent's environment contradicting a pin the task declares
# (automation/scripts/runtime.py, `mismatch_message`): the same task runs on a right environment.
_ENVIRONMENT = re.compile(r"^environment: \S+ declared but [^\n]*installed[^\n]*", re.MULTILINE)
# The core script's output checks failed (automation.errors.BadArtifactError, raised by its main):
# the status message the script set, or (when the agent replaced it on exit) the traceback's last
# line in the log.
_BAD_ARTIFACT = re.compile(r"^(?:[\w.]+\.)?BadArtifactError: ", re.MULTILINE)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w+(Error|Exception): ", re.MULTILINE)


def classify(status: str, status_message: str = "", status_reason: str = "",
             log_tail: Sequence[str] = ()) -> FailureKind:
    """Classify a task that ended failed/stopped (not stopped by us)."""
    text = "\n".join([status_message or "", status_reason or "", *log_tail])
    if status == "failed" and _BAD_ARTIFACT.search(text):
        return FailureKind.BAD_ARTIFACT
    if _OOM.search(status_message or "") or _OOM.search(status_reason or ""):
        return FailureKind.OUT_OF_MEMORY
    if status == "stopped":
        # Stopped by someone or something other than this orchestrator: the server reset it, an
        # agent abort, a preemption. Retrying is safe.
        return FailureKind.INFRASTRUCTURE
    if _OOM.search(text):
        return FailureKind.OUT_OF_MEMORY
    if _INFRA.search(status_message or "") or _INFRA.search(status_reason or ""):
        return FailureKind.INFRASTRUCTURE
    if _INSTALL.search(text):  # before tracebacks: the agent logs one of its own for this
        return FailureKind.INFRASTRUCTURE
    if _ENVIRONMENT.search(text):  # the script's own line (status message or log), not its code
        return FailureKind.INFRASTRUCTURE
    if _TRACEBACK.search(text):
        return FailureKind.CODE
    # Failed without a traceback of its own: the process died (killed, segfault, lost agent).
    return FailureKind.INFRASTRUCTURE


def install_error(log_tail: Sequence[str]) -> str | None:
    """pip's error line when the agent could not install the task's requirements, else None."""
    found = [m.group(1).strip() for m in _INSTALL.finditer("\n".join(log_tail))]
    pip_lines = [f for f in found if f.startswith("ERROR:")]
    return (pip_lines or found or [None])[0]


def environment_error(log_tail: Sequence[str]) -> str | None:
    """The core script's line when the agent's environment contradicted a declared pin, else None
    (the agent overwrites the status message once the process has exited; the log keeps it)."""
    found = _ENVIRONMENT.search("\n".join(log_tail))
    return found.group(0).strip() if found else None
