"""A run's inputs: given values checked and converted to their declared types, defaults filled
in. One type check serves run inputs (from YAML, JSON or a command line) and defaults alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dagwright.errors import PlanError, PlanIssue
from dagwright.planner.schema import InputSpec, Workflow
from dagwright.planner.source import Source, did_you_mean

_TYPES: dict[str, TypeAdapter[Any]] = {  # built once: an adapter costs more than a check
    "string": TypeAdapter(str),
    "integer": TypeAdapter(int),
    "number": TypeAdapter(float),
    "boolean": TypeAdapter(bool),
    "object": TypeAdapter(dict[str, Any]),
    "array": TypeAdapter(list[Any]),
}


def _parse_text(spec: InputSpec, text: str) -> Any:
    if spec.type == "string":
        return text
    if spec.type == "boolean":
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError("expected true or false")
    if spec.type in ("object", "array"):
        return json.loads(text)
    return text


def typed_input(spec: InputSpec, value: Any, *, as_text: bool = False) -> Any:
    """``value`` converted to the input's declared type (from a command line when ``as_text``,
    else as JSON/YAML data); ValueError says why it is not one. Run inputs and defaults alike."""
    try:
        if as_text and isinstance(value, str):
            value = _parse_text(spec, value)
        strict = not as_text and spec.type != "number"
        return _TYPES[spec.type].validate_python(value, strict=strict)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None


def resolve_inputs(
    workflow: Workflow,
    given: Mapping[str, Any],
    *,
    as_text: bool = False,
    source: Source | None = None,
) -> dict[str, Any]:
    """The run's inputs: given values checked and converted to their declared types, defaults
    filled in (``validate`` checks their types). ``as_text`` means values came from a command
    line (``--input k=v``)."""
    source = source or Source()
    issues: list[PlanIssue] = []
    resolved: dict[str, Any] = {}
    for name in given:
        if name not in workflow.inputs:
            hint = did_you_mean(name, list(workflow.inputs))
            issues.append(
                source.issue(
                    f"unknown input {name!r}",
                    ("inputs",),
                    field=f"inputs.{name}",
                    hint=(hint + " " if hint else "")
                    + "declared inputs: "
                    + (", ".join(workflow.inputs) or "none"),
                )
            )
    for name, spec in workflow.inputs.items():
        if name not in given:
            if spec.required:
                issues.append(
                    source.issue(
                        f"missing required input {name!r} ({spec.type})",
                        ("inputs", name),
                        field=f"inputs.{name}",
                        hint=f"pass --input {name}=…",
                    )
                )
            else:
                resolved[name] = spec.default
            continue
        try:
            resolved[name] = typed_input(spec, given[name], as_text=as_text)
        except ValueError as exc:
            issues.append(
                source.issue(
                    f"input {name!r} must be {spec.type}: {exc} (got {given[name]!r})",
                    ("inputs", name),
                    field=f"inputs.{name}",
                )
            )
    if issues:
        raise PlanError(issues)
    return resolved


__all__ = ["resolve_inputs", "typed_input"]
