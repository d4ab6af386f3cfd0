"""Secrets by reference: a spec names where a secret lives, never what it is.

    HF_TOKEN -> "env:HF_TOKEN"              the agent host's own environment variable
    HF_TOKEN -> "prefect-secret:hf-token"   a Prefect Secret block, read inside the job

References travel in the task (`secret_env`); values are resolved by the core script's runtime
on the agent, put in its environment, and never written to parameters, logs or artifacts. The
Prefect block is read over Prefect's REST API with httpx (scripts never import Prefect), using the
agent host's PREFECT_API_URL / PREFECT_API_KEY.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import httpx

from automation.errors import SecretError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BLOCK = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SCHEMES = ("env:", "prefect-secret:")


def check_reference(name: str, ref: str) -> None:
    """A well-formed reference (raises naming the entry and the fix); never looks the value up."""
    if not _NAME.match(name):
        raise SecretError(f"secret_env: '{name}' is not an environment variable name")
    if ref.startswith("env:") and _NAME.match(ref.removeprefix("env:")):
        return
    if ref.startswith("prefect-secret:") and _BLOCK.match(ref.removeprefix("prefect-secret:")):
        return
    raise SecretError(f"secret_env[{name}]: '{_redact(ref)}' is not a secret reference; write 'env:VAR' or "
                      "'prefect-secret:block-name' (a value itself must never be put in a spec)")


_SECRET_KEY = re.compile(r"(^|_)(token|api_?key|password|passwd|secret|credentials?|auth)($|_)", re.IGNORECASE)


def check_no_secret_keys(field: str, values: Mapping[str, object]) -> None:
    """A mapping of a spec (model arguments, say) holds no key that names a secret: its value would
    be a task parameter, readable by anyone who can read the task. Raises naming the key and the fix."""
    for key in values:
        if _SECRET_KEY.search(str(key)):
            raise SecretError(f"{field}[{key!r}]: a secret must not be put in a spec (it would be a task parameter); "
                              "give it by reference: secret_env {NAME: 'env:VAR'} or the hf_token hook")


def _redact(text: str) -> str:
    return text if len(text) <= 8 else text[:4] + "..."


def resolve(refs: Mapping[str, str], environ: Mapping[str, str] | None = None,
            timeout_s: float = 15.0) -> dict[str, str]:
    """Values for every reference; an unresolvable one is an error naming it (never its value)."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, ref in refs.items():
        check_reference(name, ref)
        if ref.startswith("env:"):
            var = ref.removeprefix("env:")
            if var not in environ:
                raise SecretError(f"secret_env[{name}]: the agent host has no environment variable {var}")
            out[name] = environ[var]
        else:
            out[name] = prefect_secret(ref.removeprefix("prefect-secret:"), environ, timeout_s)
    return out


def prefect_secret(block: str, environ: Mapping[str, str], timeout_s: float = 15.0) -> str:
    api = environ.get("PREFECT_API_URL")
    if not api:
        raise SecretError(f"Prefect Secret block '{block}': PREFECT_API_URL is not set on the agent host")
    headers = {"Authorization": f"Bearer {environ['PREFECT_API_KEY']}"} if environ.get("PREFECT_API_KEY") else {}
    url = f"{api.rstrip('/')}/block_types/slug/secret/block_documents/name/{block}"
    try:
        res = httpx.get(url, params={"include_secrets": "true"}, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise SecretError(f"Prefect Secret block '{block}': {api} unreachable ({type(exc).__name__})") from None
    if res.status_code == 404:
        raise SecretError(f"Prefect Secret block '{block}' does not exist on {api}")
    if res.status_code >= 400:
        raise SecretError(f"Prefect Secret block '{block}': HTTP {res.status_code} from {api}")
    value = (res.json().get("data") or {}).get("value")
    if not isinstance(value, str):
        raise SecretError(f"Prefect Secret block '{block}' holds no string value")
    return value
