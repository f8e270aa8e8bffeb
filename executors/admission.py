"""Concurrency keys: at most ``limit`` runs of a workflow with the same key execute at once; the
others wait, queued, and are admitted in order (higher priority first, then by when they were
queued) as slots free up. Part of the one run lifecycle: every driver queues, admits and
releases through here.

- ``queue``: a new run with a ``concurrency:`` gets ``run_queued`` and waits in its key's queue;
  ``admit`` gives free slots to waiting runs and records ``run_admitted`` for each, once (the
  ``admitted`` claim). The store admits atomically across processes (``TraceStore.admit``).
- ``release``: a run that ended leaves its slot, and the next waiting runs are admitted.
- ``reconcile``: what a sweeper does — release the slots of runs that ended without releasing
  (a crash between the two), and admit what can be admitted.

Who starts an admitted run's steps: the process that admitted it, when it drives that run (the
Celery engine, the API's threads); otherwise the run's own driver, which polls (a local run), or
the next sweep (a Celery or API run admitted by a local process's release).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.store.base import TraceStore
from dagwright.planner.references import render, stringify
from dagwright.planner.schema import Workflow


def concurrency_of(workflow: Workflow, inputs: dict[str, Any]) -> tuple[str, int] | None:
    """The run's concurrency key (scoped to the workflow's name) and limit, or None."""
    spec = workflow.concurrency
    if spec is None:
        return None
    key = stringify(render(spec.key, {"inputs": inputs}))
    return f"{workflow.name}:{key}", spec.limit


def queue(
    store: TraceStore,
    run_id: str,
    workflow: Workflow,
    inputs: dict[str, Any],
    *,
    priority: int,
    now: float,
) -> list[Event]:
    """Put a new run in its key's queue (before it is admitted, nothing of it runs); the
    ``run_queued`` event to append after ``run_started``. None to do: []."""
    found = concurrency_of(workflow, inputs)
    if found is None:
        return []
    key, limit = found
    store.queue_run(key, run_id, priority, now)
    data = {"key": key, "limit": limit, "priority": priority}
    return [Event(ev.RUN_QUEUED, run_id, now, data=data)]


def admit(store: TraceStore, key: str, limit: int, clock: Callable[[], float]) -> list[str]:
    """Admit the key's next waiting runs into its free slots; each gets ``run_admitted`` once.
    Returns the runs admitted now."""
    admitted = store.admit(key, limit, clock())
    for run_id in admitted:
        event = Event(ev.RUN_ADMITTED, run_id, clock(), data={"key": key})
        store.append(run_id, [event], claims=["admitted"])
    return admitted


def release(store: TraceStore, state: engine.RunState, clock: Callable[[], float]) -> list[str]:
    """A run that ended leaves its slot; returns the runs admitted in its place."""
    if state.queue is None:
        return []
    store.release(state.run_id)
    return admit(store, str(state.queue["key"]), int(state.queue["limit"]), clock)


def admitted(store: TraceStore, run_id: str) -> bool:
    """Whether the run may start its steps: it holds a slot (or is in no queue)."""
    slot = store.slot(run_id)
    return slot is None or slot[1] is not None


def reconcile(
    store: TraceStore,
    status_of: Callable[[str], str],
    clock: Callable[[], float],
) -> list[str]:
    """Release the slots of runs that have ended (``status_of`` says a final status), then
    admit what fits in every key; returns the runs admitted."""
    out: list[str] = []
    for key, runs in store.slot_keys().items():
        limit = None
        for run_id, _ in runs:
            try:
                status = status_of(run_id)
            except Exception:  # noqa: BLE001 - an unreadable run keeps its slot this round
                continue
            if status in engine.FINAL:
                store.release(run_id)
        limit = _limit_of(store, runs)
        if limit is not None:
            out += admit(store, key, limit, clock)
    return out


def _limit_of(store: TraceStore, runs: list[tuple[str, float | None]]) -> int | None:
    """A key's limit, as its runs recorded it (``run_queued``)."""
    for run_id, _ in runs:
        for event in store.events(run_id):
            if event.type == ev.RUN_QUEUED:
                return int(event.data["limit"])
    return None


__all__ = ["admit", "admitted", "concurrency_of", "queue", "reconcile", "release"]
