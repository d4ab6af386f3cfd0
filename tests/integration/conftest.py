"""Integration tests share the session fixtures of tests/conftest.py (local stack, Prefect server)."""

from tests.prefect_server import REPO, PrefectServer

__all__ = ["REPO", "PrefectServer"]
