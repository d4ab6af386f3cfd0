"""Hostile and careless input to the stand-in's API: bounded bodies read only after authentication,
bounded nesting, strings that are not Unicode refused at the door (and old ones still listed), and
no exception text in any answer."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from clearml_standin.api import MAX_JSON_DEPTH, Credentials, StandInApp
from clearml_standin.store import Store
from clearml_standin.web import WebUI

CREDS = Credentials(access_key="AK", secret_key="SK", token_secret="a-test-token-secret-of-32-bytes-or-more")
LIMIT = 64 * 1024


@pytest.fixture()
def standin(tmp_path: Path) -> StandInApp:
    return StandInApp(Store(tmp_path / "db.sqlite"), CREDS, api_url="http://api", files_url="http://files",
                      web_url="http://web", max_body_bytes=LIMIT)


@pytest.fixture()
def client(standin: StandInApp) -> TestClient:
    return TestClient(standin.app, raise_server_exceptions=False)


def _auth(client: TestClient) -> dict[str, str]:
    basic = base64.b64encode(b"AK:SK").decode()
    token = client.post("/auth.login", headers={"Authorization": f"Basic {basic}"}, json={}).json()["data"]["token"]
    return {"Authorization": f"Bearer {token}"}


def _create(client: TestClient, headers: dict[str, str], name: str) -> str:
    project = client.post("/projects.create", headers=headers, json={"name": "hostile"}).json()["data"]["id"]
    res = client.post("/tasks.create", headers=headers,
                      content=json.dumps({"name": name, "project": project, "type": "testing"}))
    return str(res.json()["data"].get("id", "")) if res.status_code == 200 else res.text


def test_a_body_over_the_limit_is_a_413_and_an_anonymous_one_a_401(client: TestClient) -> None:
    big = b'{"name": "' + b"a" * (LIMIT * 2) + b'"}'
    anonymous = client.post("/tasks.get_all", content=big)
    assert anonymous.status_code == 401  # credentials are checked before the body is read
    res = client.post("/tasks.get_all", headers=_auth(client), content=big)
    assert res.status_code == 413 and res.json()["meta"]["result_code"] == 413
    assert "too large" in res.json()["meta"]["result_msg"]
    # streamed without a Content-Length: refused while it streams in
    res = client.post("/tasks.get_all", headers=_auth(client), content=iter([b"[" * 1024] * (LIMIT // 512)))
    assert res.status_code == 413


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deep_nesting_is_a_400_without_exception_text(client: TestClient, depth: int) -> None:
    body = '{"x": ' * depth + "1" + "}" * depth
    res = client.post("/tasks.get_all", headers=_auth(client), content=body)
    assert res.status_code in (400, 413), res.text
    meta = res.json()["meta"]
    assert "Traceback" not in res.text and "RecursionError" not in res.text
    assert res.status_code == 413 or "nested deeper" in meta["result_msg"]


def test_a_lone_surrogate_is_refused_naming_the_field(client: TestClient) -> None:
    headers = _auth(client)
    answer = _create(client, headers, "model-\udcff-run")
    assert "name" in answer and "not valid Unicode" in answer
    res = client.post("/tasks.get_all", headers=headers, json={})
    assert res.status_code == 200 and res.json()["data"]["tasks"] == []  # nothing was stored


def test_a_stored_lone_surrogate_does_not_break_listing(standin: StandInApp, client: TestClient) -> None:
    headers = _auth(client)
    task_id = _create(client, headers, "plain name")
    doc = standin.store.get("task", task_id)  # as data written before the door was shut
    assert doc is not None
    standin.store.put("task", task_id, {**doc, "name": "model-\udcff-run"})
    for endpoint, body in (("tasks.get_all", {}), ("tasks.get_by_id", {"task": task_id})):
        res = client.post(f"/{endpoint}", headers=headers, json=body)
        assert res.status_code == 200, (endpoint, res.text)
    web = TestClient(WebUI(standin.store, files_url="http://files", web_url="http://web").app, base_url="http://web",
                     raise_server_exceptions=False)
    assert web.get("/").status_code == 200


def test_an_internal_error_is_a_500_without_the_exception(standin: StandInApp, client: TestClient) -> None:
    def broken(ctx: object, body: object) -> dict[str, object]:
        raise RuntimeError("secret detail from the inside")

    standin.handlers["tasks.get_all"] = broken
    res = client.post("/tasks.get_all", headers=_auth(client), json={})
    assert res.status_code == 500 and "secret detail" not in res.text and "see the server log" in res.text


def test_token_lifetime_is_bounded_and_a_rotated_key_revokes_tokens(standin: StandInApp, client: TestClient) -> None:
    import jwt

    from clearml_standin.api import TOKEN_TTL_S

    basic = {"Authorization": "Basic " + base64.b64encode(b"AK:SK").decode()}
    token = client.post("/auth.login", headers=basic, json={"expiration_sec": 10**12}).json()["data"]["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= TOKEN_TTL_S
    bad = client.post("/auth.login", headers=basic, json={"expiration_sec": "forever"})
    assert bad.status_code == 400 and "expiration_sec" in bad.json()["meta"]["result_msg"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.post("/tasks.get_all", headers=bearer, json={}).status_code == 200
    standin.creds.secret_key = "rotated"  # same token secret, new key pair
    res = client.post("/tasks.get_all", headers=bearer, json={})
    assert res.status_code == 401 and "another key" in res.json()["meta"]["result_msg"]

