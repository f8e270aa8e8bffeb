"""What happens next, as pure functions of the plan and the run's state.

Both executors (local and Celery) make the same decisions through these functions; they only
differ in how they record the resulting events and how they run attempts. Time comes in as
``at``; nothing here does I/O.
"""

from __future__ import annotations

import copy
from typing import Any

from dagwright.executors.engine import events as ev
from dagwright.executors.engine import state as st
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import (
    ABANDONED,
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    Outcome,
    error_info,
)
from dagwright.executors.engine.retry import backoff_delay, should_retry
from dagwright.planner.plan import Plan
from dagwright.planner.references import ExpressionError, render


def resolve_args(plan: Plan, state: st.RunState, sid: str) -> tuple[Any, Outcome | None]:
    """A step's ``with`` rendered from its dependencies' outputs, or the failed outcome when a
    reference cannot resolve (not retryable: the same inputs give the same failure)."""
    return render_args(sid, plan.steps[sid].with_, st.step_context(plan, state, sid))


def render_args(sid: str, with_: Any, context: dict[str, Any]) -> tuple[Any, Outcome | None]:
    """``resolve_args`` from the step's context (``state.step_context``): what the runner
    calls, under the attempt's time budget."""
    try:
        return render(with_, context), None
    except ExpressionError as exc:
        msg = f"step {sid!r}: cannot resolve its arguments: {exc}"
        info = error_info(exc, kind="error", message=msg, retryable=False, with_traceback=False)
        return None, Outcome(FAILED, error=info)


def succeeded_outputs(state: st.RunState) -> dict[str, Any]:
    return {sid: s.output for sid, s in state.steps.items() if s.status == SUCCEEDED}


def kept_steps(old: Any, new: Any, outputs: dict[str, Any]) -> list[str]:
    """Steps of a revised plan that succeeded before and are unchanged (same id, tool and
    arguments): their outputs are reused, they don't run again."""
    before = {s.id: s.model_dump() for s in old.steps}
    return [s.id for s in new.steps if s.id in outputs and before.get(s.id) == s.model_dump()]


def may_replan(state: st.RunState) -> bool:
    """A step failed with ``on_failure: replan`` and the workflow allows another revision."""
    return (
        state.replan_for is not None
        and state.failing is None  # another step failed the run meanwhile: no revision saves it
        and state.revisions < state.current_plan.workflow.max_replans
    )


def revision_event(state: st.RunState, revised: Any, failure: dict[str, Any], at: float) -> Event:
    """``plan_revised``: the run goes on under ``revised`` (a validated workflow); the steps it
    keeps unchanged that succeeded keep their outputs and do not run again."""
    workflow = state.current_plan.workflow
    kept = kept_steps(workflow, revised, succeeded_outputs(state))
    data = {
        "revision": state.revisions + 1,
        "workflow": revised.to_data(),
        "kept": kept,
        "failed_step": failure.get("step"),
        "error": failure.get("error"),
    }
    return Event(ev.PLAN_REVISED, state.run_id, at, None, None, data)


def previous_failure(state: st.RunState, sid: str, attempt: int) -> str | None:
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
    *,
    failing: str | None = None,
) -> tuple[list[Event], float | None]:
    """The events that record an attempt's outcome, and the retry delay when there is one:
    then the step is not finished, and its next attempt is scheduled (``next_attempt_id``)
    ``not_before`` the delay has passed.

    ``failing``: the step that already failed the run (``RunState.failing``): a failed attempt
    is then not retried, whatever its policy (the step fails, ``stopped_by`` that step)."""
    step = plan.steps[sid]
    delay = None
    retry = outcome.status != SUCCEEDED and should_retry(
        step.retry, attempt, outcome.kind, outcome.retryable
    )
    if retry and failing is None:
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
    data: dict[str, Any]
    if delay is not None:
        data = {"attempt_id": next_attempt_id, "not_before": round(at + delay, 6)}
        return [finished, Event(ev.STEP_SCHEDULED, run_id, at, sid, attempt + 1, data)], delay
    status = SUCCEEDED if outcome.status == SUCCEEDED else FAILED
    data = {
        "status": status,
        "output": outcome.output if status == SUCCEEDED else None,
        "error": outcome.error,
    }
    if retry and failing is not None:
        data |= {"reason": f"not retried: step {failing!r} failed the run", "stopped_by": failing}
    return [finished, Event(ev.STEP_FINISHED, run_id, at, sid, attempt, data)], None


def stop_events(state: st.RunState, sid: str, at: float) -> list[Event]:
    """A step in flight that waits to start an attempt once the run is failing
    (``state.stoppable``) ends without it: ``failed`` with its last attempt's error when it was
    waiting to retry, ``skipped`` when it had not started. ``stopped_by`` names the step that
    failed the run; a replay reads it to stop where the recording did."""
    step = state.steps[sid]
    by = state.failing
    last = step.attempts[-1] if step.attempts else None
    if last is not None and last.status == RUNNING:
        return []  # running attempts finish
    data: dict[str, Any]
    if last is None:
        reason = f"not started: step {by!r} failed the run"
        data = {"status": SKIPPED, "reason": reason, "stopped_by": by}
    else:
        reason = f"not retried: step {by!r} failed the run"
        data = {"status": FAILED, "output": None, "error": last.error, "reason": reason,
                "stopped_by": by}  # fmt: skip
    return [Event(ev.STEP_FINISHED, state.run_id, at, sid, last.number if last else None, data)]


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
                "status": SUCCEEDED,
                "output": record.get("output"),
                "error": None,
                "reused": {k: v for k, v in record.items() if k != "output"},
            },
        )
        for sid, record in reused.items()
    ]


def cancel_events(state: st.RunState, sid: str, at: float) -> list[Event]:
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
    if last is not None and last.status == RUNNING:
        data: dict[str, Any] = {
            "attempt_id": last.attempt_id,
            "status": CANCELLED,
            "error": error,
            "checks": [],
            "duration": None,
            "retry_in": None,
        }
        events.append(Event(ev.ATTEMPT_FINISHED, state.run_id, at, sid, last.number, data))
    finished = {"status": CANCELLED, "error": error}
    events.append(
        Event(ev.STEP_FINISHED, state.run_id, at, sid, last.number if last else None, finished)
    )
    return events


def conclude(
    plan: Plan,
    state: st.RunState,
    at: float,
    *,
    cancelled: bool,
    replan_problem: str | None = None,
) -> list[Event]:
    """The events that end a run: steps that never started are skipped (with why), then
    ``run_finished`` with the status, the output or the error naming the failed step (and,
    ``replan_problem``, why its plan could not be revised)."""
    blocked = st.blocked_steps(plan, state)
    default_reason = "the run was cancelled" if cancelled else "the run stopped after a failure"
    if not cancelled and state.failing is not None:
        default_reason = f"not started: step {state.failing!r} failed the run"
    events = [
        Event(
            ev.STEP_FINISHED,
            state.run_id,
            at,
            sid,
            None,
            {"status": SKIPPED, "reason": blocked.get(sid, default_reason)},
        )
        for sid in plan.order
        if state.steps[sid].status == PENDING
    ]
    status = CANCELLED if cancelled else st.final_status(plan, state)
    output, error = None, None
    if status == SUCCEEDED:
        try:
            output = st.run_output(plan, state)
        except ExpressionError as exc:
            status = FAILED
            error = {
                "type": "ExpressionError",
                "message": f"cannot compute the run's output: {exc}",
            }
    elif status == FAILED:
        failed = state.failing or next(
            sid
            for sid in plan.order
            if state.steps[sid].status == FAILED
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
    if replan_problem is not None and error is not None:
        error["replan"] = replan_problem
    data = {"status": status, "output": output, "error": error}
    return [*events, Event(ev.RUN_FINISHED, state.run_id, at, None, None, data)]


def lease_expired(last_beat: float, now: float, lost_after: float) -> bool:
    """A run's process is presumed lost when its lease was not renewed for ``lost_after``."""
    return now - last_beat > lost_after


def abandon(
    plan: Plan, state: st.RunState, at: float, *, message: str, resumed_by: str | None = None
) -> list[Event]:
    """The events that close a run whose process was lost: its in-flight steps are cancelled,
    the rest skipped, and the run finishes ``abandoned`` (naming the run that resumes it)."""
    after = copy.deepcopy(state)
    events: list[Event] = []
    for sid in state.active():
        for e in cancel_events(after, sid, at):
            after = st.apply(after, e)
            events.append(e)
    closing = conclude(plan, after, at, cancelled=True)
    error = {"type": "Abandoned", "message": message}
    data = {"status": ABANDONED, "output": None, "error": error, "resumed_by": resumed_by}
    return [*events, *closing[:-1], Event(ev.RUN_FINISHED, state.run_id, at, None, None, data)]


__all__ = [
    "abandon",
    "lease_expired",
    "kept_steps",
    "may_replan",
    "revision_event",
    "succeeded_outputs",
    "cancel_events",
    "conclude",
    "outcome_events",
    "previous_failure",
    "render_args",
    "resolve_args",
    "reused_events",
    "stop_events",
]
