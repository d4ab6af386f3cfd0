"""A user's mistake on the command line is one line that names the field and the fix, with exit
code 2 (1 for a server that cannot be reached), never a traceback; and it is caught before anything
is created."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automation.cli import app
from automation.regression.settings import settings


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    settings.cache_clear()
    yield
    settings.cache_clear()


def _cli(*argv: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(argv))
    text = res.output  # stdout and stderr together
    assert "Traceback" not in text, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, " ".join(text.split())  # rich wraps long lines; one line is what was said


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- task submit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "said"), [
    (None, "--spec: no file"),
    ('{"model": ', "is not valid JSON or YAML (line 1, column 11)"),
    ("- a: [", "is not valid JSON or YAML"),
    ("[1, 2]", "must hold a mapping of fields"),
])
def test_a_bad_spec_file_is_one_line(tmp_path: Path, content: str | None, said: str) -> None:
    spec = tmp_path / "spec.json"
    if content is not None:
        spec.write_text(content)
    code, out = _cli("task", "submit", "compress", "--spec", str(spec), "--dry-run")
    assert code == 2 and said in out, out


def test_submit_hooks_are_checked_and_applied(tmp_path: Path) -> None:
    code, out = _cli("task", "submit", "compress", "--model", "hf:org/x", "--recipe", "w4a16", "--hooks", "bogus",
                     "--dry-run")
    assert code == 2 and "unknown submit hook 'bogus'" in out, out
    code, out = _cli("task", "submit", "compress", "--model", "hf:org/x", "--recipe", "w4a16",
                     "--hooks", "server_arg:--max-model-len=64", "--dry-run")
    assert code == 2 and "'server_arg' does not apply to compress tasks (it is for: benchmark)" in out, out
    res = CliRunner().invoke(app, ["task", "submit", "benchmark", "--model", "hf:org/x", "--profile", "smoke",
                                   "--hooks", "server_arg:--max-model-len=64", "--dry-run"])
    assert res.exit_code == 0, res.output
    spec = json.loads(res.output)
    assert spec["server_args"] == ["--max-model-len=64"]  # applied, not only listed
    assert spec["hooks"] == ["server_arg:--max-model-len=64"]


# -- settings from the environment ----------------------------------------------------------------------
@pytest.mark.parametrize(("var", "value", "said"), [
    ("AUTOMATION_SIZE_RULES", "garbage", "AUTOMATION_SIZE_RULES: not valid JSON; expected e.g."),
    ("AUTOMATION_SIZE_RULES", '[{"max_params_b": -1, "queue": "x"}]', "0.max_params_b: Input should be greater"),
    ("AUTOMATION_QUEUE_CAPS", '{"gpu": "many"}', "AUTOMATION_QUEUE_CAPS: gpu: Input should be a valid integer"),
    ("AUTOMATION_NIGHTLY_MATRIX", '{"models": 5}', "AUTOMATION_NIGHTLY_MATRIX: models: Input should be a valid list"),
])
def test_malformed_settings_are_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str,
                                                             said: str) -> None:
    from automation.errors import FlowInputError

    monkeypatch.setenv(var, value)
    with pytest.raises(FlowInputError) as caught:
        settings()
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_malformed_nightly_matrix_stops_local_up_before_anything_exists(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOMATION_NIGHTLY_MATRIX", '{"models": 5}')
    code, out = _cli("local", "up", "--data-dir", str(tmp_path / "data"))
    assert code == 2 and "AUTOMATION_NIGHTLY_MATRIX" in out, out
    assert not (tmp_path / "data").exists()


def test_serve_refuses_a_bad_matrix_an_unreachable_prefect_and_a_zero_interval(monkeypatch: pytest.MonkeyPatch,
                                                                               capsys: pytest.CaptureFixture[str]) \
        -> None:
    from deployments.serve import main

    with pytest.raises(SystemExit) as caught:
        main(["--nightly-every", "0"])
    assert caught.value.code == 2 and "must be more than 0 seconds" in capsys.readouterr().err
    monkeypatch.setenv("AUTOMATION_NIGHTLY_MATRIX", '{"models": 5}')
    with pytest.raises(SystemExit, match="AUTOMATION_NIGHTLY_MATRIX: models"):
        main([])
    monkeypatch.delenv("AUTOMATION_NIGHTLY_MATRIX")
    settings.cache_clear()
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{_dead_port()}/api")
    with pytest.raises(SystemExit, match=r"Prefect API .* \(PREFECT_API_URL\) is unreachable"):
        main([])


def test_automation_run_says_one_line_for_bad_settings_and_an_unreachable_prefect(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMATION_QUEUE_CAPS", "{not json")
    code, out = _cli("run", "compress-evaluate-benchmark", "--model", "hf:org/x", "--schemes", "w4a16")
    assert code == 2 and "AUTOMATION_QUEUE_CAPS: not valid JSON" in out, out
    monkeypatch.delenv("AUTOMATION_QUEUE_CAPS")
    settings.cache_clear()
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{_dead_port()}/api")
    code, out = _cli("run", "compress-evaluate-benchmark", "--model", "hf:org/x", "--schemes", "w4a16")
    assert code == 1 and "(PREFECT_API_URL) is unreachable" in out, out


def test_an_unreachable_prefect_api_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from automation.errors import ServerUnreachable
    from automation.prefect_api import check_prefect_api

    check_prefect_api({})  # no PREFECT_API_URL: an in-process server, nothing to ask
    with pytest.raises(ServerUnreachable, match=r"start it .* or unset PREFECT_API_URL"):
        check_prefect_api({"PREFECT_API_URL": f"http://127.0.0.1:{_dead_port()}/api"}, timeout_s=2)


# -- the local stack's data directory ---------------------------------------------------------------------
def test_an_unusable_data_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out = _cli("local", "up", "--data-dir", str(blocker / "data"), "--no-agents", "--no-prefect")
    assert code == 1 and "cannot create" in out and "--data-dir" in out, out


@pytest.mark.parametrize(("name", "content"), [("stack.json", "{bad"), ("clearml/credentials.json", "[1]")])
def test_a_damaged_stack_file_is_one_line(tmp_path: Path, name: str, content: str) -> None:
    data = tmp_path / "data"
    (data / name).parent.mkdir(parents=True, exist_ok=True)
    (data / name).write_text(content)
    code, out = _cli("local", "up", "--data-dir", str(data), "--no-agents", "--no-prefect")
    assert code == 1 and "is damaged" in out, out


def test_an_unknown_prefect_db_is_one_line_before_anything_exists(tmp_path: Path) -> None:
    code, out = _cli("local", "up", "--data-dir", str(tmp_path / "data"), "--prefect-db", "mysql")
    assert code == 2 and "--prefect-db" in out and "'sqlite', 'postgres'" in out, out
    assert not (tmp_path / "data").exists()


def test_missing_postgres_binaries_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automation.devstack.postgres import BIN_ENV, find_bin_dir
    from automation.errors import StackError

    monkeypatch.setenv(BIN_ENV, str(tmp_path))
    said = f"{BIN_ENV}=.* lacks one of initdb.*apt install postgresql.*--prefect-db sqlite"
    with pytest.raises(StackError, match=said):
        find_bin_dir()


def test_postgres_bin_env_names_the_folder_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automation.devstack.postgres import BIN_ENV, NEEDED, find_bin_dir

    for name in NEEDED:
        (tmp_path / name).write_text("")
    monkeypatch.setenv(BIN_ENV, str(tmp_path))
    assert find_bin_dir() == tmp_path
