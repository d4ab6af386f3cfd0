"""Calibration rows -> calibration tokens, for llm-compressor's `oneshot`.

Where the rows come from and how they are shaped is decided (and checked) by the spec:
automation/standards/calibration.py. Here the rows are read, shuffled with the spec's seed, cut
to `num_samples`, rendered (plain text, or chat messages through a chat template) and tokenized
to `max_seq_length`.
"""

from __future__ import annotations

import json
import random
from typing import Any

from automation.scripts.lib.tiny_model import tiny_corpus
from automation.standards.calibration import CalibrationOptions, describe, source_kind


def needs_hub(source: str | None) -> bool:
    return source is not None and source_kind(source) in ("hub", "llmcompressor")


def _tiny_rows(num_samples: int) -> list[str]:
    texts = tiny_corpus()
    # Cycle the ~100 facts so any requested sample count is honoured exactly.
    return [texts[i % len(texts)] for i in range(num_samples)]


def _file_rows(options: CalibrationOptions) -> list[Any]:
    column = options.column()
    return [json.loads(line)[column] for line in (options.rows or "").splitlines() if line.strip()]


def _hub_rows(source: str, options: CalibrationOptions, num_samples: int, seed: int) -> tuple[list[Any], str | None]:
    from datasets import load_dataset

    dataset = load_dataset(source, options.subset, split=options.split or "train", revision=options.revision)
    column = options.column()
    if column not in dataset.column_names:
        raise ValueError(f"calibration {source}: no column {column!r} (columns: {', '.join(dataset.column_names)}); "
                         "set calibration_options.text_column or messages_column")
    if options.shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.select(range(min(num_samples, len(dataset))))
    return list(dataset[column]), getattr(dataset, "_fingerprint", None)


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
    if kind == "llmcompressor":
        return source, info  # llm-compressor's own loader and preprocessing
    if kind == "builtin":
        rows: list[Any] = _tiny_rows(num_samples)
    elif kind == "file":
        rows = _file_rows(options)
    else:
        rows, fingerprint = _hub_rows(source, options, num_samples, seed)
        info["fingerprint"] = fingerprint
    info["rows_available"] = len(rows)
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
