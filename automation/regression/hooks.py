"""Submit hooks: small named functions that adjust a spec before it is submitted.

    @submit_hook("hf_token")
    def hf_token(spec: TaskSpec, arg: str | None) -> TaskSpec: ...

A flow parameter lists hooks by name (`["hf_token", "server_arg:--max-model-len=4096"]`; the part
after the first ':' is the hook's argument). `apply_hooks` runs each at most once per spec: the
applied names are recorded in the spec's `hooks` field (visible in the ClearML task), and a name
already there is skipped, so re-applying on a retry or in a sub-flow changes nothing. A hook that
changes what the task computes changes an identity field (e.g. `server_args`), so the identity
moves with it; one that only changes how it runs (docker options, secret references) does not.
Secrets go in by reference only (`secret_env`, see automation/secrets.py), never by value.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from automation.errors import HookError
from automation.specs.base import TaskSpec, build

Hook = Callable[[TaskSpec, str | None], TaskSpec | Awaitable[TaskSpec]]
HOOKS: dict[str, Hook] = {}
S = TypeVar("S", bound=TaskSpec)


def submit_hook(name: str) -> Callable[[Hook], Hook]:
    def register(fn: Hook) -> Hook:
        if name in HOOKS and HOOKS[name] is not fn:
            raise HookError(f"submit hook '{name}' is registered twice")
        HOOKS[name] = fn
        return fn

    return register


def split(entry: str) -> tuple[str, str | None]:
    name, sep, arg = entry.partition(":")
    return name.strip(), (arg if sep else None)


def check_hooks(entries: Iterable[str]) -> list[str]:
    """Validate names up front (before anything is queued); returns them as given."""
    out = list(entries)
    for entry in out:
        name, _ = split(entry)
        if name not in HOOKS:
            known = ", ".join(sorted(HOOKS)) or "none"
            raise HookError(f"hooks: unknown submit hook '{name}' (known: {known})")
    return out


async def apply_hooks(spec: S, entries: Iterable[str]) -> S:
    """The spec with every hook applied once, in order (a hook never changes the spec's kind)."""
    current: TaskSpec = spec
    for entry in check_hooks(entries):
        if entry in current.hooks:
            continue
        name, arg = split(entry)
        out = HOOKS[name](current, arg)
        if inspect.isawaitable(out):
            out = await out
        if type(out) is not type(spec):
            raise HookError(f"hooks: '{name}' returned a {type(out).__name__} for a {type(spec).__name__}")
        current = _with(out, hooks=(*out.hooks, entry))
    return cast(S, current)


def _with(spec: TaskSpec, **changes: Any) -> TaskSpec:
    """A validated copy (frozen specs; `model_copy(update=...)` would skip validation)."""
    return build(type(spec), {**spec.model_dump(), **changes})


# -- built-in hooks ---------------------------------------------------------------------------
@submit_hook("hf_token")
async def hf_token(spec: TaskSpec, arg: str | None) -> TaskSpec:
    """HF_TOKEN for gated hub models, from the Prefect Secret block `arg` (default `hf-token`).
    The block must exist (checked now, before anything is queued); only its name travels."""
    block = arg or "hf-token"
    from prefect.blocks.system import Secret

    try:
        await Secret.aload(block)
    except ValueError as exc:
        raise HookError(f"hooks: hf_token: no Prefect Secret block '{block}' ({exc}); create it with "
                        f"`prefect block create secret` or the UI") from None
    return _with(spec, secret_env={**spec.secret_env, "HF_TOKEN": f"prefect-secret:{block}"})


@submit_hook("hf_token_env")
def hf_token_env(spec: TaskSpec, arg: str | None) -> TaskSpec:
    """HF_TOKEN from the agent host's own environment variable `arg` (default HF_TOKEN)."""
    return _with(spec, secret_env={**spec.secret_env, "HF_TOKEN": f"env:{arg or 'HF_TOKEN'}"})


@submit_hook("server_arg")
def server_arg(spec: TaskSpec, arg: str | None) -> TaskSpec:
    """An extra inference-server argument for benchmark tasks (e.g. `--max-model-len=4096`);
    other kinds are left as they are. Changes the benchmark's identity."""
    if not arg:
        raise HookError("hooks: server_arg needs an argument: 'server_arg:--flag=value'")
    if "server_arg" in spec.accepted_hooks:
        return _with(spec, server_args=(*cast(Any, spec).server_args, arg))
    return spec


@submit_hook("vllm_arg")
def vllm_arg(spec: TaskSpec, arg: str | None) -> TaskSpec:
    """An extra vLLM engine argument `key=value` for evaluate tasks (lm-eval's vllm backend)."""
    if not arg or "=" not in arg:
        raise HookError("hooks: vllm_arg needs 'vllm_arg:key=value'")
    if "vllm_arg" in spec.accepted_hooks:
        key, _, value = arg.partition("=")
        return _with(spec, vllm_args={**cast(Any, spec).vllm_args, key.strip(): _scalar(value.strip())})
    return spec


@submit_hook("docker_args")
def docker_args(spec: TaskSpec, arg: str | None) -> TaskSpec:
    """Extra `docker run` options for the agent (e.g. `--shm-size=16g`); does not change identity."""
    if not arg:
        raise HookError("hooks: docker_args needs an argument: 'docker_args:--shm-size=16g'")
    return _with(spec, docker_args=" ".join(p for p in (spec.docker_args, arg) if p))


def _scalar(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
