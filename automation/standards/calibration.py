"""Calibration data for the `compress` kind: where it comes from and how rows become text.

A compress spec names its source in `calibration` and shapes it with `calibration_options`:

- `tiny`: built in (the tiny suite's facts; for the tiny model and CPU tests);
- an llm-compressor alias (`open_platypus`, `ultrachat_200k`, ...): llm-compressor's own loader
  and preprocessing, taken as they are;
- a Hugging Face dataset id (`org/name`): subset, split, revision, a text or a chat-messages
  column, the model's chat template (or one given), shuffling with the spec's seed;
- a local JSONL file (`path/to/file.jsonl`): read when the spec is built and carried in the spec
  itself (`file:<name>` plus the rows), so an agent on another host calibrates on exactly those
  rows, and their content is part of the identity.

Pure data and checks: nothing here imports an ML library, so a bad column or a chat template
without messages is an error before anything is queued. The rows are turned into tokens by the
core script (automation/scripts/lib/calibration_data.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from automation.errors import StandardError

CALIBRATION_SETS: dict[str, str] = {
    "tiny": "the tiny suite's facts (built in; for the tiny model and CPU tests)",
}
LLMCOMPRESSOR_DATASETS = ("open_platypus", "ultrachat_200k", "ultrachat-200k", "gsm8k", "c4", "wikitext",
                          "cnn_dailymail", "evolcodealpaca", "flickr", "peoples_speech")
FILE_PREFIX = "file:"
# The rows travel in the task's configuration; the stand-in and ClearML take request bodies of tens
# of MiB, and a calibration set of 512 x 2k-token samples is about 4 MiB of text.
MAX_FILE_BYTES = 8 * 1024 * 1024
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def source_kind(name: str) -> str:
    """'builtin', 'llmcompressor', 'hub' or 'file' for a checked `calibration` value."""
    if name in CALIBRATION_SETS:
        return "builtin"
    if name in LLMCOMPRESSOR_DATASETS:
        return "llmcompressor"
    if name.startswith(FILE_PREFIX):
        return "file"
    return "hub"


def is_local_file(value: str) -> bool:
    """A `calibration` value naming a JSONL file on this machine (to be read into the spec)."""
    return value.strip().endswith((".jsonl", ".json")) and not value.startswith(FILE_PREFIX)


def check_calibration(name: str) -> str:
    name = name.strip()
    if name in CALIBRATION_SETS or name in LLMCOMPRESSOR_DATASETS or name.startswith(FILE_PREFIX):
        return name
    if _HUB_ID.match(name):
        return name  # a hub dataset id
    raise StandardError(
        f"unknown calibration dataset {name!r}; built in: {', '.join(CALIBRATION_SETS)}; llm-compressor "
        f"aliases: {', '.join(LLMCOMPRESSOR_DATASETS)}; a Hugging Face dataset id (org/name); or a local "
        ".jsonl file")


class CalibrationOptions(BaseModel):
    """How the calibration source's rows become calibration text (defaults: what the compress
    kind did before these options existed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subset: str | None = Field(None, description="hub dataset configuration (subset) name")
    split: str | None = Field(None, description="hub dataset split, slicing allowed ('train_sft[:2048]'); "
                                                "none = 'train'")
    revision: str | None = Field(None, description="hub dataset revision; a commit id pins the data")
    text_column: str | None = Field(None, description="column of plain text (none = 'text' unless "
                                                      "messages_column is set)")
    messages_column: str | None = Field(None, description="column of chat messages ([{role, content}, ...])")
    apply_chat_template: bool = Field(False, description="render messages with the chat template "
                                                         "(the tokenizer's, or chat_template)")
    chat_template: str | None = Field(None, description="Jinja chat template to use instead of the "
                                                        "tokenizer's (for a base model that has none)")
    shuffle: bool = Field(False, description="shuffle the rows with the spec's seed before taking num_samples")
    rows: str | None = Field(None, description="set from a local .jsonl file: its rows (JSON lines)")

    @model_validator(mode="after")
    def _consistent(self) -> CalibrationOptions:
        if self.text_column and self.messages_column:
            raise ValueError("calibration_options: give text_column or messages_column, not both")
        if self.apply_chat_template and not self.messages_column:
            raise ValueError("calibration_options.apply_chat_template needs messages_column (the column of "
                             "chat messages to render)")
        if self.chat_template is not None and not self.apply_chat_template:
            raise ValueError("calibration_options.chat_template is only used with apply_chat_template: true")
        return self

    def column(self) -> str:
        return self.messages_column or self.text_column or "text"

    def check_source(self, source: str | None) -> None:
        """Raise ValueError for an option the source cannot honour (naming it and the fix)."""
        if source is None:
            if self != CalibrationOptions():
                raise ValueError("calibration_options are set but calibration is none")
            return
        kind = source_kind(source)
        given = {k for k, v in self.model_dump(exclude={"rows"}).items() if v not in (None, False)}
        if kind == "llmcompressor" and given:
            raise ValueError(f"calibration_options {sorted(given)} do not apply to llm-compressor's alias "
                             f"{source!r} (it brings its own preprocessing); name the hub dataset instead")
        if kind == "builtin" and given - {"shuffle"}:
            raise ValueError(f"calibration_options {sorted(given - {'shuffle'})} do not apply to the built-in "
                             f"set {source!r}")
        if kind != "hub" and (self.subset or self.revision or self.split):
            field = "subset" if self.subset else "revision" if self.revision else "split"
            raise ValueError(f"calibration_options.{field} applies to a hub dataset, not to {source!r}")
        if kind == "file":
            if self.rows is None:
                raise ValueError(f"calibration {source!r} carries no rows: give the path of a local .jsonl file")
            check_rows(source, self.rows, self.column(), messages=bool(self.messages_column))
        elif self.rows is not None:
            raise ValueError("calibration_options.rows is set from a local .jsonl file only")


def check_rows(source: str, text: str, column: str, messages: bool) -> int:
    """The number of rows of JSONL `text`; each must be an object with `column` holding text (or
    a list of {role, content} messages). Raises ValueError naming the first bad line."""
    count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"calibration {source}: line {number} is not JSON ({exc})") from None
        value = row.get(column) if isinstance(row, dict) else None
        if messages:
            ok = isinstance(value, list) and bool(value) and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
            what = "a non-empty list of {role, content} messages"
        else:
            ok = isinstance(value, str) and bool(value.strip())
            what = "non-empty text"
        if not ok:
            raise ValueError(f"calibration {source}: line {number}: column {column!r} must hold {what} "
                             "(set calibration_options.text_column or messages_column)")
        count += 1
    if not count:
        raise ValueError(f"calibration {source}: no rows")
    return count


def read_file(value: str) -> tuple[str, str]:
    """(`file:<name>`, rows text) of a local JSONL file, or a ValueError naming the problem."""
    path = Path(value.strip()).expanduser()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"calibration file {value!r} cannot be read ({exc.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise ValueError(f"calibration file {value!r} is {size // (1024 * 1024)} MiB; at most "
                         f"{MAX_FILE_BYTES // (1024 * 1024)} MiB travel in a spec: put larger sets on the hub "
                         "(or a dataset repository) and name them by id")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"calibration file {value!r} cannot be read as UTF-8 text ({exc})") from None
    return f"{FILE_PREFIX}{path.name}", text


def rows_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def describe(source: str | None, options: CalibrationOptions) -> dict[str, Any]:
    """What a compress result records about its calibration data."""
    if source is None:
        return {"source": None}
    out: dict[str, Any] = {"source": source, "kind": source_kind(source)}
    out.update({k: v for k, v in options.model_dump(exclude={"rows", "chat_template"}).items()
                if v not in (None, False)})
    if options.chat_template is not None:
        out["chat_template_sha256"] = rows_digest(options.chat_template)
    if options.rows is not None:
        out["rows_sha256"] = rows_digest(options.rows)
    return out
