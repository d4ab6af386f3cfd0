"""One harness for tests/ and benchmarks/: throwaway stacks and Prefect servers, waits, kills, flow helpers."""
