"""A validated workflow compiled for execution: each step's dependencies and dependents."""

from __future__ import annotations

from collections.abc import Iterator
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
        import networkx as nx  # here, not at the top: `dagwright --help` imports no graph library

        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from(steps)
        graph.add_edges_from((d, sid) for sid, ds in deps.items() for d in ds)
        try:
            order = list(nx.topological_sort(graph))
        except nx.NetworkXUnfeasible:
            raise ValueError("the workflow has a cycle; validate it first") from None
        return cls(
            workflow=workflow,
            steps=steps,
            deps=deps,
            dependents={k: tuple(v) for k, v in dependents.items()},
            order=tuple(order),
        )


__all__ = ["Plan", "step_deps"]
