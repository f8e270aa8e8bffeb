"""Starting a run, in the one run lifecycle (``executors.lifecycle``): the ids every driver
gives its runs and attempts (``new_id``), the tools a run executes with (``run_registry``), and
``open_run``, which records a new run with its opening events and its driver's first decisions
in one transaction. Called by the local executor and the distributed engine (``new_id``,
``open_run``; replay runs on the local executor), resume and fork (``new_id``, ``run_registry``),
the distributed engine, ``dagwright replay`` and the API (``run_registry``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.store.base import RunRecord, TraceStore, lineage_fields
from dagwright.planner.schema import Workflow
from dagwright.planner.tool_modules import registry_for_run
from dagwright.tools.registry import ToolRegistry


def new_id() -> str:
    """A random 128-bit id, as 32 hex digits. (``uuid4`` reads the OS' entropy source at every
    call, which costs a quarter millisecond on some VMs; ``random`` is reseeded in each forked
    process.)"""
    return f"{random.getrandbits(128):032x}"


# -- the run's tools --------------------------------------------------------------------------


def run_registry(
    workflow: Workflow,
    base: ToolRegistry,
    modules: Sequence[str] = (),
    source: str | None = None,
) -> ToolRegistry:
    """The registry a run executes with: ``base``, the settings' tool ``modules`` and the
    workflow's own ``tools:`` (found next to ``source``, its file). Raises PlanError naming the
    module that cannot load."""
    return registry_for_run(workflow, base, tuple(modules), source)


# -- starting a run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRun:
    """What a run starts from: a validated workflow, resolved inputs, and where it came from."""

    workflow: Workflow
    inputs: dict[str, Any]
    run_id: str
    source: str | None = None
    """The workflow's file, when it came from one (its ``tools:`` are found next to it)."""
    prelude: Sequence[dict[str, Any]] = ()
    """Model calls that made the plan (``run --task``), recorded first in the trace."""
    reused: dict[str, dict[str, Any]] = field(default_factory=dict)
    """A derived run (resume, fork, replay): step id → the recorded output it reuses."""
    lineage: dict[str, Any] | None = None
    """A derived run's parent, mode and ``from`` steps."""


First = Callable[[list[Event]], tuple[list[Event], list[str]]]
"""What a driver records with a new run's opening events: given them, the events (e.g. the
first ``step_scheduled``) and claims to write in the same transaction."""


def open_run(
    store: TraceStore,
    run: NewRun,
    *,
    executor: str,
    clock: Callable[[], float],
    details: dict[str, Any] | None = None,
    first: First | None = None,
) -> list[Event]:
    """Record the run with its opening events — ``run_started`` (inputs, executor, ``details``,
    lineage), the prelude's model calls, the reused steps — and ``first``'s events and claims,
    all in one transaction (nobody ever sees a run without its opening events). Returns every
    event recorded, with its ``seq``."""
    wf = run.workflow
    # one reading: the record's ``created_at`` (what lists show and sort by) and ``run_started``'s
    # ``at`` (what a summary shows) are the same instant, to the millisecond in every report
    at = clock()
    record = RunRecord(
        run_id=run.run_id,
        workflow_name=wf.name,
        created_at=at,
        workflow=wf.to_data(),
        inputs=run.inputs,
        source=run.source,
        executor=executor,
        **lineage_fields(run.lineage),
    )
    data: dict[str, Any] = {"inputs": run.inputs, "executor": executor, **(details or {})}
    if run.lineage:
        data["lineage"] = run.lineage
    opening = [
        Event(ev.RUN_STARTED, run.run_id, at, None, None, data),
        *(Event(ev.MODEL_CALL, run.run_id, at, None, None, dict(c)) for c in run.prelude),
        *decisions.reused_events(run.run_id, at, run.reused),
    ]
    more, claims = first(opening) if first is not None else ([], [])
    return store.create_run(record, opening + more, claims=claims)


__all__ = ["First", "NewRun", "new_id", "open_run", "run_registry"]
