"""Contract with the real SDK and agent, checked over everything the integration tests did.

Runs after the other integration tests of the session (file order) and reads the stand-in's
call log: every response parsed with the SDK's own response classes, nothing unsupported was
called, no client logged "Failed parsing response", and the set of endpoints used is the golden
list, so an SDK or agent upgrade that starts calling a new endpoint fails here, loudly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StackHandle

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).with_name("golden_endpoints.txt")


def _golden() -> set[str]:
    return {line.split("#")[0].strip() for line in GOLDEN.read_text().splitlines()} - {""}


def test_sdk_and_agent_traffic_matches_the_contract(local_stack: StackHandle) -> None:
    stats = local_stack.stats()
    called = set(stats["calls"])
    if "tasks.create" not in called or "events.add_batch" not in called:
        pytest.skip("run together with the other integration tests: no task ran through the stack")
    assert stats["contract_errors"] == [], "responses the SDK's own classes could not parse"
    assert stats["unsupported"] == {}, "endpoints the SDK or agent called that the stand-in lacks"
    new = sorted(called - _golden())
    assert not new, f"endpoints not in {GOLDEN.name} (a client upgrade?): {new}"
    for log in (local_stack.data_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "Failed parsing response" not in text, f"{log.name} logged a response parse failure"
