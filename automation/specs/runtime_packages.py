"""What every core script needs in a fresh environment besides its kind's ML libraries.

A production agent builds the task's environment from the task alone: it clones the task's
repository at its commit (so `automation` itself comes from the clone: `python -m
automation.scripts.<kind>` runs from the repository root) and pip-installs the task's requirements.
Those requirements are the kind's libraries, the spec's own `packages`, and these: the third-party
imports of the core scripts' import closure, pinned as in `constraints.txt` (a unit test keeps
both true). They are plumbing: they do not change a spec's identity, while the kind's libraries
and the code commit do.
"""

from __future__ import annotations

# distribution==version, one per third-party import of automation.scripts.* (ML libraries aside)
CORE_RUNTIME: tuple[str, ...] = (
    "clearml==2.1.12",
    "pydantic==2.14.3",
    "pyhocon==0.3.63",
    "PyYAML==6.0.3",
    "Jinja2==3.1.6",
    "httpx==0.28.1",
    "packaging==26.3",
)
