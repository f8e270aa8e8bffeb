"""Tools steps can use: the registry, the built-ins (echo, sleep, flaky) and llm.generate
(registered into ``default_registry`` when a tool is first looked up)."""

from dagwright.tools.registry import Tool, ToolContext, ToolRegistry, default_registry, tool

__all__ = ["Tool", "ToolContext", "ToolRegistry", "default_registry", "tool"]
