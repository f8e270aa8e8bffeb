"""What a run looks like to people and to scripts: the summary of a run (its steps, attempts,
timings, errors, output, lineage), built from its record and its folded state. The CLI's
``show --json`` and ``run --json`` print it; the API serves the same document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dagwright.executors import engine
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.lineage import parent_state
from dagwright.executors.store.base import RunRecord
from dagwright.planner.plan import Plan


def iso(at: float | None) -> str | None:
    """Timestamps in reports: ISO 8601, UTC, milliseconds."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


def state_of(record: RunRecord, events: list[Event]) -> tuple[Plan, engine.RunState]:
    """The plan in force at the end of the run, and the run's state folded from ``events``."""
    state = parent_state(record.workflow, record.run_id, events)
    return state.current_plan, state


def duration(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None else None


def step_summary(step: engine.StepState, *, detail: bool = False) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": step.status,
        "attempts": len(step.attempts),
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
        "duration": duration(step.started_at, step.finished_at),
    }
    if step.error:
        summary["error"] = step.error.get("message")
    if step.reason:
        summary["reason"] = step.reason
    if step.reused:
        summary["reused_from"] = step.reused.get("run_id")
    if detail:
        summary["output"] = step.output
        summary["attempt_details"] = [
            {
                "attempt": a.number,
                "attempt_id": a.attempt_id,
                "status": a.status,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "duration": duration(a.started_at, a.finished_at),
                "inputs": a.inputs,
                "output": a.output,
                "error": a.error,
                "checks": a.checks,
                "retry_in": a.retry_in,
            }
            for a in step.attempts
        ]
    return summary


def run_summary(
    record: RunRecord, state: engine.RunState, trace: str, *, detail: bool = False
) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "workflow": record.workflow_name,
        "status": state.status,
        "output": state.output,
        "error": state.error,
        "inputs": record.inputs,
        "lineage": record.lineage(),
        "executor": record.executor,
        "started_at": iso(state.started_at),
        "finished_at": iso(state.finished_at),
        "duration": duration(state.started_at, state.finished_at),
        "steps": {sid: step_summary(s, detail=detail) for sid, s in state.steps.items()},
        "trace": trace,
    }


__all__ = ["duration", "iso", "run_summary", "state_of", "step_summary"]
