"""ClearML services served by the stand-in; importing this package registers every endpoint."""

from clearml_standin.services import (  # noqa: F401
    auth,
    events,
    models,
    projects,
    queues,
    tasks,
    workers,
)
