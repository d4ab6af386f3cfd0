"""Read-only web pages at the paths ClearML's web UI uses for task links (to be filled in)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from automation.local.store import Store


class WebUI:
    def __init__(self, store: Store, files_url: str, web_url: str) -> None:
        self.store = store
        self.files_url = files_url
        self.web_url = web_url
        self.app = Starlette(routes=[Route("/{path:path}", self.index)])

    async def index(self, request: Request) -> Response:
        return HTMLResponse("<h1>local ClearML stand-in</h1>")
