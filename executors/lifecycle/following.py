"""Following a run, in the one run lifecycle (``executors.lifecycle``): tail its trace and fold
it until the run has ended (``follow``), or fold what is stored now (``fold_run``). Called by the
CLI (``run --executor celery``, ``follow``), the API and the Celery submit task (``fold_run``),
tests and benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dagwright.errors import DagwrightError
from dagwright.executors import engine
from dagwright.executors.engine.events import Event
from dagwright.executors.store.base import RunRecord, TraceStore
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow


def follow(
    store: TraceStore,
    run_id: str,
    *,
    on_event: Callable[[Event, engine.RunState], None] | None = None,
    wait: Callable[[float], None] | None = None,
    poll: float = 0.05,
    timeout: float | None = None,
) -> engine.RunState:
    """Tail a run's trace, folding each event (``on_event`` sees it with the state after it),
    until the run has ended; returns the final state. ``wait(seconds)`` blocks until more may
    have happened (default: sleep ``poll``); the Celery client wakes when a worker records the
    run's end. Raises DagwrightError after ``timeout`` seconds."""
    record = store.get_run(run_id)
    plan = Plan.from_workflow(Workflow.model_validate(record.workflow))
    state = engine.RunState.initial(plan, record.run_id)
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = wait or time.sleep
    while True:
        new = store.events(record.run_id, after=seen)
        for event in new:
            state = engine.apply(state, event)
            if on_event is not None:
                on_event(event, state)
        if new:
            seen = new[-1].seq or seen
        if state.status in engine.FINAL:
            return state
        if not new:
            if deadline is not None and time.monotonic() > deadline:
                raise DagwrightError(f"run {record.run_id} did not end within {timeout:g}s")
            pause(poll)


def fold_run(store: TraceStore, run_id: str) -> tuple[RunRecord, engine.RunState]:
    """A run's record and its state folded from the stored trace (``state.plan``: the plan in
    force at the end)."""
    record = store.get_run(run_id)
    plan = Plan.from_workflow(Workflow.model_validate(record.workflow))
    return record, engine.fold(plan, record.run_id, store.events(record.run_id))


__all__ = ["fold_run", "follow"]
