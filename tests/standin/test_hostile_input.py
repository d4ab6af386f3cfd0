"""Hostile and careless input to the stand-in's API: bounded bodies read only after authentication,
bounded nesting, strings that are not Unicode refused at the door (and old ones still listed), and
no exception text in any answer."""

from __future__ import annotations

import base64
import dataclasses
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
    return StandInApp(Store(tmp_path / "db.sqlite"), dataclasses.replace(CREDS), api_url="http://api", files_url="http://files",
                      web_url="http://web", max_body_bytes=LIMIT)


@pytest.fixture()
def client(standin: StandInApp) -> TestClient:
    return TestClient(standin.app, raise_server_exceptions=False)


def _auth(client: TestClient) -> dict[str, str]:
    basic = base64.b64encode(b"AK:SK").decode()
    token = client.post("/auth.login", headers={"Authorization": f"Basic {basic}"}, json={}).json()["data"]["token"]
    return {"Authorization": f"Bearer {token}"}


def _create(client: TestClient, headers: dict[str, str], name: str) -> str:
    found = client.post("/projects.get_all", headers=headers, json={"name": "^hostile$"}).json()["data"]["projects"]
    project = found[0]["id"] if found else \
        client.post("/projects.create", headers=headers, json={"name": "hostile"}).json()["data"]["id"]
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



# -- regular expressions -----------------------------------------------------------------------------
def test_a_catastrophic_regex_runs_out_of_its_budget_and_is_a_400(client: TestClient) -> None:
    import time

    from clearml_standin.regex_budget import REGEX_BUDGET_S

    headers = _auth(client)
    for i in range(20):
        _create(client, headers, "a" * 25 + f"!{i}")
    started = time.monotonic()
    res = client.post("/tasks.get_all", headers=headers, json={"name": "(a|a)+$"})
    took = time.monotonic() - started
    assert res.status_code == 400 and "too expensive" in res.json()["meta"]["result_msg"], res.text
    assert took < REGEX_BUDGET_S + 1.0  # one budget for all twenty names, not one each
    long_pattern = client.post("/tasks.get_all", headers=headers, json={"name": "a" * 10_000})
    assert long_pattern.status_code == 400 and "characters long" in long_pattern.json()["meta"]["result_msg"]
    broken = client.post("/projects.get_all", headers=headers, json={"name": "(unclosed"})
    assert broken.status_code == 400 and "Invalid regular expression for 'name'" in broken.json()["meta"]["result_msg"]
    # an ordinary filter still works, case-insensitively like clearml-server's
    plain = client.post("/tasks.get_all", headers=headers, json={"name": "^A{25}!1$", "only_fields": ["name"]})
    assert [t["name"] for t in plain.json()["data"]["tasks"]] == ["a" * 25 + "!1"]


def test_a_non_string_event_type_is_a_400(client: TestClient) -> None:
    headers = _auth(client)
    task_id = _create(client, headers, "events-typed")
    res = client.post("/events.get_task_metrics", headers=headers,
                      json={"tasks": [task_id], "event_type": {"$gt": ""}})
    assert res.status_code == 400 and "event_type" in res.json()["meta"]["result_msg"]


# -- every endpoint, malformed bodies: never a 5xx -------------------------------------------------------
def test_malformed_bodies_to_every_endpoint_are_never_a_5xx(standin: StandInApp, client: TestClient) -> None:
    """A seeded fuzz: each endpoint gets bodies whose fields have the wrong types and shapes (ids that
    are dicts, filters that are Mongo operators, huge numbers, NUL bytes, event batches of junk)."""
    import random

    headers = _auth(client)
    task_id = _create(client, headers, "fuzz-target")
    values: list[object] = [None, True, 0, -1, 2**70, 1e308, "", "x", "\x00", "a" * 5000, [], [1], ["x"], [None],
                            [{}], {}, {"a": 1}, {"$ne": None}, [[[]]], task_id, [task_id], "-x", "__$not",
                            ["__$not", "x"], {"task": task_id}]
    fields = ["task", "tasks", "id", "ids", "project", "projects", "name", "model", "models", "queue", "queues",
              "only_fields", "order_by", "page", "page_size", "tags", "system_tags", "status", "iters", "metrics",
              "event_type", "scroll_id", "batch_size", "type", "worker", "execution", "hyperparams",
              "configuration", "force", "uri", "labels", "design", "metadata", "metric", "variant", "events",
              "navigate_earlier", "from_timestamp", "search_hidden", "runtime", "script", "names", "sections",
              "items", "parent", "last_update", "comment", "output_dest"]
    rng = random.Random(13)
    refused: dict[str, int] = {}
    sent = 0
    for name in sorted(standin.handlers):
        for _ in range(8):
            body: object = {f: rng.choice(values) for f in rng.sample(fields, rng.randint(1, 6))}
            if rng.random() < 0.25:
                body = rng.choice([[], [1], "x", 5, [{"task": task_id, "type": rng.choice(["log", "plot", 5, None]),
                                                      "metric": rng.choice(values), "iter": rng.choice(values)}]])
            res = client.post(f"/{name}", headers=headers, content=json.dumps(body))
            sent += 1
            if res.status_code >= 500:
                refused[name] = res.status_code
            assert "Traceback" not in res.text
    assert sent > 700 and refused == {}, refused


# -- the file server ----------------------------------------------------------------------------------------
@pytest.fixture()
def files(tmp_path: Path) -> tuple[TestClient, Path]:
    from clearml_standin.files import FileServer
    from clearml_standin.tokens import Authenticator

    root = tmp_path / "files"
    server = FileServer(root, Authenticator(CREDS), own_urls=("http://files",), web_url="http://web")
    return TestClient(server.app, base_url="http://files", raise_server_exceptions=False), root


BASIC = {"Authorization": "Basic " + base64.b64encode(b"AK:SK").decode()}


def test_the_file_server_wants_credentials_for_every_method(files: tuple[TestClient, Path],
                                                            client: TestClient) -> None:
    web, root = files
    assert web.post("/p/", files={"a.txt": ("a.txt", b"x")}).status_code == 401
    assert not (root / "p").exists()
    assert web.post("/p/", files={"a.txt": ("a.txt", b"x")}, headers=BASIC).status_code == 200
    assert web.get("/p/a.txt").status_code == 401
    assert web.delete("/p/a.txt").status_code == 401 and (root / "p/a.txt").exists()
    wrong = {"Authorization": "Basic " + base64.b64encode(b"AK:nope").decode()}
    assert web.delete("/p/a.txt", headers=wrong).status_code == 401
    bearer = _auth(client)  # a session token from the API, as the SDK attaches to file requests
    assert web.get("/p/a.txt", headers=bearer).content == b"x"
    assert web.delete("/p/a.txt", headers=bearer).status_code == 200 and not (root / "p/a.txt").exists()


def test_the_file_server_refuses_other_hosts_and_other_origins(files: tuple[TestClient, Path]) -> None:
    web, root = files
    rebound = web.get("/p/a.txt", headers={**BASIC, "Host": "attacker.example"})
    assert rebound.status_code == 400  # a DNS name rebound to loopback is not this server
    cross = web.post("/p/", files={"a.txt": ("a.txt", b"x")}, headers={**BASIC, "Origin": "http://attacker.example"})
    assert cross.status_code == 403 and not (root / "p").exists()
    own = web.post("/p/", files={"a.txt": ("a.txt", b"x")}, headers={**BASIC, "Origin": "http://web"})
    assert own.status_code == 200


@pytest.mark.parametrize(("field", "status"), [
    ("x" * 300 + ".txt", 400),
    ("/".join(["d"] * 3000), 400),
    ("folder", 409),              # a folder is the target
    ("plain.txt/below.txt", 409),  # a path below a file
])
def test_unusable_upload_targets_are_a_4xx(files: tuple[TestClient, Path], field: str, status: int) -> None:
    web, root = files
    (root / "p" / "folder").mkdir(parents=True)
    (root / "p" / "plain.txt").write_text("kept")
    res = web.post("/p/", files={field: ("f", b"x")}, headers=BASIC)
    assert res.status_code == status, res.text
    assert (root / "p" / "plain.txt").read_text() == "kept" and not list(root.rglob(".upload-*"))


def test_a_nul_byte_in_a_file_path_is_a_400(files: tuple[TestClient, Path]) -> None:
    web, _ = files
    assert web.get("/p/a%00b.txt", headers=BASIC).status_code == 400
    assert web.delete("/p/a%00b.txt", headers=BASIC).status_code == 400
    assert web.post("/p%00q/", files={"f.txt": ("f", b"x")}, headers=BASIC).status_code == 400


def test_downloads_are_never_run_as_pages(files: tuple[TestClient, Path]) -> None:
    web, _ = files
    page = b"<html><script>alert(document.cookie)</script></html>"
    web.post("/p/", files={"evil.html": ("evil.html", page), "pic.png": ("pic.png", b"\x89PNG"),
                           "plot.svg": ("plot.svg", b"<svg/>")}, headers=BASIC)
    for name in ("evil.html", "plot.svg"):
        res = web.get(f"/p/{name}", headers=BASIC)
        assert res.status_code == 200 and res.headers["content-disposition"].startswith("attachment"), name
        assert res.headers["x-content-type-options"] == "nosniff"
        assert res.headers["content-security-policy"] == "sandbox"
    picture = web.get("/p/pic.png", headers=BASIC)
    assert picture.headers["content-type"] == "image/png" and "content-disposition" not in picture.headers


def test_the_web_pages_answer_only_their_own_host_names(standin: StandInApp) -> None:
    web = WebUI(standin.store, files_url="http://files", web_url="http://web").app
    assert TestClient(web, base_url="http://web").get("/").status_code == 200
    assert TestClient(web, base_url="http://127.0.0.1:8080").get("/").status_code == 200
    assert TestClient(web, base_url="http://attacker.example").get("/").status_code == 400  # a rebound name
