"""The engine over a shared trace store, for workers in many processes (no Celery in here).

- ``advance(run_id)`` reads the trace, finds ready steps not dispatched yet, records their
  dispatch and returns them to be enqueued. It is idempotent: any worker may call it at any time,
  concurrently, and each step attempt is dispatched once, because every dispatch takes a claim
  (``dispatch:<step>:<attempt>``) in the same transaction as its event.
- ``execute(dispatch)`` is a worker's whole job for one message: run the attempt (unless it is
  stale or already done), record its outcome once (claim ``finish:<step>:<attempt>``), schedule
  a retry or advance the run.
- ``sweep()`` finds runs whose progress stalled (a worker died, a message was lost) and sends
  their work again; ``cancel(run_id)`` ends a run as cancelled.

At-least-once execution, exactly-once results: a message may be delivered twice and an attempt
may run twice, but only one outcome per attempt enters the trace.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagwright.agents.cache import StoreCache
from dagwright.errors import DagwrightError, PlanError, StaleState
from dagwright.executors import admission, engine
from dagwright.executors.distributed import control, recovery
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import Outcome
from dagwright.executors.lifecycle import (
    NewRun,
    Replanner,
    Replanning,
    new_id,
    open_run,
    run_registry,
    settle_cache,
    tool_context,
)
from dagwright.executors.runner import EVAL_TIMEOUT, Attempt, run_sync
from dagwright.executors.store.base import RunRecord, TraceStore
from dagwright.executors.store.redacting import redacting
from dagwright.planner.inputs import resolve_inputs
from dagwright.planner.limits import Limits
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.secret_values import NO_SECRETS, SecretValues
from dagwright.tools.registry import ToolRegistry


@dataclass(frozen=True)
class Dispatch:
    """One message for a worker: run this attempt of this step."""

    run_id: str
    step: str
    attempt: int
    attempt_id: str
    countdown: float = 0.0
    timeout: float | None = None


@dataclass
class Timing:
    heartbeat: float = 5.0
    redispatch_after: float = 60.0

    @property
    def lost_after(self) -> float:
        return 3 * self.heartbeat


PLANS_KEPT = 4096
"""Runs whose compiled plan a process keeps (references to a shared plan: cheap)."""
WORKFLOWS_KEPT = 128
"""Distinct workflows whose compiled plan a process keeps."""
STATES_KEPT = 1024
"""Runs whose folded state a process keeps (the others are folded again from their trace)."""


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


class Engine:
    """The distributed engine over one trace store, shared by every worker and client."""

    def __init__(
        self,
        store: TraceStore,
        registry: ToolRegistry,
        *,
        tool_modules: tuple[str, ...] = (),
        timing: Timing | None = None,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_id,
        cache: Any = None,
        replanner: Replanner | None = None,
        on_finished: Callable[[str, str], None] | None = None,
        limits: Limits | None = None,
        eval_timeout: float = EVAL_TIMEOUT,
        executor: str = "celery",
        secrets: SecretValues = NO_SECRETS,
    ) -> None:
        """``executor``: the name recorded with the runs this engine starts; its sweep takes
        only runs of that name (``celery``: Celery workers; ``api``: the API server's own
        threads), never a local executor's runs in the same store.

        ``on_finished(run_id, status)`` is called after this process recorded a run's end
        (the Celery app uses it to wake clients waiting for the run).

        ``eval_timeout`` (DAGWRIGHT_EVAL_TIMEOUT): seconds for resolving a step's arguments, and
        for its checks, when the step has no ``timeout:`` (``runner.Attempt``).

        ``secrets`` (``Settings.step_secrets()``, this process's): what ``${{ secrets.NAME }}``
        reads in the attempts it executes; never recorded (the store redacts them)."""
        self.secrets = secrets
        store = redacting(store, secrets.redaction_forms())
        self.store = store
        self.replanner = replanner
        self.on_finished = on_finished
        self.limits = limits or Limits()  # output_bytes: an attempt's largest output
        self.eval_timeout = eval_timeout
        self.registry = registry
        self.tool_modules = tool_modules
        self.timing = timing or Timing()
        self.executor = executor
        self.clock = clock
        self.id_factory = id_factory
        self.cache = cache if cache is not None else StoreCache(store)
        # compiled plans: by run (recently used first out), and by workflow (the runs of one
        # workflow share one compiled plan), so a worker compiles a workflow once, not per run
        self._plans: OrderedDict[str, tuple[Plan, ToolRegistry]] = OrderedDict()
        self._compiled: OrderedDict[tuple[str, str | None], tuple[Plan, ToolRegistry]] = (
            OrderedDict()
        )
        # folded states of the runs this process works on, under one lock: a threads-pool
        # worker runs many attempts at once, and decisions must not see a half-applied event
        self._states: OrderedDict[str, tuple[engine.RunState, list[int]]] = OrderedDict()
        self.lock = threading.RLock()
        self._beats = recovery.HeartbeatPump(self)
        self._next_admitted: list[str] = []  # runs admitted by this process, to start

    # -- reading ---------------------------------------------------------------------------------
    def plan_of(self, run_id: str) -> tuple[Plan, ToolRegistry]:
        with self.lock:
            cached = self._plans.get(run_id)
            if cached is not None:
                self._plans.move_to_end(run_id)
                return cached
        cached = self._compile(self.store.get_run(run_id))
        with self.lock:
            _remember(self._plans, run_id, cached, PLANS_KEPT)
        return cached

    def _compile(self, record: RunRecord) -> tuple[Plan, ToolRegistry]:
        key = (json.dumps(record.workflow, sort_keys=True, separators=(",", ":")), record.source)
        with self.lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled
        workflow = Workflow.model_validate(record.workflow)
        registry = run_registry(workflow, self.registry, self.tool_modules, record.source)
        compiled = (Plan.from_workflow(workflow), registry)
        with self.lock:
            _remember(self._compiled, key, compiled, WORKFLOWS_KEPT)
        return compiled

    def state(self, run_id: str) -> tuple[Plan, ToolRegistry, engine.RunState]:
        """The run's state, folded incrementally from the events this process has not seen.

        Only a gap-free prefix is applied: with several writers, an append that took an earlier
        ``seq`` may become visible after a later one; its writer advances the run itself."""
        plan, registry = self.plan_of(run_id)
        with self.lock:
            state = self._fold_new(plan, run_id)
            return state.current_plan, registry, state

    def _fold_new(self, plan: Plan, run_id: str) -> engine.RunState:
        states = self._states
        folded = states.get(run_id)
        if folded is None:
            folded = states[run_id] = (engine.RunState.initial(plan, run_id), [0])
        state, seen = folded
        for event in self.store.events(run_id, after=seen[0]):
            if event.seq != seen[0] + 1:
                break
            seen[0] = event.seq
            state = engine.apply(state, event)
        if state.status in engine.FINAL:
            states.pop(run_id, None)
        else:
            _remember(states, run_id, (state, seen), STATES_KEPT)
        return state

    def _absorb(self, run_id: str, stored: list[Event] | None) -> None:
        """Fold this process's own appended events into its cached state when they directly
        follow what it has seen (no need to read them back)."""
        if not stored:
            return
        with self.lock:
            folded = self._states.get(run_id)
            if folded is None or stored[0].seq != folded[1][0] + 1:
                return
            state, seen = folded
            for event in stored:
                state = engine.apply(state, event)
            seen[0] = stored[-1].seq or seen[0]
            self._states[run_id] = (state, seen)
            if state.status in engine.FINAL:
                self._states.pop(run_id, None)

    def _cached(self, run_id: str) -> tuple[engine.RunState, int] | None:
        """The cached state and the ``seq`` the next event must get for it to be current."""
        folded = self._states.get(run_id)
        return (folded[0], folded[1][0] + 1) if folded is not None else None

    # -- starting a run ----------------------------------------------------------------------------
    def start(
        self,
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
            run_id or self.id_factory(),
            source=source,
            prelude=prelude or (),
            reused=reused or {},
            lineage=lineage,
        )
        run_id = new.run_id
        # a run with a concurrency key takes its place in the key's queue first: a slot is
        # admitted only once its run is recorded (``TraceStore.admit``)
        queued = admission.queue(
            self.store, run_id, workflow, new.inputs, priority=priority, now=self.clock()
        )
        first = _First(self, workflow, new, queued)
        stored = open_run(self.store, new, executor=self.executor, clock=self.clock, first=first)
        if queued:
            data = queued[0].data
            for admitted in admission.admit(self.store, data["key"], data["limit"], self.clock):
                self._next_admitted.append(admitted)
            return run_id, self._drain_admitted()
        if first.dispatches is None:  # nothing ready from the opening (e.g. every step reused)
            return run_id, self.advance(run_id)
        assert first.registry is not None
        with self.lock:
            _remember(self._plans, run_id, (first.plan, first.registry), PLANS_KEPT)
            _remember(
                self._states,
                run_id,
                (engine.RunState.initial(first.plan, run_id), [0]),
                STATES_KEPT,
            )
        self._absorb(run_id, stored)
        return run_id, first.dispatches

    # -- the one scheduling function -----------------------------------------------------------------
    def advance(self, run_id: str) -> list[Dispatch]:
        """Dispatch every ready step not dispatched yet, and end the run once nothing can move."""
        with self.lock:
            plan, registry, state = self.state(run_id)
            if state.status in engine.FINAL:
                return []
            stops = [(_waiting_claim(state, sid), decisions.stop_events(state, sid, self.clock()))
                     for sid in engine.stoppable(state)]  # fmt: skip
            ready = engine.ready_steps(plan, state)
            concluding = None
            replanning = None
            if not ready and engine.is_settled(state):
                replanning = Replanning(self.replanner, registry)
                if not replanning.wanted(state):
                    replanning = None
                    concluding = decisions.conclude(plan, state, self.clock(), cancelled=False)
        if stops:  # the run is failing: the steps waiting to start an attempt end first
            return self._stop(run_id, stops)
        if replanning is not None:
            return control.revise(self, run_id, replanning, state)
        dispatches = []
        for sid in ready:
            d = self._dispatch(plan, run_id, sid, attempt=1)
            if d is not None:
                dispatches.append(d)
        if concluding is not None:
            self._conclude(run_id, concluding)
        return dispatches + self._drain_admitted()

    def _stop(self, run_id: str, stops: list[tuple[str, list[Event]]]) -> list[Dispatch]:
        """The run is failing: end each step that waits to start an attempt, once (the claim on
        that attempt's outcome: a worker that started it meanwhile records nothing), then go on
        (the run ends once its running attempts have)."""
        stopped = [self.store.append(run_id, events, claims=[claim]) for claim, events in stops]
        if not any(stopped):  # another writer stopped them: it goes on
            return self._drain_admitted()
        return self.advance(run_id)

    def _conclude(self, run_id: str, events: list[Event], claims: list[str] | None = None) -> bool:
        """Append the events that end a run (once: the ``conclude`` claim), then tell."""
        if self.store.append(run_id, events, claims=claims or ["conclude"]) is None:
            return False
        with self.lock:  # its concurrency key (set when it was queued): the cached fold has it
            cached = self._cached(run_id)
            state = cached[0] if cached is not None else self.state(run_id)[2]
        admitted = admission.release(self.store, state, self.clock)  # the run's slot, if any
        with self.lock:
            self._next_admitted += admitted
        if self.on_finished is not None:
            try:
                self.on_finished(run_id, str(events[-1].data.get("status")))
            except Exception:  # noqa: BLE001 - a wake-up signal; the trace has the truth
                pass
        return True

    def _drain_admitted(self) -> list[Dispatch]:
        """Start the runs this process admitted (their first steps' dispatches)."""
        with self.lock:
            admitted, self._next_admitted = self._next_admitted, []
        out: list[Dispatch] = []
        for run_id in admitted:
            out += self.advance_own(run_id)
        return out

    def advance_own(self, run_id: str) -> list[Dispatch]:
        """``advance`` for a run this engine's executor drives; nothing for another's (a local
        run polls for its admission; another driver's sweep starts its runs)."""
        try:
            if self.store.get_run(run_id).executor != self.executor:
                return []
        except DagwrightError:
            return []
        return self.advance(run_id)

    def _schedule(
        self,
        plan: Plan,
        run_id: str,
        sid: str,
        attempt: int,
        *,
        delay: float = 0.0,
        reason: str | None = None,
    ) -> tuple[Dispatch, Event]:
        attempt_id = self.id_factory()
        data: dict[str, Any] = {"attempt_id": attempt_id}
        if delay:
            data["not_before"] = self.clock() + delay
        if reason:
            data["reason"] = reason
        event = Event(ev.STEP_SCHEDULED, run_id, self.clock(), sid, attempt, data)
        return Dispatch(run_id, sid, attempt, attempt_id, delay, plan.steps[sid].timeout), event

    def _dispatch(
        self, plan: Plan, run_id: str, sid: str, *, attempt: int, reason: str | None = None
    ) -> Dispatch | None:
        """Record a dispatch under its claim; None when someone else dispatched it first."""
        dispatch, event = self._schedule(plan, run_id, sid, attempt, reason=reason)
        claim = f"dispatch:{sid}:{attempt}"
        if reason:  # sending an attempt again: one claim per (attempt, trace length) round
            claim = f"redispatch:{sid}:{attempt}:{len(self.store.events(run_id))}"
        if self.store.append(run_id, [event], claims=[claim]) is None:
            return None
        return dispatch

    # -- a worker's job ----------------------------------------------------------------------------------
    def execute(self, d: Dispatch) -> list[Dispatch]:
        """Run one dispatched attempt and record it; returns what to enqueue next."""
        try:
            self.plan_of(d.run_id)
        except PlanError as exc:  # this worker cannot load the run's tools
            return self.refuse(d.run_id, exc)
        with self.lock:
            plan, registry, state = self.state(d.run_id)
            if state.status in engine.FINAL:
                return []
            if d.step not in state.steps:  # a message for a step a revised plan dropped
                return []
            step = state.steps[d.step]
            if step.status in engine.FINAL or self._stale(state, d):
                return self.advance(d.run_id)
            context = engine.step_context(plan, state, d.step)
        attempt = Attempt(
            plan.steps[d.step],
            context,
            number=d.attempt,
            eval_timeout=self.eval_timeout,
            max_output_bytes=self.limits.output_bytes,
            secrets=self.secrets,
        )  # the attempt's time budget starts: resolving, the tool and the checks count
        try:
            args, failed = run_sync(attempt.resolve())  # not under the lock: it may be slow
            started = Event(
                ev.ATTEMPT_STARTED,
                d.run_id,
                self.clock(),
                d.step,
                d.attempt,
                {"attempt_id": d.attempt_id, "inputs": attempt.redacted(args)},
            )
            self._absorb(d.run_id, self.store.append(d.run_id, [started]))
            outcome = failed or self._call(d, plan, registry, state, attempt, args)
        finally:
            attempt.close()
        return self.record(plan, d, outcome)

    def _call(
        self,
        d: Dispatch,
        plan: Plan,
        registry: ToolRegistry,
        state: engine.RunState,
        attempt: Attempt,
        args: Any,
    ) -> Outcome:
        """Call the attempt's tool and verify, heartbeating meanwhile."""

        def emit(kind: str, data: dict[str, Any]) -> None:
            self.store.append(
                d.run_id, [Event(kind, d.run_id, self.clock(), d.step, d.attempt, data)]
            )

        with self.lock:
            ctx = tool_context(
                state, d.step, d.attempt, emit=emit, cache=self.cache, tools=registry
            )
        tool = registry.get(plan.steps[d.step].uses)
        with self._beats.beating(d):
            outcome = run_sync(attempt.execute(tool, args, ctx))
        settle_cache(ctx, outcome)
        return outcome

    def _stale(self, state: engine.RunState, d: Dispatch) -> bool:
        """A message for an attempt that is over, superseded, or alive on another worker."""
        step = state.steps[d.step]
        if not step.attempts:
            return False
        last = step.attempts[-1]
        if d.attempt != last.number:
            return d.attempt < last.number  # older: superseded; newer: a retry not started yet
        if last.status != engine.RUNNING:
            return True  # this attempt has its outcome already
        beat = self.store.heartbeats(d.run_id).get((d.step, d.attempt), last.started_at or 0)
        return self.clock() - beat < self.timing.lost_after  # still alive elsewhere

    def record(self, plan: Plan, d: Dispatch, outcome: Outcome) -> list[Dispatch]:
        """Record an attempt's outcome once. In the same transaction: its retry, or the
        dispatch of the dependents it made ready (then no separate advance is needed)."""
        next_id = self.id_factory() if outcome.status != engine.SUCCEEDED else None
        failing = None
        if next_id is not None:  # a failure: no retry once the run is failing
            with self.lock:
                failing = self.state(d.run_id)[2].failing
        events, delay = decisions.outcome_events(
            plan, d.run_id, d.step, d.attempt, d.attempt_id, outcome, self.clock(), next_id,
            failing=failing,
        )  # fmt: skip
        finish = f"finish:{d.step}:{d.attempt}"
        if delay is not None:
            assert next_id is not None  # a retry is decided only for an attempt that failed
            return self._retry(d, events, Dispatch(
                d.run_id, d.step, d.attempt + 1, next_id, delay, plan.steps[d.step].timeout
            ))  # fmt: skip
        outcome_events = list(events)
        ready: list[str] = []
        expect: int | None = None
        if outcome.status == engine.SUCCEEDED:
            # Decide on the cached state, and append only if nobody wrote since (compare-and-set
            # on the next seq); when someone did, read the trace and decide again.
            with self.lock:
                cached = self._cached(d.run_id)
                if cached is not None:
                    expect = cached[1]
                    ready = engine.ready_after(plan, cached[0], d.step)

        def with_dispatches(ready: list[str]) -> tuple[list[Event], list[str], list[Dispatch]]:
            """The outcome's events, and the dispatch of each of ``ready``, with their claims."""
            events, claims, dispatches = list(outcome_events), [finish], []
            for sid in ready:
                dispatch, event = self._schedule(plan, d.run_id, sid, 1)
                events.append(event)
                claims.append(f"dispatch:{sid}:1")
                dispatches.append(dispatch)
            return events, claims, dispatches

        events, claims, dispatches = with_dispatches(ready)
        try:
            stored = self.store.append(d.run_id, events, claims=claims, expect_seq=expect)
        except StaleState:
            with self.lock:  # someone wrote meanwhile: decide on the current trace
                _, _, state = self.state(d.run_id)
                ready = engine.ready_after(plan, state, d.step)
            events, claims, dispatches = with_dispatches(ready)
            stored = self.store.append(d.run_id, events, claims=claims)
        if stored is None:
            if not dispatches:
                return []  # another delivery of this attempt recorded its outcome first
            # a dependent was dispatched by someone else meanwhile: record the outcome alone
            if self.store.append(d.run_id, events[: -len(dispatches)], claims=[finish]) is None:
                return []
            return self.advance(d.run_id)
        self._absorb(d.run_id, stored)
        if ready and len(ready) == len(plan.dependents[d.step]):
            return dispatches  # every dependent is on its way; nothing else can have changed
        return dispatches + self.advance(d.run_id)

    def _retry(self, d: Dispatch, events: list[Event], nxt: Dispatch) -> list[Dispatch]:
        """Record a failed attempt and its retry ``nxt`` (once); unless the run failed
        meanwhile: then the retry does not start (``advance`` ends the step)."""
        claims = [f"finish:{d.step}:{d.attempt}", f"dispatch:{d.step}:{nxt.attempt}"]
        stored = self.store.append(d.run_id, events, claims=claims)
        if stored is None:
            return []  # another delivery of this attempt recorded its outcome first
        self._absorb(d.run_id, stored)
        with self.lock:
            if self.state(d.run_id)[2].failing is not None:
                return self.advance(d.run_id)
        return [nxt]

    # -- recovery and cancellation -------------------------------------------------------------------
    def sweep(self, *, limit: int = 200, restarted: bool = False) -> list[Dispatch]:
        """Send again what a stalled run is waiting for; end runs that can end
        (``recovery.sweep``)."""
        return recovery.sweep(self, limit=limit, restarted=restarted)

    def cancel(self, run_id: str) -> list[str]:
        """End a run as cancelled; returns the attempt ids that may still be running (to revoke)
        (``control.cancel``)."""
        return control.cancel(self, run_id)

    def refuse(self, run_id: str, problem: PlanError) -> list[Dispatch]:
        """The run's tools cannot load here: it fails, once (``control.refuse``)."""
        return control.refuse(self, run_id, problem)


def _waiting_claim(state: engine.RunState, sid: str) -> str:
    """The claim on the outcome of the attempt a step waits to start."""
    step = state.steps[sid]
    return f"finish:{sid}:{step.attempts[-1].number + 1 if step.attempts else 1}"


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


__all__ = ["Dispatch", "Engine", "Timing"]
