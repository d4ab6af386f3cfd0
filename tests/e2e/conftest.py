"""e2e tests use the session fixtures of tests/conftest.py (local stack, Prefect server, tiny model)."""
