"""dagwright: run LLM work as deterministic, verified, replayable DAGs of typed steps.

The plan schema and the tools load on first use, so ``import dagwright.errors`` (or the command
line's ``--help``) does not pay for pydantic models and the tool registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagwright.errors import (
    DagwrightError,
    PlanError,
    PlanIssue,
    ReplayMismatch,
    RunNotFound,
    StepError,
    StepTimeout,
    StoreError,
    ToolNotFound,
    VerificationFailed,
)

if TYPE_CHECKING:
    from dagwright.planner.schema import Check, InputSpec, RetryPolicy, Step, Workflow
    from dagwright.tools import Tool, ToolContext, ToolRegistry, default_registry, tool

__version__ = "0.1.0"

__all__ = [
    # errors
    "DagwrightError",
    "PlanError",
    "PlanIssue",
    "ReplayMismatch",
    "RunNotFound",
    "StepError",
    "StepTimeout",
    "StoreError",
    "ToolNotFound",
    "VerificationFailed",
    # the plan schema
    "Check",
    "InputSpec",
    "RetryPolicy",
    "Step",
    "Workflow",
    # tools
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "default_registry",
    "tool",
    "__version__",
]

_LAZY = {
    **dict.fromkeys(("Check", "InputSpec", "RetryPolicy", "Step", "Workflow"), "planner.schema"),
    **dict.fromkeys(("Tool", "ToolContext", "ToolRegistry", "default_registry", "tool"), "tools"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"dagwright.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
