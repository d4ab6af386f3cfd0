"""Every named recipe on the tiny model, in one process: `python -m testing.scheme_matrix --model DIR --out DIR`.

Each recipe that has a CPU path is compressed for real (`compress_core.compress`, output checks
on); a GPU-only recipe (`requires_gpu`) is expected to fail fast with AcceleratorRequired on a host
without one and is reported as "validated only". Prints a table (recipe, path, ran/validated,
size ratio, wall time, peak memory) and writes every result to OUT/matrix.json.

One process for all of them: torch and llm-compressor are imported once (about 10 s), and each
recipe then takes 1-10 s on the tiny model. Peak memory is the process's, so it is a high-water
mark across the recipes run so far, not a per-recipe figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

# recipe -> how it runs on the tiny (float32, CPU) model: calibration, recipe arguments, dtype.
# FP4 schemes decompress to 16-bit only, so they are compressed in bfloat16; AutoRound is cut to
# 10 tuning steps without torch.compile (its defaults, 200 steps compiled, are for a GPU).
RUNS: dict[str, dict[str, Any]] = {
    "w4a16": {"calibration": "tiny"},
    "w4a16_asym": {"calibration": "tiny"},
    "w8a16": {"calibration": "tiny"},
    "w8a8": {"calibration": "tiny"},
    "int8": {"calibration": None},
    "fp8": {"calibration": "tiny"},
    "fp8+kv_cache": {"recipe": "fp8", "calibration": "tiny", "args": {"kv_cache_scheme": "fp8"}},
    "fp8_dynamic": {"calibration": None},
    "fp8_block": {"calibration": None},
    "nvfp4": {"calibration": "tiny", "dtype": "bfloat16"},
    "nvfp4a16": {"calibration": None, "dtype": "bfloat16"},
    "mxfp4": {"calibration": None, "dtype": "bfloat16"},
    "mxfp4a16": {"calibration": None, "dtype": "bfloat16"},
    "w4afp8": {"calibration": "tiny"},
    "awq_w4a16": {"calibration": "tiny"},
    "autoround_w4a16": {"calibration": "tiny", "args": {"iters": 10, "enable_torch_compile": False}},
    "sparsegpt_2of4": {"calibration": "tiny"},
}


def run_one(label: str, how: dict[str, Any], model: Path, out: Path) -> dict[str, Any]:
    from automation.errors import AcceleratorRequired
    from automation.scripts.lib.compress_core import compress
    from automation.standards.recipes import load_template, render_recipe

    name = how.get("recipe", label)
    template = load_template(name)
    row: dict[str, Any] = {"recipe": name, "args": how.get("args", {}), "dtype": how.get("dtype", "auto"),
                           "calibration": how["calibration"], "requires_gpu": template.requires_gpu}
    started = time.monotonic()
    try:
        result = compress(model, render_recipe(name, how.get("args", {})), out / label,
                          calibration=how["calibration"], num_samples=16, max_seq_length=64,
                          dtype=how.get("dtype", "auto"), model_free=template.model_free,
                          requires_gpu=template.requires_gpu, recipe_name=template.name,
                          check_prompt="Q: What color is the brabel?\nA:")
    except AcceleratorRequired as exc:
        row.update(outcome="validated only", error=str(exc))
    except Exception as exc:
        row.update(outcome="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    else:
        row.update(outcome="ran", result=result)
    row["seconds"] = round(time.monotonic() - started, 2)
    return row


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="named recipes on the tiny model (CPU)")
    for col in ("recipe", "outcome", "path", "calibration", "dtype", "size ratio", "compute s", "wall s", "peak MiB"):
        table.add_column(col)
    for label, row in rows.items():
        result = row.get("result") or {}
        table.add_row(label, row["outcome"], result.get("path", "-"), str(row["calibration"] or "none"), row["dtype"],
                      str(result.get("size_ratio", "-")), str(result.get("compute_s", "-")),
                      str(result.get("wall_s", row["seconds"])), str(result.get("peak_rss_mb", "-")))
    Console(width=150).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testing.scheme_matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    rows = {label: run_one(label, how, args.model, args.out) for label, how in RUNS.items()
            if args.only is None or label in args.only}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.json").write_text(json.dumps(rows, indent=1, default=str))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
