"""Typed task specs: one module per kind, `base` for what they share, `registry` for the table of kinds."""
