"""From a workflow file to something runnable: load, load its tools, validate, resolve inputs.

One pass reports every problem: schema errors, and the semantic checks (tools, references,
cycles) on the parts of the file that did parse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagwright.errors import DagwrightError, PlanError, PlanIssue
from dagwright.planner.loader import load_workflow
from dagwright.planner.schema import Workflow
from dagwright.planner.source import Source
from dagwright.planner.validate import registry_for, resolve_inputs, validate
from dagwright.tools.registry import ToolRegistry


@dataclass
class Prepared:
    workflow: Workflow
    registry: ToolRegistry
    inputs: dict[str, Any]
    source: Source


def _semantic_issues(
    wf: Workflow, source: Source, base_dir: Path, registry: ToolRegistry, modules: Sequence[str]
) -> tuple[ToolRegistry, list[PlanIssue]]:
    issues: list[PlanIssue] = []
    if modules:
        registry = registry.copy()
    for module in modules:
        try:
            registry.load_module(module)
        except (ImportError, DagwrightError) as exc:
            issues.append(
                PlanIssue(
                    f"cannot load tool module {module!r} from settings: {exc}",
                    hint="check DAGWRIGHT_TOOLS",
                )
            )
    registry, more = registry_for(wf, registry, base_dir, source)
    return registry, issues + more + validate(wf, registry, source)


def prepare(
    path: str | Path,
    registry: ToolRegistry,
    *,
    tool_modules: Sequence[str] = (),
    inputs: Mapping[str, Any] | None = None,
    inputs_required: bool = True,
    inputs_as_text: bool = False,
) -> Prepared:
    """Everything a run needs from a workflow file; raises PlanError listing every problem.

    ``inputs_required=False`` checks given inputs only (``validate`` without ``--input``)."""
    path = Path(path)
    base_dir = path.resolve().parent
    try:
        loaded = load_workflow(path)
    except PlanError as exc:
        if isinstance(exc.partial, Workflow) and isinstance(exc.source, Source):
            _, more = _semantic_issues(exc.partial, exc.source, base_dir, registry, tool_modules)
            seen = {(i.line, i.field) for i in exc.issues}
            exc.issues += [i for i in more if (i.line, i.field) not in seen]
        raise
    wf, source = loaded.workflow, loaded.source
    registry, issues = _semantic_issues(wf, source, base_dir, registry, tool_modules)
    resolved: dict[str, Any] = {}
    if inputs_required or inputs:
        try:
            resolved = resolve_inputs(wf, inputs or {}, as_text=inputs_as_text, source=source)
        except PlanError as exc:
            issues += exc.issues
    if issues:
        raise PlanError(sorted(issues, key=lambda i: (i.line is None, i.line or 0)))
    return Prepared(wf, registry, resolved, source)


__all__ = ["Prepared", "prepare"]
