"""The shared poller: ONE status call per tick for every watched task; bounded adaptive interval."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from automation.backend import BackendUnavailable
from flows.poller import StatusPoller


class FakeBackend:
    """Counts statuses() calls; tasks finish when the test says so."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.status: dict[str, str] = {}
        self.fail_next = 0
        self.lock = threading.Lock()

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self.lock:
            self.calls.append(len(task_ids))
            if self.fail_next:
                self.fail_next -= 1
                raise BackendUnavailable("injected")
            return {t: {"id": t, "status": self.status.get(t, "in_progress")} for t in task_ids}

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

    async def main() -> list[dict[str, Any]]:
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
    assert all(r["status"] == "completed" for r in records)
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
    assert record["status"] == "completed" and poller.errors == 3


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
