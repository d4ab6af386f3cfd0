"""Orchestration overhead, scale and fault-drill benchmarks (`python -m benchmarks --help`).

Layering: nothing here imports the ML libraries; the chain benchmark runs the core scripts in
subprocesses and through the stack's agents.
"""
