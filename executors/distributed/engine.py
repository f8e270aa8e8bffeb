"""The engine over a shared trace store, for workers in many processes (no Celery in here).

- ``advance(run_id)`` (here) reads the trace, finds ready steps not dispatched yet, records their
  dispatch and returns them to be enqueued. It is idempotent: any worker may call it at any time,
  concurrently, and each step attempt is dispatched once, because every dispatch takes a claim
  (``dispatch:<step>:<attempt>``) in the same transaction as its event. A run's end is
  recorded here too, once (``conclude``).
- ``start(...)`` records a new run and its first dispatches (``starting``).
- ``execute(dispatch)`` is a worker's whole job for one message: run the attempt (unless it is
  stale or already done; ``attempts``), record its outcome once (claim
  ``finish:<step>:<attempt>``), schedule a retry or advance the run (``outcomes``).
- ``sweep()`` finds runs whose progress stalled (a worker died, a message was lost) and sends
  their work again (``recovery``); ``cancel(run_id)`` ends a run as cancelled (``control``).

The engine reads runs through its caches (``caches.RunCaches``: compiled plans, folded states);
``dispatch`` holds ``Dispatch`` and ``Timing``.

At-least-once execution, exactly-once results: a message may be delivered twice and an attempt
may run twice, but only one outcome per attempt enters the trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dagwright.agents.cache import StoreCache
from dagwright.errors import DagwrightError, PlanError
from dagwright.executors import admission, engine
from dagwright.executors.distributed import attempts, control, outcomes, recovery, starting
from dagwright.executors.distributed.caches import RunCaches
from dagwright.executors.distributed.dispatch import Dispatch, Timing
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import Outcome
from dagwright.executors.lifecycle import Replanner, Replanning, new_id
from dagwright.executors.runner import EVAL_TIMEOUT
from dagwright.executors.store.base import TraceStore
from dagwright.executors.store.redacting import redacting
from dagwright.planner.limits import Limits
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.secret_values import NO_SECRETS, SecretValues
from dagwright.tools.registry import ToolRegistry


class Engine(RunCaches):
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
        settings: Any = None,
    ) -> None:
        """``executor``: the name recorded with the runs this engine starts; its sweep takes
        only runs of that name (``celery``: Celery workers; ``api``: the API server's own
        threads), never a local executor's runs in the same store.

        ``on_finished(run_id, status)`` is called after this process recorded a run's end
        (the Celery app uses it to wake clients waiting for the run).

        ``eval_timeout`` (DAGWRIGHT_EVAL_TIMEOUT): seconds for resolving a step's arguments, and
        for its checks, when the step has no ``timeout:`` (``runner.Attempt``).

        ``secrets`` (``Settings.step_secrets()``, this process's): what ``${{ secrets.NAME }}``
        reads in the attempts it executes; never recorded (the store redacts them).

        ``settings`` (this process's ``Settings``): handed to its attempts' tools
        (``ToolContext.settings``)."""
        self.secrets = secrets
        self.settings = settings
        store = redacting(store, secrets.redaction_forms())
        super().__init__(store, registry, tool_modules)  # .store, .lock, the caches
        self.replanner = replanner
        self.on_finished = on_finished
        self.limits = limits or Limits()  # output_bytes: an attempt's largest output
        self.eval_timeout = eval_timeout
        self.timing = timing or Timing()
        self.executor = executor
        self.clock = clock
        self.id_factory = id_factory
        self.cache = cache if cache is not None else StoreCache(store)
        self._beats = recovery.HeartbeatPump(self)
        self._next_admitted: list[str] = []  # runs admitted by this process, to start

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
        """Record a new run (validated by the caller) and dispatch its first steps — or queue
        it for its concurrency key (``starting.start``)."""
        return starting.start(
            self, workflow, inputs, run_id=run_id, source=source, prelude=prelude,
            reused=reused, lineage=lineage, priority=priority,
        )  # fmt: skip

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
        """Run one dispatched attempt and record it; returns what to enqueue next
        (``attempts.execute``)."""
        return attempts.execute(self, d)

    def record(self, plan: Plan, d: Dispatch, outcome: Outcome) -> list[Dispatch]:
        """Record an attempt's outcome once, with its retry or the dispatch of the dependents
        it made ready (``outcomes.record``)."""
        return outcomes.record(self, plan, d, outcome)

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


__all__ = ["Dispatch", "Engine", "Timing"]
