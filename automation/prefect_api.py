"""Whether the Prefect API a command is about to use answers, asked before anything is created.

Prefect's own client reports an unreachable server as a deep httpx traceback once a flow run is
already being set up; this asks `<PREFECT_API_URL>/health` first and says in one line what to do.
Without PREFECT_API_URL, Prefect runs an ephemeral server in-process and nothing is asked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx

from automation.errors import ServerUnreachable


def check_prefect_api(environ: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> None:
    env = os.environ if environ is None else environ
    url = (env.get("PREFECT_API_URL") or "").rstrip("/")
    if not url:
        return
    key = env.get("PREFECT_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        res = httpx.get(f"{url}/health", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ServerUnreachable(
            f"Prefect API {url} (PREFECT_API_URL) is unreachable ({type(exc).__name__}); start it "
            "(`automation local up` starts one) or unset PREFECT_API_URL to run with an in-process server"
        ) from None
    if res.status_code == 404:  # it answered, so it is up; anything but a wrong path is Prefect's to report
        raise ServerUnreachable(f"Prefect API {url} (PREFECT_API_URL) answered /health with HTTP {res.status_code}; "
                                "is PREFECT_API_URL the API address (ending in /api)?")
