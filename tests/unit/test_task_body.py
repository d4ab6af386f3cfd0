"""What a ClearML task carries so that an agent can build and run it from the task alone: the
pinned code, every requirement of its core script, and its container; and which of these the
spec's identity sees."""

from __future__ import annotations

from pydantic import SecretStr

from automation.clearml.client import ClearMLBackend
from automation.clearml.settings import ClearMLSettings
from automation.specs.base import CodeRef
from automation.specs.compress import CompressSpec
from automation.specs.debug import DebugSpec
from automation.specs.runtime_packages import CORE_RUNTIME

SHA = "0123456789abcdef0123456789abcdef01234567"


def _client() -> ClearMLBackend:
    return ClearMLBackend(ClearMLSettings(api_host="http://api.test", web_host="http://web.test",
                                          files_host="http://files.test", access_key="k", secret_key=SecretStr("s")))


def test_the_task_lists_the_core_runtime_and_the_kinds_libraries() -> None:
    spec = CompressSpec(model="hf:org/m-1B", recipe="w4a16", packages=("accelerate>=1.0",))
    pip = _client().task_body(spec, "p")["script"]["requirements"]["pip"].splitlines()
    assert set(CORE_RUNTIME) <= set(pip)
    assert set(spec.base_packages) <= set(pip) and "accelerate>=1.0" in pip
    # plumbing is not identity: the identity hashes the kind's and the spec's packages only
    assert spec.identity_payload()["spec"]["packages"] == sorted(spec.requirements())


def test_the_task_carries_the_pinned_code_and_its_container() -> None:
    spec = DebugSpec(code=CodeRef(repository="https://git.example/org/automation.git", commit=SHA),
                     docker_image="registry.example/llm:cuda12-py311", docker_args="--shm-size=16g --ipc=host")
    body = _client().task_body(spec, "p")
    assert body["script"]["repository"] == "https://git.example/org/automation.git"
    assert body["script"]["version_num"] == SHA and body["script"]["branch"] == ""
    assert body["script"]["entry_point"] == "-m automation.scripts.debug" and body["script"]["working_dir"] == "."
    assert body["container"] == {"image": "registry.example/llm:cuda12-py311",
                                 "arguments": "--shm-size=16g --ipc=host", "setup_shell_script": ""}
    assert DebugSpec().identity() != DebugSpec(code=spec.code).identity()  # the commit is identity
    # the image decides CUDA, torch and vLLM: in the identity when set, and only then
    assert DebugSpec().identity() != DebugSpec(docker_image="x").identity()
    assert DebugSpec().identity() == DebugSpec(docker_image=None).identity()
    assert DebugSpec().identity() == DebugSpec(docker_args="--ipc=host").identity()  # how it is started is not


def test_a_package_pin_that_fights_the_core_runtime_is_refused_at_validation() -> None:
    import pytest

    with pytest.raises(ValueError, match=r"conflicting pins for pydantic.*core scripts themselves run with"):
        DebugSpec(packages=("pydantic==2.0.0",))
