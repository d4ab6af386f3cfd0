"""Thin async layer over the ClearML REST API: submit, batch status, stop, find by identity, results.

Why not the SDK here: `Task.create` costs ~10 calls per task and `get_status` one call per task
per poll, and the SDK is synchronous (a blocked thread cannot be cancelled). This client speaks
the same API the SDK speaks, with the SDK's own configuration (`ClearMLSettings`), creates a fully
specified task in ONE `tasks.create` and enqueues it in one more, and reads the status of any
number of tasks with ONE `tasks.get_all`. Transient faults (5xx, timeouts, dropped connections)
are retried with backoff (tenacity); anything else surfaces as a typed error naming the call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from automation.clearml.records import ACTIVE_STATUSES, TaskRecord, TaskStatus, parse_timestamp
from automation.clearml.settings import ClearMLSettings
from automation.errors import ApiCallError, BackendError, BackendUnavailable, QueueNotFound, ServerUnreachable
from automation.results import TaskResult, group_single_values
from automation.specs.base import ARGS_SECTION, TaskSpec

log = logging.getLogger("automation.clearml.client")

IDENTITY_TAG = "identity:"
FLOW_RUN_TAG = "prefect-flow-run:"
TASK_RUN_TAG = "prefect-task-run:"
KIND_TAG = "kind:"
SUBMISSION_TAG = "submission:"
QUEUE_TAG = "queue:"  # the queue a task was created for (execution.queue is not kept after a run)
STATUS_BATCH = 500  # the ClearML server's largest page
STATUS_FIELDS = ["id", "status", "status_message", "status_reason", "status_changed", "last_update",
                 "runtime", "execution.queue", "started", "completed", "last_worker", "tags"]


class _Transient(Exception):
    """A failure worth retrying: 5xx, timeout, connection reset/refused."""


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (_Transient, httpx.TransportError))


# Failures to open a connection at all. A refused connection answers at once; a host that drops
# packets only shows as a connect timeout (5 s each here), so both count towards
# `connect_attempts` instead of being retried for `retry_for_s` -- while this client has never
# reached the server (a wrong URL or a server that is down: bad configuration, fail in seconds).
# Once it has, the same failures are an outage of a known-good server (a restart, a network blip,
# possibly while a finished GPU task's result is being read) and are retried like any transient
# fault, then surface as BackendUnavailable, which Prefect retries. PoolTimeout is left out on
# purpose: it means our own pool stayed full (many slow calls at once), not that the server is
# gone, so it stays an ordinary transient failure.
_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)


class ClearMLBackend:
    """One per process (or per event loop): holds the token, the HTTP pool and small caches."""

    def __init__(
        self,
        settings: ClearMLSettings | None = None,
        timeout_s: float = 30.0,
        retry_for_s: float = 120.0,
        connect_attempts: int = 3,
    ) -> None:
        self.settings = settings or ClearMLSettings.load()
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self.connect_attempts = connect_attempts
        self._reached = False  # any HTTP answer seen: connect failures are then an outage, retried
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._login_lock = asyncio.Lock()
        self._project_lock = asyncio.Lock()
        self._projects: dict[str, str] = {}
        self._queues: dict[str, str] = {}
        self._queue_names: dict[str, str] = {}
        self.calls = 0  # HTTP requests made (retries included), for overhead measurements
        self.endpoint_calls: dict[str, int] = {}  # logical API calls by endpoint (retries not counted)

    # -- transport --------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                base_url=self.settings.api_host,
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
                limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _login(self) -> str:
        async with self._login_lock:
            if self._token:
                return self._token
            data = await self._send("auth.login", {}, auth=(self.settings.access_key,
                                                            self.settings.secret_key.get_secret_value()))
            self._token = str(data["token"])
            return self._token

    async def call(self, endpoint: str, body: Mapping[str, Any] | None = None,
                   retry_for_s: float | None = None) -> dict[str, Any]:
        """One API call, retried on transient failures; re-login once on an expired token."""
        self.endpoint_calls[endpoint] = self.endpoint_calls.get(endpoint, 0) + 1
        token = self._token or await self._login()
        try:
            return await self._send(endpoint, body or {}, token=token, retry_for_s=retry_for_s)
        except ApiCallError as err:
            if err.code != 401:
                raise
            self._token = None
            return await self._send(endpoint, body or {}, token=await self._login(), retry_for_s=retry_for_s)

    async def _send(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        token: str | None = None,
        auth: tuple[str | bytes, str | bytes] | None = None,
        retry_for_s: float | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connect_failures = 0
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_transient),
                stop=stop_after_delay(self.retry_for_s if retry_for_s is None else retry_for_s)
                | stop_after_attempt(50),
                wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
                reraise=True,
            ):
                with attempt:
                    try:
                        self.calls += 1
                        res = await (
                            self._http().post(f"/{endpoint}", json=dict(body), headers=headers, auth=auth)
                            if auth is not None
                            else self._http().post(f"/{endpoint}", json=dict(body), headers=headers)
                        )
                    except _CONNECT_FAILURES as exc:
                        # A server we cannot connect to is not coming back within a poll: give
                        # up after a few tries so bad config fails in seconds, not minutes.
                        connect_failures += 1
                        if connect_failures >= self.connect_attempts and not self._reached:
                            how = "timed out" if isinstance(exc, httpx.ConnectTimeout) else "refused"
                            raise ServerUnreachable(
                                f"ClearML API server {self.settings.api_host} is unreachable "
                                f"({endpoint}: connection {how}, {connect_failures} attempts)"
                            ) from None
                        raise
                    self._reached = True
                    return self._unwrap(endpoint, res)
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"ClearML API server {self.settings.api_host} did not answer {endpoint}: "
                f"{type(exc).__name__}: {exc}") from exc
        except _Transient as exc:
            raise BackendUnavailable(f"ClearML API server {self.settings.api_host}: {endpoint} kept "
                                     f"failing: {exc}") from exc
        raise AssertionError("unreachable")

    async def auth_headers(self) -> dict[str, str]:
        """The session token as the SDK sends it (file uploads, batched events)."""
        return {"Authorization": f"Bearer {self._token or await self._login()}"}

    async def post_raw(self, what: str, url: str, *, headers: Mapping[str, str] | None = None,
                       attempts: int = 4, **kwargs: Any) -> httpx.Response:
        """An authenticated POST that is not a JSON API call (events.add_batch as JSON lines, a file
        upload): transport faults and 5xx retried (callers must be idempotent), one re-login on 401.
        Returns the response whatever its status; the caller reads it."""
        relogged = False
        attempt = 0
        while True:
            attempt += 1
            try:
                self.calls += 1
                res = await self._http().post(url, headers={**(headers or {}), **await self.auth_headers()}, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= attempts:
                    raise BackendUnavailable(f"{what}: {url} did not answer: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(0.5 * attempt)
                continue
            if res.status_code == 401 and not relogged:
                relogged = True
                self._token = None
                continue
            if res.status_code >= 500 and attempt < attempts:
                await asyncio.sleep(0.5 * attempt)
                continue
            return res

    @classmethod
    def unwrap(cls, endpoint: str, res: httpx.Response) -> dict[str, Any]:
        """The `data` of a ClearML answer to a request made with `post_raw` (which has already
        retried transport faults and 5xx): an error envelope raises ApiCallError, a 5xx or a
        non-JSON answer BackendUnavailable."""
        try:
            return cls._unwrap(endpoint, res)
        except _Transient as exc:
            raise BackendUnavailable(f"ClearML API server: {exc}") from exc

    @staticmethod
    def _unwrap(endpoint: str, res: httpx.Response) -> dict[str, Any]:
        if res.status_code >= 500 or res.status_code in (408, 429):
            raise _Transient(f"{endpoint}: HTTP {res.status_code}")
        try:
            payload = res.json()
        except ValueError as exc:
            raise _Transient(f"{endpoint}: non-JSON answer (HTTP {res.status_code})") from exc
        meta = payload.get("meta") or {}
        if res.status_code != 200 or meta.get("result_code", 200) != 200:
            raise ApiCallError(endpoint, int(meta.get("result_code") or res.status_code),
                               int(meta.get("result_subcode") or 0), str(meta.get("result_msg") or res.text))
        return dict(payload.get("data") or {})

    # -- projects and queues ------------------------------------------------------------------
    async def project_id(self, name: str, create: bool = True) -> str:
        if name in self._projects:
            return self._projects[name]
        async with self._project_lock:
            if name not in self._projects:
                self._projects[name] = await self._lookup_or_create_project(name, create)
        return self._projects[name]

    async def _lookup_or_create_project(self, name: str, create: bool) -> str:
        found = (await self.call("projects.get_all", {"name": f"^{_re_escape(name)}$",
                                                       "only_fields": ["id", "name"]}))["projects"]
        found = [p for p in found if p.get("name") == name]
        if found:
            return str(found[0]["id"])
        if not create:
            raise BackendError(f"no ClearML project named '{name}'")
        try:
            return str((await self.call("projects.create", {"name": name, "description": ""}))["id"])
        except ApiCallError:
            # Another process created it between our lookup and create: look again.
            again = (await self.call("projects.get_all", {"name": f"^{_re_escape(name)}$",
                                                           "only_fields": ["id", "name"]}))["projects"]
            again = [p for p in again if p.get("name") == name]
            if not again:
                raise
            return str(again[0]["id"])

    async def _load_queues(self) -> list[dict[str, Any]]:
        queues = (await self.call("queues.get_all", {"only_fields": ["id", "name"]}))["queues"]
        self._queues = {str(q["name"]): str(q["id"]) for q in queues}
        self._queue_names = {v: k for k, v in self._queues.items()}
        return list(queues)

    async def queue_id(self, name: str) -> str:
        """The queue's id; a missing queue is an error listing the queues that exist."""
        if name not in self._queues:
            await self._load_queues()
        if name not in self._queues:
            known = ", ".join(sorted(self._queues)) or "none"
            raise QueueNotFound(f"ClearML queue '{name}' does not exist on {self.settings.api_host} "
                                f"(queues: {known}); create it or pick another `queue`")
        return self._queues[name]

    async def queue_name(self, queue_id: str | None) -> str | None:
        if not queue_id:
            return None
        if queue_id not in self._queue_names:
            await self._load_queues()
        return self._queue_names.get(queue_id)

    # -- tasks ----------------------------------------------------------------------------------
    def task_body(self, spec: TaskSpec, project_id: str, tags: Iterable[str] = (),
                  properties: Mapping[str, str] | None = None, comment: str = "") -> dict[str, Any]:
        """The complete tasks.create body for a spec: Args, configuration, script, packages,
        container, tags and user properties, so no follow-up edit is needed."""
        args = {
            name: {"section": ARGS_SECTION, "name": name, "value": text, "type": marker}
            for name, (text, marker) in spec.to_args().items()
        }
        hyperparams: dict[str, Any] = {ARGS_SECTION: args}
        if properties:
            hyperparams["properties"] = {
                k: {"section": "properties", "name": k, "value": str(v), "type": "str"}
                for k, v in properties.items()
            }
        configuration = {
            name: {"name": name, "value": text, "type": "HOCON",
                   "description": f"{spec.kind} spec field" if name != "automation_spec" else
                   "kind and envelope of the TaskSpec this task was created from"}
            for name, text in spec.to_configuration().items()
        }
        code = spec.code
        script: dict[str, Any] = {
            "entry_point": f"-m {spec.script_module}",
            "working_dir": code.working_dir,
            "binary": "python3",
            "requirements": {"pip": "\n".join(spec.task_requirements())},
            "diff": "",
        }
        if code.repository:
            script.update({"repository": code.repository, "version_num": code.commit, "branch": ""})
        identity = spec.identity()
        all_tags = list(dict.fromkeys([*spec.tags, f"{KIND_TAG}{spec.kind}", f"{IDENTITY_TAG}{identity}",
                                       f"{QUEUE_TAG}{spec.queue}", *tags]))
        body: dict[str, Any] = {
            "name": spec.task_name(),
            "project": project_id,
            "type": spec.task_type,
            "comment": comment or f"{spec.kind} task created from a TaskSpec (identity {identity})",
            "tags": all_tags,
            "hyperparams": hyperparams,
            "configuration": configuration,
            "script": script,
        }
        if spec.docker_image:
            body["container"] = {"image": spec.docker_image, "arguments": spec.docker_args or "",
                                 "setup_shell_script": ""}
        return body

    async def create(self, spec: TaskSpec, tags: Iterable[str] = (),
                     properties: Mapping[str, str] | None = None,
                     input_model_id: str | None = None) -> str:
        body = self.task_body(spec, await self.project_id(spec.project), tags, properties)
        input_model_id = input_model_id or spec.input_model_id()
        if input_model_id:
            body["models"] = {"input": [{"name": "input", "model": input_model_id}], "output": []}
        # tasks.create is not idempotent: if its answer is lost after the server stored the task,
        # a blind retry makes a duplicate. A per-submission tag lets us look before retrying.
        submission = f"{SUBMISSION_TAG}{uuid.uuid4().hex[:16]}"
        body["tags"] = [*body["tags"], submission]
        deadline = asyncio.get_running_loop().time() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                return str((await self.call("tasks.create", body, retry_for_s=0))["id"])
            except BackendUnavailable:
                found = (await self.call("tasks.get_all", {"tags": [submission], "only_fields": ["id"],
                                                           "search_hidden": True}))["tasks"]
                if found:
                    return str(found[0]["id"])
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def enqueue(self, task_id: str, queue: str) -> None:
        await self.queue_id(queue)  # fail with the list of queues rather than a bare 400
        body = {"task": task_id, "queue_name": queue, "status_reason": "enqueued by automation"}
        deadline = asyncio.get_running_loop().time() + self.retry_for_s
        while True:
            try:
                await self.call("tasks.enqueue", body, retry_for_s=0)
                return
            except (BackendUnavailable, ApiCallError) as err:
                # A lost answer to an enqueue that happened, or a refused second enqueue: look.
                status = await self._status(task_id)
                if status in (TaskStatus.QUEUED, TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.PUBLISHED):
                    return
                if isinstance(err, ApiCallError) or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def find_by_identity(self, identity: str, include_archived: bool = False) -> list[TaskRecord]:
        """Tasks carrying the identity tag, newest first."""
        body: dict[str, Any] = {
            "tags": [f"{IDENTITY_TAG}{identity}"],
            "only_fields": [*STATUS_FIELDS, "created", "name", "project"],
            "order_by": ["-created"],
        }
        if not include_archived:
            body["system_tags"] = ["-archived"]
        return [TaskRecord.model_validate(t) for t in (await self.call("tasks.get_all", body))["tasks"]]

    async def find_active_by_tag(self, tag: str) -> list[TaskRecord]:
        body = {"tags": [tag], "status": sorted(ACTIVE_STATUSES), "only_fields": ["id", "status", "name"]}
        return [TaskRecord.model_validate(t) for t in (await self.call("tasks.get_all", body))["tasks"]]

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        """Status of any number of tasks in ONE call (one per STATUS_BATCH tasks)."""
        out: dict[str, TaskRecord] = {}
        ids = list(dict.fromkeys(task_ids))
        for start in range(0, len(ids), STATUS_BATCH):  # one call up to the server's page size
            chunk = ids[start:start + STATUS_BATCH]
            data = await self.call("tasks.get_all", {"id": chunk, "only_fields": STATUS_FIELDS,
                                                      "search_hidden": True, "page": 0, "page_size": len(chunk)})
            out.update({str(t["id"]): TaskRecord.model_validate(t) for t in data["tasks"]})
        return out

    async def _status(self, task_id: str) -> TaskStatus:
        record = (await self.statuses([task_id])).get(task_id)
        return record.status if record else TaskStatus.UNKNOWN

    async def queue_entries(self, queue_ids: Sequence[str]) -> dict[str, set[str]]:
        """Task ids waiting in each queue, for any number of queues in ONE call."""
        data = await self.call("queues.get_all", {"id": list(dict.fromkeys(queue_ids)),
                                                   "only_fields": ["id", "entries"]})
        return {str(q["id"]): {str(e.get("task")) for e in q.get("entries") or []} for q in data["queues"]}

    async def put_back(self, queue_id: str, task_id: str) -> bool:
        """Re-add the queue entry of a task whose status is still `queued` (its dequeue was lost).

        `queues.add_task` is not idempotent on every server: if its answer is lost after the
        entry was added, a blind retry adds a second entry (and the task could be popped twice).
        So each attempt is sent once, and after a failed one the queue is read before trying again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                data = await self.call("queues.add_task", {"queue": queue_id, "task": task_id}, retry_for_s=0)
                return bool(data.get("added"))
            except BackendUnavailable:
                if task_id in (await self.queue_entries([queue_id])).get(queue_id, set()):
                    return True  # the attempt whose answer was lost did add it
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def add_tags(self, task_id: str, current: Sequence[str], tags: Iterable[str]) -> bool:
        """Add `tags` to a task whatever its status (as the SDK's `Task.add_tags`: one `tasks.edit`
        with the whole tag list and force). `current` is the task's tag list as just read. False
        when every tag was already there (no call)."""
        merged = list(dict.fromkeys([*current, *tags]))
        if len(merged) == len(list(dict.fromkeys(current))):
            return False
        await self.call("tasks.edit", {"task": task_id, "tags": merged, "force": True})
        return True

    async def stop(self, task_id: str, reason: str, settle_s: float = 10.0) -> str:
        """Dequeue a queued task, stop a running one; returns what was done.

        A stop can be undone by a forced start: a queued task whose entry an agent has already
        popped cannot be dequeued, and the agent forces it to `in_progress` when it starts it; a
        task the agent is still launching is forced to `in_progress` again by the script's own
        `Task.init`. So a task stopped while picked or running is watched for `settle_s` and
        stopped again whenever it shows up running; the agent aborts a running task whose status
        turns `stopped`."""
        status = await self._status(task_id)
        picked = False
        if status == "queued":
            try:
                data = await self.call("tasks.dequeue", {"task": task_id, "status_reason": reason})
                await self.call("tasks.stopped", {"task": task_id, "force": True, "status_reason": reason,
                                                  "status_message": reason})
                if data.get("dequeued", 1):
                    return "dequeued"
                picked, status = True, TaskStatus.STOPPED  # the entry was gone: an agent holds it
            except ApiCallError:
                picked = True
                status = await self._status(task_id)
        done = f"left ({status})"
        picked = picked or status == "in_progress"
        if status in ("in_progress", "queued", "created"):
            await self.call("tasks.stopped", {"task": task_id, "force": True, "status_reason": reason,
                                              "status_message": reason})
            done = "stopped"
        elif status == "stopped" and picked:
            done = "stopped"
        if picked and settle_s > 0:
            done = await self._hold_stopped(task_id, reason, settle_s, done)
        return done

    async def _hold_stopped(self, task_id: str, reason: str, settle_s: float, done: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle_s
        while loop.time() < deadline:
            await asyncio.sleep(0.5)
            status = await self._status(task_id)
            if status == "in_progress":  # started (forced) after our stop: stop it again
                await self.call("tasks.stopped", {"task": task_id, "force": True, "status_reason": reason,
                                                  "status_message": reason})
                done = "stopped (again, after a forced start)"
            elif status not in ("stopped", "queued", "created"):
                break
        return done

    async def log_tail(self, task_id: str, lines: int = 30) -> list[str]:
        try:
            data = await self.call("events.get_task_log", {"task": task_id, "batch_size": lines,
                                                           "navigate_earlier": True, "order": "desc"})
        except BackendError:
            return []
        events = list(reversed(data.get("events") or []))
        out: list[str] = []
        for ev in events:
            out.extend(str(ev.get("msg", "")).rstrip("\n").splitlines())
        return out[-lines:]

    # -- tasks the flows write themselves (report summary tasks), properties, models, events ----
    async def query_tasks(self, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """`tasks.get_all` with ClearML's filters as given (tags, status, only_fields, paging...)."""
        return list((await self.call("tasks.get_all", dict(filters)))["tasks"])

    async def create_record_task(self, *, name: str, project_id: str, task_type: str, comment: str,
                                 tags: Sequence[str], properties: Mapping[str, str],
                                 configuration: Mapping[str, tuple[str, str]]) -> str:
        """A task that records something (no script, never enqueued): user properties, and
        configuration objects given as name -> (JSON text, description). Returns its id."""
        body = {
            "name": name, "project": project_id, "type": task_type, "comment": comment, "tags": list(tags),
            "hyperparams": {PROPERTIES_SECTION: properties_section(properties)},
            "configuration": {key: {"name": key, "value": value, "type": "JSON", "description": description}
                              for key, (value, description) in configuration.items()},
        }
        return str((await self.call("tasks.create", body))["id"])

    async def add_artifacts(self, task_id: str, artifacts: Sequence[Mapping[str, Any]]) -> None:
        await self.call("tasks.add_or_update_artifacts", {"task": task_id, "artifacts": list(artifacts)})

    async def mark_completed(self, task_id: str, message: str, reason: str = "done") -> None:
        """A record task from created to completed (through started, as ClearML requires)."""
        await self.call("tasks.started", {"task": task_id, "status_reason": reason})
        await self.call("tasks.completed", {"task": task_id, "status_reason": reason, "status_message": message})

    async def mark_failed(self, task_id: str, reason: str, retry_for_s: float | None = None) -> None:
        await self.call("tasks.failed", {"task": task_id, "force": True, "status_reason": reason},
                        retry_for_s=retry_for_s)

    async def set_properties(self, task_id: str, properties: Mapping[str, str]) -> None:
        """Add or replace user properties; `force`: they stay editable on a completed task, as in the UI."""
        await self.call("tasks.edit_hyper_params", {
            "task": task_id, "replace_hyperparams": "none", "force": True,
            "hyperparams": list(properties_section(properties).values()),
        })

    async def set_tags(self, task_id: str, tags: Sequence[str]) -> None:
        """Replace the task's whole tag list (what `tasks.edit` does): pass what was read plus the new."""
        await self.call("tasks.edit", {"task": task_id, "tags": list(tags), "force": True})

    async def get_model(self, model_id: str) -> dict[str, Any]:
        """A ClearML model record; ApiCallError when there is no such model."""
        return dict((await self.call("models.get_by_id", {"model": model_id})).get("model") or {})

    async def add_events(self, events: Sequence[Mapping[str, Any]]) -> int:
        """events.add_batch as the SDK sends it: one JSON object per line (application/json-lines).
        Returns how many the server added."""
        if not events:
            return 0
        self.endpoint_calls["events.add_batch"] = self.endpoint_calls.get("events.add_batch", 0) + 1
        body = "\n".join(json.dumps(e) for e in events)
        res = await self.post_raw("events.add_batch", "/events.add_batch", content=body.encode(),
                                  headers={"Content-Type": "application/json-lines"})
        data = self.unwrap("events.add_batch", res)
        if data.get("errors"):
            log.warning("events.add_batch: %s events refused: %s", data["errors"], data.get("errors_info"))
        return int(data.get("added") or 0)

    async def upload_files(self, files: Mapping[str, tuple[bytes, str]]) -> dict[str, str]:
        """One multipart POST to the file server (form field name = target path, as the SDK uploads);
        returns the download URL of each path."""
        host = self.settings.files_host
        parts = {path: (PurePosixPath(path).name, data, ctype) for path, (data, ctype) in files.items()}
        res = await self.post_raw("file upload", f"{host}/", files=parts)
        if res.status_code != 200:
            raise BackendError(f"file server {host} refused the upload (HTTP {res.status_code}): {res.text[:300]}")
        return {path: f"{host}/{quote(path)}" for path in files}

    async def download(self, url: str, max_bytes: int) -> bytes:
        """A file the tasks uploaded (an artifact), at most `max_bytes`: authenticated on the file
        server this client talks to, anonymous elsewhere (object storage URLs carry their own)."""
        headers = await self.auth_headers() if url.startswith(self.settings.files_host + "/") else {}
        self.calls += 1
        try:
            async with self._http().stream("GET", url, headers=headers) as res:
                if res.status_code != 200:
                    raise BackendError(f"download of {url} failed (HTTP {res.status_code})")
                data = bytearray()
                async for chunk in res.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise BackendError(f"download of {url}: larger than {max_bytes} bytes")
                return bytes(data)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"download of {url}: {type(exc).__name__}: {exc}") from exc

    def web_url(self, task_id: str, project_id: str | None = None) -> str:
        return f"{self.settings.web_host}/projects/{project_id or '*'}/experiments/{task_id}/output/log"

    async def result(self, task_id: str, kind: str, identity: str, reused: bool = False) -> TaskResult:
        """Read what a finished task reported into a small TaskResult: 2 calls (`tasks.get_by_id`,
        `events.get_task_single_value_metrics`), 3 when the task has an output model
        (`models.get_by_id`)."""
        task = (await self.call("tasks.get_by_id", {"task": task_id}))["task"]
        singles = await self.call("events.get_task_single_value_metrics", {"tasks": [task_id]})
        raw_values: dict[str, float] = {}
        for entry in singles.get("tasks") or []:
            for val in entry.get("values") or []:
                raw_values[str(val.get("variant") or val.get("metric"))] = float(val["value"])
        scalars: dict[str, float] = {}
        for metric in (task.get("last_metrics") or {}).values():
            for variant in metric.values():
                title, series = variant.get("metric"), variant.get("variant")
                if title is not None and series is not None and variant.get("value") is not None \
                        and title != "Summary":
                    scalars[f"{title}/{series}"] = float(variant["value"])
        artifacts = {str(a["key"]): str(a.get("uri") or "")
                     for a in (task.get("execution") or {}).get("artifacts") or []
                     if a.get("mode", "output") == "output"}
        # what the core script recorded it ran with (the same read: get_by_id returns hyperparams)
        properties = (task.get("hyperparams") or {}).get(PROPERTIES_SECTION) or {}
        environment = {name[len(ENVIRONMENT_PREFIX):]: str((p or {}).get("value") or "")
                       for name, p in properties.items() if name.startswith(ENVIRONMENT_PREFIX)}
        model_id = model_url = None
        outputs = (task.get("models") or {}).get("output") or []
        if outputs:
            model_id = str(outputs[-1].get("model"))
            try:
                model = (await self.call("models.get_by_id", {"model": model_id}))["model"]
                model_url = model.get("uri")
            except ApiCallError:
                model_url = None
        return TaskResult(
            task_id=task_id,
            kind=kind,
            identity=identity,
            status=task.get("status", "unknown"),
            web_url=self.web_url(task_id, task.get("project")),
            queue=tag_value(task.get("tags") or [], QUEUE_TAG)
            or await self.queue_name((task.get("execution") or {}).get("queue")),
            status_message=str(task.get("status_message") or ""),
            scalars=scalars,
            values=group_single_values(raw_values),
            artifacts=artifacts,
            model_id=model_id,
            model_url=model_url,
            started=parse_timestamp(task.get("started")),
            completed=parse_timestamp(task.get("completed")),
            reused=reused,
            environment=environment,
        )


PROPERTIES_SECTION = "properties"  # the hyperparams section ClearML shows as "User Properties"
ENVIRONMENT_PREFIX = "env."  # the user properties the core scripts' runtime records the environment in


def properties_section(props: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {k: {"section": PROPERTIES_SECTION, "name": k, "value": v, "type": "str"} for k, v in props.items()}


def scalar_event(task_id: str, metric: str, variant: str, value: float, timestamp_ms: int) -> dict[str, Any]:
    """One scalar point (iteration 0) as events.add_batch takes it."""
    return {"type": "training_stats_scalar", "task": task_id, "metric": metric, "variant": variant, "iter": 0,
            "value": value, "timestamp": timestamp_ms}


def plot_event(task_id: str, metric: str, variant: str, figure: Mapping[str, Any], timestamp_ms: int) -> dict[str, Any]:
    """One plotly figure (what ClearML's Plots tab renders) as events.add_batch takes it."""
    return {"type": "plot", "task": task_id, "metric": metric, "variant": variant, "iter": 0,
            "plot_str": json.dumps(figure), "timestamp": timestamp_ms}


def artifact_entry(key: str, url: str, data: bytes, content_type: str, preview: str) -> dict[str, Any]:
    """An uploaded file as an output artifact of a task (tasks.add_or_update_artifacts)."""
    return {"key": key, "type": "custom", "mode": "output", "uri": url, "content_size": len(data),
            "hash": hashlib.sha256(data).hexdigest(), "timestamp": int(time.time()),
            "type_data": {"preview": preview[:200], "content_type": content_type}}


def tag_value(tags: Iterable[str], prefix: str) -> str | None:
    """The value of the first `prefix<value>` tag, if any."""
    for tag in tags:
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return None




def _re_escape(name: str) -> str:
    import re

    return re.escape(name)
