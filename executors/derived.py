"""Derived runs, for every driver (the CLI's ``resume``/``fork``, the API's): read the parent run
from the trace store, take the workflow (the parent's plan, an edited file, or ``--set`` edits),
and let the pure ``engine.lineage.derive`` decide what is reused and what runs again."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from dagwright.errors import DagwrightError, PlanError, PlanIssue
from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.lineage import (
    FORK,
    RESUME,
    Derivation,
    apply_sets,
    derive,
    parent_state,
)
from dagwright.executors.lifecycle import abandoned, close_abandoned, new_id, run_registry
from dagwright.executors.store.base import RunRecord, TraceStore
from dagwright.planner.inputs import resolve_inputs
from dagwright.planner.limits import Limits
from dagwright.planner.loader import workflow_from_data
from dagwright.planner.prepare import inputs_over_limits, prepare, prepare_text
from dagwright.planner.source import Source
from dagwright.planner.validate import validate
from dagwright.tools.registry import ToolRegistry


def derived_run(
    store: TraceStore,
    run_id: str,
    *,
    mode: str,
    registry: ToolRegistry,
    tool_modules: Sequence[str] = (),
    from_steps: list[str],
    workflow_file: Path | None = None,
    workflow_text: str | None = None,
    inputs: dict[str, str] | None = None,
    sets: list[str] | None = None,
    heartbeat: float = 5.0,
    now: float | None = None,
    limits: Limits | None = None,
) -> tuple[RunRecord, Derivation, ToolRegistry, str | None, str]:
    """(parent record, derivation, registry, source path of the new run's workflow, the new
    run's id).

    A parent that is still running is refused (on workers, or in another local process that
    holds its lease). A local parent whose process is gone (its lease expired) is closed as
    ``abandoned`` when it is resumed, naming the new run; it cannot be resumed a second time.

    Raises PlanError (bad edit, inconsistent reuse) or DagwrightError (no such run, a run that
    is still executing, an abandoned run resumed already).

    ``workflow_text``: the edited workflow as YAML text (the API's ``workflow_yaml``:
    registered tools only), instead of a file.

    ``limits`` bound the ``--workflow`` file and the inputs given now, as for ``run`` (default:
    ``Limits()``; drivers pass their settings' DAGWRIGHT_MAX_*)."""
    limits = limits or Limits()
    record = store.get_run(run_id)
    events = store.events(record.run_id)
    parent = parent_state(record.workflow, record.run_id, events)
    now = time.time() if now is None else now
    closing = _check_parent(store, record, parent, events, mode, now, heartbeat)
    edited: list[str] = []
    given = dict(inputs or {})
    source_path = record.source
    if workflow_file is not None:
        ready = prepare(
            workflow_file,
            registry,
            tool_modules=tool_modules,
            inputs_required=False,
            limits=limits,
        )
        workflow, registry, source = ready.workflow, ready.registry, ready.source
        source_path = str(workflow_file.resolve())
    elif workflow_text is not None:
        ready = prepare_text(workflow_text, registry, limits=limits, inputs_required=False)
        workflow, registry, source = ready.workflow, ready.registry, ready.source
        source_path = None
    else:
        data = parent.current_plan.workflow.to_data()
        _check_sets(sets or [], limits)
        if sets:
            data, set_inputs, edited = apply_sets(data, sets)
            given.update(set_inputs)
        source = Source(f"<workflow of run {record.run_id}>")
        workflow = workflow_from_data(data, source)
        registry = run_registry(workflow, registry, tool_modules, record.source)
        problems = validate(workflow, registry, source)
        if problems:
            raise PlanError(problems)
    over = inputs_over_limits(workflow, given, limits, True, source)
    if over:
        raise PlanError(over)
    # the parent's inputs, still declared, then the ones given now (as command-line text)
    kept = {k: v for k, v in record.inputs.items() if k in workflow.inputs and k not in given}
    resolved = resolve_inputs(workflow, kept | given, as_text=True, source=source)
    derivation = derive(
        parent,
        workflow,
        resolved,
        mode=mode,
        from_steps=from_steps or edited,
        source=source,
        from_changed=mode == FORK and not from_steps,  # the steps the --set inputs change
    )
    child = new_id()
    if closing and not close_abandoned(store, parent, now, resumed_by=child):
        raise DagwrightError(f"run {record.run_id} ended meanwhile: look at it, then try again")
    return record, derivation, registry, source_path, child


def _check_sets(sets: list[str], limits: Limits) -> None:
    """``--set`` values over the input limits, found before they are parsed as JSON (text
    nested thousands deep would overflow the parser)."""
    problems = []
    for item in sets:
        path, _, raw = item.partition("=")
        problem = limits.input_problem(path.strip(), raw, json_text=True, what="--set")
        if problem is not None:
            problems.append(PlanIssue(problem[0], field="set", hint=problem[1]))
    if problems:
        raise PlanError(problems)


def _check_parent(
    store: TraceStore,
    record: RunRecord,
    parent: engine.RunState,
    events: list[Event],
    mode: str,
    now: float,
    heartbeat: float,
) -> bool:
    """Whether the parent is to be closed as abandoned first; refuses a live parent, and an
    abandoned one resumed already."""
    rid = record.run_id
    if parent.status == engine.ABANDONED:
        finished = next(e for e in reversed(events) if e.type == ev.RUN_FINISHED)
        child = finished.data.get("resumed_by")
        if mode == RESUME and child:
            raise DagwrightError(
                f"run {rid} was abandoned and has been resumed as run {child} already: "
                f"resume {child} instead (or fork {rid} to try something else)"
            )
        return False
    if parent.status in engine.FINAL:
        return False
    if record.executor != "local":  # on workers or an API server: no lease to lapse
        where = "the workers" if record.executor == "celery" else "the API server"
        raise DagwrightError(
            f"run {rid} is still running on {where}: wait for it to end, "
            f"or cancel it first (`dagwright cancel {rid}`, POST /v1/runs/{rid}/cancel)"
        )
    if not abandoned(store, record, parent, now, heartbeat):
        raise DagwrightError(
            f"run {rid} is still running in another process (it renews its lease every "
            f"{heartbeat:g}s): wait for it to end or stop it (Ctrl-C, kill); once its process is "
            f"gone for {3 * heartbeat:g}s it shows as abandoned and can be resumed"
        )
    return mode == RESUME


def describe(derivation: Derivation) -> str:
    """One line for people: what is reused, what runs again."""
    n = len(derivation.reused)
    reused = f"reusing {n} step{'' if n == 1 else 's'} ({', '.join(derivation.reused)})"
    return (reused if n else "reusing no step") + "; running again: " + ", ".join(derivation.rerun)


__all__ = ["derived_run", "describe"]
