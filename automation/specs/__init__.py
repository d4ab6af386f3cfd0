"""Typed task specs: one module per kind, plus the registry of kinds."""

from automation.specs.base import CodeRef, SpecError, TaskSpec, volatile
from automation.specs.registry import get_kind, kinds, register

__all__ = ["CodeRef", "SpecError", "TaskSpec", "get_kind", "kinds", "register", "volatile"]
