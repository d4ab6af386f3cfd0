"""A clean-room stand-in for the ClearML API server, file server and web pages.

The real `clearml` SDK and `clearml-agent` talk to it over loopback where no clearml-server can
run. It is a product of its own: it imports nothing of the rest of this repository, and nothing
of the rest imports it; the local-stack launcher starts it as a process (`python -m
clearml_standin`). Written from the SDK's Apache-2.0 service models and observed traffic.
"""
