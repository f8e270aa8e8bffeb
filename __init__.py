"""dagwright: run LLM work as deterministic, verified, replayable DAGs of typed steps."""

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
