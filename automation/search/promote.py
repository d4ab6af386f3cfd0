"""A trial's recipe as a named recipe file: the searched recipe with the trial's arguments as its
defaults, provenance in its description. The file is a recipe like the shipped ones: give it as
`--recipe path/NAME.yaml`, or copy it into automation/standards/recipes/ to ship it by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from automation.errors import FlowInputError
from automation.search.report import TrialRecord
from automation.standards import resolve
from automation.standards.recipes import load_template, render_recipe

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def promoted_text(trial: TrialRecord, study: str) -> str:
    if trial.state != "complete" or trial.recipe is None:
        raise FlowInputError(f"trial: trial {trial.number} did not complete; promote a completed one")
    _, text = resolve("recipe", trial.recipe)
    doc: dict[str, Any] = yaml.safe_load(text)
    if "template" not in doc:
        raise FlowInputError(f"trial: recipe {trial.recipe!r} is a plain llm-compressor recipe without arguments")
    arguments = doc.setdefault("arguments", {})
    for name, value in trial.recipe_args.items():
        arguments[name] = {**(arguments.get(name) or {}), "default": value}
    chosen = ", ".join(f"{k}={v}" for k, v in trial.recipe_args.items()) or "the recipe's defaults"
    scores = ", ".join(f"{k} {v:.4g}" for k, v in trial.values.items())
    doc["description"] = (f"{' '.join(str(doc.get('description', '')).split())} Promoted from recipe search "
                          f"{study}, trial {trial.number} ({chosen}; {scores}).")
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def promote(trial: TrialRecord, study: str, name: str, directory: Path) -> Path:
    """Write `directory/NAME.yaml`; refuses to overwrite, checks the file renders."""
    if not _NAME.match(name):
        raise FlowInputError(f"name: {name!r} must be lowercase letters, digits, '_' or '-' (a recipe name)")
    path = directory / f"{name}.yaml"
    if path.exists():
        raise FlowInputError(f"name: {path} exists; choose another name or remove it")
    text = promoted_text(trial, study)
    load_template(text)
    render_recipe(text, {})  # the defaults it now carries must render
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Recipe promoted from recipe search {study}, trial {trial.number}.\n{text}")
    return path
