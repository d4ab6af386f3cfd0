"""Read-only web pages at the paths ClearML's web UI uses for the links the SDK and agent print.

`Task.get_output_log_web_page()` prints `<web>/projects/<project id or *>/experiments/<task>/output/log`
(`.../tasks/<task>/...` for newer servers), and UI links go to sub-paths of those (execution,
hyper-params, info-output/metrics/scalar, artifacts ...). Every task path renders one page with the
task's status, parameters, configuration, last scalars, artifacts and models (with links to the
file server) and the tail of its console log. `/projects/<p>/models/<id>` shows a model and `/`
lists recent tasks. Plain server-side HTML: every stored string is escaped, and only http(s)
URIs become links, so a task cannot inject markup or `javascript:` links into the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from clearml_standin.files import allowed_hosts, serve_download
from clearml_standin.store import Store

Doc = dict[str, Any]

LOG_TAIL_LINES = 200
INDEX_LIMIT = 100
SINGLE_VALUE_ITER = -(2**31)

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; max-height: 40em; }
.status { font-weight: bold; padding: 0.1em 0.4em; border-radius: 0.2em; background: #eee; }
.muted { color: #777; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def link(uri: Any, text: Any = None, local: bool = False) -> str:
    """A link for http(s) URIs (or our own paths); anything else (file://, javascript:) stays text."""
    label = esc(text if text is not None else uri)
    if isinstance(uri, str) and (
        uri.lower().startswith(("http://", "https://")) or (local and uri[:1] == "/")
    ):
        return f'<a href="{esc(uri)}">{label}</a>'
    return label


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="*") for p in parts)


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    doc = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head>"
        f'<body><p class="muted"><a href="/">local ClearML stand-in</a></p>{body}</body></html>'
    )
    # A name stored before the API refused lone surrogates must not turn the page into a 500.
    return HTMLResponse(doc.encode("utf-8", errors="replace"), status_code=status_code)


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Rows are already-escaped HTML cells."""
    rows = list(rows)
    if not rows:
        return '<p class="muted">(none)</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt_number(value: Any) -> str:
    if isinstance(value, float):
        return esc(f"{value:.6g}")
    return esc(value)


def _fmt_time(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


class WebUI:
    def __init__(self, store: Store, files_url: str, web_url: str, files_root: Path | None = None) -> None:
        self.store = store
        self.files_url = files_url
        self.web_url = web_url
        self.files_root = files_root
        task_page = self._on_store(self.task_page)
        project_page = self._on_store(self.project_page)
        model_page = self._on_store(self.model_page)
        self.app = Starlette(
            routes=[
                Route("/", self._on_store(self.index)),
                Route("/projects/{project}/experiments/{task}", task_page),
                Route("/projects/{project}/experiments/{task}/{rest:path}", task_page),
                Route("/projects/{project}/tasks/{task}", task_page),
                Route("/projects/{project}/tasks/{task}/{rest:path}", task_page),
                Route("/projects/{project}/experiments", project_page),
                Route("/projects/{project}/tasks", project_page),
                Route("/projects/{project}/models/{model}", model_page),
                Route("/projects/{project}/models/{model}/{rest:path}", model_page),
                Route("/projects/{project}/models", self._on_store(self.models_page)),
                Route("/projects/{project}", project_page),
                Route("/files/{path:path}", self.download, methods=["GET", "HEAD"]),
                Route("/{path:path}", self._on_store(self.not_found)),
            ],
            middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(web_url))],
        )

    def _on_store(self, page: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
        """Pages read the store on its worker thread (never while a handler writes it)."""

        async def endpoint(request: Request) -> Response:
            return await self.store.run(page, request)

        return endpoint

    async def download(self, request: Request) -> Response:
        """An artifact or model file for a browser: the file server wants the stack's credentials,
        which a browser does not have; these pages are the stack's read-only view, so they hand
        out what the file server holds, with the file server's own safe headers (inert types
        inline, everything else as an attachment)."""
        if self.files_root is None:
            return _page("Not found", "<h1>Not found</h1>", 404)
        return serve_download(self.files_root, request.path_params.get("path", ""))

    # -- helpers ------------------------------------------------------------------------------
    def _project_name(self, project_id: Any) -> str:
        if not project_id:
            return ""
        doc = self.store.get("project", str(project_id))
        return str(doc.get("name") or project_id) if doc else str(project_id)

    def _file_link(self, uri: Any) -> str:
        """A file-server URI links to this page's own download of it (a browser holds no credentials)."""
        prefix = self.files_url.rstrip("/") + "/"
        if self.files_root is not None and isinstance(uri, str) and uri.startswith(prefix):
            return link("/files/" + uri[len(prefix):], uri, local=True)
        return link(uri)

    def _task_url(self, task: Doc) -> str:
        return _path("projects", str(task.get("project") or "*"), "experiments", str(task["id"]))

    def _model_url(self, model: Doc) -> str:
        return _path("projects", str(model.get("project") or "*"), "models", str(model["id"]))

    def _task_rows(self, tasks: list[Doc]) -> list[list[str]]:
        return [
            [
                f'<a href="{esc(self._task_url(t))}">{esc(t.get("name") or t["id"])}</a>',
                f'<span class="status">{esc(t.get("status"))}</span>',
                esc(self._project_name(t.get("project"))),
                esc(t.get("type")),
                esc(t.get("last_update") or t.get("created")),
                esc(t["id"]),
            ]
            for t in tasks
        ]

    # -- pages --------------------------------------------------------------------------------
    def not_found(self, request: Request) -> Response:
        return _page("Not found", f"<h1>Not found</h1><p>No page at {esc(request.url.path)}</p>", 404)

    def index(self, request: Request) -> Response:
        tasks = sorted(
            self.store.iter_raw("task"),
            key=lambda t: str(t.get("last_update") or t.get("created") or ""),
            reverse=True,
        )
        shown = [dict(t) for t in tasks[:INDEX_LIMIT]]
        body = (
            "<h1>Recent tasks</h1>"
            f'<p class="muted">{len(tasks)} task(s), newest first'
            f"{f', showing {INDEX_LIMIT}' if len(tasks) > INDEX_LIMIT else ''}</p>"
            + _table(["Task", "Status", "Project", "Type", "Last update", "ID"], self._task_rows(shown))
        )
        return _page("Recent tasks", body)

    def project_page(self, request: Request) -> Response:
        project = request.path_params["project"]
        if project != "*" and self.store.get("project", project) is None:
            return _page(
                "Unknown project", f"<h1>Unknown project</h1><p>No project with id {esc(project)}</p>", 404
            )
        tasks = [
            dict(t) for t in self.store.iter_raw("task") if project == "*" or t.get("project") == project
        ]
        tasks.sort(key=lambda t: str(t.get("last_update") or t.get("created") or ""), reverse=True)
        title = "All tasks" if project == "*" else f"Project {self._project_name(project)}"
        body = f"<h1>{esc(title)}</h1>" + _table(
            ["Task", "Status", "Project", "Type", "Last update", "ID"], self._task_rows(tasks)
        )
        return _page(title, body)

    def task_page(self, request: Request) -> Response:
        task_id = request.path_params["task"]
        task = self.store.get("task", task_id)
        if task is None:
            return _page("Unknown task", f"<h1>Unknown task</h1><p>No task with id {esc(task_id)}</p>", 404)
        sections = [
            self._task_header(task),
            "<h2>Scalars</h2>" + self._scalars(task),
            "<h2>Single values</h2>" + self._single_values(task_id),
            "<h2>Parameters</h2>" + self._parameters(task),
            "<h2>Configuration</h2>" + self._configuration(task),
            "<h2>Artifacts</h2>" + self._artifacts(task),
            "<h2>Models</h2>" + self._task_models(task),
            f"<h2>Console log (last {LOG_TAIL_LINES} entries)</h2>" + self._log_tail(task_id),
        ]
        return _page(f"{task.get('name') or task_id} ({task.get('status')})", "".join(sections))

    def _task_header(self, task: Doc) -> str:
        execution = task.get("execution") or {}
        script = task.get("script") or {}
        rows = [
            ("Status", f'<span class="status">{esc(task.get("status"))}</span>'),
            ("Status message", esc(task.get("status_message"))),
            ("Status reason", esc(task.get("status_reason"))),
            ("ID", esc(task["id"])),
            ("Project", esc(self._project_name(task.get("project")))),
            ("Type", esc(task.get("type"))),
            ("Queue", esc(execution.get("queue"))),
            (
                "Script",
                esc(" ".join(str(x) for x in (script.get("repository"), script.get("entry_point")) if x)),
            ),
            ("Created", esc(task.get("created"))),
            ("Started", esc(task.get("started"))),
            ("Completed", esc(task.get("completed"))),
            ("Last update", esc(task.get("last_update"))),
            ("Last iteration", esc(task.get("last_iteration"))),
            ("Tags", esc(", ".join(str(t) for t in task.get("tags") or []))),
        ]
        return f"<h1>{esc(task.get('name') or task['id'])}</h1>" + _table(
            ["Field", "Value"], [[esc(k), v] for k, v in rows]
        )

    def _scalars(self, task: Doc) -> str:
        rows = []
        for variants in (task.get("last_metrics") or {}).values():
            for entry in (variants or {}).values():
                rows.append(
                    [
                        esc(entry.get("metric")),
                        esc(entry.get("variant")),
                        _fmt_number(entry.get("value")),
                        _fmt_number(entry.get("min_value")),
                        _fmt_number(entry.get("max_value")),
                    ]
                )
        rows.sort()
        return _table(["Metric", "Variant", "Last", "Min", "Max"], rows)

    def _single_values(self, task_id: str) -> str:
        latest: dict[tuple[str, str], Any] = {}
        for ev in self.store.events(task_id, ["training_stats_scalar"]):
            if ev.get("iter") == SINGLE_VALUE_ITER:
                latest[(ev.get("metric", ""), ev.get("variant", ""))] = ev.get("value")
        rows = [[esc(variant), _fmt_number(value)] for (_, variant), value in sorted(latest.items())]
        return _table(["Name", "Value"], rows)

    def _parameters(self, task: Doc) -> str:
        rows = []
        for section, params in sorted((task.get("hyperparams") or {}).items()):
            for name, param in sorted((params or {}).items()):
                param = param if isinstance(param, dict) else {"value": param}
                rows.append(
                    [
                        esc(section),
                        esc(name),
                        esc(param.get("value")),
                        esc(param.get("type")),
                        esc(param.get("description")),
                    ]
                )
        return _table(["Section", "Name", "Value", "Type", "Description"], rows)

    def _configuration(self, task: Doc) -> str:
        parts = []
        for name, item in sorted((task.get("configuration") or {}).items()):
            item = item if isinstance(item, dict) else {"value": item}
            parts.append(
                f"<h3>{esc(name)}</h3>"
                f'<p class="muted">{esc(item.get("type"))} {esc(item.get("description"))}</p>'
                f"<pre>{esc(item.get('value'))}</pre>"
            )
        return "".join(parts) or '<p class="muted">(none)</p>'

    def _artifacts(self, task: Doc) -> str:
        rows = []
        for art in (task.get("execution") or {}).get("artifacts") or []:
            type_data = art.get("type_data") or {}
            rows.append(
                [
                    esc(art.get("key")),
                    esc(art.get("type")),
                    esc(art.get("mode")),
                    self._file_link(art.get("uri")),
                    esc(art.get("content_size")),
                    f"<pre>{esc(type_data.get('preview'))}</pre>" if type_data.get("preview") else "",
                ]
            )
        return _table(["Name", "Type", "Mode", "Download", "Size", "Preview"], rows)

    def _task_models(self, task: Doc) -> str:
        rows = []
        for direction in ("input", "output"):
            for entry in (task.get("models") or {}).get(direction) or []:
                model = self.store.get("model", str(entry.get("model")))
                if model is None:
                    rows.append(
                        [esc(direction), esc(entry.get("name")), esc(entry.get("model")), "(deleted)"]
                    )
                    continue
                rows.append(
                    [
                        esc(direction),
                        esc(entry.get("name")),
                        link(self._model_url(model), model.get("name") or model["id"], local=True),
                        self._file_link(model.get("uri")),
                    ]
                )
        return _table(["Direction", "Name", "Model", "Weights"], rows)

    def _log_tail(self, task_id: str) -> str:
        logs = self.store.events(task_id, ["log"])
        logs.sort(key=lambda e: e.get("timestamp") or 0)
        tail = logs[-LOG_TAIL_LINES:]
        if not tail:
            return '<p class="muted">(no output)</p>'
        lines = "\n".join(f"{_fmt_time(e.get('timestamp'))} {e.get('msg', '')}".rstrip("\n") for e in tail)
        return f"<pre>{esc(lines)}</pre>"

    def models_page(self, request: Request) -> Response:
        project = request.path_params["project"]
        models = [
            dict(m) for m in self.store.iter_raw("model") if project == "*" or m.get("project") == project
        ]
        models.sort(key=lambda m: str(m.get("created") or ""), reverse=True)
        rows = [
            [
                f'<a href="{esc(self._model_url(m))}">{esc(m.get("name") or m["id"])}</a>',
                esc(m.get("framework")),
                esc("yes" if m.get("ready") else "no"),
                self._file_link(m.get("uri")),
                esc(m["id"]),
            ]
            for m in models
        ]
        return _page(
            "Models", "<h1>Models</h1>" + _table(["Model", "Framework", "Published", "Weights", "ID"], rows)
        )

    def model_page(self, request: Request) -> Response:
        model_id = request.path_params["model"]
        model = self.store.get("model", model_id)
        if model is None:
            return _page(
                "Unknown model", f"<h1>Unknown model</h1><p>No model with id {esc(model_id)}</p>", 404
            )
        task = self.store.get("task", str(model.get("task"))) if model.get("task") else None
        task_cell = (
            f'<a href="{esc(self._task_url(task))}">{esc(task.get("name") or task["id"])}</a>'
            if task
            else esc(model.get("task"))
        )
        rows = [
            ("ID", esc(model["id"])),
            ("Weights", self._file_link(model.get("uri"))),
            ("Published", esc("yes" if model.get("ready") else "no")),
            ("Framework", esc(model.get("framework"))),
            ("Project", esc(self._project_name(model.get("project")))),
            ("Task", task_cell),
            ("Created", esc(model.get("created"))),
            ("Last update", esc(model.get("last_update"))),
            ("Tags", esc(", ".join(str(t) for t in model.get("tags") or []))),
            ("Comment", esc(model.get("comment"))),
        ]
        metadata = [
            [esc(k), esc((v or {}).get("type")), esc((v or {}).get("value"))]
            for k, v in sorted((model.get("metadata") or {}).items())
        ]
        labels = model.get("labels") or {}
        design = model.get("design") or {}
        body = (
            f"<h1>{esc(model.get('name') or model['id'])}</h1>"
            + _table(["Field", "Value"], [[esc(k), v] for k, v in rows])
            + "<h2>Metadata</h2>"
            + _table(["Key", "Type", "Value"], metadata)
            + "<h2>Labels</h2>"
            + _table(["Label", "ID"], [[esc(k), esc(v)] for k, v in sorted(labels.items())])
            + "<h2>Design</h2>"
            + f"<pre>{esc(json.dumps(design, indent=2, default=str))}</pre>"
        )
        return _page(f"Model {model.get('name') or model_id}", body)
