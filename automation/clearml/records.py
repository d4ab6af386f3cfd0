"""What a ClearML task record says, parsed once: `TaskStatus`, the status sets, timestamps, and the
typed `TaskRecord` the client hands out (callers never read the wire dict)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class TaskStatus(StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    STOPPED = "stopped"
    FAILED = "failed"
    COMPLETED = "completed"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    CLOSED = "closed"
    UNKNOWN = "unknown"  # not a ClearML status: a task the server no longer knows, or a status it added later


ACTIVE_STATUSES = frozenset({TaskStatus.CREATED, TaskStatus.QUEUED, TaskStatus.IN_PROGRESS})
SUCCESS_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.PUBLISHED, TaskStatus.CLOSED})
TERMINAL_STATUSES = SUCCESS_STATUSES | {TaskStatus.FAILED, TaskStatus.STOPPED}
# Reports the registry lists: a half-published one is marked failed and never listed.
DONE_STATUSES = (TaskStatus.COMPLETED, TaskStatus.PUBLISHED)


def parse_timestamp(value: Any) -> datetime | None:
    """A ClearML timestamp (ISO 8601, `Z` or an offset, or naive meaning UTC) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class TaskRecord(BaseModel):
    """The fields of a task the orchestration reads (what `tasks.get_all` returned for them)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    name: str | None = None
    project: str | None = None
    status: TaskStatus = TaskStatus.UNKNOWN
    status_message: str = ""
    status_reason: str = ""
    status_changed: datetime | None = None
    created: datetime | None = None
    started: datetime | None = None
    completed: datetime | None = None
    last_update: datetime | None = None
    last_worker: str | None = None
    tags: tuple[str, ...] = ()
    queue_id: str | None = None  # execution.queue
    progress: float | None = None  # runtime.progress, 0-100

    @model_validator(mode="before")
    @classmethod
    def _from_wire(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out = {k: v for k, v in raw.items() if v is not None}
        execution, runtime = raw.get("execution"), raw.get("runtime")
        if isinstance(execution, dict) and execution.get("queue"):
            out["queue_id"] = str(execution["queue"])
        if isinstance(runtime, dict):
            try:
                out["progress"] = None if runtime.get("progress") in (None, "") else float(runtime["progress"])
            except (TypeError, ValueError):
                out["progress"] = None
        return out

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> TaskStatus:
        try:
            return TaskStatus(str(value))
        except ValueError:
            return TaskStatus.UNKNOWN

    @field_validator("status_changed", "created", "started", "completed", "last_update", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> datetime | None:
        return parse_timestamp(value)

    @field_validator("status_message", "status_reason", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        return "" if value is None else str(value)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCESS_STATUSES

    @property
    def finished(self) -> bool:
        """Nothing more will happen to it: terminal, or unknown to the server."""
        return self.status in TERMINAL_STATUSES or self.status is TaskStatus.UNKNOWN
