"""Named standards shipped with the package: recipes, evaluation suites, benchmark profiles.

Pure data + loaders: nothing here imports an ML library, so specs and flows can validate names
and arguments before any work is queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

STANDARDS_DIR = Path(__file__).resolve().parent
SUITES_DIR = STANDARDS_DIR / "suites"
PROFILES_DIR = STANDARDS_DIR / "profiles"
RECIPES_DIR = STANDARDS_DIR / "recipes"


class StandardNotFoundError(KeyError):
    pass


def _names(directory: Path, pattern: str) -> list[str]:
    return sorted(p.stem if p.is_file() else p.name for p in directory.glob(pattern))


def suite_names() -> list[str]:
    return sorted(p.name for p in SUITES_DIR.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def suite_dir(name: str) -> Path:
    """Directory of lm-eval task YAMLs for a named suite (the `include_path` of lm-eval)."""
    path = SUITES_DIR / name
    if not path.is_dir():
        raise StandardNotFoundError(f"unknown evaluation suite {name!r}; known: {suite_names()}")
    return path


def profile_names() -> list[str]:
    return _names(PROFILES_DIR, "*.yaml")


def load_profile(name: str) -> dict[str, Any]:
    """A benchmark profile (workload shape, rate, limits) as a plain dict."""
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise StandardNotFoundError(f"unknown benchmark profile {name!r}; known: {profile_names()}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"profile {name!r} must be a mapping")
    data.setdefault("name", name)
    return data
