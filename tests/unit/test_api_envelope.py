"""The stand-in's wire format, in process (no sockets): envelope, auth, errors, query semantics."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest
from starlette.testclient import TestClient

from automation.local.api import API_VERSION, Credentials, StandInApp
from automation.local.faults import FaultInjector
from automation.local.services.common import match_tags, match_values, order_and_page, project_fields
from automation.local.store import Store

CREDS = Credentials(access_key="AK", secret_key="SK", token_secret="a-test-token-secret-of-32-bytes-or-more")


@pytest.fixture()
def client(tmp_path: Path) -> TestClient:
    app = StandInApp(Store(tmp_path / "db.sqlite"), CREDS, api_url="http://api", files_url="http://files",
                     web_url="http://web", faults=FaultInjector(allowed=True, seed=1), validate=True)
    return TestClient(app.app)


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
    stats = client.get("/_standin/stats").json()
    assert stats["calls"]["projects.create"] == 1 and stats["calls"]["projects.get_all"] == 1
    assert stats["contract_errors"] == []


def test_fault_injection_is_switchable(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {_login(client)}"}
    client.post("/_standin/faults", json={"rate": 1.0, "kinds": ["error"]})
    assert client.post("/projects.get_all", headers=auth, json={}).status_code == 503
    client.post("/_standin/faults", json={"rate": 0.0})
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


def test_value_filter_projection_and_paging() -> None:
    assert match_values("queued", ["queued", "in_progress"])
    assert not match_values("completed", ["queued", "in_progress"])
    assert not match_values("completed", ["-completed"])
    doc = {"id": "t1", "status": "queued", "execution": {"queue": "q", "parameters": {}}, "name": "n"}
    assert project_fields(doc, ["status", "execution.queue"]) == {
        "id": "t1", "status": "queued", "execution": {"queue": "q"}}
    docs = [{"id": str(i), "n": i} for i in range(10)]
    assert [d["n"] for d in order_and_page(list(docs), {"order_by": ["-n"], "page": 1, "page_size": 3})] == [6, 5, 4]
