"""Which code the agents run, decided once per run at plan time and recorded.

    URL@COMMIT   that commit (40 hex)
    URL@REF      a branch or tag, resolved to its commit now (`git ls-remote`): a sweep never runs
                 two versions of a core script, and the report says which one ran
    worktree     the agents' installed working tree (what the local stack's agents run)
    (nothing)    $AUTOMATION_CODE if set; else the working tree on the local stack (`automation
                 local up` marks its env with AUTOMATION_LOCAL_STACK); else this checkout's HEAD,
                 when it is clean and on a branch of its `origin`, which agents can clone

Anything else is one error naming `code` and the fix, before anything is queued.

Which steps a code change recomputes: `source_digest` hashes the files a kind's core script
imports of this product (its module, and every `automation.*` module it imports, transitively,
lazy imports included), read at the pinned commit or from the working tree. A spec carrying it
(`CodeRef.source_digest`) is identified by that content instead of the commit, so a commit that
changes only the compress core script recomputes compressions (and the evaluations of their new
models), not the base model's evaluation. Where the files cannot be read (a remote repository
this host has not fetched), no digest is set and the commit itself is in the identity: every
step recomputes, the safe direction.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tokenize
from collections.abc import Callable, Mapping
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


# -- what a kind's core script is made of ----------------------------------------------------------
PACKAGE = "automation"
Reader = Callable[[str], bytes | None]  # repository-relative path -> content, None when absent


def _candidates(module: str) -> list[str]:
    base = module.replace(".", "/")
    return [f"{base}.py", f"{base}/__init__.py"]


def _statements(data: bytes) -> list[list[str]]:
    """The import statements of a file as token lists (`from`, `.`, `x`, `import`, `y`, ...), from
    Python's tokenizer: strings and comments are never read as code. Not `ast`: CPython 3.11's
    parser can fail with "AST constructor recursion depth mismatch" when another thread parses at
    the same time (a served flow process does), and this runs inside flow runs."""
    out: list[list[str]] = []
    line: list[str] = []
    try:
        for tok in tokenize.tokenize(io.BytesIO(data).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or (tok.type == tokenize.OP and tok.string == ";"):
                if line and line[0] in ("import", "from"):
                    out.append(line)
                line = []
            elif tok.type in (tokenize.NAME, tokenize.OP):
                if tok.type == tokenize.OP and tok.string == ":" and line and line[0] not in ("import", "from"):
                    line = []  # `if TYPE_CHECKING: import x`, `try: import x`: the statement after the colon
                    continue
                line.append(tok.string)
    except (tokenize.TokenError, SyntaxError):
        pass  # a broken file: what was read so far (it is hashed whole anyway)
    return out


def _names(tokens: list[str]) -> list[str]:
    """`a.b as c, d` -> [a.b, d] (parentheses dropped)."""
    names, current, skip = [], "", False
    for tok in [t for t in tokens if t not in ("(", ")")] + [","]:
        if tok == ",":
            if current:
                names.append(current)
            current, skip = "", False
        elif tok == "as":
            skip = True
        elif not skip:
            current += tok
    return names


def _imported(module: str, path: str, data: bytes) -> set[str]:
    """The `automation.*` modules a file imports (lazy ones too; `from x import y` may name a
    module y of package x: both are kept, the ones that do not exist drop out later)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    for statement in _statements(data):
        if statement[0] == "import":
            found |= set(_names(statement[1:]))
            continue
        if "import" not in statement:
            continue
        cut = statement.index("import")
        source_tokens, imported = statement[1:cut], _names(statement[cut + 1:])
        lead = next((i for i, t in enumerate(source_tokens) if set(t) != {"."}), len(source_tokens))
        level = sum(len(t) for t in source_tokens[:lead])  # `from ..x import y`: the leading dots only
        source = "".join(source_tokens[lead:])
        if level:
            parts = package.split(".")
            anchor = ".".join(parts[:len(parts) - level + 1])
            source = f"{anchor}.{source}" if source else anchor
        found.add(source)
        found |= {f"{source}.{name}" for name in imported if name != "*"}
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def source_files(module: str, read: Reader) -> dict[str, bytes]:
    """Every file of this product that importing `module` runs: the module, its parent
    packages' `__init__.py`, and what they import of the product, transitively."""
    files: dict[str, bytes] = {}
    pending, seen = [module], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        for path in _candidates(name):
            data = read(path)
            if data is None:
                continue
            files[path] = data  # a broken file is hashed too: it is a change
            pending += sorted(_imported(name, path, data) - seen)
            break
    return files


def digest_files(files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()[:32]


def worktree_reader(root: Path) -> Reader:
    def read(path: str) -> bytes | None:
        file = root / path
        return file.read_bytes() if file.is_file() else None
    return read


def _local_git_dir(repository: str) -> Path | None:
    """The repository as a directory this host can read objects from: a local path or file://."""
    text = repository.removeprefix("file://")
    path = Path(text)
    return path if not re.match(r"^[a-z+]+://", text) and ":" not in text.split("/")[0] and path.is_dir() else None


def commit_reader(git_dir: Path, commit: str) -> Reader | None:
    """Files at `commit`, read from `git_dir` (None when it does not hold that commit)."""
    try:
        ok = subprocess.run(["git", "-C", str(git_dir), "cat-file", "-e", f"{commit}^{{commit}}"],
                            capture_output=True, timeout=GIT_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not ok:
        return None

    def read(path: str) -> bytes | None:
        res = subprocess.run(["git", "-C", str(git_dir), "show", f"{commit}:{path}"], capture_output=True,
                             timeout=GIT_TIMEOUT_S)
        return res.stdout if res.returncode == 0 else None
    return read


def code_reader(code: CodeRef, checkout: Path | None = None) -> Reader | None:
    """How to read the files `code` runs: the working tree (the agents run the same installed
    tree: the local stack), or the pinned commit from a local repository or from this checkout
    when it holds the commit; None when this host cannot see them."""
    root = checkout or _this_checkout()
    if code.is_working_tree:
        return worktree_reader(root)
    assert code.repository and code.commit
    prefix = "" if code.working_dir in ("", ".") else code.working_dir.strip("/") + "/"
    for git_dir in (_local_git_dir(code.repository), root if (root / ".git").exists() else None):
        if git_dir is None:
            continue
        reader = commit_reader(git_dir, code.commit)
        if reader is not None:
            return reader if not prefix else _under(prefix, reader)
    return None


def _under(prefix: str, read: Reader) -> Reader:
    return lambda path: read(prefix + path)


def _module_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def kind_digests(read: Reader, kinds: Mapping[str, str]) -> dict[str, str | None]:
    """The digest of each kind's own files (kind -> script module; None when none are found).
    The other kinds' spec modules are left out: the runtime imports every kind (the registry, to
    read a task's spec), but one kind's pins or fields never change another's output, so bumping
    the compress kind's llm-compressor pin recomputes compressions only."""
    from automation.specs.registry import KINDS

    out: dict[str, str | None] = {}
    for kind, module in kinds.items():
        foreign = {_module_path(cls.__module__) for name, cls in KINDS.items() if name != kind}
        files = {path: data for path, data in source_files(module, read).items() if path not in foreign}
        out[kind] = digest_files(files) if files else None
    return out


def with_source_digests(code: CodeRef, kinds: Mapping[str, str], checkout: Path | None = None,
                        ) -> dict[str, CodeRef]:
    """`code` per kind (kind -> script module), each with the digest of the kind's own files
    (`kind_digests`) where this host can read them, else as given."""
    reader = code_reader(code, checkout)
    digests = kind_digests(reader, kinds) if reader is not None else {}
    return {kind: CodeRef.model_validate({**code.model_dump(), "source_digest": digests[kind]})
            if digests.get(kind) else code for kind in kinds}
