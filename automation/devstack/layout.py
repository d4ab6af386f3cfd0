"""Where the local stack keeps its state inside its data directory (one place, one layout)."""

from __future__ import annotations

import os
from pathlib import Path

from automation.errors import StackError


def default_data_dir() -> Path:
    env = os.environ.get("AUTOMATION_DATA_DIR")
    return Path(env) if env else Path.home() / ".local" / "share" / "llm-automation" / "local"


class DataDir:
    """Paths below a local-stack data directory; SQLite + files survive `down`/`up`."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    @property
    def standin_state(self) -> Path:
        """The stand-in's `--state-dir`: its SQLite store, files and `credentials.json`."""
        return self.root / "clearml"

    @property
    def credentials(self) -> Path:
        """Read by the stand-in at start (its command-line contract); written here by `up`."""
        return self.standin_state / "credentials.json"

    @property
    def stack_file(self) -> Path:
        """Ports and queues chosen at the first `up`, reused later so stored URLs stay valid."""
        return self.root / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def clearml_conf(self) -> Path:
        return self.root / "clearml.conf"

    @property
    def agent_conf(self) -> Path:
        """Like clearml.conf, with retries that ride out a short stand-in restart."""
        return self.root / "agent-clearml.conf"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def ready_file(self) -> Path:
        """Written by the stand-in (`--run-dir`) once its sockets listen."""
        return self.run / "server.ready"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def agent_home(self, queue: str) -> Path:
        return self.root / "agents" / queue

    @property
    def model_cache(self) -> Path:
        """The ClearML SDK's download cache, one for all the stack's agents (their homes are private):
        a model one step downloaded is a cache hit for the next step on either queue."""
        return self.root / "cache" / "clearml"

    def ensure(self) -> None:
        for d in (self.standin_state, self.run, self.logs):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StackError(f"data directory {self.root}: cannot create {d.name}/ ({exc.strerror}); pick a "
                                 "writable one with --data-dir or AUTOMATION_DATA_DIR") from None
