"""Core script of the `compress` kind: render the recipe, run `oneshot` (or `model_free_ptq`),
check the output, upload the model.

Reports: the resolved recipe (our YAML) as artifact `recipe`, the compressed model as an uploaded
OutputModel (a weights package of the saved directory), the result summary as artifact
`compress_result` (calibration data, output checks, sizes), and scalars/single values for wall
time, peak memory and size before/after. A model that fails its output checks is not uploaded:
the step fails with BadArtifactError, the checks' findings in artifact `output_checks`.
"""

from __future__ import annotations

import json
import shutil
import time

from automation.scripts.lib import hub_access
from automation.scripts.lib.model_input import local_model_dir, work_dir
from automation.scripts.runtime import Reporter, run
from automation.specs.base import TaskSpec
from automation.specs.compress import CompressSpec


def main(spec: TaskSpec, report: Reporter) -> None:
    assert isinstance(spec, CompressSpec)
    started = time.monotonic()
    from automation.errors import BadArtifactError
    from automation.scripts.lib.calibration_data import needs_hub
    from automation.scripts.lib.compress_core import compress, device_check
    from automation.scripts.lib.model_tree import model_class
    from automation.standards.recipes import (
        check_model_dtype,
        check_recipe_applies,
        effective_arguments,
        model_dims_from_config,
        render_recipe,
    )

    template = spec.template()
    calibration = spec.calibration if spec.needs_calibration() else None
    hub_access(needed=spec.model.source == "hf" or needs_hub(calibration))
    # Before the model is fetched: a CPU host for a GPU-only algorithm, or a class name that
    # transformers does not have, fails in seconds, not after a download.
    device_check(template.requires_gpu, template.name)
    model_class(spec.model_class)
    report.progress(2, f"fetching model {spec.model}")
    model_dir = local_model_dir(spec.model, report)
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"model {spec.model}: no readable config.json in {model_dir} ({exc})") from exc
    # Validation could only check the recipe against a model it could read (a local path); a
    # ClearML or hub model is checked here, before oneshot, so the task fails naming the cause.
    args = effective_arguments(spec.recipe, spec.recipe_args, config)
    check_recipe_applies(spec.recipe, args, model_dims_from_config(config))
    check_model_dtype(spec.recipe, spec.dtype, config)
    recipe_text = render_recipe(spec.recipe, args)
    work = work_dir(report, "compress")
    recipe_path = work / "recipe.yaml"
    recipe_path.write_text(recipe_text)
    report.artifact("recipe", recipe_path)
    report.log(f"recipe {spec.recipe_name()} with arguments {args}:\n{recipe_text}")

    report.progress(10, f"compressing with {spec.recipe_name()} (calibration: {calibration or 'none'})")
    out_dir = work / "compressed"
    try:
        result = compress(model_dir, recipe_text, out_dir, calibration=calibration, num_samples=spec.num_samples,
                          max_seq_length=spec.max_seq_length, seed=spec.seed, verify=spec.verify,
                          calibration_options=spec.calibration_options, model_class_name=spec.model_class,
                          trust_remote_code=spec.trust_remote_code, dtype=spec.dtype,
                          model_free=template.model_free, requires_gpu=template.requires_gpu,
                          recipe_name=template.name, check_prompt=spec.check_prompt)
    except BadArtifactError as exc:
        report.artifact("output_checks", exc.report)
        raise
    report.progress(75, f"compressed in {result['compute_s']} s ({result['path']}); reporting")

    mib = 1024 * 1024
    result["recipe_name"] = spec.recipe_name()
    result["recipe_args"] = args
    result["model"] = str(spec.model)
    for title, series, value in (
        ("time", "compute_s", result["compute_s"]),
        ("time", "wall_s", round(time.monotonic() - started, 2)),
        ("memory", "peak_rss_mb", result["peak_rss_mb"]),
        ("size", "before_mb", result["size_before_bytes"] / mib),
        ("size", "after_mb", result["size_after_bytes"] / mib),
        ("size", "ratio", result["size_ratio"]),
    ):
        report.scalar(title, series, float(value))
        report.single_value(f"{title}/{series}", float(value))
    report.artifact("compress_result", result)

    report.progress(85, "uploading the compressed model")
    name = spec.output_name or f"{spec.model.short_name()}-{spec.recipe_name()}"
    model_id = report.output_model(out_dir, name=name, framework="PyTorch",
                                   tags=("compressed", spec.recipe_name()))
    task = getattr(report, "task", None)
    if task is not None:
        task.flush(wait_for_uploads=True)
        shutil.rmtree(work, ignore_errors=True)  # packaged and uploaded: the copy here is not needed
    report.log(f"output model {model_id or out_dir}")
    report.progress(100, "done")


if __name__ == "__main__":
    run(main, kind="compress")
