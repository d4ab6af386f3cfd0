"""Polling until something holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(TimeoutError, AssertionError):
    """A wait that ran out: a TimeoutError to the benchmarks (a drill counts it as a miss), a failed
    assertion to the tests."""


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy (returned), or raise WaitTimeout naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
