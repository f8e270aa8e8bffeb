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

import copy
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dagwright.agents.cache import StoreCache
from dagwright.errors import DagwrightError, PlanError, StaleState
from dagwright.executors import decisions, engine
from dagwright.executors import events as ev
from dagwright.executors.events import Event
from dagwright.executors.runner import Outcome, run_step
from dagwright.executors.store.base import RunRecord, TraceStore, lineage_fields
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.planner.validate import registry_for_run, resolve_inputs, validate
from dagwright.tools.registry import ToolContext, ToolRegistry


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


def new_id() -> str:
    """A random 128-bit id. (``uuid4`` reads the OS' entropy source at every call, which costs
    a quarter millisecond on some VMs; ``random`` is reseeded in each forked process.)"""
    return f"{random.getrandbits(128):032x}"


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
        replanner: Callable[..., Workflow] | None = None,
        on_finished: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_finished(run_id, status)`` is called after this process recorded a run's end
        (the Celery app uses it to wake clients waiting for the run)."""
        self.store = store
        self.replanner = replanner
        self.on_finished = on_finished
        self.registry = registry
        self.tool_modules = tool_modules
        self.timing = timing or Timing()
        self.clock = clock
        self.id_factory = id_factory
        self.cache = cache if cache is not None else StoreCache(store)
        self._plans: dict[str, tuple[Plan, ToolRegistry]] = {}
        # folded states of the runs this process works on, under one lock: a threads-pool
        # worker runs many attempts at once, and decisions must not see a half-applied event
        self._states: dict[str, tuple[engine.RunState, list[int]]] = {}
        self.lock = threading.RLock()
        self._beats = _HeartbeatPump(self)

    # -- reading ---------------------------------------------------------------------------------
    def plan_of(self, run_id: str) -> tuple[Plan, ToolRegistry]:
        cached = self._plans.get(run_id)
        if cached is None:
            record = self.store.get_run(run_id)
            cached = self._compile(record)
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[run_id] = cached
        return cached

    def _compile(self, record: RunRecord) -> tuple[Plan, ToolRegistry]:
        workflow = Workflow.model_validate(record.workflow)
        try:
            registry = registry_for_run(workflow, self.registry, self.tool_modules, record.source)
        except PlanError as exc:
            raise DagwrightError("; ".join(str(i) for i in exc.issues)) from None
        return Plan.from_workflow(workflow), registry

    def state(self, run_id: str) -> tuple[Plan, ToolRegistry, engine.RunState]:
        """The run's state, folded incrementally from the events this process has not seen.

        Only a gap-free prefix is applied: with several writers, an append that took an earlier
        ``seq`` may become visible after a later one; its writer advances the run itself."""
        plan, registry = self.plan_of(run_id)
        with self.lock:
            state = self._fold_new(plan, run_id)
            return state.plan or plan, registry, state

    def _fold_new(self, plan: Plan, run_id: str) -> engine.RunState:
        states = self._states
        folded = states.get(run_id)
        if folded is None:
            initial = engine.RunState.initial(plan, run_id)
            initial.plan = plan
            folded = states[run_id] = (initial, [0])
        state, seen = folded
        for event in self.store.events(run_id, after=seen[0]):
            if event.seq != seen[0] + 1:
                break
            seen[0] = event.seq
            if event.type == ev.PLAN_REVISED and state.status not in engine.FINAL:
                revised = Plan.from_workflow(Workflow.model_validate(event.data["workflow"]))
                state = engine.revise(state, revised, list(event.data.get("kept", [])))
                state.plan = revised
                states[run_id] = (state, seen)
                continue
            engine.apply(state.plan or plan, state, event)
        if state.status in engine.FINAL or len(states) > 256:
            states.pop(run_id, None)
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
            if any(e.type == ev.PLAN_REVISED for e in stored):
                return  # rare: let the next read fold it
            for event in stored:
                engine.apply(state.plan or self.plan_of(run_id)[0], state, event)
            seen[0] = stored[-1].seq or seen[0]
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
    ) -> tuple[str, list[Dispatch]]:
        """Record a new run (validated by the caller) and dispatch its first steps.

        ``reused``/``lineage``: a derived run (resume, fork) and the outputs it reuses."""
        inputs = resolve_inputs(workflow, inputs)  # defaults filled, types checked
        run_id = run_id or self.id_factory()
        self.store.create_run(
            RunRecord(
                run_id=run_id,
                workflow_name=workflow.name,
                created_at=self.clock(),
                workflow=workflow.to_data(),
                inputs=inputs,
                source=source,
                executor="celery",
                **lineage_fields(lineage),
            )
        )
        data: dict[str, Any] = {"inputs": inputs, "executor": "celery"}
        if lineage:
            data["lineage"] = lineage
        started = Event(ev.RUN_STARTED, run_id, self.clock(), None, None, data)
        calls = [Event(ev.MODEL_CALL, run_id, self.clock(), None, None, c) for c in prelude or []]
        kept = decisions.reused_events(run_id, self.clock(), reused or {})
        self.store.append(run_id, [started, *calls, *kept])
        return run_id, self.advance(run_id)

    # -- the one scheduling function -----------------------------------------------------------------
    def advance(self, run_id: str) -> list[Dispatch]:
        """Dispatch every ready step not dispatched yet, and end the run once nothing can move."""
        with self.lock:
            plan, _, state = self.state(run_id)
            if state.status in engine.FINAL:
                return []
            ready = engine.ready_steps(plan, state)
            concluding = None
            replan = None
            if not ready and engine.is_settled(state):
                if self._may_replan(plan, state):
                    replan = (
                        plan.workflow,
                        state.replan_for,
                        state.revisions,
                        decisions.succeeded_outputs(state),
                    )
                    replan_error = state.steps[state.replan_for or ""].error
                else:
                    concluding = decisions.conclude(plan, state, self.clock(), cancelled=False)
        if replan is not None:
            return self._revise(run_id, *replan, replan_error)
        dispatches = []
        for sid in ready:
            d = self._dispatch(plan, run_id, sid, attempt=1)
            if d is not None:
                dispatches.append(d)
        if concluding is not None:
            self._conclude(run_id, concluding)
        return dispatches

    def _conclude(self, run_id: str, events: list[Event], claims: list[str] | None = None) -> bool:
        """Append the events that end a run (once: the ``conclude`` claim), then tell."""
        if self.store.append(run_id, events, claims=claims or ["conclude"]) is None:
            return False
        if self.on_finished is not None:
            try:
                self.on_finished(run_id, str(events[-1].data.get("status")))
            except Exception:  # noqa: BLE001 - a wake-up signal; the trace has the truth
                pass
        return True

    def _may_replan(self, plan: Plan, state: engine.RunState) -> bool:
        return (
            self.replanner is not None
            and state.replan_for is not None
            and state.revisions < plan.workflow.max_replans
        )

    def _revise(
        self,
        run_id: str,
        workflow: Workflow,
        failed: str | None,
        revisions: int,
        outputs: dict[str, Any],
        error: dict[str, Any] | None,
    ) -> list[Dispatch]:
        """Ask the replanner for a revised plan; exactly one worker records revision n."""
        assert self.replanner is not None
        # one replanner call per revision per minute across all workers (a worker lost while
        # replanning is replaced by the next minute's sweep)
        if (
            self.store.append(
                run_id, [], claims=[f"replan:{revisions + 1}:{int(self.clock() // 60)}"]
            )
            is None
        ):
            return []
        failure = {"step": failed, "error": error}
        recorded: list[Event] = []

        def record(call: Any) -> None:
            recorded.append(Event(ev.MODEL_CALL, run_id, self.clock(), None, None, call.as_dict()))

        try:
            revised = self.replanner(workflow, outputs, failure, record)
            problem = None
        except Exception as exc:  # noqa: BLE001 - the run then fails with the step's own error
            revised, problem = None, str(exc)
        if revised is not None and validate(revised, self.registry):
            revised, problem = None, "the revised plan is not valid"
        if revised is None:
            with self.lock:
                plan, _, state = self.state(run_id)
                state.replan_for = None  # no revision: the failure stands
                events = decisions.conclude(plan, state, self.clock(), cancelled=False)
            events[-1].data["error"] = {**(events[-1].data.get("error") or {}), "replan": problem}
            self._conclude(run_id, recorded + events)
            return []
        kept = decisions.kept_steps(workflow, revised, outputs)
        revision = Event(
            ev.PLAN_REVISED,
            run_id,
            self.clock(),
            None,
            None,
            {"revision": revisions + 1, "workflow": revised.to_data(), "kept": kept,
             "failed_step": failed, "error": error},
        )  # fmt: skip
        self.store.append(run_id, [*recorded, revision], claims=[f"revise:{revisions + 1}"])
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
        with self.lock:
            plan, registry, state = self.state(d.run_id)
            if state.status in engine.FINAL:
                return []
            if d.step not in state.steps:  # a message for a step a revised plan dropped
                return []
            step = state.steps[d.step]
            if step.status in engine.FINAL or self._stale(state, d):
                return self.advance(d.run_id)
            args, failed = decisions.resolve_args(plan, state, d.step)
            context = engine.step_context(plan, state, d.step)
            previous = decisions.previous_failure(state, d.step, d.attempt)
        started = Event(
            ev.ATTEMPT_STARTED,
            d.run_id,
            self.clock(),
            d.step,
            d.attempt,
            {"attempt_id": d.attempt_id, "inputs": args},
        )
        self._absorb(d.run_id, self.store.append(d.run_id, [started]))
        if failed is not None:
            outcome = failed
        else:

            def emit(kind: str, data: dict[str, Any]) -> None:
                self.store.append(
                    d.run_id, [Event(kind, d.run_id, self.clock(), d.step, d.attempt, data)]
                )

            ctx = ToolContext(
                run_id=d.run_id,
                step_id=d.step,
                attempt=d.attempt,
                previous_failure=previous,
                emit=emit,
                cache=self.cache if plan.steps[d.step].cache else None,
            )
            tool = registry.get(plan.steps[d.step].uses)
            with self._beats.beating(d):
                outcome = run_step(tool, plan.steps[d.step], args, ctx, context)
        return self.record(plan, d, outcome)

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
        next_id = self.id_factory() if outcome.status != "succeeded" else None
        events, delay = decisions.outcome_events(
            plan, d.run_id, d.step, d.attempt, d.attempt_id, outcome, self.clock(), next_id
        )
        finish = f"finish:{d.step}:{d.attempt}"
        if delay is not None:
            claims = [finish, f"dispatch:{d.step}:{d.attempt + 1}"]
            if self.store.append(d.run_id, events, claims=claims) is None:
                return []  # another delivery of this attempt recorded its outcome first
            return [
                Dispatch(
                    d.run_id, d.step, d.attempt + 1, next_id, delay, plan.steps[d.step].timeout
                )
            ]
        outcome_events = list(events)
        ready: list[str] = []
        expect: int | None = None
        if outcome.status == "succeeded":
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

    # -- recovery and cancellation -------------------------------------------------------------------
    def sweep(self, *, limit: int = 200) -> list[Dispatch]:
        """Send again what a stalled run is waiting for; end runs that can end."""
        out: list[Dispatch] = []
        for summary in self.store.list_runs(status="running", limit=limit):
            try:
                out += self._sweep_run(summary.record.run_id)
            except DagwrightError:
                continue
        return out

    def _sweep_run(self, run_id: str) -> list[Dispatch]:
        out = self.advance(run_id)
        with self.lock:
            return out + self._resend(run_id)

    def _resend(self, run_id: str) -> list[Dispatch]:
        out: list[Dispatch] = []
        plan, _, state = self.state(run_id)
        if state.status in engine.FINAL:
            return out
        now = self.clock()
        beats = self.store.heartbeats(run_id)
        schedules = _latest_schedules(self.store.events(run_id))
        for sid, step in state.steps.items():
            if step.status not in (engine.SCHEDULED, engine.RUNNING) or sid not in schedules:
                continue
            at, not_before, attempt = schedules[sid]
            if step.status == engine.SCHEDULED:
                if now - max(at, not_before) > self.timing.redispatch_after:
                    reason = f"not started {now - at:.0f}s after it was dispatched"
                    d = self._dispatch(plan, run_id, sid, attempt=attempt, reason=reason)
                    out += [d] if d else []
                continue
            last = step.attempts[-1]
            beat = max(beats.get((sid, last.number), 0.0), last.started_at or 0.0)
            if attempt == last.number:
                beat = max(beat, at)
            if now - beat > self.timing.lost_after:
                reason = f"no heartbeat for {now - beat:.0f}s: its worker was lost"
                d = self._dispatch(plan, run_id, sid, attempt=last.number, reason=reason)
                out += [d] if d else []
        return out

    def cancel(self, run_id: str) -> list[str]:
        """End a run as cancelled; returns the attempt ids that may still be running (to revoke)."""
        for _ in range(20):
            with self.lock:
                cancelled = self._cancel_once(run_id)
            if cancelled is not None:
                return cancelled
        raise DagwrightError(f"could not cancel run {run_id!r}: it kept changing")

    def _cancel_once(self, run_id: str) -> list[str] | None:
        """The attempt ids to revoke; None when the run changed meanwhile (try again)."""
        plan, _, state = self.state(run_id)
        if state.status in engine.FINAL:
            return []
        now = self.clock()
        events: list[Event] = []
        claims = ["conclude"]
        running = []
        for sid in state.active():
            step = state.steps[sid]
            events += decisions.cancel_events(state, sid, now)
            if step.attempts and step.attempts[-1].status == engine.RUNNING:
                claims.append(f"finish:{sid}:{step.attempts[-1].number}")
                running.append(step.attempts[-1].attempt_id or "")
        after = copy.deepcopy(state)  # the cached state only follows stored events
        for e in events:
            engine.apply(plan, after, e)
        events += decisions.conclude(plan, after, now, cancelled=True)
        if not self._conclude(run_id, events, claims):
            return None
        return [a for a in running if a]


class _HeartbeatPump:
    """One thread per process beats for every attempt running in it (a thread per attempt
    would cost more than a short step)."""

    def __init__(self, owner: Engine) -> None:
        self.owner = owner
        self.running: dict[int, Dispatch] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @contextmanager
    def beating(self, d: Dispatch) -> Iterator[None]:
        key = id(d)
        with self.lock:
            self.running[key] = d  # attempt_started is the first beat
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._pump, name="dagwright-heartbeat", daemon=True
                )
                self.thread.start()
        try:
            yield
        finally:
            with self.lock:
                self.running.pop(key, None)

    def _pump(self) -> None:
        while True:
            time.sleep(self.owner.timing.heartbeat)
            with self.lock:
                running = list(self.running.values())
            for d in running:
                try:
                    self.owner.store.heartbeat(d.run_id, d.step, d.attempt, self.owner.clock())
                except DagwrightError:
                    pass  # the sweeper may resend the attempt; its finish claim keeps one outcome


def _latest_schedules(events: list[Event]) -> dict[str, tuple[float, float, int]]:
    """For each step: when it was last dispatched, not before when, and which attempt."""
    latest: dict[str, tuple[float, float, int]] = {}
    for e in events:
        if e.type == ev.STEP_SCHEDULED and e.step:
            latest[e.step] = (e.at, float(e.data.get("not_before") or e.at), e.attempt or 1)
    return latest


__all__ = ["Dispatch", "Engine", "Timing"]
