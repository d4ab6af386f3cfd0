"""`python -m benchmarks [NAME ...] [--quick] --json FILE`: run the benchmarks on their own local stack.

Names: roundtrip, kinds, polling, submission, handoff, footprint, rerun, drills, chain, prefect_db (none = all).
Prints a table (measured vs target) and writes every figure as JSON, one top-level key per benchmark.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Outcome

NAMES = ("roundtrip", "kinds", "polling", "submission", "handoff", "footprint", "rerun", "drills", "chain",
         "prefect_db")
NEEDS_PREFECT = frozenset({"handoff", "footprint", "rerun", "drills"})


def _runner(name: str) -> Callable[[Any], Outcome]:
    import importlib

    runner: Callable[[Any], Outcome] = importlib.import_module(f"benchmarks.{name}").run
    return runner


def _print_table(results: dict[str, Outcome], errors: dict[str, str], quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"benchmarks ({'quick' if quick else 'full'} mode)")
    for col in ("benchmark", "metric", "measured", "target", ""):
        table.add_column(col)
    for name, outcome in results.items():
        for i, row in enumerate(outcome.rows):
            mark = "" if row.ok is None else ("[green]ok[/green]" if row.ok else "[red]MISSED[/red]")
            table.add_row(name if i == 0 else "", row.metric, row.measured, row.target, mark)
    for name, err in errors.items():
        table.add_row(name, "[red]error[/red]", err.splitlines()[-1][:80] if err else "", "", "")
    console = Console(width=140)
    console.print(table)
    for name, outcome in results.items():
        for note in outcome.notes:
            console.print(f"[dim]{name}: {note}[/dim]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run ({', '.join(NAMES)}); none = all")
    parser.add_argument("--quick", action="store_true", help="small N, few trials (the CI smoke)")
    parser.add_argument("--json", type=Path, required=True, help="write the figures here")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="stack and Prefect data (default: a new temporary directory)")
    parser.add_argument("--trials", type=int, default=None, help="drill trials (default: 20 full, 2 quick)")
    parser.add_argument("--drills", default=None,
                        help="comma-separated subset of the drills (kill,faults,cancel,agent_kill); default all")
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(args.names or NAMES))
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="benchmarks-"))

    from benchmarks.stack import open_bench

    started = time.monotonic()
    load_before = _load()
    bench = open_bench(data_dir, quick=args.quick, need_prefect=bool(NEEDS_PREFECT & set(names)))
    if args.trials is not None:
        bench.trials = args.trials
    if args.drills:
        bench.drills = [d.strip() for d in args.drills.split(",") if d.strip()]
    results: dict[str, Outcome] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def write(partial: bool) -> None:
        out: dict[str, Any] = {name: outcome.data for name, outcome in results.items()}
        out.update({name: {"error": err} for name, err in errors.items()})
        out["meta"] = {
            "mode": "quick" if args.quick else "full",
            "partial": partial,  # written after every benchmark, so a stopped run keeps its figures
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": {**seconds, "total": round(time.monotonic() - started, 1)},
            "trials": bench.trials,
            "machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpus": _cpus(), "load_average_1m": {"start": load_before, "end": _load()}},
            "notes": {name: outcome.notes for name, outcome in results.items() if outcome.notes},
            "data_dir": str(data_dir),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))

    try:
        for name in names:
            t0 = time.monotonic()
            print(f"== {name} ...", flush=True)
            try:
                results[name] = _runner(name)(bench)
            except Exception:
                errors[name] = traceback.format_exc()
                print(errors[name], file=sys.stderr, flush=True)
            try:
                left = bench.stop_everything_active()
            except Exception as exc:
                left = 0
                print(f"cleanup after {name} failed: {exc}", file=sys.stderr)
            if left:
                print(f"   stopped {left} task(s) {name} left active", flush=True)
            seconds[name] = round(time.monotonic() - t0, 1)
            print(f"== {name} done in {seconds[name]:.0f} s", flush=True)
            write(partial=True)
    finally:
        bench.close()
    write(partial=False)
    _print_table(results, errors, args.quick)
    print(f"figures written to {args.json}")
    return 1 if errors else 0


def _load() -> float:
    """1-minute load average: the machine is shared, and timings move with it."""
    import os

    return round(os.getloadavg()[0], 2)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
