"""Tools steps can use: the registry, the built-ins (echo, sleep, flaky, llm.generate,
http.request, retrieve; registered into ``default_registry`` when a tool is first looked up),
and ``Requires``, the optional packages a tool needs."""

from dagwright.tools.registry import (
    Requires,
    Tool,
    ToolContext,
    ToolRegistry,
    default_registry,
    tool,
)

__all__ = ["Requires", "Tool", "ToolContext", "ToolRegistry", "default_registry", "tool"]
