"""The bridge: a Prefect task that runs a TaskSpec as a ClearML task and awaits it.

    result = await run_task(spec)

- Idempotent by identity: before creating, tasks tagged `identity:<hash>` are looked up. A
  completed one is returned (no GPU work); a queued or running one is attached to; a draft left
  between create and enqueue is enqueued; failed or stopped ones are history, and a new task is
  created. Within a process a per-identity lock serialises lookup -> create -> enqueue. Across
  processes (a rerun next to a still-living run, two deployments) two orchestrators can both miss
  each other's task, so after enqueueing a new task one more lookup keeps the OLDEST active (or
  reusable completed) task of the identity: the younger one is stopped (normally still queued,
  before it ran) and its orchestrator attaches to the older one. So Prefect retries, flow retries
  and re-runs after a crash do not duplicate GPU work. Left open: a check whose lookup fails
  (ours is kept, with a warning), and `refresh=True` runs racing each other (a completed task is
  not reused by them, so one that completed before the check does not stop ours).
- Attaching tags the task with this run's `prefect-flow-run:`/`prefect-task-run:` ids too, so the
  sweep of either run covers it. Cancelling a run that attached to another run's task therefore
  STOPS that task, on purpose: the GPU job must not outlive its orchestrators, and the other run
  sees `stopped` (an infrastructure failure) and retries, creating a new task.
- Awaited through one shared poller (one `tasks.get_all` per tick for all tasks in the process).
- Time limits, each off by default: `max_queue_s` (longest in the ClearML queue before an agent
  picks the task up), `max_run_s` (longest on the agent once it started it), `max_wait_s` (the
  whole wait). Phases are timed from when the poller's status callback sees them begin (from the
  server's `started` / `status_changed` when the first record seen is already in that phase, as
  when attaching), so the limits cost no API call. Past a limit the task is dequeued or stopped
  (the agent kills it, freeing its GPU) and `TaskTimeout` (its `phase`: "queue" or "run") is
  raised, unretried: a step that hung for hours would hang again.
- Cancellation, timeouts and SIGTERM reach the coroutine as a cancellation: the ClearML task is
  dequeued or stopped before the error propagates. Flow hooks (`stop_flow_run_tasks`) sweep any
  task of the flow run still active, as a safety net.
- Failures are typed (automation.errors): code errors are not retried, infrastructure failures are
  (on the queue they failed on), and out-of-memory failures are retried on the next queue of
  `spec.queue_escalation`. Bad input (invalid spec, unknown queue, a server that cannot be
  connected to) fails before anything is created, unretried.
- Concurrency caps: a new task takes a slot of the Prefect global concurrency limit
  `clearml-queue:<queue>` (see `ensure_queue_limits`) BEFORE it is created and enqueued, and
  holds it until the task ends. A queue without such a limit is uncapped (so is every queue
  while the limit cannot be read: a warning). Attaching to a task that is already queued or
  running takes no slot (it already occupies the queue).
- API cost (measured against the stand-in; queues and project are cached per client): a new
  submission is 2 `tasks.get_all` (identity lookup before, duplicate check after) + 1
  `tasks.create` + 1 `tasks.enqueue`; a reuse is 1 `tasks.get_all` + the result read; an attach
  is 1 `tasks.get_all` + 1 `tasks.edit` (tags) when the task lacks this run's tags. A poll tick is
  1 `tasks.get_all` for every awaited task of the process. A result read is 2 calls
  (`tasks.get_by_id`, `events.get_task_single_value_metrics`), 3 with an output model
  (`models.get_by_id`).

Relation to Prefect caching: the ClearML identity lookup IS the cache. It survives lost Prefect
state, works across flow runs, deployments and machines, and can never return a result whose
task was deleted. `run_task` therefore uses no Prefect cache policy (`NO_CACHE`) and persists
nothing; a second run of an unchanged flow costs one `tasks.get_all` per step and creates no task.
`refresh=True` forces a recompute; `max_age_s` bounds how old a reused result may be.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from prefect import get_run_logger, task
from prefect.artifacts import acreate_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.asyncio import concurrency
from prefect.context import TaskRunContext

from automation.clearml.client import FLOW_RUN_TAG, QUEUE_TAG, TASK_RUN_TAG, ClearMLBackend, tag_value
from automation.clearml.failures import FailureKind, classify, environment_error, install_error
from automation.clearml.records import TaskRecord, TaskStatus
from automation.errors import (
    TASK_ERRORS,
    AutomationError,
    BackendError,
    FlowInputError,
    OutOfMemoryError,
    SpecError,
    TaskFailed,
    TaskTimeout,
    TimeoutPhase,
)
from automation.results import TaskResult
from automation.specs.base import TaskSpec, build
from flows.events import emit_task_event
from flows.poller import shared_poller

QUEUE_LIMIT_PREFIX = "clearml-queue:"
DUPLICATE_REASON = "duplicate of ClearML task"  # status message of a concurrent duplicate we stopped
SLOT_LEASE_S = 60.0  # Prefect's minimum: a slot held by a killed orchestrator comes back soonest
_BACKENDS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ClearMLBackend] = weakref.WeakKeyDictionary()


def backend() -> ClearMLBackend:
    """A client per event loop (an httpx client must not cross loops)."""
    loop = asyncio.get_running_loop()
    client = _BACKENDS.get(loop)
    if client is None:
        client = ClearMLBackend()
        _BACKENDS[loop] = client
    return client


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # called outside a run (e.g. from a test helper)
        return logging.getLogger("flows.bridge")


def _run_ids() -> tuple[str | None, str | None, str | None]:
    """(flow run id, task run id, flow run UI URL) when inside a Prefect run."""
    from prefect.runtime import flow_run, task_run

    flow_id = task_id = url = None
    with contextlib.suppress(Exception):
        flow_id = flow_run.id
        url = flow_run.ui_url
    with contextlib.suppress(Exception):
        task_id = task_run.id
    return (str(flow_id) if flow_id else None, str(task_id) if task_id else None,
            str(url) if url else None)


def _queue_plan(spec: TaskSpec) -> list[str]:
    return list(dict.fromkeys([spec.queue, *spec.queue_escalation]))


async def _choose_queue(client: Any, spec: TaskSpec, history: list[TaskRecord]) -> str:
    """The queue for a new attempt: the first one; after an out-of-memory failure the queue after
    the one that ran out; after any other failure the same queue again (when it is in the plan),
    so an infrastructure failure after an escalation a -> b retries on b, not on a where it
    would run out of memory again.

    The latest failure is classified with its log tail (one call, only on a retry): the agent
    overwrites status_message/status_reason ("Changed by clearml-agent ...") after the script
    reported the cause, so the status fields alone do not say OOM for long."""
    plan = _queue_plan(spec)
    for record in history:  # newest first
        if record.status not in (TaskStatus.FAILED, TaskStatus.STOPPED) \
                or record.status_message.startswith(DUPLICATE_REASON):
            continue  # a duplicate we stopped before it ran says nothing about the queue
        tail = await client.log_tail(record.id, 30)
        kind = classify(record.status, record.status_message, record.status_reason, tail)
        last = tag_value(record.tags, QUEUE_TAG)
        if kind is not FailureKind.OUT_OF_MEMORY:
            return last if last in plan else plan[0]
        if last in plan and plan.index(last) + 1 < len(plan):
            return plan[plan.index(last) + 1]
        return plan[-1]
    return plan[0]


def _fresh(record: TaskRecord, max_age_s: float | None) -> bool:
    if max_age_s is None:
        return True
    when = record.completed or record.last_update or record.created
    if when is None:
        return False  # an age we cannot tell is not within any bound
    return (datetime.now(UTC) - when).total_seconds() <= max_age_s


def _age_key(record: TaskRecord) -> tuple[datetime, str]:
    """Submission order of tasks with one identity: created time, then id (both set by the server,
    so every orchestrator ranks the same tasks the same way)."""
    return (record.created or datetime.max.replace(tzinfo=UTC), record.id)


_LIMITS_SEEN: dict[str, tuple[bool, float]] = {}
LIMIT_CACHE_S = 30.0


async def _has_limit(name: str) -> bool:
    """Whether the global concurrency limit exists (cached briefly). Asking Prefect for a slot of a
    limit that does not exist costs ~2 s and a warning per task; a queue without a cap needs neither.

    Any other error (the Prefect client has already retried it) counts as "no limit known", with a
    warning, and is not cached: a cap only paces submissions (the ClearML queue holds the excess
    and agents never overrun their GPUs), so running uncapped during a Prefect API outage is
    harmless, whereas failing here would fail the step unretried over a missing guard."""
    seen = _LIMITS_SEEN.get(name)
    if seen is not None and time.monotonic() - seen[1] < LIMIT_CACHE_S:
        return seen[0]
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            await client.read_global_concurrency_limit_by_name(name)
        exists = True
    except ObjectNotFound:
        exists = False
    except Exception as exc:
        _logger().warning("could not read concurrency limit '%s' (%s: %s): submitting uncapped",
                          name, type(exc).__name__, exc)
        return False
    _LIMITS_SEEN[name] = (exists, time.monotonic())
    return exists


@contextlib.asynccontextmanager
async def _queue_slot(queue: str) -> AsyncIterator[float]:
    """A slot of the queue's Prefect global concurrency limit `clearml-queue:<queue>`, held from
    before the enqueue until the task ends, so a sweep cannot flood a queue. Yields the seconds
    spent waiting for the slot itself (not for the limit lookup: a slow lookup is no reason to
    look the identity up again). No limit on the queue (or no Prefect run): nothing to hold."""
    if TaskRunContext.get() is None or not await _has_limit(f"{QUEUE_LIMIT_PREFIX}{queue}"):
        yield 0.0
        return
    started = time.monotonic()
    async with concurrency(f"{QUEUE_LIMIT_PREFIX}{queue}", occupy=1, strict=False,
                           lease_duration=SLOT_LEASE_S):
        yield time.monotonic() - started


_IDENTITY_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = \
    weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _identity_lock(identity: str) -> AsyncIterator[None]:
    """Serialises lookup -> create -> enqueue of one identity within this process (a flow that
    awaits the same spec twice at once): the second caller then finds the first's task and
    attaches to it instead of creating a duplicate."""
    locks = _IDENTITY_LOCKS.setdefault(asyncio.get_running_loop(), {})
    async with locks.setdefault(identity, asyncio.Lock()):  # one small lock per identity seen
        yield


async def _stop_quietly(client: ClearMLBackend, task_id: str, reason: str) -> None:
    # Shielded: this runs while the surrounding scope is being cancelled.
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(40):  # stop() may watch a just-picked task for 15 s
                done = await client.stop(task_id, reason)
            _logger().warning("ClearML task %s %s (%s)", task_id, done, reason)
        except Exception as exc:
            _logger().error("could not stop ClearML task %s: %s", task_id, exc)


async def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Async on purpose: in an async task a sync condition's `state.result()` is a coroutine that
    never raises, so nothing would ever be retried."""
    try:
        await state.aresult()
    except AutomationError as err:
        return bool(err.retryable)  # on the class (automation/errors.py); OOM: while a next queue exists
    except Exception:
        return False  # a bug, not a condition worth retrying
    return False


async def _fail(client: ClearMLBackend, spec: TaskSpec, task_id: str, record: TaskRecord,
                url: str, queue: str) -> TaskFailed:
    tail = await client.log_tail(task_id, 30)
    status = str(record.status)
    kind = classify(status, record.status_message, record.status_reason, tail)
    message = record.status_message or record.status_reason
    pip_error = install_error(tail)
    env_error = environment_error(tail)
    if pip_error:  # the agent's own status only says it changed the task; this says why
        message = f"the agent could not install the task's requirements: {pip_error}"
    elif env_error:  # the agent overwrites the script's status message when it exits
        message = env_error
    if kind is FailureKind.OUT_OF_MEMORY:
        plan = _queue_plan(spec)
        nxt = plan[plan.index(queue) + 1] if queue in plan and plan.index(queue) + 1 < len(plan) else None
        return OutOfMemoryError(task_id, url, status, message, tail, queue=queue, next_queue=nxt)
    return TASK_ERRORS[kind](task_id, url, status, message, tail, queue=queue)


def _check_limits(**limits: float | None) -> None:
    for name, value in limits.items():
        if value is not None and not value > 0:  # `not >` also refuses NaN
            raise FlowInputError(f"{name}: must be a positive number of seconds, got {value!r} (None: no limit)")


_PHASES: dict[TaskStatus, TimeoutPhase] = {TaskStatus.QUEUED: "queue", TaskStatus.IN_PROGRESS: "run"}


class _StepLimits:
    """The deadline of one wait, in loop time: the earliest of `max_wait_s` from the start of the
    wait and the current phase's limit (`max_queue_s` while queued, `max_run_s` while running) from
    when the task entered that phase. Phases come from the poller's status callbacks (its thread),
    so no API call is added. The first record seen may be of a task that was queued or running
    before this wait (an attach): its phase is then timed from the server's timestamp."""

    def __init__(self, max_wait_s: float | None, max_queue_s: float | None, max_run_s: float | None) -> None:
        self._max_wait_s = max_wait_s
        self._limits: dict[TimeoutPhase, float | None] = {"queue": max_queue_s, "run": max_run_s}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scope: asyncio.Timeout | None = None
        self._wait_end: float | None = None
        self._phase_end: float | None = None
        self._seen = False
        self.phase: TimeoutPhase | None = None  # where the task is, as last seen
        self.due = "max_wait_s"  # the limit the current deadline comes from

    @contextlib.asynccontextmanager
    async def applied(self) -> AsyncIterator[None]:
        """The wait's scope: TimeoutError when the deadline passes."""
        self._loop = asyncio.get_running_loop()
        self._wait_end = None if self._max_wait_s is None else self._loop.time() + self._max_wait_s
        async with asyncio.timeout(self._wait_end) as scope:
            self._scope = scope
            try:
                yield
            finally:
                self._scope = None

    def observe(self, record: TaskRecord) -> None:
        """The poller's callback (its thread): hand the record to the waiting loop."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a late record after the loop closed: the wait is over
                self._loop.call_soon_threadsafe(self._enter, record)

    def _enter(self, record: TaskRecord) -> None:
        scope = self._scope
        if scope is None or scope.expired():
            return  # the wait is over: a late record must not move a deadline that already fired
        first, self._seen = not self._seen, True
        phase = _PHASES.get(record.status)
        if phase == self.phase:
            return
        self.phase = phase
        limit = self._limits[phase] if phase else None
        self._phase_end = None
        if limit is not None and self._loop is not None:
            since = self._loop.time()
            stamp = (record.started if phase == "run" else record.status_changed) if first else None
            if stamp is not None:
                since -= max(0.0, (datetime.now(UTC) - stamp).total_seconds())
            self._phase_end = since + limit
        ends = [(when, name) for when, name in ((self._wait_end, "max_wait_s"),
                                                (self._phase_end, f"max_{phase}_s")) if when is not None]
        when, self.due = min(ends) if ends else (None, "max_wait_s")
        scope.reschedule(when)

    def explain(self, queue: str) -> tuple[str, str]:
        """(stop reason, error message) for the limit that ran out."""
        if self.due == "max_queue_s":
            limit = f"{self._limits['queue']:g} s"
            return (f"waited more than {limit} in queue '{queue}' (max_queue_s)",
                    f"waited more than {limit} in queue '{queue}' without an agent picking it up, so it "
                    f"was dequeued: add agents serving '{queue}' or raise max_queue_s")
        if self.due == "max_run_s":
            limit = f"{self._limits['run']:g} s"
            return (f"ran more than {limit} (max_run_s)",
                    f"ran more than {limit} on the agent, so it was stopped (its GPU freed): "
                    f"raise max_run_s if the step needs longer")
        return f"max wait of {self._max_wait_s} s exceeded", f"did not finish within {self._max_wait_s} s"


def _validated(spec: TaskSpec) -> TaskSpec:
    """Validate again: a spec built with `model_construct` or mutated after validation must fail
    here, before anything is created."""
    if not isinstance(spec, TaskSpec):
        raise SpecError(f"run_task needs a TaskSpec, got {type(spec).__name__}")
    return build(type(spec), spec.model_dump())


@task(
    name="clearml-task",
    retries=3,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_condition,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def run_task(
    spec: TaskSpec,
    refresh: bool = False,
    max_age_s: float | None = None,
    max_wait_s: float | None = None,
    input_model_id: str | None = None,
    max_queue_s: float | None = None,
    max_run_s: float | None = None,
) -> TaskResult:
    """Run `spec` as a ClearML task (or reuse/attach to one with the same identity) and await it.

    Retries (3 by default; `run_task.with_options(retries=N)` for longer escalation lists) apply
    to infrastructure failures and to out-of-memory failures while the spec has a next queue.
    `max_queue_s` / `max_run_s` / `max_wait_s` bound the time queued / running / in all (seconds,
    None: no limit); past one the task is stopped and `TaskTimeout` raised, not retried.
    """
    return await execute(spec, refresh=refresh, max_age_s=max_age_s, max_wait_s=max_wait_s,
                         input_model_id=input_model_id, max_queue_s=max_queue_s, max_run_s=max_run_s)


async def execute(
    spec: TaskSpec,
    refresh: bool = False,
    max_age_s: float | None = None,
    max_wait_s: float | None = None,
    input_model_id: str | None = None,
    max_queue_s: float | None = None,
    max_run_s: float | None = None,
) -> TaskResult:
    """The body of `run_task`, callable without Prefect (benchmarks, scripts)."""
    log = _logger()
    _check_limits(max_wait_s=max_wait_s, max_queue_s=max_queue_s, max_run_s=max_run_s)
    spec = _validated(spec)  # an invalid spec fails before any call to the server
    client = backend()
    identity = spec.identity()
    for q in _queue_plan(spec):  # a missing queue fails here, listing the queues (cached per client)
        await client.queue_id(q)

    async with contextlib.AsyncExitStack() as held:
        async with _identity_lock(identity):
            outcome = await _submit_or_attach(client, spec, identity, refresh, max_age_s, input_model_id, held)
        if isinstance(outcome, TaskResult):
            await _link_artifact(client, outcome.task_id, spec, reused=True)
            return outcome
        task_id, queue = outcome
        url = client.web_url(task_id)

        # The poller calls back from its own thread: log inside a copy of this task's context, so
        # the records reach this task run's log (and the Prefect API its settings name).
        context = contextvars.copy_context()

        def log_change(record: TaskRecord) -> None:
            progress = record.progress
            log.info("ClearML task %s: %s%s%s", task_id, record.status,
                     f" {progress}%" if progress not in (None, "") else "",
                     f" ({record.status_message})" if record.status_message else "")
            emit_task_event(record, task_id=task_id, kind=spec.kind, identity=identity, queue=queue, web_url=url)

        limits = _StepLimits(max_wait_s, max_queue_s, max_run_s)

        def on_change(record: TaskRecord) -> None:
            context.run(log_change, record)
            limits.observe(record)

        try:
            await _link_artifact(client, task_id, spec)
            async with limits.applied():
                record = await shared_poller().wait(task_id, on_change, spec.expected_duration_s())
        except TimeoutError:
            reason, message = limits.explain(queue)
            await _stop_quietly(client, task_id, reason)
            raise TaskTimeout(task_id, url, "stopped", message, await client.log_tail(task_id),
                              queue=queue, phase=limits.phase) from None
        except BaseException:
            # Cancelled (UI/CLI cancel, task timeout, SIGTERM) or crashed: the GPU job must not outlive us.
            await _stop_quietly(client, task_id, "Prefect run cancelled or failed")
            raise

    if record.succeeded:
        return await client.result(task_id, spec.kind, identity)
    raise await _fail(client, spec, task_id, record, url, queue)


async def _submit_or_attach(
    client: ClearMLBackend,
    spec: TaskSpec,
    identity: str,
    refresh: bool,
    max_age_s: float | None,
    input_model_id: str | None,
    held: contextlib.AsyncExitStack,
) -> TaskResult | tuple[str, str]:
    """Reuse a completed task (-> its result), attach to an active one, enqueue a leftover draft,
    or create and enqueue a new one (-> (task id, queue)). A new or draft task first takes a slot
    of its queue's concurrency limit (kept in `held` until the wait ends)."""
    log = _logger()
    history = await client.find_by_identity(identity)
    slot_taken = False
    while True:
        for record in history:
            status = record.status
            if record.succeeded and not refresh and _fresh(record, max_age_s):
                log.info("reusing ClearML task %s (identity %s, %s)", record.id, identity[:12], status)
                return await client.result(record.id, spec.kind, identity, reused=True)
            if status in ("queued", "in_progress"):
                # Already occupies its queue (its submitter's slot lease runs out by itself if that
                # process died): attach without waiting for a slot.
                task_id = record.id
                log.info("attaching to ClearML task %s (%s) with the same identity", task_id, status)
                await held.aclose()  # a slot taken before the second lookup: the task holds its own
                await _claim(client, record)
                return task_id, tag_value(record.tags, QUEUE_TAG) or spec.queue
        queue = await _choose_queue(client, spec, history)
        if slot_taken:
            break
        waited = await held.enter_async_context(_queue_slot(queue))
        slot_taken = True
        if waited < 1.0:
            break
        # We waited for the queue: someone may have run or started this identity meanwhile.
        log.info("waited %.1f s for a slot on queue '%s'", waited, queue)
        history = await client.find_by_identity(identity)

    draft = next((r for r in history if r.status is TaskStatus.CREATED), None)
    if draft is not None:  # left between create and enqueue by a crashed or cancelled orchestrator
        return await _adopt_draft(client, draft, queue)

    if queue != spec.queue:
        log.warning("previous attempt ran out of memory: escalating to queue '%s'", queue)
        spec = spec.model_copy(update={"queue": queue})
    props = {"prefect_run_url": run_url} if (run_url := _run_ids()[2]) else {}
    task_id = await client.create(spec, tags=_run_tags(), properties=props, input_model_id=input_model_id)
    try:
        await client.enqueue(task_id, queue)
        log.info("created ClearML task %s (%s) on queue '%s': %s", task_id, spec.kind, queue, client.web_url(task_id))
        older = await _defer_to_older(client, spec, identity, task_id, refresh, max_age_s, release_slot=held.aclose)
    except BaseException:
        await _stop_quietly(client, task_id, "enqueue failed or was cancelled")
        raise
    return older or (task_id, queue)


async def _adopt_draft(client: ClearMLBackend, draft: TaskRecord, queue: str) -> tuple[str, str]:
    task_id = draft.id
    queue = tag_value(draft.tags, QUEUE_TAG) or queue
    await _claim(client, draft)
    await client.enqueue(task_id, queue)
    _logger().info("enqueued draft ClearML task %s on '%s'", task_id, queue)
    return task_id, queue


async def _defer_to_older(
    client: ClearMLBackend,
    spec: TaskSpec,
    identity: str,
    task_id: str,
    refresh: bool,
    max_age_s: float | None,
    release_slot: Callable[[], Awaitable[None]] | None = None,
) -> TaskResult | tuple[str, str] | None:
    """The identity lock is per process: two orchestrators (a rerun next to a still-living run,
    two deployments) can both miss each other's task in the lookup and both create one. So after
    our own enqueue, ONE more lookup: if an older task of this identity is active, a leftover
    draft, or (when reuse is allowed) completed, ours is stopped and the older one is attached to
    or reused. Every orchestrator ranks tasks by (created, id), so all of them keep the oldest;
    the server stores a task before answering its create, so the younger one's check always sees
    the older one. A draft seen here (its submitter is between create and enqueue) is adopted
    (enqueued) as by the lookup before creating; an older failed or stopped task is history, and
    ours is a legitimate retry. None: ours is the one to keep. `release_slot` gives back the queue
    slot taken for ours when we end up reusing or attaching to a task that already occupies the
    queue (a slot held for it too would count one GPU task twice)."""
    log = _logger()
    try:
        history = await client.find_by_identity(identity)
    except BackendError as exc:  # the check is a second line of defence: never fail a step over it
        log.warning("could not check ClearML task %s for concurrent duplicates: %s", task_id, exc)
        return None
    mine = next((r for r in history if r.id == task_id), None)
    if mine is None:
        return None
    rank = _age_key(mine)
    older = [r for r in history if _age_key(r) < rank and (
        r.active or (r.succeeded and not refresh and _fresh(r, max_age_s)))]
    if not older:
        return None
    keep = min(older, key=_age_key)
    other = keep.id
    await _stop_quietly(client, task_id, f"{DUPLICATE_REASON} {other} (same identity, submitted concurrently)")
    if keep.status is TaskStatus.CREATED:
        return await _adopt_draft(client, keep, spec.queue)  # ours was never run: the slot moves to it
    if release_slot is not None:
        await release_slot()
    if keep.succeeded:
        log.info("reusing ClearML task %s (identity %s, completed meanwhile)", other, identity[:12])
        return await client.result(other, spec.kind, identity, reused=True)
    log.info("attaching to ClearML task %s (%s), submitted concurrently with the same identity",
             other, keep.status)
    await _claim(client, keep)
    return other, tag_value(keep.tags, QUEUE_TAG) or spec.queue


def _run_tags() -> list[str]:
    flow_run_id, task_run_id, _ = _run_ids()
    return [t for t in (f"{FLOW_RUN_TAG}{flow_run_id}" if flow_run_id else None,
                        f"{TASK_RUN_TAG}{task_run_id}" if task_run_id else None) if t]


async def _claim(client: ClearMLBackend, record: TaskRecord) -> None:
    """Tag a task this run attaches to with this run's flow-run and task-run ids, so this flow's
    cancel/crash sweep (`stop_flow_run_tasks`) covers it too (e.g. a rerun after the first
    orchestrator was SIGKILLed). One `tasks.edit`, only when a tag is missing. A failure only
    loses the safety net (the wait's own cancellation handling still stops the task): a warning."""
    tags = _run_tags()
    if not tags:
        return
    try:
        if await client.add_tags(record.id, record.tags, tags):
            _logger().info("tagged ClearML task %s with this run's ids", record.id)
    except BackendError as exc:
        _logger().warning("could not tag ClearML task %s with this run's ids: %s", record.id, exc)


async def _link_artifact(client: ClearMLBackend, task_id: str, spec: TaskSpec, reused: bool = False) -> None:
    if TaskRunContext.get() is None:
        return
    with contextlib.suppress(Exception):
        await acreate_link_artifact(
            link=client.web_url(task_id), link_text=f"ClearML task {task_id}",
            description=f"{spec.kind} task {spec.task_name()}{' (reused)' if reused else ''}")


async def stop_flow_run_tasks(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow `on_cancellation` / `on_crashed` hook: stop every still-active ClearML task tagged
    with this flow run's id (the safety net behind each task's own cancellation handling).

        @flow(on_cancellation=[stop_flow_run_tasks], on_crashed=[stop_flow_run_tasks])
    """
    log = logging.getLogger("flows.bridge")
    client = ClearMLBackend(retry_for_s=15.0)
    try:
        active = await client.find_active_by_tag(f"{FLOW_RUN_TAG}{flow_run.id}")
        reason = f"flow run {flow_run.id} {state.type.value.lower()}"
        outcomes = await asyncio.gather(*(client.stop(r.id, reason) for r in active), return_exceptions=True)
        for record, done in zip(active, outcomes, strict=True):
            log.warning("flow run %s %s: ClearML task %s %s", flow_run.id, state.name, record.id, done)
    finally:
        await client.aclose()


BRIDGE_FLOW_HOOKS: dict[str, Any] = {"on_cancellation": [stop_flow_run_tasks], "on_crashed": [stop_flow_run_tasks]}
"""`@flow(**BRIDGE_FLOW_HOOKS)`: the sweep on cancellation and on crash."""


async def ensure_queue_limits(limits: dict[str, int]) -> dict[str, int]:
    """Upsert Prefect global concurrency limits `clearml-queue:<queue>` (e.g. {"gpu": 2}); a limit
    of 0 or less deletes the queue's limit. Returns the limits now set, by queue."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    out: dict[str, int] = {}
    async with get_client() as pc:
        for queue, limit in limits.items():
            name = f"{QUEUE_LIMIT_PREFIX}{queue}"
            _LIMITS_SEEN.pop(name, None)
            try:
                await pc.read_global_concurrency_limit_by_name(name)
                exists = True
            except ObjectNotFound:
                exists = False
            if limit <= 0:
                if exists:
                    await pc.delete_global_concurrency_limit_by_name(name)
                continue
            if exists:
                await pc.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
            else:
                await pc.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True))
            out[queue] = limit
    return out
