"""One shared status poller per process: ONE `tasks.get_all` per tick for every awaited task.

Prefect may run task coroutines on different event loops (one per worker thread with `.submit()`),
so the poller owns a daemon thread with its own loop and backend client, and waiters on any loop
await a thread-safe future. The interval adapts, always within [min_interval, max_interval]: it
drops to the minimum when a task changes STATUS (progress and messages are reported to listeners
but do not count: many running tasks reporting progress would otherwise pin it at the minimum),
stays there while a running task is in the window around its expected end (from `max_interval`
before it to `max(10 s, 10 %)` of the expected duration after it), and otherwise grows by `growth`
per tick. API errors never fail a wait: the backend retries transient ones, and one that still
fails (even ServerUnreachable during a short outage) only delays the next tick.

Lost dequeues: an agent pops a queue entry with `queues.get_next_task`; when that answer is lost
on the way (a proxy reset, a dropped connection), the task stays `queued` in no queue and nothing
would ever run it (the ClearML server has no watchdog for this). So every `entry_check_s` the
poller looks, in ONE `queues.get_all`, whether tasks queued for longer than that still have their
entry; a task missing on two checks in a row (an agent between pop and start is gone from the
queue for a few seconds only) is put back with `queues.add_task`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from automation.clearml.client import ClearMLBackend
from automation.clearml.records import TaskRecord, TaskStatus
from automation.clearml.settings import ClearMLSettings

log = logging.getLogger("flows.poller")

END_GRACE_MIN_S = 10.0  # the fast window lasts this long past a task's expected end at least...
END_GRACE_FRACTION = 0.1  # ...or this fraction of its expected duration, whichever is longer
Listener = Callable[[TaskRecord], None]


@dataclass
class _Watch:
    task_id: str
    future: concurrent.futures.Future[TaskRecord]
    on_change: Listener | None
    expected_duration_s: float | None  # how long the task is expected to run, when known
    last: TaskRecord | None = None
    expected_end: float | None = None  # monotonic; set when the task is first seen running


class StatusPoller:
    def __init__(
        self,
        settings: ClearMLSettings | None = None,
        min_interval_s: float = 0.5,
        max_interval_s: float = 5.0,
        growth: float = 1.5,
        entry_check_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.growth = growth
        self.entry_check_s = entry_check_s
        self.put_back = 0  # queue entries restored (lost dequeues)
        self._next_entry_check = 0.0
        self._missing: set[str] = set()  # queued tasks absent from their queue at the last check
        self.ticks = 0
        self.errors = 0
        self._watches: dict[str, list[_Watch]] = {}
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._backend: ClearMLBackend | None = None
        self._stopping = False

    # -- public ---------------------------------------------------------------------------------
    def watch(self, task_id: str, on_change: Listener | None = None,
              expected_duration_s: float | None = None) -> concurrent.futures.Future[TaskRecord]:
        """Future resolved with the task's status record once it reaches a terminal status."""
        self._ensure_thread()
        fut: concurrent.futures.Future[TaskRecord] = concurrent.futures.Future()
        with self._lock:
            self._watches.setdefault(task_id, []).append(_Watch(task_id, fut, on_change, expected_duration_s))
        self._poke()
        return fut

    async def wait(self, task_id: str, on_change: Listener | None = None,
                   expected_duration_s: float | None = None) -> TaskRecord:
        fut = self.watch(task_id, on_change, expected_duration_s)
        try:
            return await asyncio.wrap_future(fut)
        finally:
            if not fut.done():
                fut.cancel()
            self._forget(task_id, fut)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._watches)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._stopping = True
            self._poke()
            self._thread.join(timeout=5)
            self._stopping = False
        self._thread = None
        self._loop = None

    # -- thread and loop ------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._ready.clear()
            self._thread = threading.Thread(target=self._run, name="clearml-status-poller", daemon=True)
            self._thread.start()
        self._ready.wait(timeout=10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._wake = asyncio.Event()
        self._backend = ClearMLBackend(self.settings)
        self._ready.set()
        try:
            loop.run_until_complete(self._poll_forever())
        except BaseException as exc:  # never leave waiters hanging on a dead thread
            log.exception("status poller died")
            self._fail_all(exc)
        finally:
            self._fail_all(RuntimeError("the status poller stopped"))
            if self._backend is not None:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(self._backend.aclose())
            loop.close()

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            watches = [w for ws in self._watches.values() for w in ws]
        for w in watches:
            if not w.future.done():
                w.future.set_exception(exc)

    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _forget(self, task_id: str, fut: concurrent.futures.Future[TaskRecord]) -> None:
        with self._lock:
            watches = [w for w in self._watches.get(task_id, []) if w.future is not fut]
            if watches:
                self._watches[task_id] = watches
            else:
                self._watches.pop(task_id, None)

    # -- polling --------------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        assert self._wake is not None and self._backend is not None
        interval = self.min_interval_s
        while not self._stopping:
            with self._lock:
                ids = list(self._watches)
            if not ids:
                self._wake.clear()
                await self._wake.wait()
                interval = self.min_interval_s
                continue
            changed = await self._tick(ids)
            interval = self._next_interval(interval, changed)
            self._wake.clear()
            if self._stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
                interval = self.min_interval_s  # a new watch: look at it soon
            except TimeoutError:
                pass

    def _next_interval(self, current: float, changed: bool) -> float:
        """The minimum after a status change or inside a task's expected-end window; otherwise
        growing by `growth` per tick; always within [min_interval_s, max_interval_s]."""
        if changed or self._near_expected_end():
            return self.min_interval_s
        return min(self.max_interval_s, max(self.min_interval_s, current * self.growth))

    def _near_expected_end(self, now: float | None = None) -> bool:
        """Whether a running task is inside its fast window. The window is bounded on both sides:
        a task that overruns its estimate is polled like any other once the window has passed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for watches in self._watches.values():
                for w in watches:
                    if w.expected_end is None or w.last is None or w.last.status is not TaskStatus.IN_PROGRESS:
                        continue
                    grace = max(END_GRACE_MIN_S, END_GRACE_FRACTION * (w.expected_duration_s or 0.0))
                    if w.expected_end - self.max_interval_s <= now <= w.expected_end + grace:
                        return True
        return False

    async def _tick(self, ids: list[str]) -> bool:
        """One status call for every watched task; True when a task's status changed."""
        assert self._backend is not None
        self.ticks += 1
        try:
            records = await self._backend.statuses(ids)
        except Exception as exc:  # ServerUnreachable included: an outage only delays the waits
            self.errors += 1
            log.warning("status poll failed (will retry): %s", exc)
            return False
        changed = False
        for task_id in ids:
            record = records.get(task_id)
            if record is None:
                record = TaskRecord(id=task_id, status=TaskStatus.UNKNOWN,
                                    status_message="task not found on the server")
            with self._lock:
                watches = list(self._watches.get(task_id, []))
            for w in watches:
                if record.status is TaskStatus.IN_PROGRESS and w.expected_end is None \
                        and w.expected_duration_s:
                    w.expected_end = time.monotonic() + w.expected_duration_s
                if _summary(record) != _summary(w.last):
                    changed = changed or w.last is None or record.status != w.last.status
                    w.last = record
                    if w.on_change is not None:
                        try:
                            w.on_change(record)
                        except Exception:  # a listener must never stop the poller
                            log.exception("status listener failed")
                if record.finished and not w.future.done():
                    w.future.set_result(record)
        await self._check_queue_entries(records)
        return changed

    async def _check_queue_entries(self, records: dict[str, TaskRecord]) -> None:
        now = time.monotonic()
        if now < self._next_entry_check:
            return
        self._next_entry_check = now + self.entry_check_s
        assert self._backend is not None
        waiting = {tid: r.queue_id or "" for tid, r in records.items()
                   if r.status is TaskStatus.QUEUED and _age_s(r.status_changed) >= self.entry_check_s}
        waiting = {tid: q for tid, q in waiting.items() if q}
        if not waiting:
            self._missing.clear()
            return
        try:
            entries = await self._backend.queue_entries(sorted(set(waiting.values())))
        except Exception as exc:
            log.warning("queue entry check failed (will retry): %s", exc)
            return
        missing = {tid for tid, q in waiting.items() if q in entries and tid not in entries[q]}
        for task_id in sorted(missing & self._missing):
            try:
                if await self._backend.put_back(waiting[task_id], task_id):
                    self.put_back += 1
                    log.warning("ClearML task %s was queued but in no queue (a dequeue whose answer was lost): "
                                "put it back in queue %s", task_id, waiting[task_id])
            except Exception as exc:
                log.warning("could not put task %s back in its queue: %s", task_id, exc)
        self._missing = missing - self._missing


def _age_s(when: datetime | None) -> float:
    """Seconds since a server timestamp (0 when unknown: never treat as old)."""
    return 0.0 if when is None else max(0.0, (datetime.now(UTC) - when).total_seconds())


def _summary(record: TaskRecord | None) -> tuple[Any, ...]:
    return (None, None, None) if record is None else (record.status, record.status_message, record.progress)


_POLLER: StatusPoller | None = None
_POLLER_LOCK = threading.Lock()


def shared_poller() -> StatusPoller:
    """The process-wide poller (created on first use)."""
    global _POLLER
    with _POLLER_LOCK:
        if _POLLER is None:
            _POLLER = StatusPoller(entry_check_s=float(os.environ.get("AUTOMATION_QUEUE_ENTRY_CHECK_S", "30")))
        return _POLLER
