"""Built-in kinds; importing this module registers them."""

from automation.specs import debug  # noqa: F401
