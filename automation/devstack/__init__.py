"""The local stack on one machine: the ClearML stand-in, one real clearml-agent per queue and
(optionally) a Prefect server with the served deployments; the demo that runs on it."""
