"""ClearML services served by the stand-in; importing this package registers every endpoint."""

from automation.local.services import (  # noqa: F401
    auth,
    events,
    models,
    projects,
    queues,
    tasks,
    workers,
)
