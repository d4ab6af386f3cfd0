"""The bridge's pure decisions: which queue a new attempt goes to, when a finished task is fresh
enough to reuse, what Prefect retries, which of two concurrent duplicates survives, and when a
step's time limits run out."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from automation.clearml.client import QUEUE_TAG
from automation.clearml.records import TaskRecord
from automation.errors import (
    ApiCallError,
    BackendUnavailable,
    CodeError,
    FlowInputError,
    InfrastructureError,
    OutOfMemoryError,
    QueueNotFound,
    ServerUnreachable,
    TaskTimeout,
)
from automation.results import TaskResult
from automation.specs.debug import DebugSpec
from flows.bridge import (
    DUPLICATE_REASON,
    _choose_queue,
    _defer_to_older,
    _fresh,
    _retry_condition,
    _StepLimits,
    execute,
)

OOM_TAIL = ["Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory."]
CODE_TAIL = ["Traceback (most recent call last):", "RuntimeError: boom"]
KILLED_TAIL = ["Process failed, exit code -9"]
SPEC = DebugSpec(queue="a", queue_escalation=("b", "c"))


def _iso(ago_s: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=ago_s)).isoformat()


def rec(task_id: str, status: str, queue: str | None = None, message: str = "", created: str = "",
        **extra: Any) -> TaskRecord:
    tags = [f"{QUEUE_TAG}{queue}"] if queue else []
    return TaskRecord.model_validate({"id": task_id, "status": status, "status_message": message, "status_reason": "",
                                      "tags": tags, "created": created, **extra})


def R(fields: dict[str, Any]) -> TaskRecord:
    return TaskRecord.model_validate({"id": "t", **fields})


class FakeClient:
    """What the bridge's rules use of ClearMLBackend: log tails, lookups, stops, results, tags."""

    def __init__(self, tails: dict[str, list[str]] | None = None,
                 history: list[TaskRecord] | None = None) -> None:
        self.tails = tails or {}
        self.history = history or []
        self.tail_calls: list[str] = []
        self.stopped: list[str] = []
        self.enqueued: list[tuple[str, str]] = []
        self.tagged: list[tuple[str, list[str]]] = []

    async def log_tail(self, task_id: str, lines: int = 30) -> list[str]:
        self.tail_calls.append(task_id)
        return self.tails.get(task_id, [])

    async def find_by_identity(self, identity: str) -> list[TaskRecord]:
        return sorted(self.history, key=lambda r: r.created or datetime.min.replace(tzinfo=UTC), reverse=True)

    async def stop(self, task_id: str, reason: str) -> str:
        self.stopped.append(task_id)
        return "dequeued"

    async def enqueue(self, task_id: str, queue: str) -> None:
        self.enqueued.append((task_id, queue))

    async def add_tags(self, task_id: str, current: Sequence[str], tags: Iterable[str]) -> bool:
        self.tagged.append((task_id, list(tags)))
        return True

    async def result(self, task_id: str, kind: str, identity: str, reused: bool = False) -> TaskResult:
        return TaskResult(task_id=task_id, kind=kind, identity=identity, status="completed",
                          web_url=f"http://web/{task_id}", reused=reused)


def choose(history: list[TaskRecord], tails: dict[str, list[str]] | None = None,
           spec: DebugSpec = SPEC) -> tuple[str, FakeClient]:
    client = FakeClient(tails)
    return asyncio.run(_choose_queue(client, spec, history)), client


# -- _choose_queue ------------------------------------------------------------------------------
def test_first_attempt_and_successes_use_the_first_queue() -> None:
    assert choose([])[0] == "a"
    queue, client = choose([rec("t2", "completed", "c"), rec("t1", "queued", "b")])
    assert queue == "a" and client.tail_calls == []  # no log read without a failure


def test_oom_escalates_one_step_at_a_time() -> None:
    assert choose([rec("t1", "failed", "a")], {"t1": OOM_TAIL})[0] == "b"
    # a -> b -> c: the latest failure decides, one log read
    queue, client = choose([rec("t2", "failed", "b"), rec("t1", "failed", "a")], {"t2": OOM_TAIL, "t1": OOM_TAIL})
    assert queue == "c" and client.tail_calls == ["t2"]
    assert choose([rec("t3", "failed", "c")], {"t3": OOM_TAIL})[0] == "c"  # the last queue stays last


def test_non_oom_failure_retries_on_the_queue_it_failed_on() -> None:
    # after an escalation a -> b, an infrastructure failure on b retries on b (a would run out again)
    history = [rec("t2", "failed", "b"), rec("t1", "failed", "a")]
    assert choose(history, {"t2": KILLED_TAIL, "t1": OOM_TAIL})[0] == "b"
    assert choose([rec("t2", "stopped", "c", "Forced stop")])[0] == "c"
    assert choose([rec("t1", "failed", "b")], {"t1": CODE_TAIL})[0] == "b"
    # a queue that is not in the plan (the spec changed its queues) or no tag: the first queue
    assert choose([rec("t1", "failed", "elsewhere")], {"t1": KILLED_TAIL})[0] == "a"
    assert choose([rec("t1", "failed")], {"t1": KILLED_TAIL})[0] == "a"


def test_stopped_duplicates_are_not_history() -> None:
    history = [rec("t3", "stopped", "a", f"{DUPLICATE_REASON} t2 (same identity)"), rec("t2", "failed", "a")]
    queue, client = choose(history, {"t2": OOM_TAIL})
    assert queue == "b" and client.tail_calls == ["t2"]


# -- _fresh ---------------------------------------------------------------------------------------
def test_fresh() -> None:
    assert _fresh(R({}), None)  # no bound: everything is fresh
    assert _fresh(R({"completed": _iso(10)}), 60)
    assert not _fresh(R({"completed": _iso(120)}), 60)
    assert _fresh(R({"completed": _iso(10), "created": _iso(3600)}), 60)  # completion time counts first
    assert not _fresh(R({"last_update": _iso(120)}), 60)
    naive = (datetime.now(UTC) - timedelta(seconds=10)).replace(tzinfo=None).isoformat()
    assert _fresh(R({"completed": naive}), 60)  # a naive stamp is UTC
    assert _fresh(R({"created": _iso(10).replace("+00:00", "Z")}), 60)
    assert not _fresh(R({}), 60) and not _fresh(R({"completed": "yesterday"}), 60)  # unknown age: not fresh


# -- _retry_condition -----------------------------------------------------------------------------
class FakeState:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    async def aresult(self) -> object:
        if self.exc is not None:
            raise self.exc
        return "ok"


ERR = ("t1", "http://web/t1", "failed", "msg", ["line"])


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (CodeError(*ERR), False),
        (InfrastructureError(*ERR), True),
        (OutOfMemoryError(*ERR, queue="a", next_queue="b"), True),
        (OutOfMemoryError(*ERR, queue="c", next_queue=None), False),
        (TaskTimeout(*ERR), False),
        (TaskTimeout(*ERR, queue="a", phase="run"), False),  # a step that hung would hang again
        (ServerUnreachable("http://api unreachable"), False),
        (QueueNotFound("no queue"), False),
        (ApiCallError("tasks.create", 400, 12, "bad"), False),
        (BackendUnavailable("kept failing"), True),
        (ValueError("invalid spec"), False),
        (None, False),
    ],
)
def test_retry_condition(exc: BaseException | None, retried: bool) -> None:
    assert asyncio.run(_retry_condition(None, None, FakeState(exc))) is retried


def test_retry_condition_is_async() -> None:
    # a sync condition's state.result() in an async task is a coroutine that never raises (FACTS.md)
    assert inspect.iscoroutinefunction(_retry_condition)


# -- _defer_to_older (concurrent orchestrators) ---------------------------------------------------
def defer(history: list[TaskRecord], mine: str = "t2", refresh: bool = False,
          max_age_s: float | None = None) -> tuple[Any, FakeClient]:
    client = FakeClient(history=history)
    out = asyncio.run(_defer_to_older(client, SPEC, "ident", mine, refresh, max_age_s))  # type: ignore[arg-type]
    return out, client


def test_keeps_ours_when_nothing_older_is_alive() -> None:
    assert defer([rec("t2", "queued", "a", created=_iso(1))])[0] is None
    # older but failed/stopped: history, not a duplicate
    out, client = defer([rec("t1", "failed", "a", created=_iso(5)), rec("t2", "queued", "a", created=_iso(1))])
    assert out is None and client.stopped == []
    # a YOUNGER active one is the other orchestrator's problem: it stops its own
    out, client = defer([rec("t2", "queued", "a", created=_iso(5)), rec("t3", "queued", "a", created=_iso(1))])
    assert out is None and client.stopped == []


def test_stops_ours_and_attaches_to_the_oldest_active() -> None:
    history = [rec("t0", "in_progress", "b", created=_iso(9)), rec("t1", "queued", "a", created=_iso(5)),
               rec("t2", "queued", "a", created=_iso(1))]
    out, client = defer(history)
    assert out == ("t0", "b") and client.stopped == ["t2"]


def test_ties_on_created_are_broken_by_id() -> None:
    same = _iso(2)
    history = [rec("t1", "queued", "a", created=same), rec("t2", "queued", "a", created=same)]
    assert defer(history, mine="t2")[0] == ("t1", "a")
    assert defer(history, mine="t1")[0] is None


def test_older_completed_is_reused_unless_refresh_or_too_old() -> None:
    history = [rec("t1", "completed", "a", created=_iso(5), completed=_iso(4)),
               rec("t2", "queued", "a", created=_iso(1))]
    out, client = defer(history)
    assert isinstance(out, TaskResult) and out.task_id == "t1" and out.reused and client.stopped == ["t2"]
    assert defer(history, refresh=True)[0] is None
    assert defer(history, max_age_s=1.0)[0] is None


def test_older_draft_is_adopted() -> None:
    # the other orchestrator is between its create and its enqueue: enqueue its task, drop ours
    history = [rec("t1", "created", "a", created=_iso(2)), rec("t2", "queued", "a", created=_iso(1))]
    out, client = defer(history)
    assert out == ("t1", "a") and client.enqueued == [("t1", "a")] and client.stopped == ["t2"]


# -- step time limits (max_queue_s, max_run_s, max_wait_s) ----------------------------------------
def limited(limits: _StepLimits, *steps: tuple[float, TaskRecord]) -> float:
    """Feed `limits` records (each after a pause) as the poller would, then wait until its deadline
    passes; the seconds until it did."""
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        with pytest.raises(TimeoutError):
            async with limits.applied():
                for pause, record in steps:
                    await asyncio.sleep(pause)
                    limits.observe(record)
                await asyncio.sleep(30)
        return loop.time() - begun
    return asyncio.run(scenario())


def test_queue_limit_runs_out_while_queued() -> None:
    limits = _StepLimits(None, max_queue_s=0.2, max_run_s=None)
    assert 0.2 <= limited(limits, (0, R({"status": "queued"}))) < 1.5
    assert limits.phase == "queue" and limits.due == "max_queue_s"
    reason, message = limits.explain("gpu")
    assert "waited more than 0.2 s in queue 'gpu'" in message and "max_queue_s" in message
    assert "agents serving 'gpu'" in message and "max_queue_s" in reason


def test_queue_limit_ends_when_the_task_starts_and_the_run_limit_counts_from_then() -> None:
    limits = _StepLimits(None, max_queue_s=0.3, max_run_s=0.4)
    # a start seen later than the first record is timed from when it is seen, not from `started`
    running = R({"status": "in_progress", "started": _iso(60)})
    assert 0.6 <= limited(limits, (0, R({"status": "queued"})), (0.2, running)) < 2.0
    assert limits.phase == "run" and limits.due == "max_run_s"
    assert "ran more than 0.4 s" in limits.explain("gpu")[1]


def test_attaching_to_a_running_task_counts_from_its_started_time() -> None:
    limits = _StepLimits(None, max_queue_s=None, max_run_s=5)
    assert limited(limits, (0, R({"status": "in_progress", "started": _iso(10)}))) < 1.0
    assert limits.phase == "run" and limits.due == "max_run_s"


def test_max_wait_still_bounds_the_whole_wait() -> None:
    limits = _StepLimits(0.2, max_queue_s=10, max_run_s=10)
    assert 0.2 <= limited(limits, (0, R({"status": "queued"}))) < 1.5
    assert limits.phase == "queue" and limits.due == "max_wait_s"
    assert limits.explain("gpu")[1] == "did not finish within 0.2 s"


@pytest.mark.parametrize("name", ["max_queue_s", "max_run_s", "max_wait_s"])
@pytest.mark.parametrize("value", [0, -1.0, math.nan])
def test_non_positive_limits_fail_before_anything_is_created(name: str, value: float) -> None:
    with pytest.raises(FlowInputError, match=f"^{name}: must be a positive number of seconds") as info:
        asyncio.run(execute(SPEC, **{name: value}))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
