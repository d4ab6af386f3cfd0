"""A local ClearML stack (the stand-in + real clearml-agents) started for a test session or a
benchmark run, and what the harness reads and switches on it: the stand-in's call counters and
its fault injection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from automation.clearml.admin import AdminClient
from automation.devstack.stack import LocalStack

AGENT_QUEUES = ("gpu", "cpu")  # one agent each
ACTIVE = frozenset({"created", "queued", "in_progress"})  # task statuses that can still keep an agent busy


def stack_auth(env: Mapping[str, str]) -> tuple[str, str]:
    """The stack's key pair, as the stand-in's test hooks and its file server take it (Basic)."""
    return env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"]


def standin_stats(env: Mapping[str, str]) -> dict[str, Any]:
    """The stand-in's counters (`calls` by endpoint, ...)."""
    res = httpx.get(f"{env['CLEARML_API_HOST']}/_standin/stats", auth=stack_auth(env), timeout=10)
    res.raise_for_status()
    return dict(res.json())


def reset_standin_stats(env: Mapping[str, str]) -> None:
    httpx.post(f"{env['CLEARML_API_HOST']}/_standin/reset_stats", auth=stack_auth(env), timeout=10).raise_for_status()


def set_faults(env: Mapping[str, str], **settings: Any) -> dict[str, Any]:
    """Switch the stand-in's fault injection (rate, kinds, delay_s, seed; rate=0.0 turns it off);
    returns its answer (`injected` by kind so far)."""
    res = httpx.post(f"{env['CLEARML_API_HOST']}/_standin/faults", json=settings, auth=stack_auth(env), timeout=10)
    res.raise_for_status()
    return dict(res.json())


def fetch_file(env: Mapping[str, str], url: str, timeout: float = 30) -> httpx.Response:
    """GET a file-server URL with the stack's credentials (the file server refuses anonymous reads)."""
    return httpx.get(url, auth=stack_auth(env), timeout=timeout)


def admin_client(env: dict[str, str], timeout: float = 10.0) -> AdminClient:
    """An admin client for the stack whose environment (CLEARML_API_*) is `env`."""
    return AdminClient(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"],
                       timeout=timeout)


@dataclass
class StackHandle:
    """A running stack and the environment that points a client (or a subprocess) at it."""

    stack: LocalStack
    env: dict[str, str]

    @property
    def data_dir(self) -> Path:
        return self.stack.data.root

    @property
    def api_url(self) -> str:
        return self.env["CLEARML_API_HOST"]

    def stats(self) -> dict[str, Any]:
        return standin_stats(self.env)

    def reset_stats(self) -> None:
        reset_standin_stats(self.env)

    def faults(self, **settings: Any) -> dict[str, Any]:
        return set_faults(self.env, **settings)


def start_stack(data_dir: Path, validate: bool = False) -> StackHandle:
    """A stack under `data_dir` with an agent on each of AGENT_QUEUES and the fault switch allowed
    (`validate`: the stand-in checks its responses against the contract); taken down again when it
    does not come up."""
    stack = LocalStack(data_dir)
    try:
        report = stack.up(queues=list(AGENT_QUEUES), validate=validate, allow_faults=True)
    except BaseException:
        stack.down()
        raise
    return StackHandle(stack=stack, env=report.env)
