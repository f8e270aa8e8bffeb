"""Validation of a step's ``verify`` checks: their expressions (what they may read), regexes
(RE2: linear time, or refused), JSON Schemas (valid, their regexes too), and that a
``grounded`` check has passages to read.

Called by the validator (``planner.validate``) for each check of each step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagwright.planner.output_paths import path_problem
from dagwright.planner.references import ExpressionError, expression, has_refs
from dagwright.planner.regex import RegexError, compile_regex, schema_problems
from dagwright.planner.schema import Step
from dagwright.planner.source import Path_
from dagwright.planner.validate_graph import safe_deps

if TYPE_CHECKING:
    from dagwright.planner.validate import Validator


def check_verify(v: Validator, check: Any, at: Path_, step: Step) -> None:
    field = f"verify[{at[-1]}]"
    for key in ("expr", "target"):
        text = getattr(check, key)
        if text is None:
            continue
        try:
            expr = expression(text)
        except ExpressionError as exc:
            v.add(str(exc), (*at, key), step=step.id, field=f"{field}.{key}")
            continue
        v.check_expression(
            expr,
            (*at, key),
            step=step.id,
            field=f"{field}.{key}",
            allowed_roots={"output", "inputs", "steps"},
        )
    for key, value in (
        ("contains", check.contains),
        ("not_contains", check.not_contains),
        ("regex", check.regex),
        ("schema", check.json_schema),
        ("judge", check.judge),
    ):
        v.check_value(value, (*at, key), step=step.id, field=f"{field}.{key}")
    if check.grounded:
        check_grounded(v, step, (*at, "grounded"), f"{field}.grounded")
    if check.regex is not None and "${{" not in check.regex:
        try:
            compile_regex(check.regex)  # RE2: linear time, or refused here
        except RegexError as exc:
            v.add(str(exc), (*at, "regex"), step=step.id, field=f"{field}.regex", hint=exc.hint)
    if check.json_schema is not None:
        static = not has_refs(check.json_schema)  # else its regexes are checked at run time
        for problem in schema_problems(check.json_schema) if static else []:
            v.add(
                f"JSON Schema regex {problem}",
                (*at, "schema"),
                step=step.id,
                field=f"{field}.schema",
                hint=problem.hint,
            )
        import jsonschema  # only workflows with a schema check need it

        try:
            jsonschema.validators.validator_for(check.json_schema).check_schema(check.json_schema)
        except jsonschema.SchemaError as exc:
            v.add(
                f"invalid JSON Schema: {exc.message}",
                (*at, "schema"),
                step=step.id,
                field=f"{field}.schema",
            )


def check_grounded(v: Validator, step: Step, at: Path_, field: str) -> None:
    """A ``grounded`` check reads the passages of the steps its step depends on: one of
    them must be able to return ``passages``."""
    for dep in safe_deps(step):
        other = v.wf.steps[v.step_ids[dep]] if dep in v.step_ids else None
        if other is None or other.uses not in v.registry:
            return  # reported elsewhere
        schema = v.registry.get(other.uses).output_schema
        if path_problem(schema, ("passages",)) is None:
            return
    v.add(
        "a grounded check needs passages: none of the steps this step depends on returns any",
        at,
        step=step.id,
        field=field,
        hint="add the `retrieve` step whose passages the answer cites to `needs:` "
        "(or reference its output)",
    )


__all__ = ["check_grounded", "check_verify"]
