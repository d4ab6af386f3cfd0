"""Contract with the real SDK and agent, checked over everything the integration tests did.

Runs after the other integration tests of the session (file order) and reads the stand-in's
call log: every response parsed with the SDK's own response classes, nothing unsupported was
called, no client logged "Failed parsing response", and the set of endpoints used is the golden
list, so an SDK or agent upgrade that starts calling a new endpoint fails here, loudly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from automation.devstack import procs
from testing.stacks import StackHandle

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).with_name("golden_endpoints.txt")


def _golden() -> set[str]:
    return {line.split("#")[0].strip() for line in GOLDEN.read_text().splitlines()} - {""}


def test_sdk_and_agent_traffic_matches_the_contract(local_stack: StackHandle) -> None:
    stats = local_stack.stats()
    if "tasks.create" not in stats["calls"] or "events.add_batch" not in stats["calls"]:
        # Run on its own: make the traffic first (the demo's round trip through a real agent).
        from testing.roundtrip import run_hello

        assert run_hello(local_stack.env, queue="cpu").status == "completed"
        stats = local_stack.stats()
    # An empty error list proves nothing unless the server checked: it must run with --validate
    # (that the check can fail is shown in tests/unit/test_files_and_store.py).
    recorded = procs.read_pid_file(local_stack.data_dir / "run" / "server.pid")
    assert recorded is not None and "--validate" in recorded.argv, recorded
    called = set(stats["calls"])
    assert stats["contract_errors"] == [], "responses the SDK's own classes could not parse"
    assert stats["unsupported"] == {}, "endpoints the SDK or agent called that the stand-in lacks"
    new = sorted(called - _golden())
    assert not new, f"endpoints not in {GOLDEN.name} (a client upgrade?): {new}"
    for log in (local_stack.data_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "Failed parsing response" not in text, f"{log.name} logged a response parse failure"
