"""The `debug` kind: sleep, optionally fail or run out of memory, report a scalar.

Small enough to run hundreds of in orchestration tests and benchmarks, and the worked example of
adding a kind (README): this spec module, `automation/scripts/debug.py`, and its line in `automation/specs/registry.py`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from automation.specs.base import TaskSpec


class DebugSpec(TaskSpec):
    kind: ClassVar[str] = "debug"
    script_module: ClassVar[str] = "automation.scripts.debug"
    reports: ClassVar[str] = "debug_value; scalar debug/step per step; artifact debug_summary"

    sleep_s: float = Field(1.0, ge=0, le=24 * 3600, description="seconds to sleep (in steps)")
    steps: int = Field(5, ge=1, le=10_000, description="progress/scalar reports during the sleep")
    value: float = Field(1.0, description="value reported as scalar debug/value and single value")
    fail: bool = Field(False, description="raise an exception at the end (a code error)")
    fail_message: str = Field("debug task asked to fail", description="message of that exception")
    allocate_mb: int = Field(0, ge=0, le=64 * 1024, description="allocate this much memory while sleeping")
    oom_on_queues: tuple[str, ...] = Field(
        (), description="simulate a CUDA out-of-memory error when running on one of these queues")
    salt: str = Field("", description="free text that only changes the identity (distinct cells)")

    def expected_duration_s(self) -> float | None:
        return self.sleep_s
