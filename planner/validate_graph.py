"""Validation of the dependency graph: each step's dependencies, and cycles, each printed
(``a → b → a``) and located where the cycle closes. Kahn's algorithm finds whether there is one
(``planner.plan.topological_order``); networkx is loaded only to print a cycle.

Called by the validator (``planner.validate``) once the steps are known; ``safe_deps`` by the
``verify`` checks too (``planner.validate_verify``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagwright.planner.plan import step_deps, topological_order
from dagwright.planner.references import ExpressionError
from dagwright.planner.schema import Step

if TYPE_CHECKING:
    from dagwright.planner.validate import Validator


def check_cycles(v: Validator) -> None:
    """One issue per dependency cycle among the known steps (none: the usual case)."""
    deps: dict[str, list[str]] = {sid: [] for sid in v.step_ids}  # each known id once
    dependents: dict[str, list[str]] = {sid: [] for sid in v.step_ids}
    edges: list[tuple[str, str]] = []
    for step in v.wf.steps:
        for dep in safe_deps(step):
            if dep in v.step_ids and dep != step.id:
                edges.append((dep, step.id))
    for dep, sid in dict.fromkeys(edges):  # an edge once, as a graph has it
        deps[sid].append(dep)
        dependents[dep].append(sid)
    if topological_order(list(v.step_ids), dependents, deps) is not None:
        return  # no cycle: the usual case, without building a graph
    import networkx as nx  # here, not at the top: `dagwright --help` imports no graph library

    graph: nx.DiGraph[str] = nx.DiGraph()
    for step in v.wf.steps:
        graph.add_node(step.id)
    graph.add_edges_from(edges)
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        cycle = nx.find_cycle(graph.subgraph(component))
        names = [u for u, _ in cycle] + [cycle[0][0]]
        first = min(component, key=lambda s: v.step_ids[s])
        start = names.index(first)
        names = names[start:-1] + names[:start] + [first]
        before = names[-2]
        fld = "needs" if before in v.wf.steps[v.step_ids[first]].needs else "with"
        v.add(
            "dependency cycle: " + " → ".join(names),
            ("steps", v.step_ids[first], fld),
            step=first,
            field=fld,
            hint="a step can only depend on steps that do not depend on it; "
            "remove one of these references or needs",
        )


def safe_deps(step: Step) -> list[str]:
    """The steps ``step`` depends on: its ``needs`` and what it references (its ``needs``
    alone when an expression of it does not parse)."""
    try:
        return step_deps(step)
    except ExpressionError:  # reported where the expression sits
        return list(step.needs)


__all__ = ["check_cycles", "safe_deps"]
