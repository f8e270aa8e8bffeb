"""The one run lifecycle. Every driver — the local executor, the Celery engine, replay, the
CLI and the API — calls these; none copies them.

- ``new_id``: run and attempt ids.
- ``run_registry``: the tools a run executes with (base registry, settings' modules, the
  workflow's ``tools:`` next to its file).
- ``open_run``: record a new run with its opening events (``run_started``, the model calls
  that planned it, the outputs a derived run reuses) and what its driver decides from them (the
  first dispatches), in one transaction; returns them as stored.
- ``tool_context``: what a tool gets for one attempt (previous failure, trace emitter, the
  model-call cache under the retry rule, recorded calls in a replay).
- ``Replanning``: ask the replanner for a revised plan when a step failed with
  ``on_failure: replan``, validate it with the run's own registry, and say what to record.
- ``follow``: tail a run's trace, fold it, and return the state once the run has ended.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from dagwright.errors import DagwrightError
from dagwright.executors import engine
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.store.base import RunRecord, TraceStore, lineage_fields
from dagwright.planner.operator_only import changed
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.planner.tool_modules import registry_for_run
from dagwright.planner.validate import validate
from dagwright.tools.registry import ToolContext, ToolRegistry


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
    record = RunRecord(
        run_id=run.run_id,
        workflow_name=wf.name,
        created_at=clock(),
        workflow=wf.to_data(),
        inputs=run.inputs,
        source=run.source,
        executor=executor,
        **lineage_fields(run.lineage),
    )
    data: dict[str, Any] = {"inputs": run.inputs, "executor": executor, **(details or {})}
    if run.lineage:
        data["lineage"] = run.lineage
    at = clock()
    opening = [
        Event(ev.RUN_STARTED, run.run_id, at, None, None, data),
        *(Event(ev.MODEL_CALL, run.run_id, at, None, None, dict(c)) for c in run.prelude),
        *decisions.reused_events(run.run_id, at, run.reused),
    ]
    more, claims = first(opening) if first is not None else ([], [])
    return store.create_run(record, opening + more, claims=claims)


# -- one attempt's tool context ---------------------------------------------------------------


class Cache(Protocol):
    def get(self, key: str) -> Any: ...
    def put(self, key: str, value: Any) -> None: ...


class AttemptCache:
    """The model-call cache as one attempt sees it.

    A retry must reach the model: an attempt after a failure does not read the cache (its
    request may be the same as the failed attempt's, whose answer was cached). What an attempt
    writes is kept back until the driver knows the attempt succeeded (``commit``), so an answer
    that failed verification is never served to a later run."""

    def __init__(self, cache: Cache, *, read: bool) -> None:
        self.cache = cache
        self.read = read
        self.pending: list[tuple[str, Any]] = []

    def get(self, key: str) -> Any:
        if not self.read:
            return None
        for k, value in reversed(self.pending):
            if k == key:
                return value
        return self.cache.get(key)

    def put(self, key: str, value: Any) -> None:
        self.pending.append((key, value))

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        for key, value in pending:
            self.cache.put(key, value)


def tool_context(
    state: engine.RunState,
    sid: str,
    attempt: int,
    *,
    emit: Callable[[str, dict[str, Any]], None] | None,
    cache: Cache | None,
    replay: Any = None,
    tools: ToolRegistry | None = None,
) -> ToolContext:
    """What the tool of step ``sid`` gets for attempt ``attempt``. ``cache`` is used when the
    step has ``cache: true`` and this is not a replay (a replay serves recorded calls);
    ``tools``: the run's registry (the tools an ``agents.team`` step's agents may call)."""
    step = state.current_plan.steps[sid]
    use_cache = cache is not None and step.cache and replay is None
    return ToolContext(
        run_id=state.run_id,
        step_id=sid,
        attempt=attempt,
        previous_failure=decisions.previous_failure(state, sid, attempt),
        emit=emit,
        cache=AttemptCache(cache, read=attempt == 1) if use_cache and cache else None,
        replay=replay,
        tools=tools,
    )


def settle_cache(ctx: ToolContext, outcome: engine.Outcome) -> None:
    """After an attempt: keep what it cached if it succeeded, drop it otherwise."""
    if isinstance(ctx.cache, AttemptCache) and outcome.status == engine.SUCCEEDED:
        ctx.cache.commit()


# -- replanning -------------------------------------------------------------------------------

Recorder = Callable[[Any], None]
Replanner = Callable[[Workflow, dict[str, Any], dict[str, Any], ToolRegistry, Recorder], Workflow]
"""``replanner(workflow, outputs, failure, registry, record) -> Workflow``: a revised plan for
the run after ``failure`` (``{"step", "error"}``), naming only tools of the run's ``registry``;
``record(call)`` records each model call it makes."""


def model_replanner(model: str, model_settings: Any) -> Replanner:
    """A replanner that asks ``model`` (``PROVIDER:MODEL``) through the planner."""
    from dagwright.agents.models import connect
    from dagwright.planner.llm import replan

    provider = connect(model, model_settings)

    def replanner(
        workflow: Workflow,
        outputs: dict[str, Any],
        failure: dict[str, Any],
        registry: ToolRegistry,
        record: Recorder,
    ) -> Workflow:
        return replan(workflow, outputs, failure, registry, provider, record=record)

    return replanner


@dataclass
class Revision:
    """What replanning came to: the events to record (the replanner's model calls, then
    ``plan_revised``), or the reason there is no revision (then the run fails)."""

    events: list[Event]
    problem: str | None = None


class Replanning:
    """Replanning for one run: when, and with what. Drivers decide where the replanner runs
    (a thread, a worker holding a claim) and record the events."""

    def __init__(self, replanner: Replanner | None, registry: ToolRegistry) -> None:
        self.replanner = replanner
        self.registry = registry

    def wanted(self, state: engine.RunState) -> bool:
        """A step failed with ``on_failure: replan``, revisions are left, and there is a
        replanner: the plan is to be revised before the run can go on."""
        return self.replanner is not None and decisions.may_replan(state)

    def revise(self, state: engine.RunState, clock: Callable[[], float]) -> Revision:
        """Ask the replanner (blocking) and validate the revised plan with the run's registry."""
        assert self.replanner is not None and state.replan_for is not None
        plan = state.current_plan
        failure = {"step": state.replan_for, "error": state.steps[state.replan_for].error}
        outputs = decisions.succeeded_outputs(state)
        calls: list[Event] = []

        def record(call: Any) -> None:
            data = call.as_dict() if hasattr(call, "as_dict") else dict(call)
            calls.append(Event(ev.MODEL_CALL, state.run_id, clock(), None, None, data))

        try:
            revised = self.replanner(plan.workflow, outputs, failure, self.registry, record)
        except Exception as exc:  # noqa: BLE001 - the run then fails with the step's own error
            return Revision(calls, f"replanning failed: {exc}")
        issues = validate(revised, self.registry) + changed(
            plan.workflow, revised, "a revised plan"
        )
        if issues:
            problems = "; ".join(str(i) for i in issues[:5])
            return Revision(calls, f"the revised plan is not valid: {problems}")
        event = decisions.revision_event(state, revised, failure, clock())
        return Revision([*calls, event])


# -- a local run's lease ----------------------------------------------------------------------

LEASE = ("", 0)
"""The heartbeat key of a local run's lease (Celery attempts beat per step and attempt)."""


def renew_lease(store: TraceStore, run_id: str, at: float) -> None:
    """The local executor's process is alive and working on the run."""
    store.heartbeat(run_id, LEASE[0], LEASE[1], at)


@contextmanager
def lease(
    store: TraceStore, run_id: str, *, every: float, clock: Callable[[], float]
) -> Iterator[None]:
    """Hold a run's lease while the block runs: renewed every ``every`` s by a thread of its
    own, so a busy event loop or a long step does not let it lapse; it lapses only when the
    process is gone."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                renew_lease(store, run_id, clock())
            except DagwrightError:
                pass  # the store is unreachable for a moment: the next beat may succeed
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name="dagwright-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(every + 5)


def lease_lapsed(store: TraceStore, record: RunRecord, now: float, heartbeat: float) -> bool:
    """A local run's lease was not renewed for 3 heartbeats (a live run renews it every
    ``heartbeat`` s): its process was killed or its machine lost."""
    if record.executor != "local":
        return False
    last = store.heartbeats(record.run_id).get(LEASE, record.created_at)
    return decisions.lease_expired(last, now, 3 * heartbeat)


def abandoned(
    store: TraceStore, record: RunRecord, state: engine.RunState, now: float, heartbeat: float
) -> bool:
    """A local run that has not ended and whose process is gone."""
    return state.status not in engine.FINAL and lease_lapsed(store, record, now, heartbeat)


def seen_status(
    store: TraceStore, record: RunRecord, status: str, now: float, heartbeat: float
) -> str:
    """A run's status as people should see it: a running local run whose process is gone is
    ``abandoned`` (closed as such when it is resumed)."""
    if status == engine.RUNNING and lease_lapsed(store, record, now, heartbeat):
        return engine.ABANDONED
    return status


def close_abandoned(
    store: TraceStore,
    state: engine.RunState,
    now: float,
    *,
    resumed_by: str | None,
) -> bool:
    """Close an abandoned run (its in-flight steps cancelled, the run ``abandoned``); False
    when something else ended it first (another resume, or the run itself)."""
    message = "the run's process stopped without finishing it (its lease expired)"
    events = decisions.abandon(
        state.current_plan, state, now, message=message, resumed_by=resumed_by
    )
    return store.append(state.run_id, events, claims=["conclude"]) is not None


# -- following a run --------------------------------------------------------------------------


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


__all__ = [
    "LEASE",
    "AttemptCache",
    "abandoned",
    "close_abandoned",
    "lease",
    "lease_lapsed",
    "renew_lease",
    "seen_status",
    "NewRun",
    "Replanner",
    "Replanning",
    "Revision",
    "fold_run",
    "follow",
    "model_replanner",
    "new_id",
    "open_run",
    "run_registry",
    "settle_cache",
    "tool_context",
]
