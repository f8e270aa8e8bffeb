"""From a workflow file to something runnable: load, load its tools, validate, resolve inputs.

One pass reports every problem: schema errors, and the semantic checks (tools, references,
cycles) on the parts of the file that did parse.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagwright.errors import PlanError, PlanIssue
from dagwright.planner.inputs import resolve_inputs
from dagwright.planner.limits import Limits
from dagwright.planner.loader import LoadedWorkflow, load_workflow, loads_workflow
from dagwright.planner.schema import Workflow
from dagwright.planner.source import Source
from dagwright.planner.tool_modules import load_tool_modules, registry_for
from dagwright.planner.validate import validate
from dagwright.planner.yaml_doc import paused_gc
from dagwright.tools.registry import ToolRegistry


@dataclass
class Prepared:
    workflow: Workflow
    registry: ToolRegistry
    inputs: dict[str, Any]
    source: Source


def _semantic_issues(
    wf: Workflow,
    source: Source,
    base_dir: Path | None,
    registry: ToolRegistry,
    modules: Sequence[str],
    secrets: Collection[str] | None = None,
) -> tuple[ToolRegistry, list[PlanIssue]]:
    registry, issues = load_tool_modules(registry, modules)
    registry, more = registry_for(wf, registry, base_dir, source, modules)
    return registry, issues + more + validate(wf, registry, source, secrets=secrets)


_CHECKED_SIZE = 128
_checked_lock = threading.Lock()
# key → (the parse, the registry given, the registry checked with, the problems); the entry
# holds the parse and the registry given, so their ids in the key stay theirs
_checked: OrderedDict[
    tuple[Any, ...], tuple[LoadedWorkflow, ToolRegistry, ToolRegistry, list[PlanIssue]]
] = OrderedDict()


def _checked_issues(
    loaded: LoadedWorkflow,
    base_dir: Path | None,
    registry: ToolRegistry,
    modules: Sequence[str],
    secrets: Collection[str] | None,
) -> tuple[ToolRegistry, list[PlanIssue]]:
    """``_semantic_issues`` of a parsed workflow, kept while the parse and the registry are the
    same objects and the registry is unchanged: a server submitting one workflow again and
    again (a known file, or the same text) validates it once. Loading reuses parses
    (``_parsed``, ``_loaded_file``), so the same workflow comes back as the same object."""
    key = (
        id(loaded),
        id(registry),
        registry.version,
        tuple(modules),
        base_dir,
        None if secrets is None else frozenset(secrets),
    )
    with _checked_lock:
        hit = _checked.get(key)
        if hit is not None and hit[0] is loaded and hit[1] is registry:
            _checked.move_to_end(key)
            return hit[2], list(hit[3])
    checked, issues = _semantic_issues(
        loaded.workflow, loaded.source, base_dir, registry, modules, secrets
    )
    with _checked_lock:
        _checked[key] = (loaded, registry, checked, list(issues))
        while len(_checked) > _CHECKED_SIZE:
            _checked.popitem(last=False)
    return checked, issues


def _loaded_file(path: Path, limits: Limits | None) -> LoadedWorkflow:
    """A workflow file, parsed again only when it changed (modification time and size)."""
    try:
        st = path.stat()
    except OSError:
        return load_workflow(path, limits)  # the error, located
    return _parsed_file(path, path.resolve(), st.st_mtime_ns, st.st_size, limits or Limits())


@functools.lru_cache(maxsize=64)
def _parsed_file(
    path: Path, _where: Path, _mtime_ns: int, _size: int, limits: Limits
) -> LoadedWorkflow:
    return load_workflow(path, limits)  # problems name the path as the caller gave it


def prepare(
    path: str | Path,
    registry: ToolRegistry,
    *,
    tool_modules: Sequence[str] = (),
    inputs: Mapping[str, Any] | None = None,
    inputs_required: bool = True,
    inputs_as_text: bool = False,
    allow_tool_modules: bool = True,
    limits: Limits | None = None,
    secrets: Collection[str] | None = None,
) -> Prepared:
    """Everything a run needs from a workflow file; raises PlanError listing every problem.

    ``inputs_required=False`` checks given inputs only (``validate`` without ``--input``).
    ``allow_tool_modules=False``: the workflow's ``tools:`` may name no module, as for a
    workflow given as text (registered tools only); with True (the CLI's, for files), modules
    in the file's folder and ``tool_modules``' (``tool_modules.registry_for``).
    ``limits`` bound the file, its steps and nesting, and the inputs (default ``Limits()``).
    ``secrets``: the names of the secrets the run will have, checked (``validate``)."""
    path = Path(path)
    base_dir = path.resolve().parent if allow_tool_modules else None
    return _prepared(
        lambda: _loaded_file(path, limits),
        base_dir,
        registry,
        tool_modules=tool_modules,
        inputs=inputs,
        inputs_required=inputs_required,
        inputs_as_text=inputs_as_text,
        limits=limits,
        secrets=secrets,
    )


def prepare_text(
    text: str,
    registry: ToolRegistry,
    *,
    inputs: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    name: str = "<workflow_yaml>",
    inputs_required: bool = True,
    secrets: Collection[str] | None = None,
) -> Prepared:
    """``prepare`` for a workflow given as YAML text (an API body): registered tools only (its
    ``tools:`` may name no module), inputs as JSON values. ``name`` stands for the file in the
    problems reported."""
    return _prepared(
        lambda: _parsed(text, name, limits or Limits()),
        None,
        registry,
        tool_modules=(),
        inputs=inputs,
        inputs_required=inputs_required,
        inputs_as_text=False,
        limits=limits,
        secrets=secrets,
    )


@functools.lru_cache(maxsize=64)
def _parsed(text: str, name: str, limits: Limits) -> LoadedWorkflow:
    """The same workflow text is parsed once (an API client submitting one workflow again and
    again): the models are frozen, the result is shared. Refusals are not kept."""
    return loads_workflow(text, file=name, limits=limits)


@paused_gc()  # a bounded input: see paused_gc
def _prepared(
    load: Callable[[], LoadedWorkflow],
    base_dir: Path | None,
    registry: ToolRegistry,
    *,
    tool_modules: Sequence[str],
    inputs: Mapping[str, Any] | None,
    inputs_required: bool,
    inputs_as_text: bool,
    limits: Limits | None,
    secrets: Collection[str] | None = None,
) -> Prepared:
    try:
        loaded = load()
    except PlanError as exc:
        if isinstance(exc.partial, Workflow) and isinstance(exc.source, Source):
            _, more = _semantic_issues(
                exc.partial, exc.source, base_dir, registry, tool_modules, secrets
            )
            seen = {(i.line, i.field) for i in exc.issues}
            exc.issues += [i for i in more if (i.line, i.field) not in seen]
        raise
    wf, source = loaded.workflow, loaded.source
    registry, issues = _checked_issues(loaded, base_dir, registry, tool_modules, secrets)
    resolved: dict[str, Any] = {}
    over = inputs_over_limits(wf, inputs or {}, limits or Limits(), inputs_as_text, source)
    issues += over
    if (inputs_required or inputs) and not over:
        try:
            resolved = resolve_inputs(wf, inputs or {}, as_text=inputs_as_text, source=source)
        except PlanError as exc:
            issues += exc.issues
    if issues:
        raise PlanError(sorted(issues, key=lambda i: (i.line is None, i.line or 0)))
    return Prepared(wf, registry, resolved, source)


def inputs_over_limits(
    wf: Workflow, given: Mapping[str, Any], limits: Limits, as_text: bool, source: Source
) -> list[PlanIssue]:
    """Inputs too big or too deep, found before they are converted (a JSON parse of deep text
    would overflow the stack) or checked."""
    issues = []
    for name, value in given.items():
        spec = wf.inputs.get(name)
        json_text = as_text and spec is not None and spec.type in ("object", "array")
        problem = limits.input_problem(name, value, json_text=json_text)
        if problem is not None:
            message, hint = problem
            issues.append(
                source.issue(message, ("inputs", name), field=f"inputs.{name}", hint=hint)
            )
    return issues


__all__ = ["Prepared", "inputs_over_limits", "prepare", "prepare_text"]
