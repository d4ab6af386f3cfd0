"""The `compress` kind: llm-compressor `oneshot` with a named recipe and calibration data."""

from __future__ import annotations

import re
import typing
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from automation.errors import RecipeError, StandardError
from automation.specs.base import TaskSpec, added_field, volatile
from automation.specs.model_ref import ModelRef
from automation.standards import check_calibration, inline_if_file
from automation.standards.calibration import CalibrationOptions, is_local_file, read_file
from automation.standards.recipes import (
    MODEL_DTYPES,
    RecipeTemplate,
    check_model_dtype,
    check_recipe_applies,
    effective_arguments,
    load_template,
    model_dims_from_config,
    render_recipe,
)

ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
assert set(MODEL_DTYPES) <= set(typing.get_args(ModelDtype))  # one list of dtypes: the recipes' and the field's
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*$")

COMPRESS_PACKAGES = ("llmcompressor==0.14.0.1", "compressed-tensors==0.19.0", "transformers==5.17.0")


class CompressSpec(TaskSpec):
    kind: ClassVar[str] = "compress"
    script_module: ClassVar[str] = "automation.scripts.compress"
    base_packages: ClassVar[tuple[str, ...]] = COMPRESS_PACKAGES
    reports: ClassVar[str] = ("the compressed model (a ClearML OutputModel); single values time/compute_s, "
                              "time/wall_s, memory/peak_rss_mb, size/before_mb, size/after_mb, size/ratio; "
                              "artifacts recipe, compress_result, output_checks (on a failed check)")
    task_type: ClassVar[str] = "training"

    model: ModelRef = Field(description="model to compress: hf:org/name[@rev], a local path, clearml:<model id>")
    recipe: str = Field(description="recipe: a standard name (w4a16, w8a8, fp8_dynamic), a file path, or "
                                    "inline YAML (a recipe template or a plain llm-compressor recipe)")
    recipe_args: dict[str, Any] = Field(default_factory=dict, description="recipe template arguments")
    calibration: str | None = Field(
        "open_platypus", description="calibration dataset: 'tiny' (built in), an llm-compressor alias, a "
                                     "hub dataset id or a local .jsonl file; none for data-free recipes")
    num_samples: int = Field(512, ge=1, le=1_000_000, description="calibration samples")
    max_seq_length: int = Field(2048, ge=8, le=1_048_576, description="calibration sequence length")
    seed: int = Field(0, ge=0, description="random seed (calibration sampling)")
    output_name: str | None = volatile(None, description="name of the output model (default: <model>-<recipe>)")
    verify: bool = volatile(True, description="check the compressed model (files, quantization config, reload, "
                                              "a greedy prompt) and fail the step if it is bad")
    calibration_options: CalibrationOptions = added_field(
        default_factory=CalibrationOptions, since="2026-12",
        description="how calibration rows become text: subset, split, revision, text or messages column, chat "
                    "template, shuffle (see automation/standards/calibration.py)")
    model_class: str | None = added_field(
        None, since="2026-12", description="transformers class that loads the model (none = AutoModelForCausalLM; "
                                           "e.g. AutoModelForImageTextToText for a vision-language model)")
    trust_remote_code: bool = added_field(False, since="2026-12",
                                          description="run the model repository's own modelling code")
    dtype: ModelDtype = added_field("auto", since="2026-12",
                                    description="dtype the model is loaded and compressed in (auto = its own)")
    check_prompt: str = volatile("Q: What is the capital of France?\nA:",
                                 description="prompt the output check completes greedily")

    @model_validator(mode="before")
    @classmethod
    def _read_calibration_file(cls, data: Any) -> Any:
        """A local .jsonl file travels in the spec: `file:<name>` plus its rows (see calibration.py)."""
        if isinstance(data, dict) and isinstance(data.get("calibration"), str) and is_local_file(data["calibration"]):
            source, rows = read_file(data["calibration"])
            options = data.get("calibration_options") or {}
            if isinstance(options, CalibrationOptions):
                options = options.model_dump(exclude_defaults=True)
            data = {**data, "calibration": source, "calibration_options": {**options, "rows": rows}}
        return data

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        try:
            value = inline_if_file("recipe", value)
            load_template(value)
        except (StandardError, RecipeError) as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("calibration")
    @classmethod
    def _known_calibration(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "none"):
            return None
        try:
            return check_calibration(value)
        except StandardError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("recipe_args")
    @classmethod
    def _recipe_applies(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        model, recipe = info.data.get("model"), info.data.get("recipe")
        if not isinstance(model, ModelRef) or not isinstance(recipe, str):
            return value  # those fields failed already and are reported
        config = model.config()
        try:
            args = effective_arguments(recipe, value, config)
            render_recipe(recipe, args)
            if config is not None:
                check_recipe_applies(recipe, args, model_dims_from_config(config))
        except RecipeError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("model_class")
    @classmethod
    def _class_name(cls, value: str | None) -> str | None:
        if value is not None and not _CLASS_NAME.match(value):
            raise ValueError(f"{value!r} is not a transformers class name (e.g. AutoModelForCausalLM, "
                             "Qwen2VLForConditionalGeneration)")
        return value

    @model_validator(mode="after")
    def _fits_together(self) -> CompressSpec:
        template = self.template()
        try:
            self.calibration_options.check_source(self.calibration)
        except ValueError as exc:
            raise ValueError(f"calibration_options: {exc}") from None
        if self.calibration is None and template.calibration_needed(self.recipe_args):
            raise ValueError(f"calibration: recipe {template.name!r} observes calibration data; set calibration "
                             "(tiny, an llm-compressor alias, a hub dataset id or a .jsonl file)")
        try:
            check_model_dtype(self.recipe, self.dtype, self.model.config())
        except RecipeError as exc:
            raise ValueError(f"dtype: {exc}") from None
        return self

    def standards_content(self) -> dict[str, Any]:
        # Rendered with the spec's own arguments, not the model-implied ones: what the model
        # implies depends on whether its config is readable here (a hub cache), and the model is
        # in the identity already. The template's data tables cover the families not rendered.
        return {"recipe": render_recipe(self.recipe, self.recipe_args), "recipe_data": load_template(self.recipe).data}

    def template(self) -> RecipeTemplate:
        return load_template(self.recipe)

    def recipe_name(self) -> str:
        return self.template().name

    def needs_calibration(self) -> bool:
        return self.template().calibration_needed(self.recipe_args) and self.calibration is not None

    def input_model_id(self) -> str | None:
        return self.model.clearml_model_id

    def task_name(self) -> str:
        return self.name or f"compress-{self.model.short_name()}-{self.recipe_name()}-{self.identity()[:8]}"
