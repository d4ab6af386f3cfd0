"""Core script of the `debug` kind: sleep in steps, report, optionally fail or simulate OOM."""

from __future__ import annotations

import time

from automation.scripts.runtime import Reporter, run
from automation.specs.base import TaskSpec
from automation.specs.debug import DebugSpec


class SimulatedOutOfMemory(MemoryError):
    """Raised as a GPU OOM would be; the message matches what the bridge classifies as OOM."""


def main(spec: TaskSpec, report: Reporter) -> None:
    assert isinstance(spec, DebugSpec)
    ballast = bytearray(spec.allocate_mb * 1024 * 1024)
    if ballast:
        for i in range(0, len(ballast), 4096):  # touch every page so the memory is really resident
            ballast[i] = 1
    if spec.queue in spec.oom_on_queues:
        raise SimulatedOutOfMemory(
            f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated by the debug kind on queue "
            f"'{spec.queue}')")
    step_s = spec.sleep_s / spec.steps
    for step in range(spec.steps):
        time.sleep(step_s)
        report.scalar("debug", "step", float(step), iteration=step)
        report.progress(100.0 * (step + 1) / spec.steps, f"step {step + 1}/{spec.steps}")
    report.scalar("debug", "value", spec.value, iteration=spec.steps)
    report.single_value("debug_value", spec.value)
    report.artifact("debug_summary", {"sleep_s": spec.sleep_s, "steps": spec.steps, "value": spec.value,
                                      "allocated_mb": len(ballast) // (1024 * 1024)})
    if spec.fail:
        raise RuntimeError(spec.fail_message)


if __name__ == "__main__":
    run(main, kind="debug")
