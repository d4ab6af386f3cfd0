"""Calibration rows -> calibration tokens, for llm-compressor's `oneshot`.

Where the rows come from and how they are shaped is decided (and checked) by the spec:
automation/standards/calibration.py. Here the rows are read, shuffled with the spec's seed, cut
to `num_samples`, rendered (plain text, or chat messages through a chat template) and tokenized
to `max_seq_length`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from automation.scripts.lib.tiny_model import tiny_corpus
from automation.standards.calibration import CalibrationOptions, describe, source_kind


def needs_hub(source: str | None) -> bool:
    return source is not None and source_kind(source) in ("hub", "llmcompressor")


# A loader: (source, options, num_samples, seed) -> (rows, what to record). Rows are text or
# message lists; the loader may cut and shuffle them itself (the hub one does, to read less).
Rows = tuple[list[Any], dict[str, Any]]
Loader = Callable[[str, CalibrationOptions, int, int], Rows]


def _tiny_rows(source: str, options: CalibrationOptions, num_samples: int, seed: int) -> Rows:
    texts = tiny_corpus()
    # Cycle the ~100 facts so any requested sample count is honoured exactly.
    return [texts[i % len(texts)] for i in range(num_samples)], {}


def _file_rows(source: str, options: CalibrationOptions, num_samples: int, seed: int) -> Rows:
    column = options.column()
    return [json.loads(line)[column] for line in (options.rows or "").splitlines() if line.strip()], {}


def _hub_rows(source: str, options: CalibrationOptions, num_samples: int, seed: int) -> Rows:
    from datasets import load_dataset

    dataset = load_dataset(source, options.subset, split=options.split or "train", revision=options.revision)
    column = options.column()
    if column not in dataset.column_names:
        raise ValueError(f"calibration {source}: no column {column!r} (columns: {', '.join(dataset.column_names)}); "
                         "set calibration_options.text_column or messages_column")
    available = len(dataset)
    if options.shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.select(range(min(num_samples, available)))
    return list(dataset[column]), {"rows_available": available, "fingerprint": getattr(dataset, "_fingerprint", None)}


# By source kind (automation.standards.calibration.source_kind); llm-compressor's aliases go to
# `oneshot` by name, with its own loader.
LOADERS: dict[str, Loader] = {"builtin": _tiny_rows, "file": _file_rows, "hub": _hub_rows}


def render(rows: list[Any], options: CalibrationOptions, tokenizer: Any) -> list[str]:
    """Rows as the text the model sees: plain text, or messages through the chat template."""
    if not options.messages_column:
        return [str(r) for r in rows]
    if not options.apply_chat_template:
        return ["\n\n".join(m["content"] for m in messages) for messages in rows]
    template = options.chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("calibration_options.apply_chat_template: the model's tokenizer has no chat template; "
                         "give one in calibration_options.chat_template")
    return [tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template) for messages in rows]


def load(source: str, options: CalibrationOptions, tokenizer: Any, num_samples: int, max_seq_length: int,
         seed: int) -> tuple[Any, dict[str, Any]]:
    """(what `oneshot` takes as `dataset`, what the result records about it)."""
    info = describe(source, options)
    kind = source_kind(source)
    if kind not in LOADERS:
        return source, info  # an llm-compressor alias: its own loader and preprocessing
    rows, found = LOADERS[kind](source, options, num_samples, seed)
    info["rows_available"] = len(rows)
    info.update(found)
    if options.shuffle and kind != "hub":
        random.Random(seed).shuffle(rows)
    rows = rows[:num_samples]
    texts = render(rows, options, tokenizer)
    # A chat template writes its own special tokens (BOS among them); plain text gets the tokenizer's.
    templated = bool(options.messages_column and options.apply_chat_template)
    encoded = tokenizer(texts, max_length=max_seq_length, truncation=True, padding=False,
                        add_special_tokens=not templated)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    info.update(samples=len(texts), templated=templated, tokens_mean=round(sum(lengths) / max(len(lengths), 1), 1),
                truncated=sum(n >= max_seq_length for n in lengths), first_sample=texts[0][:500] if texts else "")
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}), info
