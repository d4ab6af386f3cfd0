"""The model's transformers class and its module tree, shared by the compress step and its output
checks (neither imports the other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automation.errors import ModelInputError


def model_class(name: str | None) -> Any:
    """The transformers class that loads the model, or a one-line error naming the field."""
    import transformers

    cls = getattr(transformers, name or "AutoModelForCausalLM", None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelInputError(f"model_class: transformers {transformers.__version__} has no model class {name!r} "
                              "(e.g. AutoModelForCausalLM, AutoModelForImageTextToText)")
    return cls


def meta_model(model_dir: Path, model_class_name: str | None, trust_remote_code: bool) -> Any:
    """The model's module tree on the meta device: no weights read, no memory (names and types only)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    config.quantization_config = None  # the tree as it was built, not as a quantizer would patch it
    cls = model_class(model_class_name)
    with torch.device("meta"):
        return cls.from_config(config, trust_remote_code=trust_remote_code)
