"""The stand-in's wire format, in process (no sockets): envelope, auth, errors, query semantics."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from clearml_standin.api import API_VERSION, ApiError, Credentials, StandInApp
from clearml_standin.faults import FaultInjector
from clearml_standin.services.common import match_tags, match_values, order_and_page, project_fields
from clearml_standin.store import Store

CREDS = Credentials(access_key="AK", secret_key="SK", token_secret="a-test-token-secret-of-32-bytes-or-more")


def _app(tmp_path: Path) -> StandInApp:
    return StandInApp(Store(tmp_path / "db.sqlite"), CREDS, api_url="http://api", files_url="http://files",
                      web_url="http://web", faults=FaultInjector(allowed=True, seed=1), validate=True)


@pytest.fixture()
def client(tmp_path: Path) -> TestClient:
    # raise_server_exceptions=False: a handler crash must show up as the 500 a client would see.
    return TestClient(_app(tmp_path).app, raise_server_exceptions=False)


def _login(client: TestClient) -> str:
    basic = base64.b64encode(b"AK:SK").decode()
    res = client.post("/auth.login", headers={"Authorization": f"Basic {basic}"}, json={})
    assert res.status_code == 200, res.text
    return str(res.json()["data"]["token"])


def test_login_token_carries_what_the_sdk_reads(client: TestClient) -> None:
    token = _login(client)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["api_version"] == API_VERSION
    assert claims["feature_set"] == "basic"
    assert claims["exp"] > claims["iat"]
    assert isinstance(claims["identity"]["company"], str)


def test_envelope_on_success_and_versioned_path(client: TestClient) -> None:
    token = _login(client)
    # The SDK sends GET with a JSON body; versioned paths are accepted.
    res = client.request("GET", "/v2.13/projects.create", headers={"Authorization": f"Bearer {token}"},
                         content=json.dumps({"name": "envelope-check"}))
    assert res.status_code == 200, res.text
    meta = res.json()["meta"]
    assert meta["result_code"] == 200 and meta["result_msg"] == "OK"
    assert meta["endpoint"] == {"name": "projects.create", "requested_version": "2.13",
                                "actual_version": API_VERSION}
    assert meta["id"] and meta["trx"]
    assert set(res.json()["data"]) == {"id"}


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "missing credentials"),
        ({"Authorization": "Bearer not-a-token"}, "invalid token"),
        ({"Authorization": "Basic " + base64.b64encode(b"AK:wrong").decode()}, "invalid credentials"),
    ],
)
def test_auth_failures_are_clearml_shaped_401(client: TestClient, headers: dict[str, str], fragment: str) -> None:
    res = client.post("/projects.get_all", headers=headers, json={})
    assert res.status_code == 401
    assert fragment in res.json()["meta"]["result_msg"]


def test_unknown_endpoint_and_bad_body_are_400_not_500(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {_login(client)}"}
    res = client.post("/nosuch.thing", headers=auth, json={})
    assert res.status_code == 400
    assert "nosuch.thing" in res.json()["meta"]["result_msg"]
    res = client.post("/projects.get_by_id", headers=auth, json={})
    assert res.status_code == 400
    assert "'project'" in res.json()["meta"]["result_msg"]
    res = client.post("/projects.get_by_id", headers=auth, json={"project": "missing"})
    assert res.status_code == 400 and "missing" in res.json()["meta"]["result_msg"]
    res = client.post("/projects.create", headers={**auth, "content-type": "application/json"},
                      content=b"{not json")
    assert res.status_code == 400 and "JSON" in res.json()["meta"]["result_msg"]
    assert "Traceback" not in res.text


def test_call_counts_and_contract_check(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {_login(client)}"}
    client.post("/projects.create", headers=auth, json={"name": "counted"})
    client.post("/projects.get_all", headers=auth, json={"name": "^counted$"})
    assert client.get("/_standin/stats").status_code == 401  # the test hooks want credentials too
    stats = client.get("/_standin/stats", headers=auth).json()
    assert stats["calls"]["projects.create"] == 1 and stats["calls"]["projects.get_all"] == 1
    assert stats["contract_errors"] == []


def test_fault_injection_is_switchable(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {_login(client)}"}
    assert client.post("/_standin/faults", json={"rate": 1.0, "kinds": ["error"]}).status_code == 401
    client.post("/_standin/faults", headers=auth, json={"rate": 1.0, "kinds": ["error"]})
    assert client.post("/projects.get_all", headers=auth, json={}).status_code == 503
    client.post("/_standin/faults", headers=auth, json={"rate": 0.0})
    assert client.post("/projects.get_all", headers=auth, json={}).status_code == 200


def test_tag_filter_semantics() -> None:
    assert match_tags(["a", "b"], ["a"])
    assert match_tags(["a", "b"], ["x", "b"])  # plain tags: any of
    assert not match_tags(["a"], ["x"])
    assert not match_tags(["a", "b"], ["-b"])  # exclusion
    assert match_tags(["a"], ["-b"])
    assert match_tags(["a", "b"], ["__$all", "a", "b"])
    assert not match_tags(["a"], ["__$all", "a", "b"])
    assert not match_tags(["a", "c"], ["__$not", "c"])
    # __$not negates only the tag after it: "not c, or d" (clearml-server's semantics)
    assert match_tags(["d", "c"], ["__$not", "c", "d"]) is False  # c excluded
    assert match_tags(["d"], ["__$not", "c", "d"])                # d is wanted, not excluded
    assert not match_tags(["e"], ["__$not", "c", "d"])
    assert match_tags(["a", "b"], ["__$all", "a", "__$not", "c", "b"])


def test_value_filter_projection_and_paging() -> None:
    assert match_values("queued", ["queued", "in_progress"])
    assert not match_values("completed", ["queued", "in_progress"])
    assert not match_values("completed", ["-completed"])
    doc = {"id": "t1", "status": "queued", "execution": {"queue": "q", "parameters": {}}, "name": "n"}
    assert project_fields(doc, ["status", "execution.queue"]) == {
        "id": "t1", "status": "queued", "execution": {"queue": "q"}}
    # Like a MongoDB projection: an existing empty parent stays (Dataset.create reads runtime.version
    # of `runtime: {}`), a missing one does not appear, a list of objects is projected per element.
    assert project_fields({"id": "t", "runtime": {}}, ["runtime.version"]) == {"id": "t", "runtime": {}}
    assert project_fields({"id": "t", "runtime": {"x": 1}}, ["runtime.version"]) == {"id": "t", "runtime": {}}
    assert project_fields({"id": "t"}, ["runtime.version"]) == {"id": "t"}
    arts = {"id": "t", "execution": {"artifacts": [{"key": "a", "uri": "u", "size": 1}, {"key": "b"}, "junk"]}}
    assert project_fields(arts, ["execution.artifacts.key", "execution.artifacts.uri"]) == {
        "id": "t", "execution": {"artifacts": [{"key": "a", "uri": "u"}, {"key": "b"}]}}
    docs = [{"id": str(i), "n": i} for i in range(10)]
    assert [d["n"] for d in order_and_page(list(docs), {"order_by": ["-n"], "page": 1, "page_size": 3})] == [6, 5, 4]


# -- bad input is a ClearML-shaped 400 naming the field, never a 500 ------------------------------
TASK = "<task>"  # replaced by a real task id in the test

BAD_INPUT: list[tuple[str, dict[str, Any], str]] = [
    ("tasks.get_all", {"page": "x", "page_size": 2}, "'page'"),
    ("tasks.get_all", {"name": 5}, "'name'"),
    ("tasks.get_all", {"page_size": -1}, "'page_size'"),
    ("tasks.get_all", {"page": 1}, "'page'"),
    ("tasks.get_all", {"tags": "abc"}, "'tags'"),
    ("tasks.get_all", {"system_tags": ["ok", 3]}, "'system_tags'"),
    ("tasks.get_all", {"only_fields": "status"}, "'only_fields'"),
    ("tasks.get_all", {"order_by": {"name": 1}}, "'order_by'"),
    ("tasks.create", {"name": "t", "type": "training", "tags": {"a": 1}}, "'tags'"),
    ("tasks.edit", {"task": TASK, "tags": "one"}, "'tags'"),
    ("tasks.add_or_update_model", {"task": TASK, "name": "m", "model": "x", "type": "output",
                                   "iteration": "abc"}, "'iteration'"),
    ("events.get_task_log", {"task": TASK, "batch_size": "x"}, "'batch_size'"),
    ("events.get_task_events", {"task": TASK, "batch_size": -3}, "'batch_size'"),
    ("events.scalar_metrics_iter_histogram", {"task": TASK, "samples": "many"}, "'samples'"),
    ("models.get_all", {"page": "a", "page_size": 1}, "'page'"),
    ("models.create", {"name": "m", "uri": "file:///m", "iteration": "x"}, "'iteration'"),
    ("projects.get_all", {"basename": ["x"]}, "'basename'"),
    ("queues.get_all", {"tags": "gpu"}, "'tags'"),
    ("queues.create", {"name": "q-bad-tags", "tags": "gpu"}, "'tags'"),
    ("workers.get_all", {"last_seen": "recently"}, "'last_seen'"),
]


@pytest.mark.parametrize(("name", "body", "field"), BAD_INPUT,
                         ids=[f"{n}-{'-'.join(b)}" for n, b, _ in BAD_INPUT])
def test_bad_input_is_400_naming_the_field(client: TestClient, name: str, body: dict[str, Any], field: str) -> None:
    auth = {"Authorization": f"Bearer {_login(client)}"}
    task_id = client.post("/tasks.create", headers=auth, json={"name": "bad-input", "type": "training"}).json()
    body = {k: task_id["data"]["id"] if v == TASK else v for k, v in body.items()}
    res = client.post(f"/{name}", headers=auth, json=body)
    assert res.status_code == 400, res.text
    meta = res.json()["meta"]
    assert meta["result_code"] == 400 and meta["result_subcode"] == 1  # validation
    assert field in meta["result_msg"], meta["result_msg"]
    assert meta["endpoint"]["name"] == name
    assert "Traceback" not in res.text and res.json()["data"] == {}


def test_handler_type_errors_become_400_naming_the_endpoint(tmp_path: Path) -> None:
    """Whatever a handler trips over in a malformed body is the client's 400, not a server 500."""
    app = _app(tmp_path)

    def trips(ctx: object, body: dict[str, Any]) -> dict[str, Any]:
        return {"n": int(body["count"])}

    app.handlers["debug.trips"] = trips
    client = TestClient(app.app, raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {_login(client)}"}
    for body, fragment in [({"count": "x"}, "invalid literal"), ({}, "'count'"), ({"count": [1]}, "int()")]:
        res = client.post("/debug.trips", headers=auth, json=body)
        assert res.status_code == 400, res.text
        msg = res.json()["meta"]["result_msg"]
        assert "debug.trips" in msg and fragment in msg, msg
        assert res.json()["meta"]["result_subcode"] == 1


def test_query_helpers_refuse_strings_where_arrays_are_declared() -> None:
    with pytest.raises(ApiError, match="'tags' must be an array"):
        match_tags(["a", "b", "c"], "abc")
    with pytest.raises(ApiError, match="'only_fields' must be an array"):
        project_fields({"id": "t", "status": "created"}, "status")


def test_paging_keeps_every_result_and_checks_bounds() -> None:
    docs = [{"id": str(i)} for i in range(5)]
    assert order_and_page(list(docs), {"page_size": 5}) == docs
    assert order_and_page(list(docs), {"page_size": 10}) == docs
    assert order_and_page(list(docs), {"page_size": "2", "page": "2"}) == docs[4:]  # query-string numbers
    for bad in ({"page_size": -1}, {"page_size": 0}, {"page": -1, "page_size": 1}, {"page": 0},
                {"page_size": True}, {"page_size": 1.5}):
        with pytest.raises(ApiError, match="page"):
            order_and_page(list(docs), bad)
