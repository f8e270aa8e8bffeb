"""Plans: the schema, YAML loading, validation, and (later) the LLM planner."""

from dagwright.planner.inputs import resolve_inputs
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Check, InputSpec, RetryPolicy, Step, Workflow
from dagwright.planner.source import Source
from dagwright.planner.validate import check, validate

__all__ = [
    "Check",
    "InputSpec",
    "Plan",
    "RetryPolicy",
    "Source",
    "Step",
    "Workflow",
    "check",
    "resolve_inputs",
    "validate",
]
