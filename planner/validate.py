"""Validation before anything runs: every problem in a workflow, each naming where and what to do.

Checks: unknown tools, ``with`` arguments against each tool's typed signature, references to
steps/inputs/output paths that cannot exist, unknown ``needs``, duplicate ids, cycles (printed),
verify checks that cannot be evaluated, expressions that read what the sandbox refuses
(``__class__``, ``__globals__``, ``mro``…), secrets read where a tool takes none or under a name
not set (``planner.secret_refs``), input defaults of the wrong type, and — when run inputs are
given — missing, unknown or ill-typed inputs.

Here: the validator (ids, ``needs``, inputs' defaults, every expression and what it reads,
secrets, ``concurrency``) and the entry points ``validate`` and ``check``. Its parts:
``validate_args`` (a step's ``with`` against its tool), ``validate_verify`` (``verify`` checks)
and ``validate_graph`` (dependency cycles).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from dagwright.errors import PlanError, PlanIssue
from dagwright.planner.inputs import typed_input
from dagwright.planner.output_paths import path_problem, resolve_ref
from dagwright.planner.references import (
    SAFE_GLOBALS,
    Expression,
    ExpressionError,
    Ref,
    expressions_in,
)
from dagwright.planner.schema import Step, Workflow
from dagwright.planner.secret_refs import SECRETS, secret_problems, where_secrets_go
from dagwright.planner.source import Path_, Source, did_you_mean
from dagwright.planner.validate_args import check_args, check_requires, check_tool_rules
from dagwright.planner.validate_graph import check_cycles
from dagwright.planner.validate_verify import check_verify
from dagwright.tools.registry import Tool, ToolRegistry

# --- the validator ----------------------------------------------------------------------------


class Validator:
    """One workflow's validation: what it found so far (``issues``), and what the checks of
    ``validate_args``, ``validate_verify`` and ``validate_graph`` read (the steps' ids, their
    tools)."""

    def __init__(
        self,
        workflow: Workflow,
        registry: ToolRegistry,
        source: Source,
        secrets: Collection[str] | None = None,
    ) -> None:
        self.wf = workflow
        self.registry = registry
        self.source = source
        self.secrets = None if secrets is None else {s.upper() for s in secrets}
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
        self.check_defaults()
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
        self.check_concurrency()
        check_cycles(self)
        return self.issues

    def check_concurrency(self) -> None:
        """The key is known when the run is submitted: it may read inputs only."""
        if self.wf.concurrency is None:
            return
        at: Path_ = ("concurrency", "key")
        for _, expr in expressions_in(self.wf.concurrency.key):
            self.check_expression(
                expr, at, step=None, field="concurrency.key", allowed_roots={"inputs"}
            )

    def check_defaults(self) -> None:
        for name, spec in self.wf.inputs.items():
            if spec.required:
                continue
            try:
                typed_input(spec, spec.default)
            except ValueError as exc:
                self.add(
                    f"the default of input {name!r} must be {spec.type}: {exc} "
                    f"(got {spec.default!r})",
                    ("inputs", name, "default"),
                    field=f"inputs.{name}.default",
                    hint=f"give a default of type {spec.type}, "
                    "or remove it to make the input required",
                )

    # steps: tool, needs, arguments (validate_args), verify checks (validate_verify)
    def check_step(self, i: int, step: Step) -> None:
        at: Path_ = ("steps", i)
        tool = None
        if step.uses in self.registry:
            tool = self.tools[step.id] = self.registry.get(step.uses)
        else:
            hint = did_you_mean(step.uses, self.registry.names())
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
                hint = did_you_mean(need, list(self.step_ids))
                self.add(
                    f"needs unknown step {need!r}",
                    (*at, "needs", j),
                    step=step.id,
                    field="needs",
                    hint=hint,
                )
        ref_locs = self.check_value(
            step.with_, (*at, "with"), step=step.id, field="with",
            secret_args=tool.secret_args if tool is not None else None,
        )  # fmt: skip
        if tool is not None:
            check_requires(self, tool, step, at)
            check_args(self, tool, step, at, ref_locs)
            check_tool_rules(self, tool, step, at)
        for j, check in enumerate(step.verify):
            check_verify(self, check, (*at, "verify", j), step)

    # references
    def check_value(
        self,
        value: Any,
        at: Path_,
        *,
        step: str | None,
        field: str,
        secret_args: Collection[str] | None = (),
    ) -> list[Path_]:
        """Check every expression in a value; return where the references sit inside it.
        ``secret_args``: the top-level keys under which a secret may be read (a step's
        ``with``: its tool's; None: any, its tool being unknown)."""
        locs: list[Path_] = []
        try:
            found = list(expressions_in(value))
        except ExpressionError as exc:
            self.add(str(exc), at, step=step, field=field)
            return locs
        for loc, expr in found:
            locs.append(loc)
            where = ".".join([field, *map(str, loc)])
            secret_ok = secret_args is None or (bool(loc) and loc[0] in secret_args)
            roots = {"inputs", "steps", SECRETS} if secret_ok else {"inputs", "steps"}
            self.check_expression(expr, (*at, *loc), step=step, field=where, allowed_roots=roots)
        return locs

    def check_expression(
        self, expr: Expression, at: Path_, *, step: str | None, field: str, allowed_roots: set[str]
    ) -> None:
        if SECRETS in expr.names():
            self.check_secret(expr, at, step=step, field=field, allowed=SECRETS in allowed_roots)
        for name in sorted(expr.names() - set(SAFE_GLOBALS) - allowed_roots - {SECRETS}):
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
        unsafe = expr.unsafe_names()
        if unsafe:
            self.add(
                f"${{{{ {expr.source} }}}} may not read {', '.join(map(repr, unsafe))}: "
                "expressions cannot read dunder names or Python internals",
                at,
                step=step,
                field=field,
                hint="read the fields of inputs and of step outputs (keys such as '_id' are "
                "fine; '__…__' names are not)",
            )
            return  # its references would only add noise about the same names
        for ref in expr.refs:
            if ref.root in allowed_roots:
                problem = self.ref_problem(ref, step)
                if problem:
                    self.add(problem[0], at, step=step, field=field, hint=problem[1])

    def check_secret(
        self, expr: Expression, at: Path_, *, step: str | None, field: str, allowed: bool
    ) -> None:
        """``${{ secrets.NAME }}`` where a secret may go (``planner.secret_refs``)."""
        if not allowed:
            tool = self.tools.get(step) if step is not None else None
            self.add(
                f"${{{{ {expr.source} }}}}: a secret may not be used in {field}",
                at,
                step=step,
                field=field,
                hint=where_secrets_go(
                    tool.name if tool else None, tool.secret_args if tool else ()
                ),
            )
            return
        for message, hint in secret_problems(expr, self.secrets):
            self.add(message, at, step=step, field=field, hint=hint)

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
                did_you_mean(target, list(self.step_ids)),
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
            hint = did_you_mean(name, declared)
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


def _schema_summary(tool: Tool) -> str:
    schema = resolve_ref(tool.output_schema or {}, tool.output_schema or {})
    props = schema.get("properties")
    if props:
        return "{" + ", ".join(props) + "}"
    return str(schema.get("type", "any value"))


def validate(
    workflow: Workflow,
    registry: ToolRegistry,
    source: Source | None = None,
    *,
    secrets: Collection[str] | None = None,
) -> list[PlanIssue]:
    """Every problem in a parsed workflow (empty when it is valid).

    ``secrets``: the names of the secrets the run will have (``Settings.step_secrets()``):
    a ``${{ secrets.NAME }}`` naming another is a problem. None: names are not checked (the
    secrets are those of the workers that will run the steps), only where secrets are used."""
    return Validator(workflow, registry, source or Source(), secrets).run()


def check(
    workflow: Workflow,
    registry: ToolRegistry,
    source: Source | None = None,
    *,
    secrets: Collection[str] | None = None,
) -> None:
    issues = validate(workflow, registry, source, secrets=secrets)
    if issues:
        raise PlanError(issues)


__all__ = ["check", "validate"]
