"""auth.*: `auth.login` itself is answered by the API layer (it needs the token signer)."""

from __future__ import annotations

from typing import Any

from clearml_standin.api import Ctx, endpoint


@endpoint("auth.login")
def login(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - see StandInApp
    raise AssertionError("auth.login is handled by StandInApp.dispatch")


@endpoint("users.get_current_user")
def get_current_user(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": {
            "id": ctx.user_id,
            "name": ctx.user_name,
            "company": {"id": ctx.company, "name": ctx.company},
            "role": "admin",
        },
        "getting_started": {},
        "settings": {},
    }


@endpoint("server.info", "debug.ping")
def server_info(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    from clearml_standin.api import API_VERSION, SERVER_VERSION

    return {"version": SERVER_VERSION, "api_version": API_VERSION, "build": "standin", "commit": "local"}
