"""The registry of task kinds: one explicit table, kind name -> spec class.

Adding a kind is one line here (README, "Adding a kind"); the kinds' modules do not import this
one, so there is no import side effect and no circle.
"""

from __future__ import annotations

from automation.errors import SpecError
from automation.specs.base import TaskSpec
from automation.specs.benchmark import BenchmarkSpec
from automation.specs.compress import CompressSpec
from automation.specs.debug import DebugSpec
from automation.specs.evaluate import EvaluateSpec
from automation.specs.lighteval import LightEvalSpec

KINDS: dict[str, type[TaskSpec]] = {cls.kind: cls for cls in (BenchmarkSpec, CompressSpec, DebugSpec, EvaluateSpec,
                                                              LightEvalSpec)}


def kinds() -> dict[str, type[TaskSpec]]:
    return dict(sorted(KINDS.items()))


def get_kind(name: str) -> type[TaskSpec]:
    try:
        return KINDS[name]
    except KeyError:
        raise SpecError(f"unknown task kind '{name}' (known: {', '.join(sorted(KINDS))})") from None


def all_base_packages() -> tuple[str, ...]:
    """Every kind's pinned libraries (a run's provenance)."""
    return tuple(sorted({p for cls in KINDS.values() for p in cls.base_packages}))
