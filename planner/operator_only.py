"""What only the operator's workflows may do: read secrets (``${{ secrets.NAME }}``), and let
``http.request`` reach internal addresses (``allow_hosts``). Either sends a request somewhere
the address guard or the redaction alone cannot make safe, so the choice stays with whoever put
the workflow file in place.

- A workflow file — given to the CLI, or in the API server's ``DAGWRIGHT_WORKFLOWS`` — may.
- A workflow posted to the API as text, and a plan a model wrote for an API ``task``, may not
  (``refused``: a located issue at each use).
- A plan revised by a model (``on_failure: replan``), and a fork's ``set`` edits through the
  API, may keep such steps exactly as the workflow had them, never add or change one
  (``changed``): a model, or an API caller, could point them anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dagwright.errors import PlanIssue
from dagwright.planner.plan import step_deps
from dagwright.planner.references import expressions_in
from dagwright.planner.secret_refs import SECRETS
from dagwright.planner.source import Path_, Source

if TYPE_CHECKING:
    from dagwright.planner.schema import Step, Workflow

GUARD_ARGS = {"http.request": "allow_hosts"}
"""The argument of each tool that lifts its address guard."""

SECRETS_USE, ALLOW_HOSTS = "read secrets", "name allow_hosts"


def operator_only_uses(workflow: Workflow) -> Iterator[tuple[Path_, str, str, str]]:
    """(YAML path, step id, field, what) of each use: ``SECRETS_USE`` where a step's ``with``
    reads a secret, ``ALLOW_HOSTS`` where an ``http.request`` step names hosts (or computes
    them) in ``allow_hosts``."""
    for i, step in enumerate(workflow.steps):
        for loc, expr in expressions_in(step.with_):
            if SECRETS in expr.names():
                field = ".".join(["with", *map(str, loc)])
                yield ("steps", i, "with", *loc), step.id, field, SECRETS_USE
        arg = GUARD_ARGS.get(step.uses)
        if arg is not None and step.with_.get(arg) not in (None, []):
            yield ("steps", i, "with", arg), step.id, f"with.{arg}", ALLOW_HOSTS


def refused(workflow: Workflow, source: Source, what: str) -> list[PlanIssue]:
    """A located issue for each operator-only use in ``workflow``, which came from ``what``
    (``a workflow given as text``, ``a plan written by a model``)."""
    return [
        source.issue(
            f"{what} cannot {use}",
            path,
            step=step,
            field=field,
            hint="put the workflow in the server's DAGWRIGHT_WORKFLOWS folder and submit it "
            "by name",
        )
        for path, step, field, use in operator_only_uses(workflow)
    ]


def changed(original: Workflow, revised: Workflow, what: str) -> list[PlanIssue]:
    """A located issue for each step of ``revised`` (``what``: ``a revised plan``, ``a fork's
    edits``) with an operator-only use that ``original`` does not have as it is: the same
    id, tool and ``with``, and so every step it depends on (whose outputs its ``with`` may
    read: a changed upstream step could hand it another URL)."""
    return [
        Source().issue(
            f"{what} may not {use} in a step the workflow did not have as it is",
            path,
            step=step_id,
            field=field,
            hint=f"only the steps of the workflow as written may {use}: keep the step, and "
            "the steps it depends on, as they are",
        )
        for path, step_id, field, use in operator_only_uses(revised)
        if _lineage(revised, step_id) != _lineage(original, step_id)
    ]


def _lineage(workflow: Workflow, step_id: str) -> list[tuple[str, str, Any]] | None:
    """The step and every step it depends on, each as (id, tool, ``with``), in id order; None
    when the workflow has no such step (or a dependency it names is missing)."""
    steps = {s.id: s for s in workflow.steps}
    seen: dict[str, Step] = {}
    todo = [step_id]
    while todo:
        sid = todo.pop()
        if sid in seen:
            continue
        if sid not in steps:
            return None
        seen[sid] = steps[sid]
        todo += step_deps(steps[sid])
    return [(sid, s.uses, s.with_) for sid, s in sorted(seen.items())]


__all__ = ["ALLOW_HOSTS", "GUARD_ARGS", "SECRETS_USE", "changed", "operator_only_uses", "refused"]
