"""The shared poller: ONE status call per tick for every watched task; bounded adaptive interval."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from automation.clearml.client import ClearMLBackend
from automation.clearml.records import TaskRecord, TaskStatus
from automation.clearml.settings import ClearMLSettings
from automation.errors import BackendUnavailable, ServerUnreachable
from flows.poller import StatusPoller, _Watch


class FakeBackend:
    """Counts statuses() calls; tasks finish when the test says so."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.status: dict[str, str] = {}
        self.fail_next = 0
        self.fail_with: Exception = BackendUnavailable("injected")
        self.lock = threading.Lock()

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        with self.lock:
            self.calls.append(len(task_ids))
            if self.fail_next:
                self.fail_next -= 1
                raise self.fail_with
            return {t: TaskRecord(id=t, status=TaskStatus(self.status.get(t, "in_progress"))) for t in task_ids}

    async def aclose(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()
    monkeypatch.setattr("flows.poller.ClearMLBackend", lambda settings=None: backend)
    return backend


def test_one_call_per_tick_for_100_tasks(fake: FakeBackend) -> None:
    poller = StatusPoller(min_interval_s=0.05, max_interval_s=0.2)
    ids = [f"t{i}" for i in range(100)]

    async def main() -> list[TaskRecord]:
        waits = [asyncio.create_task(poller.wait(t)) for t in ids]
        deadline = time.monotonic() + 5
        while poller.ticks < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert poller.in_flight == 100
        with fake.lock:
            for t in ids:
                fake.status[t] = "completed"
        return list(await asyncio.gather(*waits))

    try:
        records = asyncio.run(main())
    finally:
        poller.stop()
    assert all(r.status == "completed" for r in records)
    assert len(fake.calls) == poller.ticks  # one statuses() call per tick...
    assert max(fake.calls) == 100  # ...covering all 100 tasks
    assert poller.in_flight == 0


def test_transient_errors_never_fail_a_wait(fake: FakeBackend) -> None:
    poller = StatusPoller(min_interval_s=0.02, max_interval_s=0.05)
    fake.fail_next = 3
    fake.status["t"] = "completed"
    try:
        record = asyncio.run(asyncio.wait_for(poller.wait("t"), 5))
    finally:
        poller.stop()
    assert record.status == "completed" and poller.errors == 3


def test_cancelled_wait_stops_watching(fake: FakeBackend) -> None:
    poller = StatusPoller(min_interval_s=0.02, max_interval_s=0.05)

    async def main() -> None:
        waiter = asyncio.create_task(poller.wait("t"))
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    try:
        asyncio.run(main())
        assert poller.in_flight == 0
    finally:
        poller.stop()


def test_adaptive_interval_bounds() -> None:
    poller = StatusPoller(min_interval_s=0.5, max_interval_s=5.0, growth=1.5)
    interval = poller.min_interval_s
    seen = []
    for _ in range(20):  # quiet ticks: grows, never past the max
        interval = poller._next_interval(interval, changed=False)
        seen.append(interval)
    assert seen[0] == 0.75 and seen == sorted(seen) and max(seen) == 5.0
    assert poller._next_interval(5.0, changed=True) == 0.5  # a change: look again soon
    assert poller._next_interval(0.1, changed=False) >= 0.5  # never below the min


def test_only_a_status_change_resets_the_interval() -> None:
    """Progress and messages reach the listener but do not pin the interval at the minimum."""
    poller = StatusPoller(min_interval_s=0.5, max_interval_s=5.0)
    records = {"t1": {"id": "t1", "status": "in_progress", "runtime": {"progress": "10"}},
               "t2": {"id": "t2", "status": "in_progress", "runtime": {"progress": "5"}}}
    backend = FakeRecords(records)
    poller._backend = backend  # type: ignore[assignment]
    seen: list[tuple[str, Any]] = []
    for tid in records:
        poller._watches[tid] = [_Watch(tid, concurrent.futures.Future(), lambda r: seen.append(
            (r.id, r.progress)), None)]

    async def ticks() -> list[bool]:
        out = [await poller._tick(list(records))]  # first sight: a status change
        for progress in ("20", "30"):
            records["t1"]["runtime"] = {"progress": progress}
            records["t2"]["status_message"] = f"step {progress}"
            out.append(await poller._tick(list(records)))
        records["t2"] = {**records["t2"], "status": "completed"}
        out.append(await poller._tick(list(records)))
        return out

    assert asyncio.run(ticks()) == [True, False, False, True]
    assert ("t1", 20.0) in seen and ("t1", 30.0) in seen  # progress still logged (parsed to a number)
    assert poller._next_interval(2.0, changed=False) == 3.0  # progress alone: keeps backing off


def test_fast_window_is_bounded_around_the_expected_end() -> None:
    poller = StatusPoller(min_interval_s=0.5, max_interval_s=5.0, growth=1.5)
    now = time.monotonic()
    for tid, duration in (("short", 20.0), ("long", 1000.0)):
        w = _Watch(tid, concurrent.futures.Future(), None, duration,
                   last=TaskRecord(id=tid, status=TaskStatus.IN_PROGRESS))
        w.expected_end = now + 10_000.0  # far away until the case below moves it
        poller._watches[tid] = [w]
    short, long_ = poller._watches["short"][0], poller._watches["long"][0]

    def fast(end_in_s: float, watch: _Watch) -> bool:
        for w in (short, long_):
            w.expected_end = now + 10_000.0
        watch.expected_end = now + end_in_s
        return poller._near_expected_end(now)

    assert not fast(6.0, short)  # more than max_interval before the end: back off normally
    assert fast(5.0, short) and fast(0.0, short)  # from max_interval before the end...
    assert fast(-10.0, short) and not fast(-10.5, short)  # ...to max(10 s, 10 % of 20 s) after it
    assert fast(-100.0, long_) and not fast(-100.5, long_)  # 10 % of 1000 s
    short.last = TaskRecord(id="short", status=TaskStatus.QUEUED)
    assert not fast(0.0, short)  # only running tasks have an end to watch
    # outside the window the interval grows again, up to the max
    long_.expected_end = short.expected_end = now - 1000.0
    interval = 0.5
    for _ in range(10):
        interval = poller._next_interval(interval, changed=False)
    assert interval == 5.0


def test_server_unreachable_during_a_tick_never_fails_a_wait(fake: FakeBackend) -> None:
    poller = StatusPoller(min_interval_s=0.02, max_interval_s=0.05)
    fake.fail_with = ServerUnreachable("ClearML API server http://x is unreachable")
    fake.fail_next = 2
    fake.status["t"] = "completed"
    try:
        record = asyncio.run(asyncio.wait_for(poller.wait("t"), 5))
    finally:
        poller.stop()
    assert record.status == "completed" and poller.errors == 2


def test_put_back_checks_the_queue_before_retrying() -> None:
    """An add_task whose answer is lost after the server added the entry is not sent again (on
    some servers a second add makes a second entry, and the task could run twice)."""
    entries: list[str] = []
    adds = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal adds
        endpoint = request.url.path.strip("/")
        if endpoint == "auth.login":
            return envelope({"token": "t"})
        if endpoint == "queues.add_task":
            adds += 1
            entries.append(json.loads(request.content)["task"])
            raise httpx.ReadError("connection reset after the server applied it", request=request)
        if endpoint == "queues.get_all":
            return envelope({"queues": [{"id": "q1", "entries": [{"task": t} for t in entries]}]})
        raise AssertionError(endpoint)

    async def main() -> bool:
        backend = mock_backend(handler)
        try:
            return await backend.put_back("q1", "task-1")
        finally:
            await backend.aclose()

    assert asyncio.run(main()) is True
    assert adds == 1 and entries == ["task-1"]


def envelope(data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"meta": {"result_code": 200}, "data": data})


def mock_backend(handler: Callable[[httpx.Request], httpx.Response]) -> ClearMLBackend:
    settings = ClearMLSettings(api_host="http://api.test", web_host="http://web.test",
                               files_host="http://files.test", access_key="k", secret_key=SecretStr("s"))
    backend = ClearMLBackend(settings, retry_for_s=5.0)
    backend._client = httpx.AsyncClient(base_url=settings.api_host, transport=httpx.MockTransport(handler))
    return backend


class FakeRecords:
    """statuses() answers whatever records the test holds."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        return {t: TaskRecord.model_validate(self.records[t]) for t in task_ids}


def test_near_expected_end_polls_fast(fake: FakeBackend) -> None:
    poller = StatusPoller(min_interval_s=0.5, max_interval_s=5.0)
    fut = poller.watch("t", expected_duration_s=1.0)
    try:
        deadline = time.monotonic() + 5
        while poller.ticks < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)
        # running, expected to end within max_interval: stay at the minimum interval
        assert poller._next_interval(4.0, changed=False) == 0.5
    finally:
        fut.cancel()
        poller.stop()
