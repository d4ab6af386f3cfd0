"""Which code the agents run, decided once per run at plan time and recorded.

    URL@COMMIT   that commit (40 hex)
    URL@REF      a branch or tag, resolved to its commit now (`git ls-remote`): a sweep never runs
                 two versions of a core script, and the report says which one ran
    worktree     the agents' installed working tree (what the local stack's agents run)
    (nothing)    $AUTOMATION_CODE if set; else the working tree on the local stack (`automation
                 local up` marks its env with AUTOMATION_LOCAL_STACK); else this checkout's HEAD,
                 when it is clean and on a branch of its `origin`, which agents can clone

Anything else is one error naming `code` and the fix, before anything is queued.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from automation.errors import FlowInputError
from automation.specs.base import CodeRef

WORKTREE = "worktree"
LOCAL_STACK_ENV = "AUTOMATION_LOCAL_STACK"
CODE_ENV = "AUTOMATION_CODE"
GIT_TIMEOUT_S = 30.0
_SHA = re.compile(r"^[0-9a-f]{40}$")


def resolve_code(text: str | None, environ: Mapping[str, str] | None = None, checkout: Path | None = None) -> CodeRef:
    env = os.environ if environ is None else environ
    text = (text or "").strip() or env.get(CODE_ENV, "").strip()
    if text == WORKTREE:
        return CodeRef()
    if not text:
        if env.get(LOCAL_STACK_ENV):
            return CodeRef()
        return checkout_head(checkout or _this_checkout())
    repository, sep, ref = text.rpartition("@")
    if not sep or not repository or not ref:
        raise FlowInputError(f"code: '{text}' is not URL@COMMIT or URL@BRANCH (or '{WORKTREE}')")
    if _SHA.match(ref):
        return _code(repository, ref)
    out = _git("ls-remote", repository, ref, what=f"code: cannot read {repository}")
    shas = {line.split()[0] for line in out.splitlines() if line.strip()}
    if not shas:
        raise FlowInputError(f"code: no branch or tag '{ref}' in {repository}; give a commit (URL@<40-hex>) "
                             "or an existing branch")
    if len(shas) > 1:
        raise FlowInputError(f"code: '{ref}' names several commits in {repository}; use refs/heads/{ref} or "
                             f"refs/tags/{ref}")
    return _code(repository, shas.pop())


def checkout_head(checkout: Path) -> CodeRef:
    """This checkout's HEAD as agents can fetch it: clean, and contained in a branch of `origin`."""
    fix = f"pass code=URL@COMMIT (--code), or code={WORKTREE} for agents that run their installed tree"
    if not (checkout / ".git").exists():
        raise FlowInputError(f"code: none given, and {checkout} is not a git checkout to take HEAD from; {fix}")
    if _git("status", "--porcelain", "--untracked-files=no", cwd=checkout, what="code: git status"):
        raise FlowInputError(f"code: none given, and the checkout {checkout} has uncommitted changes, so its "
                             f"HEAD is not what would run; commit and push them, or {fix}")
    origin = _git("config", "--get", "remote.origin.url", cwd=checkout, what="code: no remote 'origin'",
                  missing_ok=True)
    if not origin:
        raise FlowInputError(f"code: none given, and {checkout} has no remote 'origin' agents could clone; {fix}")
    head = _git("rev-parse", "HEAD", cwd=checkout, what="code: git rev-parse HEAD")
    if not _git("branch", "--remotes", "--contains", head, cwd=checkout, what="code: git branch"):
        raise FlowInputError(f"code: none given, and HEAD {head[:12]} is on no branch of origin (push it); {fix}")
    return _code(origin, head)


def _code(repository: str, commit: str) -> CodeRef:
    try:
        return CodeRef(repository=repository, commit=commit)
    except ValueError as exc:
        raise FlowInputError(f"code: {exc}") from None


def _this_checkout() -> Path:
    return Path(__file__).resolve().parents[2]


def _git(*args: str, what: str, cwd: Path | None = None, missing_ok: bool = False) -> str:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                             env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except FileNotFoundError:
        raise FlowInputError(f"{what}: git is not installed here") from None
    except subprocess.TimeoutExpired:
        raise FlowInputError(f"{what}: git did not answer in {GIT_TIMEOUT_S:.0f} s (is the host reachable?)") from None
    if res.returncode != 0:
        if missing_ok:
            return ""
        detail = (res.stderr.strip().splitlines() or ["failed"])[-1]
        raise FlowInputError(f"{what} ({detail})")
    return res.stdout.strip()
