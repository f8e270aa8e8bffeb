"""Tools steps can use: the registry and the built-ins (echo, sleep, flaky)."""

from dagwright.tools import builtin as _builtin  # noqa: F401  (registers the built-ins)
from dagwright.tools.registry import Tool, ToolContext, ToolRegistry, default_registry, tool

__all__ = ["Tool", "ToolContext", "ToolRegistry", "default_registry", "tool"]
