"""One harness for tests/ and benchmarks/: throwaway stacks and Prefect servers, waits, kills, flow helpers.

- `stacks`: a local ClearML stack (stand-in + real agents) started for a harness, and its counters and fault switch
- `prefect_server`: a throwaway `prefect server start`
- `processes`: this process's environment and its subprocesses', stopping process groups, killing a task's process
- `waits`: polling until something holds
- `flows`: debug specs and helpers for the harness's own Prefect flows (served deployments, command lines)
- `roundtrip`: one SDK round trip through the stack

Plain functions and classes only (pytest fixtures stay in tests/' conftest files); nothing here
imports tests/ or benchmarks/.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: cwd and PYTHONPATH of every harness subprocess
