"""Git repositories built by tests: what agents and the plan read code and libraries from."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> str:
    """`git ARGS` in `cwd` with a throwaway identity; its output, stripped."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def one_commit_repo(work: Path, files: dict[str, str] | None = None) -> str:
    """A new repository at `work` on branch `main` holding `files` (default: one file) in one
    commit; returns the commit."""
    work.mkdir(parents=True, exist_ok=True)
    git(work, "init", "--quiet", "--initial-branch=main")
    for name, text in (files or {"a.txt": "a\n"}).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "one")
    return git(work, "rev-parse", "HEAD")
