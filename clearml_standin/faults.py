"""Test-only transient fault injection for the stand-in (5xx, dropped connections, delays).

Off unless the server was started with fault injection allowed; then a test switches it on and
off at run time. `auth.login` is never faulted, so a fault can only ever look like a flaky
network or an overloaded server, which is what clients must survive.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from starlette.responses import JSONResponse, Response


class FaultsDisabled(Exception):
    pass


class FaultInjector:
    def __init__(self, allowed: bool = False, seed: int | None = None) -> None:
        self.allowed = allowed
        self.rate = 0.0
        self.kinds: tuple[str, ...] = ("error", "drop", "delay")
        self.delay_s = 2.0
        self.only: set[str] | None = None
        self.injected: dict[str, int] = {"error": 0, "drop": 0, "delay": 0}
        self._rng = random.Random(seed)

    def configure(
        self,
        rate: float = 0.0,
        kinds: list[str] | None = None,
        delay_s: float = 2.0,
        only: list[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if not self.allowed:
            raise FaultsDisabled("fault injection is disabled (start the stand-in with --allow-faults)")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        self.rate = rate
        self.kinds = tuple(kinds or ("error", "drop", "delay"))
        self.delay_s = delay_s
        self.only = set(only) if only else None
        if seed is not None:
            self._rng = random.Random(seed)

    def describe(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "rate": self.rate,
            "kinds": list(self.kinds),
            "delay_s": self.delay_s,
            "only": sorted(self.only) if self.only else None,
            "injected": dict(self.injected),
        }

    def _pick(self, name: str) -> str | None:
        if not self.allowed or self.rate <= 0 or name == "auth.login":
            return None
        if self.only is not None and name not in self.only:
            return None
        if self._rng.random() >= self.rate:
            return None
        return self._rng.choice(self.kinds)

    async def before(self, name: str) -> tuple[Response | None, bool]:
        """Decide this request's fault: (a response that replaces the request entirely, or None;
        whether to lose the response after the handler ran and committed)."""
        kind = self._pick(name)
        if kind == "error":  # nothing processed, the client sees a 503
            self.injected["error"] += 1
            return JSONResponse(
                {"meta": {"result_code": 503, "result_subcode": 0, "result_msg": "injected fault"}},
                status_code=503,
            ), False
        if kind == "delay":
            self.injected["delay"] += 1
            await asyncio.sleep(self.delay_s)
        if kind == "drop":
            self.injected["drop"] += 1
            return None, True
        return None, False

    @staticmethod
    def lost_response() -> Response:
        """What a client sees when the answer to a processed request is lost on the way: the
        work is done and committed, the client gets a gateway error (the nastiest case for
        idempotency: a naive retry of a create makes a duplicate)."""
        return Response("injected fault: upstream connection reset", status_code=502, media_type="text/plain")
