"""Moving targets a nightly tracks, resolved once per run at plan time to what cannot move.

    llmcompressor @ git+https://github.com/org/llm-compressor@main   a branch -> that commit now
    llmcompressor>=0.14                                                a range  -> the version pip picks now
    lm-eval[hf]==0.4.14                                                exact: as it is

Each resolved requirement replaces the kind's own pin of that package (`package_overrides`) in
the specs of every kind that declares it, so it enters exactly their identities: tracking
llm-compressor recomputes compressions and what depends on them, not the base model's
evaluation. A package no kind declares joins every kind's `packages`. The resolution is recorded
in the report's provenance (`tracked`). Anything that cannot be resolved is one error naming
`track[i]`, before anything is queued.

Version ranges are resolved by pip itself (`pip install --dry-run --report`, with this host's pip
configuration: index, find-links), so the version is the one an agent's pip would install now.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from automation.errors import FlowInputError
from automation.regression.code_pin import GIT_TIMEOUT_S
from automation.specs.packages import is_pinned

PIP_TIMEOUT_S = 180.0
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Tracked:
    given: str
    resolved: str  # name==version, or name @ git+URL@<commit>

    @property
    def name(self) -> str:
        return canonicalize_name(Requirement(self.resolved).name)


def resolve_tracked(items: Sequence[str]) -> list[Tracked]:
    out: list[Tracked] = []
    seen: set[str] = set()
    for i, text in enumerate(items):
        field = f"track[{i}]"
        try:
            req = Requirement(text.strip())
        except InvalidRequirement as exc:
            raise FlowInputError(f"{field}: '{text}' is not a pip requirement ({exc})") from None
        name = canonicalize_name(req.name)
        if name in seen:
            raise FlowInputError(f"{field}: {req.name} is tracked twice; keep one")
        seen.add(name)
        if req.url:
            resolved = _pin_url(field, req)
        elif is_pinned(req):
            resolved = str(req)
        else:
            resolved = f"{req.name}{_extras(req)}=={_pip_pick(field, req)}"
        out.append(Tracked(given=text.strip(), resolved=resolved))
    return out


def _extras(req: Requirement) -> str:
    return f"[{','.join(sorted(req.extras))}]" if req.extras else ""


def _pin_url(field: str, req: Requirement) -> str:
    url = req.url or ""
    if not url.startswith("git+"):
        return str(req)  # an archive URL names one file: it does not move (give a hash for certainty)
    base, sep, ref = url[4:].rpartition("@")
    if not sep or not ref or "/" in ref:  # `git+ssh://git@host/org/repo`: that @ is the user's
        raise FlowInputError(f"{field}: '{req}' names no branch or commit (write git+URL@BRANCH)")
    if _SHA.match(ref):
        return str(req)
    try:
        res = subprocess.run(["git", "ls-remote", base, ref], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                             env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FlowInputError(f"{field}: cannot read {base} ({type(exc).__name__})") from None
    shas = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    if res.returncode != 0 or len(shas) != 1:
        why = (res.stderr.strip().splitlines() or ["no such branch or tag"])[-1] if len(shas) < 2 else \
            "it names several commits"
        raise FlowInputError(f"{field}: cannot resolve '{ref}' in {base} ({why}); give a commit")
    return f"{req.name}{_extras(req)} @ git+{base}@{shas.pop()}"


def _pip_pick(field: str, req: Requirement) -> str:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", "--report", "-", str(req)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FlowInputError(f"{field}: pip did not resolve '{req}' within {PIP_TIMEOUT_S:.0f} s") from None
    try:
        installs = json.loads(res.stdout or "{}").get("install") or []
        version = str(installs[0]["metadata"]["version"])
    except (ValueError, LookupError, TypeError):
        detail = (res.stderr.strip().splitlines() or ["no answer"])[-1]
        raise FlowInputError(f"{field}: pip cannot resolve '{req}' ({detail})") from None
    return version
