"""Validation before anything runs: every problem in a workflow, each naming where and what to do.

Checks: unknown tools, ``with`` arguments against each tool's typed signature, references to
steps/inputs/output paths that cannot exist, unknown ``needs``, duplicate ids, cycles (printed),
verify checks that cannot be evaluated, and — when run inputs are given — missing, unknown or
ill-typed inputs.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import networkx as nx
from pydantic import TypeAdapter, ValidationError

from dagwright.errors import DagwrightError, PlanError, PlanIssue
from dagwright.planner.plan import step_deps
from dagwright.planner.references import (
    SAFE_GLOBALS,
    Expression,
    ExpressionError,
    Ref,
    expression,
    expressions_in,
)
from dagwright.planner.schema import InputSpec, Step, Workflow
from dagwright.planner.source import Path_, Source
from dagwright.tools.registry import Tool, ToolRegistry


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else None


def registry_for(
    workflow: Workflow, registry: ToolRegistry, base_dir: Path | None, source: Source
) -> tuple[ToolRegistry, list[PlanIssue]]:
    """The registry a workflow runs with: ``registry`` plus the modules its ``tools:`` names."""
    if not workflow.tools:
        return registry, []
    loaded = registry.copy()
    issues = []
    for i, module in enumerate(workflow.tools):
        try:
            loaded.load_module(module, base_dir)
        except (ImportError, DagwrightError, SyntaxError) as exc:
            issues.append(
                source.issue(
                    f"cannot load tool module {module!r}: {type(exc).__name__}: {exc}",
                    ("tools", i),
                    field="tools",
                    hint="name an importable module, or a .py file next to the workflow",
                )
            )
    return loaded, issues


def registry_for_run(
    workflow: Workflow,
    registry: ToolRegistry,
    modules: tuple[str, ...] | list[str] = (),
    source: str | None = None,
) -> ToolRegistry:
    """The registry a recorded run executes with: ``registry``, the settings' tool ``modules``
    and the workflow's ``tools:`` (found next to ``source``, the workflow's file). Raises
    PlanError when a module cannot load."""
    if modules:
        registry = registry.copy()
        for module in modules:
            registry.load_module(module)
    base_dir = Path(source).resolve().parent if source else None
    registry, issues = registry_for(workflow, registry, base_dir, Source(source))
    if issues:
        raise PlanError(issues)
    return registry


# --- output paths ---------------------------------------------------------------------------


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return {}
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        schema, seen = node, seen + 1
    return schema


def path_problem(schema: Mapping[str, Any] | None, path: tuple[Any, ...]) -> str | None:
    """Why ``path`` cannot exist in values of ``schema`` (None when it may exist)."""
    if not schema:
        return None
    root, node = schema, schema
    walked = "output"
    for part in path:
        node = _resolve(node, root)
        if any(k in node for k in ("anyOf", "oneOf", "allOf")) or not node:
            return None  # unions: don't guess
        kind = node.get("type")
        if kind == "object" or "properties" in node:
            props = node.get("properties", {})
            extra = node.get("additionalProperties", "properties" not in node)
            if part in props:
                node = props[part]
            elif extra:
                node = extra if isinstance(extra, Mapping) else {}
            else:
                hint = _did_you_mean(str(part), list(props))
                return f"{walked} has no field {part!r} (fields: {', '.join(props) or 'none'})" + (
                    f"; {hint}" if hint else ""
                )
        elif kind == "array":
            if not isinstance(part, int):
                return f"{walked} is a list: index it with [n], not .{part}"
            node = node.get("items", {})
        elif kind in ("string", "integer", "number", "boolean", "null"):
            return f"{walked} is {'an' if kind == 'integer' else 'a'} {kind}; it has no {part!r}"
        else:
            return None
        walked += f"[{part}]" if isinstance(part, int) else f".{part}"
    return None


# --- the validator ----------------------------------------------------------------------------


class _Validator:
    def __init__(self, workflow: Workflow, registry: ToolRegistry, source: Source) -> None:
        self.wf = workflow
        self.registry = registry
        self.source = source
        self.issues: list[PlanIssue] = []
        self.step_ids: dict[str, int] = {}
        self.tools: dict[str, Tool] = {}

    def add(
        self,
        message: str,
        path: Path_,
        *,
        step: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.issues.append(self.source.issue(message, path, step=step, field=field, hint=hint))

    def run(self) -> list[PlanIssue]:
        for i, step in enumerate(self.wf.steps):
            if step.id in self.step_ids:
                first = self.source.line(("steps", self.step_ids[step.id]))
                self.add(
                    f"duplicate step id {step.id!r}"
                    + (f" (first at line {first})" if first else ""),
                    ("steps", i, "id"),
                    step=step.id,
                    field="id",
                    hint="step ids must be unique; rename one",
                )
            else:
                self.step_ids[step.id] = i
        for i, step in enumerate(self.wf.steps):
            self.check_step(i, step)
        self.check_value(self.wf.output, ("output",), step=None, field="output")
        self.check_cycles()
        return self.issues

    # tools and arguments
    def check_step(self, i: int, step: Step) -> None:
        at: Path_ = ("steps", i)
        tool = None
        if step.uses in self.registry:
            tool = self.tools[step.id] = self.registry.get(step.uses)
        else:
            hint = _did_you_mean(step.uses, self.registry.names())
            self.add(
                f"unknown tool {step.uses!r}",
                (*at, "uses"),
                step=step.id,
                field="uses",
                hint=(hint + " " if hint else "")
                + "registered tools: "
                + ", ".join(self.registry.names()),
            )
        for j, need in enumerate(step.needs):
            if need == step.id:
                self.add(
                    "a step cannot need itself", (*at, "needs", j), step=step.id, field="needs"
                )
            elif need not in self.step_ids:
                hint = _did_you_mean(need, list(self.step_ids))
                self.add(
                    f"needs unknown step {need!r}",
                    (*at, "needs", j),
                    step=step.id,
                    field="needs",
                    hint=hint,
                )
        ref_locs = self.check_value(step.with_, (*at, "with"), step=step.id, field="with")
        if tool is not None:
            self.check_args(tool, step, at, ref_locs)
        for j, check in enumerate(step.verify):
            self.check_verify(check, (*at, "verify", j), step)

    def check_args(self, tool: Tool, step: Step, at: Path_, ref_locs: list[Path_]) -> None:
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
                    hint = _did_you_mean(str(loc[-1]), allowed)
                    self.add(
                        f"tool {tool.name!r} has no argument {loc[-1]!r}",
                        (*at, "with", *loc),
                        step=step.id,
                        field=f"with.{name}",
                        hint=(hint + " " if hint else "")
                        + f"its arguments: {', '.join(allowed) or 'none'}",
                    )
                elif err["type"] == "missing":
                    self.add(
                        f"tool {tool.name!r} needs argument {name!r}",
                        (*at, "with"),
                        step=step.id,
                        field=f"with.{name}",
                        hint=f"add it under 'with:' ({_describe(tool, str(loc[0]))})",
                    )
                else:
                    self.add(
                        f"{err['msg']} (got {err.get('input')!r})",
                        (*at, "with", *loc),
                        step=step.id,
                        field=f"with.{name}",
                    )

    # references
    def check_value(self, value: Any, at: Path_, *, step: str | None, field: str) -> list[Path_]:
        """Check every expression in a value; return where the references sit inside it."""
        locs: list[Path_] = []
        try:
            found = list(expressions_in(value))
        except ExpressionError as exc:
            self.add(str(exc), at, step=step, field=field)
            return locs
        for loc, expr in found:
            locs.append(loc)
            where = ".".join([field, *map(str, loc)])
            self.check_expression(
                expr, (*at, *loc), step=step, field=where, allowed_roots={"inputs", "steps"}
            )
        return locs

    def check_expression(
        self, expr: Expression, at: Path_, *, step: str | None, field: str, allowed_roots: set[str]
    ) -> None:
        for name in sorted(expr.names() - set(SAFE_GLOBALS) - allowed_roots):
            self.add(
                f"unknown name {name!r} in ${{{{ {expr.source} }}}}",
                at,
                step=step,
                field=field,
                hint="expressions can read "
                + ", ".join(sorted(allowed_roots))
                + " and call "
                + ", ".join(sorted(SAFE_GLOBALS)),
            )
        for ref in expr.refs:
            if ref.root in allowed_roots:
                problem = self.ref_problem(ref, step)
                if problem:
                    self.add(problem[0], at, step=step, field=field, hint=problem[1])

    def ref_problem(self, ref: Ref, step: str | None) -> tuple[str, str | None] | None:
        if ref.root == "inputs":
            return self.input_ref_problem(ref)
        if ref.root != "steps":
            return None
        if not ref.path:
            return (f"${{{{ {ref} }}}} must name a step", "write steps.<id>.output")
        target = str(ref.path[0])
        if target not in self.step_ids:
            return (
                f"${{{{ {ref} }}}} references unknown step {target!r}",
                _did_you_mean(target, list(self.step_ids)),
            )
        if target == step:
            return (f"${{{{ {ref} }}}}: a step cannot read its own output", None)
        if len(ref.path) < 2 or ref.path[1] != "output":
            return (
                f"${{{{ {ref} }}}}: only a step's output can be read",
                f"write steps.{target}.output…",
            )
        tool = self.tools.get(target)
        problem = path_problem(tool.output_schema if tool else None, ref.path[2:])
        if problem:
            return (
                f"${{{{ {ref} }}}} cannot exist: {problem}",
                f"tool {tool.name!r} returns {_schema_summary(tool)}" if tool else None,
            )
        return None

    def input_ref_problem(self, ref: Ref) -> tuple[str, str | None] | None:
        if not ref.path:
            return None
        name = str(ref.path[0])
        spec = self.wf.inputs.get(name)
        if spec is None:
            declared = list(self.wf.inputs)
            hint = _did_you_mean(name, declared)
            return (
                f"${{{{ {ref} }}}} references undeclared input {name!r}",
                (hint + " " if hint else "") + "declare it under 'inputs:'",
            )
        if len(ref.path) > 1 and spec.type not in ("object", "array"):
            return (
                f"${{{{ {ref} }}}}: input {name!r} is a {spec.type}; it has no {ref.path[1]!r}",
                None,
            )
        return None

    # verify checks
    def check_verify(self, check: Any, at: Path_, step: Step) -> None:
        field = f"verify[{at[-1]}]"
        for key in ("expr", "target"):
            text = getattr(check, key)
            if text is None:
                continue
            try:
                expr = expression(text)
            except ExpressionError as exc:
                self.add(str(exc), (*at, key), step=step.id, field=f"{field}.{key}")
                continue
            self.check_expression(
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
            self.check_value(value, (*at, key), step=step.id, field=f"{field}.{key}")
        if check.regex is not None and "${{" not in check.regex:
            try:
                re.compile(check.regex)
            except re.error as exc:
                self.add(
                    f"invalid regex {check.regex!r}: {exc}",
                    (*at, "regex"),
                    step=step.id,
                    field=f"{field}.regex",
                )
        if check.json_schema is not None:
            try:
                jsonschema.validators.validator_for(check.json_schema).check_schema(
                    check.json_schema
                )
            except jsonschema.SchemaError as exc:
                self.add(
                    f"invalid JSON Schema: {exc.message}",
                    (*at, "schema"),
                    step=step.id,
                    field=f"{field}.schema",
                )

    # graph
    def check_cycles(self) -> None:
        graph = nx.DiGraph()
        for step in self.wf.steps:
            graph.add_node(step.id)
            for dep in _safe_deps(step):
                if dep in self.step_ids and dep != step.id:
                    graph.add_edge(dep, step.id)
        for component in nx.strongly_connected_components(graph):
            if len(component) < 2:
                continue
            cycle = nx.find_cycle(graph.subgraph(component))
            names = [u for u, _ in cycle] + [cycle[0][0]]
            first = min(component, key=lambda s: self.step_ids[s])
            start = names.index(first)
            names = names[start:-1] + names[:start] + [first]
            before = names[-2]
            fld = "needs" if before in self.wf.steps[self.step_ids[first]].needs else "with"
            self.add(
                "dependency cycle: " + " → ".join(names),
                ("steps", self.step_ids[first], fld),
                step=first,
                field=fld,
                hint="a step can only depend on steps that do not depend on it; "
                "remove one of these references or needs",
            )


def _safe_deps(step: Step) -> list[str]:
    try:
        return step_deps(step)
    except ExpressionError:  # reported where the expression sits
        return list(step.needs)


def _describe(tool: Tool, arg: str) -> str:
    prop = tool.args_schema().get("properties", {}).get(arg, {})
    kind = prop.get("type") or "any value"
    return f"{arg}: {kind}"


def _schema_summary(tool: Tool) -> str:
    schema = _resolve(tool.output_schema or {}, tool.output_schema or {})
    props = schema.get("properties")
    if props:
        return "{" + ", ".join(props) + "}"
    return str(schema.get("type", "any value"))


def validate(
    workflow: Workflow, registry: ToolRegistry, source: Source | None = None
) -> list[PlanIssue]:
    """Every problem in a parsed workflow (empty when it is valid)."""
    return _Validator(workflow, registry, source or Source()).run()


# --- run inputs -------------------------------------------------------------------------------

_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "object": dict[str, Any],
    "array": list[Any],
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


def resolve_inputs(
    workflow: Workflow,
    given: Mapping[str, Any],
    *,
    as_text: bool = False,
    source: Source | None = None,
) -> dict[str, Any]:
    """The run's inputs: given values checked and converted to their declared types, defaults
    filled in. ``as_text`` means values came from a command line (``--input k=v``)."""
    source = source or Source()
    issues: list[PlanIssue] = []
    resolved: dict[str, Any] = {}
    for name in given:
        if name not in workflow.inputs:
            hint = _did_you_mean(name, list(workflow.inputs))
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
        value = given[name]
        try:
            if as_text and isinstance(value, str):
                value = _parse_text(spec, value)
            strict = not as_text and spec.type != "number"
            resolved[name] = TypeAdapter(_TYPES[spec.type]).validate_python(value, strict=strict)
        except (ValueError, ValidationError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            issues.append(
                source.issue(
                    f"input {name!r} must be {spec.type}: {detail} (got {given[name]!r})",
                    ("inputs", name),
                    field=f"inputs.{name}",
                )
            )
    if issues:
        raise PlanError(issues)
    return resolved


def check(workflow: Workflow, registry: ToolRegistry, source: Source | None = None) -> None:
    issues = validate(workflow, registry, source)
    if issues:
        raise PlanError(issues)


__all__ = [
    "check",
    "path_problem",
    "registry_for",
    "registry_for_run",
    "resolve_inputs",
    "validate",
]
