"""Tools steps can use: the registry, the built-ins (echo, sleep, flaky) and llm.generate."""

from dagwright.tools import builtin as _builtin  # noqa: F401  (registers the built-ins)
from dagwright.tools import llm as _llm  # noqa: F401  (registers llm.generate)
from dagwright.tools.registry import Tool, ToolContext, ToolRegistry, default_registry, tool

__all__ = ["Tool", "ToolContext", "ToolRegistry", "default_registry", "tool"]
