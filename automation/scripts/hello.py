"""A minimal ClearML task for the local stack's smoke run (`automation demo`).

It does what every core script does, without any ML library: read its typed Args and its HOCON
configuration back from the task, report progress, scalars, a single value, an artifact and an
output model, so one run exercises the whole execution and tracking path through a real agent.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from clearml import OutputModel, Task


def main() -> None:
    task: Any = Task.init()  # under an agent this attaches to the enqueued task
    args = task.get_parameters_as_dict(cast=True).get("Args", {})
    steps = int(args.get("steps", 5))
    greeting = str(args.get("greeting", "hello"))
    config_text = task.get_configuration_object("demo") or "{}"
    print(f"{greeting} from the local stack: {steps} steps, configuration: {config_text.strip()}")

    logger = task.get_logger()
    for i in range(steps):
        logger.report_scalar(title="demo", series="sine", value=math.sin(i / 2), iteration=i)
        logger.report_scalar(title="demo", series="step_seconds", value=0.01 * (i + 1), iteration=i)
        task.set_progress(int(100 * (i + 1) / steps))
        time.sleep(0.05)
    logger.report_single_value("demo_score", 0.5 + steps / 100)

    out = Path(tempfile.mkdtemp(prefix="hello-"))
    summary = {"greeting": greeting, "steps": steps, "finished": time.time()}
    (out / "summary.json").write_text(json.dumps(summary))
    task.upload_artifact("summary", artifact_object=summary)
    task.upload_artifact("summary_file", artifact_object=str(out / "summary.json"))
    weights = out / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 4)
    model = OutputModel(task=task, name="hello-model", framework="custom")
    model.update_weights(weights_filename=str(weights), auto_delete_file=False)
    task.flush(wait_for_uploads=True)
    print("done")


if __name__ == "__main__":
    main()
