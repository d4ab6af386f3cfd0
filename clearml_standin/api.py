"""ClearML REST surface of the stand-in: routing, the response envelope, auth and errors.

The wire format is ClearML's: `/{v2.N/}service.action`, a JSON body on GET or POST (the SDK sends
GET with a body, the agent POSTs), and every answer wrapped in `{"meta": {...}, "data": {...}}`.
Errors are HTTP 400 (401 for auth) with `result_code`/`result_subcode`/`result_msg` in meta and
never a stack trace. Handlers live in `services/`, one module per ClearML service, and register
themselves with `@endpoint("service.action")`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clearml_standin.faults import FaultInjector
from clearml_standin.regex_budget import request_budget
from clearml_standin.store import Store
from clearml_standin.tokens import API_VERSION, SERVER_VERSION, TOKEN_TTL_S, Authenticator, Credentials, Unauthorized

__all__ = ["API_VERSION", "SERVER_VERSION", "TOKEN_TTL_S", "ApiError", "Credentials", "StandInApp"]

log = logging.getLogger("clearml_standin.api")

# Bounded work per request. The SDK refuses to send a request over 15 MiB (api.http.max_req_size,
# "smaller than that configured in api server"); twice that is refused while it streams in, never
# held whole. Parsing the largest accepted single JSON document holds the GIL for about half a second.
MAX_BODY_BYTES = 32 * 1024 * 1024
PARSE_INLINE_BYTES = 256 * 1024  # bigger bodies are parsed off the event loop
# Answered on the event loop: they read nothing of the store, so a health check never waits for it.
LOOP_ENDPOINTS = frozenset({"debug.ping", "server.info"})
MAX_JSON_DEPTH = 64  # the SDK nests configuration and hyper-parameters a handful of levels deep


class ApiError(Exception):
    """A ClearML-shaped error: HTTP status, result code/subcode and a message naming the problem."""

    def __init__(self, msg: str, code: int = 400, subcode: int = 0, http_status: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.subcode = subcode
        self.http_status = http_status or code


# Subcodes clearml-server uses for common conditions; clients only ever display them.
class Sub:
    VALIDATION = 1  # bad request body / missing field
    INVALID_TASK_ID = 101
    INVALID_TASK_STATUS = 110
    TASK_PUBLISHED = 111
    INVALID_PROJECT_ID = 401
    PROJECT_EXISTS = 405
    INVALID_MODEL_ID = 201
    INVALID_QUEUE_ID = 701
    QUEUE_EXISTS = 703
    NO_SUCH_ENDPOINT = 20
    NOT_AUTHORIZED = 10


def missing(field_name: str) -> ApiError:
    return ApiError(f"Validation error: missing required field '{field_name}'", subcode=Sub.VALIDATION)


def bad_input(endpoint_name: str, exc: BaseException) -> ApiError:
    """The 400 for a handler's ValueError/TypeError/KeyError/AttributeError on client input."""
    if isinstance(exc, KeyError) and exc.args:
        detail = f"missing or malformed field {exc.args[0]!r}"
    else:
        detail = str(exc) or type(exc).__name__
    return ApiError(f"Validation error in {endpoint_name}: {detail}", subcode=Sub.VALIDATION)


@dataclass
class Ctx:
    """What a handler sees: the store, the stand-in's public URLs and the caller's identity."""

    store: Store
    files_url: str
    web_url: str
    api_url: str
    company: str
    user_id: str
    user_name: str
    endpoint: str = ""


Handler = Callable[[Ctx, dict[str, Any]], dict[str, Any] | None]
_HANDLERS: dict[str, Handler] = {}


def endpoint(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for one or more `service.action` names."""

    def register(fn: Handler) -> Handler:
        for name in names:
            _HANDLERS[name] = fn
        return fn

    return register


def handlers() -> dict[str, Handler]:
    # Importing the service modules registers their endpoints.
    from clearml_standin import services  # noqa: F401

    return dict(_HANDLERS)


_PATH_RE = re.compile(r"^/(?:v(?P<version>\d+\.\d+)/)?(?P<service>[a-z_]+)\.(?P<action>[a-z_]+)/?$")


@dataclass
class CallLog:
    """Per-endpoint call counts and response-contract violations, for tests and benchmarks."""

    counts: Counter[str] = field(default_factory=Counter)
    unsupported: Counter[str] = field(default_factory=Counter)
    contract_errors: list[str] = field(default_factory=list)
    validate: bool = False
    # Called right after a contract error or an unsupported call is recorded. The server points it
    # at its calls.json writer: the periodic save can lose its last half second to a kill -9, and
    # these are exactly the records the contract test must not miss.
    persist: Callable[[], object] | None = None
    _response_classes: dict[str, type] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return {"calls": dict(self.counts), "unsupported": dict(self.unsupported),
                "contract_errors": list(self.contract_errors)}

    def load(self, saved: dict[str, Any]) -> None:
        """Continue the counts of a previous server process (kept across a restart or crash)."""
        self.counts.update(saved.get("calls", {}))
        self.unsupported.update(saved.get("unsupported", {}))
        self.contract_errors.extend(saved.get("contract_errors", []))

    def check(self, name: str, data: dict[str, Any]) -> None:
        if not self.validate:
            return
        cls = self._response_class(name)
        if cls is None:
            return
        try:
            cls(**data)
        except Exception as exc:  # the SDK itself only logs these, so we must catch every kind
            self.contract_errors.append(f"{name}: {exc}")
            self._persist()

    def note_unsupported(self, name: str) -> None:
        first = name not in self.unsupported
        self.unsupported[name] += 1
        if first:
            self._persist()

    def _persist(self) -> None:
        if self.persist is None:
            return
        try:
            self.persist()
        except OSError:  # a full disk must not turn a response into a 500; the periodic save retries
            log.exception("could not save the call log")

    def _response_class(self, name: str) -> type | None:
        if name in self._response_classes:
            return self._response_classes[name]
        service, action = name.split(".", 1)
        found: type | None = None
        try:
            import importlib

            module = importlib.import_module(f"clearml.backend_api.services.v2_23.{service}")
            for req_cls, resp_cls in getattr(module, "response_mapping", {}).items():
                if getattr(req_cls, "_action", None) == action:
                    found = resp_cls
                    break
        except ImportError:
            found = None
        self._response_classes[name] = found  # type: ignore[assignment]
        return found


def check_json(value: Any) -> None:
    """Refuse what cannot be stored and answered: nesting deeper than MAX_JSON_DEPTH, and strings
    that are not valid Unicode (a lone surrogate, e.g. from `os.fsdecode` of a non-UTF-8 name).
    The error names the field."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(f"Invalid request body: nested deeper than {MAX_JSON_DEPTH} levels (at {where or 'top'})",
                           400, Sub.VALIDATION)
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_text(key, f"{where}.{key}" if where else "(a key)")
                stack.append((sub, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}[{i}]", depth + 1) for i, sub in enumerate(item))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(f"Validation error: {where or 'body'} holds a string that is not valid Unicode "
                       "(a lone surrogate); send UTF-8 text", 400, Sub.VALIDATION) from None


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: a string stored before check_json existed (a lone surrogate) is
    escaped instead of failing the whole answer."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class StandInApp:
    """Builds the Starlette app serving the ClearML API."""

    def __init__(
        self,
        store: Store,
        creds: Credentials,
        api_url: str,
        files_url: str,
        web_url: str,
        faults: FaultInjector | None = None,
        validate: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.store = store
        self.creds = creds
        self.api_url = api_url
        self.files_url = files_url
        self.web_url = web_url
        self.faults = faults or FaultInjector()
        self.calls = CallLog(validate=validate)
        self.handlers = handlers()
        self.auth = Authenticator(creds)
        self.app = Starlette(
            routes=[
                Route("/_standin/stats", self.stats, methods=["GET"]),
                Route("/_standin/faults", self.set_faults, methods=["POST"]),
                Route("/_standin/reset_stats", self.reset_stats, methods=["POST"]),
                Route("/{path:path}", self.dispatch, methods=["GET", "POST", "PUT"]),
            ]
        )

    def ctx(self, endpoint_name: str = "") -> Ctx:
        """What a handler sees; also used by the server's own background jobs (the watchdog)."""
        return Ctx(
            store=self.store,
            files_url=self.files_url,
            web_url=self.web_url,
            api_url=self.api_url,
            company=self.creds.company,
            user_id=self.creds.user_id,
            user_name=self.creds.user_name,
            endpoint=endpoint_name,
        )

    def issue_token(self, expiration_sec: int | None = None) -> str:
        return self.auth.issue(expiration_sec)

    # -- HTTP ---------------------------------------------------------------------------------
    async def dispatch(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        match = _PATH_RE.match(path)
        requested = None
        name = path.strip("/")
        if match:
            requested = match.group("version")
            name = f"{match.group('service')}.{match.group('action')}"
        fault, lose_response = await self.faults.before(name)
        if fault is not None:
            return fault
        try:
            if not match:
                raise ApiError(f"Invalid request path {path}", 400, Sub.NO_SUCH_ENDPOINT)
            # Credentials first: a body is only read (bounded) for a caller that may send one.
            self._authenticate(request, name)
            body = await self._body(request)
            handler = self.handlers.get(name)
            if handler is None:
                self.calls.note_unsupported(name)
                raise ApiError(f"Unsupported endpoint {name} (not served by the local stand-in)",
                               400, Sub.NO_SUCH_ENDPOINT)
            self.calls.counts[name] += 1
            if name == "auth.login":
                exp = body.get("expiration_sec") if isinstance(body, dict) else None
                if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | str)
                                        or not str(exp).lstrip("-").isdigit()):
                    raise ApiError(f"Validation error: expiration_sec must be a whole number of seconds, "
                                   f"got {str(exp)[:40]!r}", 400, Sub.VALIDATION)
                data: dict[str, Any] | None = {"token": self.issue_token(int(exp) if exp is not None else None)}
            elif name in LOOP_ENDPOINTS:
                data = handler(self.ctx(name), body)
            else:
                # On the store's thread: the loop keeps serving while it runs; regexes are timed.
                data = await self.store.run(request_budget(self._in_transaction), handler, self.ctx(name), body)
            data = data or {}
            self.calls.check(name, data)
            response = self._envelope(name, requested, 200, 0, "OK", data)
        except ApiError as err:
            response = self._envelope(name, requested, err.code, err.subcode, err.msg, {}, err.http_status)
        except (ValueError, TypeError, KeyError, AttributeError, sqlite3.InterfaceError) as exc:
            # (InterfaceError: a request value of a type SQLite cannot bind reached a query)
            # A handler that trips over a wrongly typed or shaped field is a bad request, not a
            # server fault: answer like clearml-server's schema validation does, naming the field.
            log.warning("bad request to %s: %r", name, exc, exc_info=True)
            bad = bad_input(name, exc)
            response = self._envelope(name, requested, bad.code, bad.subcode, bad.msg, {}, bad.http_status)
        except Exception:  # logged with its traceback; the answer names the endpoint, never the exception
            log.exception("internal error in %s", name)
            response = self._envelope(name, requested, 500, 0, f"Internal error in {name} (see the server log)",
                                      {}, http_status=500)
        return self.faults.lost_response() if lose_response else response

    async def _read_bounded(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise ApiError(f"Request body too large ({int(declared)} bytes; at most {self.max_body_bytes})",
                           413, Sub.VALIDATION)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise ApiError(f"Request body too large (over {self.max_body_bytes} bytes)", 413, Sub.VALIDATION)
            chunks.append(chunk)
        return b"".join(chunks)

    def _in_transaction(self, handler: Handler, ctx: Ctx, body: dict[str, Any]) -> dict[str, Any] | None:
        """One request, one transaction: a handler that fails half-way leaves nothing half-written."""
        with self.store.transaction():
            return handler(ctx, body)

    def _authenticate(self, request: Request, name: str) -> None:
        try:
            self.auth.check(request.headers.get("authorization", ""), name)
        except Unauthorized as err:
            raise ApiError(err.msg, 401, err.subcode) from None

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await self._read_bounded(request)
        if len(raw) > PARSE_INLINE_BYTES:
            return await asyncio.to_thread(self._parse, raw)
        if raw.strip():
            return self._parse(raw)
        return dict(request.query_params)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        if raw.strip():
            text = raw.decode("utf-8", errors="replace")
            try:
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError:
                    # events.add_batch from the SDK: newline-delimited JSON objects
                    try:
                        parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
                    except json.JSONDecodeError as exc:
                        raise ApiError(f"Invalid JSON body: {exc}", 400, Sub.VALIDATION) from exc
            except RecursionError:
                raise ApiError(f"Invalid request body: nested deeper than {MAX_JSON_DEPTH} levels",
                               400, Sub.VALIDATION) from None
            check_json(parsed)
            if isinstance(parsed, list):
                return {"requests": parsed}
            if not isinstance(parsed, dict):
                raise ApiError("Invalid request body: expected a JSON object", 400, Sub.VALIDATION)
            return parsed
        return {}

    def _envelope(
        self,
        name: str,
        requested: str | None,
        code: int,
        subcode: int,
        msg: str,
        data: dict[str, Any],
        http_status: int | None = None,
    ) -> JSONResponse:
        trx = uuid.uuid4().hex
        meta = {
            "id": trx,
            "trx": trx,
            "endpoint": {
                "name": name,
                "requested_version": requested or API_VERSION,
                "actual_version": API_VERSION,
            },
            "result_code": code,
            "result_subcode": subcode,
            "result_msg": msg,
            "error_stack": "",
            "error_data": {},
        }
        return SafeJSONResponse({"meta": meta, "data": data}, status_code=http_status or code)

    # -- test/benchmark hooks (not part of the ClearML API; the stack's credentials, like the API) --
    def _hook_refused(self, request: Request) -> Response | None:
        try:
            self.auth.check(request.headers.get("authorization", ""), request.url.path)
        except Unauthorized as err:
            return JSONResponse({"error": err.msg}, status_code=401)
        return None

    async def stats(self, request: Request) -> Response:
        if refused := self._hook_refused(request):
            return refused
        return JSONResponse(
            {
                "calls": dict(self.calls.counts),
                "total_calls": sum(self.calls.counts.values()),
                "contract_errors": list(self.calls.contract_errors),
                "unsupported": dict(self.calls.unsupported),
                "faults": self.faults.describe(),
            }
        )

    async def reset_stats(self, request: Request) -> Response:
        if refused := self._hook_refused(request):
            return refused
        self.calls.counts.clear()
        self.calls.unsupported.clear()
        self.calls.contract_errors.clear()
        return JSONResponse({"ok": True})

    async def set_faults(self, request: Request) -> Response:
        from clearml_standin.faults import FaultsDisabled

        if refused := self._hook_refused(request):
            return refused
        try:
            body = json.loads((await self._read_bounded(request)) or b"{}")
            self.faults.configure(**body)
        except FaultsDisabled as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        except ApiError as err:
            return JSONResponse({"error": err.msg}, status_code=err.http_status)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": f"bad fault settings: {exc}"}, status_code=400)
        return JSONResponse(self.faults.describe())
