"""Validation of a step's ``with`` against its tool: the tool's optional packages installed
(``Requires``), the arguments' types (the tool's arguments model), and the tool's own rules
(``@tool(check=...)``). Values computed by references are left to the attempt.

Called by the validator (``planner.validate``) for each step whose tool is registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from dagwright.planner.schema import Step
from dagwright.planner.source import Path_, did_you_mean
from dagwright.tools.registry import Tool

if TYPE_CHECKING:
    from dagwright.planner.validate import Validator


def check_requires(v: Validator, tool: Tool, step: Step, at: Path_) -> None:
    missing = tool.requires.missing() if tool.requires is not None else []
    if missing:
        assert tool.requires is not None
        v.add(
            f"tool {tool.name!r} needs {', '.join(missing)}, not installed here",
            (*at, "uses"),
            step=step.id,
            field="uses",
            hint=f"install it: {tool.requires.install}",
        )


def check_tool_rules(v: Validator, tool: Tool, step: Step, at: Path_) -> None:
    """The tool's own checks of its arguments (``@tool(check=...)``)."""
    if tool.check is None or not isinstance(step.with_, dict):
        return
    for where, message, hint in tool.check(step.with_, v.registry):
        v.add(
            message,
            (*at, "with", *where),
            step=step.id,
            field=".".join(["with", *map(str, where)]),
            hint=hint,
        )


def check_args(v: Validator, tool: Tool, step: Step, at: Path_, ref_locs: list[Path_]) -> None:
    try:
        tool.args_model.model_validate(step.with_)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if any(loc[: len(r)] == r for r in ref_locs):
                continue  # the value is computed by a reference: checked when it resolves
            name = ".".join(map(str, loc))
            if err["type"] == "extra_forbidden":
                allowed = list(tool.args_model.model_fields)
                hint = did_you_mean(str(loc[-1]), allowed)
                v.add(
                    f"tool {tool.name!r} has no argument {loc[-1]!r}",
                    (*at, "with", *loc),
                    step=step.id,
                    field=f"with.{name}",
                    hint=(hint + " " if hint else "")
                    + f"its arguments: {', '.join(allowed) or 'none'}",
                )
            elif err["type"] == "missing":
                v.add(
                    f"tool {tool.name!r} needs argument {name!r}",
                    (*at, "with"),
                    step=step.id,
                    field=f"with.{name}",
                    hint=f"add it under 'with:' ({_describe(tool, str(loc[0]))})",
                )
            else:
                v.add(
                    f"{err['msg']} (got {err.get('input')!r})",
                    (*at, "with", *loc),
                    step=step.id,
                    field=f"with.{name}",
                )


def _describe(tool: Tool, arg: str) -> str:
    prop = tool.args_schema().get("properties", {}).get(arg, {})
    kind = prop.get("type") or "any value"
    return f"{arg}: {kind}"


__all__ = ["check_args", "check_requires", "check_tool_rules"]
