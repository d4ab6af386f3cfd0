"""Built-in kinds; importing this module registers them."""

from automation.specs import benchmark, compress, debug, evaluate  # noqa: F401
