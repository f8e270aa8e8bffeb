"""A validated workflow compiled for execution: each step's dependencies and dependents."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from dagwright.planner.references import Expression, expression, expressions_in
from dagwright.planner.schema import Step, Workflow


def step_expressions(step: Step) -> Iterator[Expression]:
    """Every expression a step holds: in ``with``, and in its ``verify`` checks."""
    for _, expr in expressions_in(step.with_):
        yield expr
    for check in step.verify:
        for text in (check.expr, check.target):
            if text is not None:
                yield expression(text)
        for value in (
            check.contains,
            check.not_contains,
            check.regex,
            check.json_schema,
            check.judge,
        ):
            for _, expr in expressions_in(value):
                yield expr


def step_deps(step: Step) -> list[str]:
    """Explicit ``needs`` plus every step it references, in first-seen order."""
    deps = dict.fromkeys(step.needs)
    for expr in step_expressions(step):
        for ref in expr.refs:
            if ref.root == "steps" and ref.path and isinstance(ref.path[0], str):
                deps[ref.path[0]] = None
    return list(deps)


def topological_order(
    nodes: list[str],
    dependents: Mapping[str, Sequence[str]],
    deps: Mapping[str, Sequence[str]],
) -> list[str] | None:
    """The steps in dependency order, generation by generation (every step after all its
    dependencies; in a generation, in the order they became ready); None when there is a
    cycle. Kahn's algorithm, linear in steps and edges: the order networkx's
    ``topological_sort`` gives for the graph built in this order, without importing it."""
    waiting = {n: len(deps[n]) for n in nodes}
    generation = [n for n in nodes if waiting[n] == 0]
    order: list[str] = []
    while generation:
        order += generation
        following: list[str] = []
        for node in generation:
            for nxt in dependents[node]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    following.append(nxt)
        generation = following
    return order if len(order) == len(nodes) else None


@dataclass(frozen=True)
class Plan:
    workflow: Workflow
    steps: dict[str, Step]
    deps: dict[str, tuple[str, ...]]
    dependents: dict[str, tuple[str, ...]]
    order: tuple[str, ...]

    @classmethod
    def from_workflow(cls, workflow: Workflow) -> Plan:
        """Compile a workflow that passed validation (unknown deps and cycles are refused)."""
        steps = {s.id: s for s in workflow.steps}
        deps = {s.id: tuple(step_deps(s)) for s in workflow.steps}
        dependents: dict[str, list[str]] = {sid: [] for sid in steps}
        for sid, ds in deps.items():
            for d in ds:
                if d not in steps:
                    raise ValueError(f"step {sid!r} depends on unknown step {d!r}")
                dependents[d].append(sid)
        order = topological_order(list(steps), dependents, deps)
        if order is None:
            raise ValueError("the workflow has a cycle; validate it first")
        return cls(
            workflow=workflow,
            steps=steps,
            deps=deps,
            dependents={k: tuple(v) for k, v in dependents.items()},
            order=tuple(order),
        )


__all__ = ["Plan", "step_deps", "topological_order"]
