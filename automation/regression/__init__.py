"""Pure orchestration logic of the regression DAG: planning the matrix, submit hooks, joining cells,
gates, the report model and its renderers, the baselines registry. No ML library; Prefect only
inside the `hf_token` hook (it checks that a Prefect Secret block exists before anything is queued)."""
