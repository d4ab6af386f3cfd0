"""Integration tests share the session fixtures of tests/conftest.py (local stack, Prefect server)."""
