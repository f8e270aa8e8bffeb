"""The engine's pure core: a run's state is a fold over its trace events.

``apply(plan, state, event)`` is the reducer, ``fold(plan, events)`` replays a whole trace, and
``ready_steps(plan, state)`` says which steps may be dispatched now: a step is ready the moment
its last dependency has succeeded (dependency-driven, never level by level). Nothing here does
I/O, reads a clock or draws a random number; executors (local, Celery) do that at the edges and
feed the results back as events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import (
    ACTIVE,
    CANCELLED,
    FAILED,
    FINAL,
    PENDING,
    QUEUED,
    RETRYING,
    RUNNING,
    SCHEDULED,
    SKIPPED,
    SUCCEEDED,
)
from dagwright.planner.plan import Plan
from dagwright.planner.references import render
from dagwright.planner.schema import Workflow


@dataclass
class AttemptState:
    number: int
    attempt_id: str | None = None
    status: str = RUNNING
    started_at: float | None = None
    finished_at: float | None = None
    inputs: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    retry_in: float | None = None
    restarts: int = 0


@dataclass
class StepState:
    id: str
    status: str = PENDING
    attempts: list[AttemptState] = field(default_factory=list)
    output: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    scheduled_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reused: dict[str, Any] | None = None
    """Set when the step's output was reused from the run it succeeded in (resume, fork):
    ``{"run_id", "attempts", "inputs"}``; the step did not run in this run."""


@dataclass
class RunState:
    run_id: str
    steps: dict[str, StepState]
    waiting: dict[str, int]
    ready: dict[str, None] = field(default_factory=dict)
    status: str = PENDING
    inputs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error: dict[str, Any] | None = None
    halted: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    replan_for: str | None = None
    """A step that failed with ``on_failure: replan``: the plan is to be revised."""
    failing: str | None = None
    """The step whose failure (``on_failure: fail``) fails the run, the first one: from then
    on no new attempt starts (``decisions.stop_events``); running ones finish."""
    revisions: int = 0
    plan: Plan | None = None
    """The plan in force: the run's plan, or its latest revision (``plan_revised``)."""
    queue: dict[str, Any] | None = None
    """The run's concurrency key, limit and priority (``run_queued``), if it has one."""

    @classmethod
    def initial(cls, plan: Plan, run_id: str) -> RunState:
        waiting = {sid: len(deps) for sid, deps in plan.deps.items()}
        ready = {sid: None for sid in plan.order if waiting[sid] == 0}
        return cls(
            run_id=run_id,
            steps={sid: StepState(sid) for sid in plan.order},
            waiting=waiting,
            ready=ready,
            plan=plan,
        )

    @property
    def current_plan(self) -> Plan:
        assert self.plan is not None, "a RunState is made by RunState.initial(plan, …)"
        return self.plan

    def active(self) -> list[str]:
        return [sid for sid, s in self.steps.items() if s.status in ACTIVE]


_NOT_FOLDED = frozenset({ev.MODEL_CALL, ev.REPLAY_DIVERGED, ev.AGENT_MESSAGE, ev.TOOL_CALL})
_RUN_EVENTS = frozenset({ev.RUN_STARTED, ev.RUN_QUEUED, ev.RUN_ADMITTED, ev.RUN_FINISHED})


def _apply_run(state: RunState, event: Event) -> None:
    """The events about the run as a whole."""
    if event.type == ev.RUN_STARTED:
        state.status = RUNNING
        state.inputs = event.data.get("inputs", {})
        state.started_at = event.at
    elif event.type == ev.RUN_QUEUED:
        state.queue = dict(event.data)
        state.status = QUEUED
    elif event.type == ev.RUN_ADMITTED:
        state.status = RUNNING
    else:
        state.status = event.data["status"]
        state.output = event.data.get("output")
        state.error = event.data.get("error")
        state.finished_at = event.at
        state.ready.clear()


def apply(state: RunState, event: Event) -> RunState:
    """The reducer: fold one event into the state and return the state that follows.

    Most events update ``state`` in place and return it; ``plan_revised`` returns a new state
    under the revised plan (``state.plan``): callers always go on with the returned state.
    Events after ``run_finished`` (a worker's late report on a cancelled run) stay in the trace
    but do not change the run's state; model calls, a team's messages and tool calls, and
    replay divergences are kept for inspection and replay only."""
    kind = event.type
    if state.status in FINAL or kind in _NOT_FOLDED:
        return state
    plan = state.current_plan
    if kind == ev.PLAN_REVISED:
        revised = Plan.from_workflow(Workflow.model_validate(event.data["workflow"]))
        return revise(state, revised, list(event.data.get("kept", [])))
    if kind in _RUN_EVENTS:
        _apply_run(state, event)
        return state
    assert event.step is not None, f"{kind} event without a step"
    step = state.steps.get(event.step)
    if step is None:  # a late report on a step that a revised plan dropped
        return state
    if step.status in FINAL:
        return state  # a late start or report on a step that was stopped (the run failing)
    if kind == ev.STEP_SCHEDULED:
        state.ready.pop(step.id, None)
        last = step.attempts[-1] if step.attempts else None
        if last is not None and last.number == event.attempt and last.status == RUNNING:
            return state  # the running attempt sent again (its worker was lost): still running
        step.status = SCHEDULED
        if step.scheduled_at is None:
            step.scheduled_at = event.at
    elif kind == ev.ATTEMPT_STARTED:
        step.status = RUNNING
        step.started_at = step.started_at or event.at
        last = step.attempts[-1] if step.attempts else None
        if last is not None and last.number == event.attempt and last.status == RUNNING:
            # the same attempt delivered again (its worker was lost): one attempt, restarted
            last.started_at = event.at
            last.inputs = event.data.get("inputs")
            last.restarts += 1
            return state
        step.attempts.append(
            AttemptState(
                number=event.attempt or len(step.attempts) + 1,
                attempt_id=event.data.get("attempt_id"),
                started_at=event.at,
                inputs=event.data.get("inputs"),
            )
        )
    elif kind == ev.ATTEMPT_FINISHED:
        _finish_attempt(step, event)
    elif kind == ev.STEP_FINISHED:
        _finish_step(plan, state, step, event)
    return state


def _finish_attempt(step: StepState, event: Event) -> None:
    attempt = next((a for a in reversed(step.attempts) if a.number == event.attempt), None)
    if attempt is None:  # a trace written without attempt_started (should not happen)
        attempt = AttemptState(number=event.attempt or len(step.attempts) + 1)
        step.attempts.append(attempt)
    data = event.data
    attempt.status = data["status"]
    attempt.finished_at = event.at
    attempt.output = data.get("output")
    attempt.error = data.get("error")
    attempt.checks = data.get("checks", [])
    attempt.retry_in = data.get("retry_in")
    if attempt.retry_in is not None:
        step.status = RETRYING


def _finish_step(plan: Plan, state: RunState, step: StepState, event: Event) -> None:
    data = event.data
    step.status = data["status"]
    step.finished_at = event.at
    step.output = data.get("output")
    step.error = data.get("error")
    step.reason = data.get("reason")
    step.reused = data.get("reused")
    state.ready.pop(step.id, None)
    if step.status == SUCCEEDED:
        for nxt in plan.dependents[step.id]:
            state.waiting[nxt] -= 1
            if state.waiting[nxt] == 0 and state.steps[nxt].status == PENDING:
                state.ready[nxt] = None
    elif step.status == FAILED and plan.steps[step.id].on_failure == "fail":
        state.halted = True
        state.failing = state.failing or step.id
    elif step.status == FAILED and plan.steps[step.id].on_failure == "replan":
        state.halted = True  # nothing new starts until the plan is revised
        state.replan_for = step.id
    elif step.status == CANCELLED:
        state.halted = True


def revise(state: RunState, plan: Plan, kept: list[str]) -> RunState:
    """The state under a revised plan: ``kept`` steps (unchanged, succeeded) keep their outcome
    and are not run again; every other step starts pending."""
    new = RunState.initial(plan, state.run_id)
    new.status, new.inputs, new.started_at = state.status, state.inputs, state.started_at
    new.revisions, new.queue = state.revisions + 1, state.queue
    for sid in kept:
        new.steps[sid] = state.steps[sid]
        new.ready.pop(sid, None)
    for sid in kept:
        for nxt in plan.dependents[sid]:
            new.waiting[nxt] -= 1
    new.ready = {
        sid: None
        for sid in plan.order
        if new.waiting[sid] == 0 and new.steps[sid].status == PENDING
    }
    return new


def fold(plan: Plan, run_id: str, events: Iterable[Event]) -> RunState:
    """The run's state after ``events``, from its first plan (``state.plan`` is the plan in
    force at the end)."""
    state = RunState.initial(plan, run_id)
    for event in events:
        state = apply(state, event)
    return state


def ready_steps(plan: Plan, state: RunState) -> list[str]:
    """Steps whose dependencies have all succeeded and that were not dispatched yet.

    Empty once the run is halted (a step failed with ``on_failure: fail``, or it was cancelled)
    or finished: steps already running finish, nothing new starts.
    """
    if state.halted or state.status in FINAL or state.status == QUEUED:
        return []
    return list(state.ready)


def ready_after(plan: Plan, state: RunState, step_id: str) -> list[str]:
    """The dependents that ``step_id`` succeeding would make ready (its last dependency),
    computed without changing the state."""
    if state.halted or state.status in FINAL:
        return []
    return [
        nxt
        for nxt in plan.dependents[step_id]
        if state.waiting[nxt] == 1 and state.steps[nxt].status == PENDING
    ]


def blocked_steps(plan: Plan, state: RunState) -> dict[str, str]:
    """Pending steps that can never run, with why: an upstream step failed or was skipped."""
    blocked: dict[str, str] = {}
    for sid in plan.order:
        if state.steps[sid].status != PENDING:
            continue
        for dep in plan.deps[sid]:
            dep_status = state.steps[dep].status
            if dep in blocked or dep_status in (FAILED, SKIPPED, CANCELLED):
                verb = "was skipped" if dep in blocked or dep_status == SKIPPED else f"{dep_status}"
                blocked[sid] = f"upstream step {dep!r} {verb}"
                break
    return blocked


def stoppable(state: RunState) -> list[str]:
    """Once the run is failing (``state.failing``): the steps in flight that wait to start an
    attempt (dispatched, or waiting to retry), which must not start it."""
    if state.failing is None or state.status in FINAL:
        return []
    return [
        sid
        for sid in state.active()
        if not (state.steps[sid].attempts and state.steps[sid].attempts[-1].status == RUNNING)
    ]


def is_settled(state: RunState) -> bool:
    """Nothing is in flight and nothing more can start."""
    if state.active():
        return False
    return state.halted or not state.ready


def step_context(plan: Plan, state: RunState, step_id: str | None = None) -> dict[str, Any]:
    """What ``${{ … }}`` can read: run inputs and the outputs of succeeded steps (for a step:
    of its dependencies, the only ones validation lets it reference)."""
    ids = plan.deps[step_id] if step_id is not None else plan.order
    return {
        "inputs": state.inputs,
        "steps": {
            sid: {"output": state.steps[sid].output}
            for sid in ids
            if state.steps[sid].status == SUCCEEDED
        },
    }


def run_output(plan: Plan, state: RunState) -> Any:
    """The run's output: the workflow's ``output`` rendered, or each final step's output."""
    if plan.workflow.output is None:
        sinks = [sid for sid in plan.order if not plan.dependents[sid]]
        return {
            sid: state.steps[sid].output for sid in sinks if state.steps[sid].status == SUCCEEDED
        }
    return render(plan.workflow.output, step_context(plan, state))


def final_status(plan: Plan, state: RunState) -> str:
    if any(s.status == CANCELLED for s in state.steps.values()):
        return CANCELLED
    failed = [sid for sid, s in state.steps.items() if s.status == FAILED]
    if any(plan.steps[sid].on_failure in ("fail", "replan") for sid in failed):
        return FAILED
    return SUCCEEDED


__all__ = [
    "AttemptState",
    "RunState",
    "StepState",
    "apply",
    "blocked_steps",
    "final_status",
    "fold",
    "is_settled",
    "ready_after",
    "ready_steps",
    "run_output",
    "step_context",
    "stoppable",
]
