"""Building derived runs for the CLI: ``resume`` and ``fork`` read the parent run from the trace
store, take the workflow (the parent's plan, an edited file, or ``--set`` edits), and let
``executors.lineage.derive`` decide what is reused and what runs again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dagwright.errors import DagwrightError, PlanError
from dagwright.executors import engine
from dagwright.executors.lineage import Derivation, apply_sets, derive, parent_state
from dagwright.executors.store.base import RunRecord, TraceStore
from dagwright.planner.loader import workflow_from_data
from dagwright.planner.prepare import prepare
from dagwright.planner.source import Source
from dagwright.planner.validate import registry_for_run, resolve_inputs, validate
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
    inputs: dict[str, str] | None = None,
    sets: list[str] | None = None,
) -> tuple[RunRecord, Derivation, ToolRegistry, str | None]:
    """(parent record, derivation, registry, source path of the new run's workflow).

    Raises PlanError (bad edit, inconsistent reuse) or DagwrightError (no such run, a run
    that is still executing on workers)."""
    record = store.get_run(run_id)
    parent = parent_state(record.workflow, record.run_id, store.events(record.run_id))
    if record.executor == "celery" and parent.status not in engine.FINAL:
        raise DagwrightError(
            f"run {record.run_id} is still running on the workers: wait for it to end, "
            f"or `dagwright cancel {record.run_id}` first"
        )
    assert parent.plan is not None
    edited: list[str] = []
    given = dict(inputs or {})
    source_path = record.source
    if workflow_file is not None:
        ready = prepare(workflow_file, registry, tool_modules=tool_modules, inputs_required=False)
        workflow, registry, source = ready.workflow, ready.registry, ready.source
        source_path = str(workflow_file.resolve())
    else:
        data = parent.plan.workflow.to_data()
        if sets:
            data, set_inputs, edited = apply_sets(data, sets)
            given.update(set_inputs)
        source = Source(f"<workflow of run {record.run_id}>")
        workflow = workflow_from_data(data, source)
        registry = registry_for_run(workflow, registry, tool_modules, record.source)
        problems = validate(workflow, registry, source)
        if problems:
            raise PlanError(problems)
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
    )
    return record, derivation, registry, source_path


def describe(derivation: Derivation) -> str:
    """One line for people: what is reused, what runs again."""
    reused = ", ".join(derivation.reused) or "none"
    return f"reusing {len(derivation.reused)} step(s) ({reused}); running again: " + ", ".join(
        derivation.rerun
    )


__all__ = ["derived_run", "describe"]
