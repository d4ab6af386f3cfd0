"""A small synchronous ClearML client for administration (the local stack launcher uses it)."""

from __future__ import annotations

from typing import Any

import httpx

from automation.errors import StackError


class AdminClient:
    """Just enough of the ClearML API, synchronously, to manage a server: queues, task counts, workers
    (the local stack's `up` and `status`). Failures raise StackError naming the call."""

    def __init__(self, api_url: str, access_key: str, secret_key: str, timeout: float = 10.0) -> None:
        self.api_url = api_url
        self._http = httpx.Client(base_url=api_url, timeout=timeout)
        res = self._http.post("/auth.login", auth=(access_key, secret_key), json={})
        self._token = self._data(res, "auth.login")["token"]

    @staticmethod
    def _data(res: httpx.Response, name: str) -> dict[str, Any]:
        try:
            payload = res.json()
        except ValueError as exc:
            raise StackError(f"{name}: non-JSON answer (HTTP {res.status_code})") from exc
        meta = payload.get("meta", {})
        if res.status_code != 200:
            raise StackError(f"{name}: {meta.get('result_code')}/{meta.get('result_subcode')} "
                             f"{meta.get('result_msg')}")
        return dict(payload.get("data") or {})

    def call(self, endpoint_name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        res = self._http.post(f"/{endpoint_name}", json=body or {},
                              headers={"Authorization": f"Bearer {self._token}"})
        return self._data(res, endpoint_name)

    def ensure_queue(self, name: str) -> str:
        found = self.call("queues.get_all", {"name": f"^{name}$", "only_fields": ["id", "name"]})["queues"]
        if found:
            return str(found[0]["id"])
        return str(self.call("queues.create", {"name": name})["id"])

    def queue_summary(self) -> list[dict[str, Any]]:
        queues = self.call("queues.get_all", {"only_fields": ["id", "name", "entries"]})["queues"]
        return [{"name": q["name"], "queued": len(q.get("entries") or [])} for q in queues]

    def task_counts(self) -> dict[str, int]:
        tasks = self.call("tasks.get_all", {"only_fields": ["id", "status"], "search_hidden": True})["tasks"]
        counts: dict[str, int] = {}
        for t in tasks:
            counts[t.get("status", "unknown")] = counts.get(t.get("status", "unknown"), 0) + 1
        return counts

    def workers(self) -> list[str]:
        return [w["id"] for w in self.call("workers.get_all").get("workers", [])]
