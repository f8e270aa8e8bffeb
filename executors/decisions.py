"""What happens next, as pure functions of the plan and the run's state.

Both executors (local and Celery) make the same decisions through these functions; they only
differ in how they record the resulting events and how they run attempts. Time comes in as
``at``; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

from dagwright.executors import engine
from dagwright.executors import events as ev
from dagwright.executors.events import Event
from dagwright.executors.retry import backoff_delay, should_retry
from dagwright.executors.runner import CANCELLED, FAILED, SUCCEEDED, Outcome, error_info
from dagwright.planner.plan import Plan
from dagwright.planner.references import ExpressionError, render


def resolve_args(plan: Plan, state: engine.RunState, sid: str) -> tuple[Any, Outcome | None]:
    """A step's ``with`` rendered from its dependencies' outputs, or the failed outcome when a
    reference cannot resolve (not retryable: the same inputs give the same failure)."""
    try:
        return render(plan.steps[sid].with_, engine.step_context(plan, state, sid)), None
    except ExpressionError as exc:
        msg = f"step {sid!r}: cannot resolve its arguments: {exc}"
        info = error_info(exc, kind="error", message=msg, retryable=False, with_traceback=False)
        return None, Outcome(FAILED, error=info)


def succeeded_outputs(state: engine.RunState) -> dict[str, Any]:
    return {sid: s.output for sid, s in state.steps.items() if s.status == engine.SUCCEEDED}


def kept_steps(old: Any, new: Any, outputs: dict[str, Any]) -> list[str]:
    """Steps of a revised plan that succeeded before and are unchanged (same id, tool and
    arguments): their outputs are reused, they don't run again."""
    before = {s.id: s.model_dump() for s in old.steps}
    return [s.id for s in new.steps if s.id in outputs and before.get(s.id) == s.model_dump()]


def previous_failure(state: engine.RunState, sid: str, attempt: int) -> str | None:
    """Why attempt ``attempt - 1`` of the step failed: told to tools (``llm.generate`` tells
    the model what to fix)."""
    earlier = [a for a in state.steps[sid].attempts if a.number == attempt - 1]
    if not earlier or not earlier[-1].error:
        return None
    return str(earlier[-1].error.get("message") or earlier[-1].error.get("type"))


def outcome_events(
    plan: Plan,
    run_id: str,
    sid: str,
    attempt: int,
    attempt_id: str,
    outcome: Outcome,
    at: float,
    next_attempt_id: str | None = None,
) -> tuple[list[Event], float | None]:
    """The events that record an attempt's outcome, and the retry delay when there is one:
    then the step is not finished, and its next attempt is scheduled (``next_attempt_id``)
    ``not_before`` the delay has passed."""
    step = plan.steps[sid]
    delay = None
    if outcome.status != SUCCEEDED and should_retry(
        step.retry, attempt, outcome.kind, outcome.retryable
    ):
        delay = backoff_delay(step.retry, attempt, f"{run_id}/{sid}/{attempt}")
    finished = Event(
        ev.ATTEMPT_FINISHED,
        run_id,
        at,
        sid,
        attempt,
        {
            "attempt_id": attempt_id,
            "status": outcome.status,
            "output": outcome.output,
            "error": outcome.error,
            "checks": outcome.checks,
            "duration": outcome.duration,
            "retry_in": delay,
        },
    )
    if delay is not None:
        data = {"attempt_id": next_attempt_id, "not_before": round(at + delay, 6)}
        return [finished, Event(ev.STEP_SCHEDULED, run_id, at, sid, attempt + 1, data)], delay
    status = SUCCEEDED if outcome.status == SUCCEEDED else FAILED
    data = {
        "status": status,
        "output": outcome.output if status == SUCCEEDED else None,
        "error": outcome.error,
    }
    return [finished, Event(ev.STEP_FINISHED, run_id, at, sid, attempt, data)], None


def reused_events(run_id: str, at: float, reused: dict[str, dict[str, Any]]) -> list[Event]:
    """A derived run (resume, fork) starts with the outputs it reuses: each a step that
    succeeded without running here, marked with the run it ran in."""
    return [
        Event(
            ev.STEP_FINISHED,
            run_id,
            at,
            sid,
            None,
            {
                "status": engine.SUCCEEDED,
                "output": record.get("output"),
                "error": None,
                "reused": {k: v for k, v in record.items() if k != "output"},
            },
        )
        for sid, record in reused.items()
    ]


def cancel_events(state: engine.RunState, sid: str, at: float) -> list[Event]:
    """A step cancelled while scheduled, running or waiting to retry."""
    step = state.steps[sid]
    last = step.attempts[-1] if step.attempts else None
    error = {
        "type": "Cancelled",
        "message": f"step {sid!r} was cancelled",
        "kind": "cancelled",
        "retryable": False,
    }
    events = []
    if last is not None and last.status == engine.RUNNING:
        data = {
            "attempt_id": last.attempt_id,
            "status": CANCELLED,
            "error": error,
            "checks": [],
            "duration": None,
            "retry_in": None,
        }
        events.append(Event(ev.ATTEMPT_FINISHED, state.run_id, at, sid, last.number, data))
    finished = {"status": engine.CANCELLED, "error": error}
    events.append(
        Event(ev.STEP_FINISHED, state.run_id, at, sid, last.number if last else None, finished)
    )
    return events


def conclude(plan: Plan, state: engine.RunState, at: float, *, cancelled: bool) -> list[Event]:
    """The events that end a run: steps that never started are skipped (with why), then
    ``run_finished`` with the status, the output or the error naming the failed step."""
    blocked = engine.blocked_steps(plan, state)
    default_reason = "the run was cancelled" if cancelled else "the run stopped after a failure"
    events = [
        Event(
            ev.STEP_FINISHED,
            state.run_id,
            at,
            sid,
            None,
            {"status": engine.SKIPPED, "reason": blocked.get(sid, default_reason)},
        )
        for sid in plan.order
        if state.steps[sid].status == engine.PENDING
    ]
    status = engine.CANCELLED if cancelled else engine.final_status(plan, state)
    output, error = None, None
    if status == engine.SUCCEEDED:
        try:
            output = engine.run_output(plan, state)
        except ExpressionError as exc:
            status = engine.FAILED
            error = {
                "type": "ExpressionError",
                "message": f"cannot compute the run's output: {exc}",
            }
    elif status == engine.FAILED:
        failed = next(
            sid
            for sid in plan.order
            if state.steps[sid].status == engine.FAILED
            and plan.steps[sid].on_failure in ("fail", "replan")
        )
        step_error = state.steps[failed].error or {}
        error = {
            "type": step_error.get("type", "StepFailed"),
            "step": failed,
            "message": step_error.get("message", f"step {failed!r} failed"),
        }
    else:
        error = {"type": "Cancelled", "message": "the run was cancelled"}
    data = {"status": status, "output": output, "error": error}
    return [*events, Event(ev.RUN_FINISHED, state.run_id, at, None, None, data)]


__all__ = [
    "kept_steps",
    "succeeded_outputs",
    "cancel_events",
    "conclude",
    "outcome_events",
    "previous_failure",
    "resolve_args",
    "reused_events",
]
