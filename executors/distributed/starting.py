"""Starting a run on the distributed engine (``Engine.start``): the run record, its opening events
and the dispatch of its first ready steps (or its place in its concurrency key's queue), in one
transaction through ``lifecycle.open_run``. Called by the CLI, the API and ``dagwright.submit``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagwright.executors import admission, engine
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import NewRun, open_run, run_registry
from dagwright.planner.inputs import resolve_inputs
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from dagwright.executors.distributed.dispatch import Dispatch
    from dagwright.executors.distributed.engine import Engine


def start(
    eng: Engine,
    workflow: Workflow,
    inputs: dict[str, Any],
    *,
    run_id: str | None = None,
    source: str | None = None,
    prelude: list[dict[str, Any]] | None = None,
    reused: dict[str, dict[str, Any]] | None = None,
    lineage: dict[str, Any] | None = None,
    priority: int = 0,
) -> tuple[str, list[Dispatch]]:
    """Record a new run (validated by the caller) and dispatch its first steps — or, for a
    workflow with ``concurrency:`` whose key has no free slot, queue it (``admission``).

    ``reused``/``lineage``: a derived run (resume, fork) and the outputs it reuses.
    ``priority``: its place among the runs waiting for its key (higher first)."""
    new = NewRun(
        workflow,
        resolve_inputs(workflow, inputs),  # defaults filled, types checked
        run_id or eng.id_factory(),
        source=source,
        prelude=prelude or (),
        reused=reused or {},
        lineage=lineage,
    )
    run_id = new.run_id
    # a run with a concurrency key takes its place in the key's queue first: a slot is
    # admitted only once its run is recorded (``TraceStore.admit``)
    queued = admission.queue(
        eng.store, run_id, workflow, new.inputs, priority=priority, now=eng.clock()
    )
    first = _First(eng, workflow, new, queued)
    stored = open_run(eng.store, new, executor=eng.executor, clock=eng.clock, first=first)
    if queued:
        data = queued[0].data
        for admitted in admission.admit(eng.store, data["key"], data["limit"], eng.clock):
            eng._next_admitted.append(admitted)
        return run_id, eng._drain_admitted()
    if first.dispatches is None:  # nothing ready from the opening (e.g. every step reused)
        return run_id, eng.advance(run_id)
    assert first.registry is not None
    eng._keep(run_id, first.plan, first.registry)
    eng._absorb(run_id, stored)
    return run_id, first.dispatches


class _First:
    """What a new run records with its opening events (``open_run``'s ``first``): its
    ``run_queued`` event when it waits for a concurrency slot, else the dispatch of its first
    ready steps under their claims (nobody else knows the run yet: nothing to read back)."""

    def __init__(self, eng: Engine, workflow: Workflow, new: NewRun, queued: list[Event]) -> None:
        self.eng, self.workflow, self.new, self.queued = eng, workflow, new, queued
        self.plan = Plan.from_workflow(workflow)
        self.registry: ToolRegistry | None = None
        self.dispatches: list[Dispatch] | None = None

    def __call__(self, opening: list[Event]) -> tuple[list[Event], list[str]]:
        if self.queued:
            return list(self.queued), []
        state = engine.RunState.initial(self.plan, self.new.run_id)
        for event in opening:
            state = engine.apply(state, event)
        ready = engine.ready_steps(self.plan, state)
        if not ready:
            return [], []
        eng = self.eng
        self.registry = run_registry(self.workflow, eng.registry, eng.tool_modules, self.new.source)
        scheduled = [eng._schedule(self.plan, self.new.run_id, sid, 1) for sid in ready]
        self.dispatches = [d for d, _ in scheduled]
        return [e for _, e in scheduled], [f"dispatch:{sid}:1" for sid in ready]


__all__ = ["start"]
