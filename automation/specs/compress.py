"""The `compress` kind: llm-compressor `oneshot` with a named recipe and calibration data."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from automation.errors import RecipeError, StandardError
from automation.specs.base import TaskSpec, volatile
from automation.specs.model_ref import ModelRef
from automation.standards import check_calibration, inline_if_file
from automation.standards.recipes import (
    check_recipe_applies,
    effective_arguments,
    load_template,
    model_dims_from_config,
    render_recipe,
)

COMPRESS_PACKAGES = ("llmcompressor==0.14.0.1", "compressed-tensors==0.19.0", "transformers==5.17.0")


class CompressSpec(TaskSpec):
    kind: ClassVar[str] = "compress"
    script_module: ClassVar[str] = "automation.scripts.compress"
    base_packages: ClassVar[tuple[str, ...]] = COMPRESS_PACKAGES
    task_type: ClassVar[str] = "training"

    model: ModelRef = Field(description="model to compress: hf:org/name[@rev], a local path, clearml:<model id>")
    recipe: str = Field(description="recipe: a standard name (w4a16, w8a8, fp8_dynamic), a file path, or "
                                    "inline YAML (a recipe template or a plain llm-compressor recipe)")
    recipe_args: dict[str, Any] = Field(default_factory=dict, description="recipe template arguments")
    calibration: str | None = Field(
        "open_platypus", description="calibration dataset: 'tiny' (built in), an llm-compressor alias or a "
                                     "hub dataset id; none for data-free recipes")
    num_samples: int = Field(512, ge=1, le=1_000_000, description="calibration samples")
    max_seq_length: int = Field(2048, ge=8, le=1_048_576, description="calibration sequence length")
    seed: int = Field(0, ge=0, description="random seed (calibration sampling)")
    output_name: str | None = volatile(None, description="name of the output model (default: <model>-<recipe>)")
    verify: bool = volatile(True, description="load the compressed model back and generate a few tokens")

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

    def standards_content(self) -> dict[str, Any]:
        # Rendered with the spec's own arguments, not the model-implied ones: what the model
        # implies depends on whether its config is readable here (a hub cache), and the model is
        # in the identity already. The template's data tables cover the families not rendered.
        return {"recipe": render_recipe(self.recipe, self.recipe_args), "recipe_data": load_template(self.recipe).data}

    def recipe_name(self) -> str:
        return load_template(self.recipe).name

    def needs_calibration(self) -> bool:
        return load_template(self.recipe).needs_calibration and self.calibration is not None

    def input_model_id(self) -> str | None:
        return self.model.clearml_model_id

    def task_name(self) -> str:
        return self.name or f"compress-{self.model.short_name()}-{self.recipe_name()}-{self.identity()[:8]}"
