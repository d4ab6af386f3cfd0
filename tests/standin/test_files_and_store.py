"""Store durability and rollback, file-server path safety and transfers, and what the events and
models handlers keep in the store, all in process (no servers, no sockets)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from clearml_standin.api import ApiError, CallLog, Ctx, handlers
from clearml_standin.files import FileServer, UnsafePath, safe_join
from clearml_standin.store import Store
from clearml_standin.tokens import Authenticator, Credentials
from clearml_standin.web import WebUI

CREDS = Credentials(access_key="AK", secret_key="SK", token_secret="a-test-token-secret-of-32-bytes-or-more")
BASIC = "Basic " + base64.b64encode(b"AK:SK").decode()


# -- Store ---------------------------------------------------------------------------------------
def test_store_documents_and_events_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = Store(db)
    store.put("task", "t1", {"id": "t1", "name": "first"})
    store.add_events([{"task": "t1", "type": "log", "metric": "", "variant": "", "iter": 0,
                       "timestamp": 1, "msg": "hello"}])
    store.close()

    reopened = Store(db)
    assert reopened.get("task", "t1") == {"id": "t1", "name": "first"}
    assert [e["msg"] for e in reopened.events("t1", ["log"])] == ["hello"]
    assert reopened.event_count() == 1


def test_a_scalar_point_reported_again_replaces_the_first(tmp_path: Path) -> None:
    """One point per (task, metric, variant, iteration), as on a ClearML server: the SDK's resend
    of a batch whose answer was lost must not double the points. Log lines are appended."""
    store = Store(tmp_path / "db.sqlite")

    def scalar(it: int, value: float, task: str = "t1", variant: str = "train") -> dict[str, Any]:
        return {"task": task, "type": "training_stats_scalar", "metric": "loss", "variant": variant,
                "iter": it, "value": value}

    log = {"task": "t1", "type": "log", "iter": 0, "msg": "same line"}
    store.add_events([scalar(0, 1.0), scalar(1, 0.5), log])
    store.add_events([scalar(1, 0.4), scalar(2, 0.3), scalar(2, 0.2), log])  # a resend, and a repeat in one batch
    store.add_events([scalar(1, 9.0, task="t2"), scalar(1, 8.0, variant="val")])  # other points
    points = [(e["iter"], e["value"]) for e in store.events("t1", ["training_stats_scalar"]) if e["variant"] == "train"]
    assert sorted(points) == [(0, 1.0), (1, 0.4), (2, 0.2)]
    assert [e["msg"] for e in store.events("t1", ["log"])] == ["same line", "same line"]
    assert [e["value"] for e in store.events("t2")] == [9.0]
    assert store.event_count() == 3 + 2 + 2


def test_store_hands_out_copies(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    doc: dict[str, Any] = {"id": "t1", "tags": ["a"]}
    store.put("task", "t1", doc)
    doc["tags"].append("changed-after-put")
    got = store.get("task", "t1")
    assert got is not None
    got["tags"].append("changed-after-get")
    assert store.get("task", "t1") == {"id": "t1", "tags": ["a"]}


def test_store_transaction_rolls_back_documents_and_events(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = Store(db)
    store.put("task", "kept", {"id": "kept", "v": 1})
    with pytest.raises(RuntimeError), store.transaction():
        store.put("task", "kept", {"id": "kept", "v": 2})
        store.put("task", "new", {"id": "new"})
        store.delete("task", "kept")
        store.add_events([{"task": "kept", "type": "log", "timestamp": 1, "msg": "lost"}])
        raise RuntimeError("handler failed half-way")
    # the in-memory index and the database agree on the state before the transaction
    assert store.get("task", "kept") == {"id": "kept", "v": 1}
    assert store.get("task", "new") is None
    assert store.events("kept") == []
    store.close()
    reopened = Store(db)
    assert reopened.get("task", "kept") == {"id": "kept", "v": 1}
    assert reopened.get("task", "new") is None
    assert reopened.event_count() == 0


def test_store_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from clearml_standin.store import Store
        store = Store(Path({str(db)!r}))
        for i in range(50):
            store.put("task", f"t{{i}}", {{"id": f"t{{i}}", "i": i}})
        store.add_events([{{"task": "t0", "type": "log", "timestamp": i, "msg": str(i)}} for i in range(20)])
        sys.stdout.write("written\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "written" in proc.stdout
    store = Store(db)
    assert store.count("task") == 50
    assert store.get("task", "t49") == {"id": "t49", "i": 49}
    assert len(store.events("t0", ["log"])) == 20


# -- file server ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../x", "a/../../x", "a/./../..", "/../etc/passwd", "a/b/../../../x"])
def test_safe_join_refuses_escapes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, "prefix", bad)


def test_safe_join_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePath):
        safe_join(root, "link", "outside.txt")
    assert safe_join(root, "a/b", "c.txt") == (root / "a" / "b" / "c.txt").resolve()


@pytest.fixture()
def files(tmp_path: Path) -> tuple[TestClient, Path]:
    root = tmp_path / "files"
    server = FileServer(root, Authenticator(CREDS), own_urls=("http://files",), web_url="http://web")
    return TestClient(server.app, base_url="http://files", headers={"Authorization": BASIC}), root


def test_upload_uses_field_name_as_path_and_downloads(files: tuple[TestClient, Path]) -> None:
    client, root = files
    payload = os.urandom(3000)
    res = client.post("/proj/task.abc/artifacts/", files={"data/weights.bin": ("weights.bin", payload)})
    assert res.status_code == 200, res.text
    assert (root / "proj/task.abc/artifacts/data/weights.bin").read_bytes() == payload
    got = client.get("/proj/task.abc/artifacts/data/weights.bin")
    assert got.status_code == 200
    assert got.content == payload
    # no temporary upload files are left behind
    assert not list(root.rglob(".upload-*"))


def test_upload_replaces_existing_file(files: tuple[TestClient, Path]) -> None:
    client, _ = files
    client.post("/p/", files={"f.txt": ("f.txt", b"old")})
    client.post("/p/", files={"f.txt": ("f.txt", b"new")})
    assert client.get("/p/f.txt").content == b"new"


def test_upload_refuses_traversal_in_field_name(files: tuple[TestClient, Path]) -> None:
    client, root = files
    res = client.post("/p/", files={"../../evil.txt": ("evil.txt", b"x")})
    assert res.status_code == 400
    assert "unsafe" in res.json()["error"] or "escapes" in res.json()["error"]
    assert not (root.parent / "evil.txt").exists()


def test_upload_without_files_is_an_error(files: tuple[TestClient, Path]) -> None:
    client, _ = files
    res = client.post("/p/", data={"field": "value"})
    assert res.status_code == 400


def test_download_missing_and_delete(files: tuple[TestClient, Path]) -> None:
    client, root = files
    assert client.get("/nope/x.bin").status_code == 404
    client.post("/d/", files={"x.bin": ("x.bin", b"1")})
    assert client.delete("/d/x.bin").status_code == 200
    assert not (root / "d/x.bin").exists()
    assert client.delete("/d/x.bin").status_code == 404


# -- events and models handlers ------------------------------------------------------------------
class Api:
    """Calls handlers directly and checks every answer against the SDK's response classes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.handlers = handlers()
        self.calls = CallLog(validate=True)
        self.ctx = Ctx(store=store, files_url="http://files", web_url="http://web", api_url="http://api",
                       company="local", user_id="u", user_name="U")

    def __call__(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        out = self.handlers[name](self.ctx, body) or {}
        self.calls.check(name, out)
        assert not self.calls.contract_errors, self.calls.contract_errors
        return out


@pytest.fixture()
def api(tmp_path: Path) -> Api:
    store = Store(tmp_path / "db.sqlite")
    store.put("project", "p1", {"id": "p1", "name": "reporting"})
    store.put("task", "t1", {"id": "t1", "name": "train", "status": "in_progress", "project": "p1",
                             "models": {"input": [], "output": []}})
    return Api(store)


def _scalar(it: int, value: float, metric: str = "loss", variant: str = "train") -> dict[str, Any]:
    return {"task": "t1", "type": "training_stats_scalar", "metric": metric, "variant": variant,
            "iter": it, "value": value, "timestamp": 1_700_000_000_000 + it, "model_event": False}


def test_add_batch_scalars_fold_into_last_metrics(api: Api) -> None:
    out = api("events.add_batch", {"requests": [_scalar(i, v) for i, v in enumerate([3.0, 1.0, 2.0])]
                                   + [_scalar(-(2**31), 0.9, "Summary", "accuracy")]})
    assert out == {"added": 4, "errors": 0, "errors_info": {}}
    task = api.store.get("task", "t1")
    assert task is not None
    assert task["last_iteration"] == 2  # single values do not move the iteration
    entries = {(e["metric"], e["variant"]): e for v in task["last_metrics"].values() for e in v.values()}
    loss = entries[("loss", "train")]
    assert (loss["value"], loss["min_value"], loss["max_value"]) == (2.0, 1.0, 3.0)
    assert (loss["min_value_iteration"], loss["max_value_iteration"]) == (1, 0)

    hist = api("events.scalar_metrics_iter_histogram", {"task": "t1", "key": "iter"})
    assert hist == {"loss": {"train": {"name": "train", "x": [0, 1, 2], "y": [3.0, 1.0, 2.0]}}}
    single = api("events.get_task_single_value_metrics", {"tasks": ["t1"]})
    assert [(v["variant"], v["value"]) for v in single["tasks"][0]["values"]] == [("accuracy", 0.9)]


def test_rereported_point_replaces_the_earlier_one(api: Api) -> None:
    api("events.add_batch", {"requests": [_scalar(0, 1.0), _scalar(1, 2.0), _scalar(1, 5.0)]})
    hist = api("events.scalar_metrics_iter_histogram", {"task": "t1"})
    assert hist["loss"]["train"]["y"] == [1.0, 5.0]


def test_add_batch_counts_bad_events_without_failing_the_batch(api: Api) -> None:
    out = api("events.add_batch", {"requests": [
        _scalar(0, 1.0),
        {**_scalar(1, 1.0), "task": "missing"},
        {**_scalar(2, 1.0), "type": "nonsense"},
        {**_scalar(3, 1.0), "value": "NaN-as-text"},
    ]})
    assert out["added"] == 1 and out["errors"] == 3
    assert sum(out["errors_info"].values()) == 3


def test_agent_single_object_log_batch_and_log_paging(api: Api) -> None:
    # the agent posts one JSON line: the body parser hands it over as a plain object
    out = api("events.add_batch", {"type": "log", "task": "t1", "worker": "w", "level": "DEBUG",
                                   "msg": "agent line", "timestamp": None})
    assert out["added"] == 1
    lines = [{"type": "log", "task": "t1", "msg": f"line {i}", "timestamp": 10 + i} for i in range(5)]
    api("events.add_batch", {"requests": lines})
    # what Task.get_reported_console_output(2) asks for: the two latest lines, oldest first
    tail = api("events.get_task_log", {"task": "t1", "order": "asc", "navigate_earlier": True,
                                       "batch_size": 2})
    assert [e["msg"] for e in tail["events"]][-1] == "agent line"
    assert tail["returned"] == 2 and tail["total"] == 6
    head = api("events.get_task_log", {"task": "t1", "navigate_earlier": False, "batch_size": 2})
    assert [e["msg"] for e in head["events"]] == ["line 0", "line 1"]
    later = api("events.get_task_log", {"task": "t1", "navigate_earlier": False, "batch_size": 2,
                                        "from_timestamp": head["events"][-1]["timestamp"]})
    assert [e["msg"] for e in later["events"]] == ["line 2", "line 3"]


def test_get_task_events_scrolls(api: Api) -> None:
    api("events.add_batch", {"requests": [_scalar(i, float(i)) for i in range(7)]})
    seen: list[int] = []
    scroll = None
    for _ in range(5):
        page = api("events.get_task_events", {"task": "t1", "event_type": "training_stats_scalar",
                                              "batch_size": 3, "scroll_id": scroll})
        seen += [e["iter"] for e in page["events"]]
        scroll = page["scroll_id"]
        if page["returned"] < 3:
            break
    assert seen == list(range(7))


def test_events_for_unknown_task_reads_fail(api: Api) -> None:
    with pytest.raises(ApiError):
        api("events.scalar_metrics_iter_histogram", {"task": "missing"})


def test_models_create_query_and_task_links(api: Api) -> None:
    created = api("models.create", {"name": "weights", "uri": "http://files/w.bin", "task": "t1",
                                    "framework": "PyTorch", "tags": ["keep"]})
    model_id = created["id"]
    model = api("models.get_by_id", {"model": model_id})["model"]
    assert model["project"] == "p1"  # inherited from the creating task
    other = api("models.create", {"name": "other", "uri": "http://files/o.bin", "tags": ["drop"]})["id"]

    def ids(**query: Any) -> list[str]:
        return [m["id"] for m in api("models.get_all", query)["models"]]

    assert ids(name="^weights$") == [model_id]
    assert ids(tags=["-drop"]) == [model_id]
    assert ids(task=["t1"], only_fields=["id"]) == [model_id]
    assert ids(framework=["PyTorch"]) == [model_id]
    assert sorted(ids(order_by=["name"], page=0, page_size=1)) == [other]

    api("models.edit", {"model": model_id, "uri": "http://files/w2.bin", "iteration": 7})
    task = api.store.get("task", "t1")
    assert task is not None and task["last_iteration"] == 7

    api("models.add_or_update_metadata", {"model": model_id, "metadata": [{"key": "k", "type": "str",
                                                                            "value": "v"}]})
    assert ids(**{"metadata.k.value": "v"}) == [model_id]

    api("models.archive_many", {"ids": [model_id]})
    assert ids(system_tags=["-archived"]) == [other]

    linked = api("models.update_for_task", {"task": "t1", "override_model_id": model_id, "name": "best"})
    assert linked["id"] == model_id
    task = api.store.get("task", "t1")
    assert task is not None and task["models"]["output"][-1]["model"] == model_id
    assert api("models.get_by_task_id", {"task": "t1"})["model"]["id"] == model_id

    assert api("models.delete", {"model": model_id})["deleted"] is True
    task = api.store.get("task", "t1")
    assert task is not None and task["models"]["output"] == []
    with pytest.raises(ApiError):
        api("models.get_by_id", {"model": model_id})


# -- web pages -----------------------------------------------------------------------------------
def test_web_task_page_escapes_and_404s(api: Api) -> None:
    task = api.store.get("task", "t1")
    assert task is not None
    task["name"] = "<script>alert(1)</script>"
    task["execution"] = {"artifacts": [{"key": "evil", "type": "custom", "uri": "javascript:alert(1)"},
                                       {"key": "ok", "type": "custom", "uri": "http://files/ok.json"}]}
    api.store.put("task", "t1", task)
    api("events.add_batch", {"requests": [_scalar(0, 0.25)]})
    client = TestClient(WebUI(api.store, files_url="http://files", web_url="http://web").app, base_url="http://web")

    page = client.get("/projects/p1/experiments/t1/output/log")
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert 'href="javascript:' not in page.text
    assert 'href="http://files/ok.json"' in page.text
    assert "in_progress" in page.text and "0.25" in page.text
    assert client.get("/projects/*/tasks/t1").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/projects/*/experiments/nope/output/log").status_code == 404
    assert client.get("/projects/*/models/nope").status_code == 404


# -- the response-contract checker ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("projects.create", {"id": 5}, "id"),
        ("tasks.get_all", {"tasks": "not-a-list"}, "tasks"),
        ("tasks.get_all", {"tasks": [{"id": "t", "last_iteration": "x"}]}, "last_iteration"),
        ("tasks.get_by_id", {"task": {"id": "t", "company": {"id": "c"}}}, "company"),
        ("tasks.enqueue", {"queued": "yes"}, "queued"),
    ],
)
def test_contract_check_reports_wrongly_typed_responses(name: str, data: dict[str, Any], fragment: str) -> None:
    """The check can fail: a response the SDK's own classes reject is recorded, naming endpoint and field."""
    calls = CallLog(validate=True)
    calls.check(name, data)
    assert len(calls.contract_errors) == 1
    assert calls.contract_errors[0].startswith(f"{name}: ") and fragment in calls.contract_errors[0]
    off = CallLog(validate=False)
    off.check(name, data)
    assert off.contract_errors == []


def test_contract_check_accepts_well_typed_responses() -> None:
    calls = CallLog(validate=True)
    calls.check("projects.create", {"id": "p1"})
    calls.check("tasks.get_all", {"tasks": [{"id": "t", "last_iteration": 3, "company": "local"}]})
    assert calls.contract_errors == []


def test_contract_errors_reach_disk_before_the_response(tmp_path: Path) -> None:
    """No waiting for the periodic save: once a client has the answer, a kill -9 cannot lose the
    contract error (or the unsupported call) it produced."""
    import json

    from clearml_standin.api import Credentials, StandInApp
    from clearml_standin.server import open_call_log

    creds = Credentials(access_key="AK", secret_key="SK", token_secret="a-test-token-secret-of-32-bytes-or-more")
    standin = StandInApp(Store(tmp_path / "db.sqlite"), creds, api_url="http://api", files_url="http://files",
                         web_url="http://web", validate=True)
    calls_file = tmp_path / "calls.json"
    calls_file.write_text(json.dumps({"calls": {"projects.create": 2}, "unsupported": {},
                                      "contract_errors": ["earlier.run: kept"]}))
    open_call_log(standin, calls_file)
    standin.handlers["projects.create"] = lambda ctx, body: {"id": 12345}  # the SDK types it as a string
    client = TestClient(standin.app)
    res = client.post("/projects.create", json={"name": "x"}, auth=("AK", "SK"))
    assert res.status_code == 200
    saved = json.loads(calls_file.read_text())
    assert saved["contract_errors"][0] == "earlier.run: kept"
    assert [e.split(":")[0] for e in saved["contract_errors"][1:]] == ["projects.create"]
    assert client.post("/nosuch.endpoint", json={}, auth=("AK", "SK")).status_code == 400
    assert json.loads(calls_file.read_text())["unsupported"] == {"nosuch.endpoint": 1}
    assert client.get("/_standin/stats", auth=("AK", "SK")).json()["contract_errors"] == saved["contract_errors"]
