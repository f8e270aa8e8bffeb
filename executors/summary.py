"""What a run looks like to people and to scripts: the summary of a run (its steps, attempts,
timings, errors, output, lineage), built from its record and its folded state. The CLI's
``show --json`` and ``run --json`` print it; the API serves the same document."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dagwright.executors import engine
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.lineage import parent_state
from dagwright.executors.store.base import RunRecord, lineage_fields
from dagwright.planner.plan import Plan


def iso(at: float | None) -> str | None:
    """Timestamps in reports: ISO 8601, UTC, milliseconds."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


def event_item(event: Event) -> dict[str, Any]:
    """An event as ``trace --json`` and the API (``/events``, the stream) show it: ``at`` in
    ISO 8601 like every other time in dagwright's JSON."""
    return event.as_dict() | {"at": iso(event.at)}


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


def failed_optional(state: engine.RunState) -> list[dict[str, Any]]:
    """The steps that failed without failing the run (``on_failure: continue``) of a run that
    succeeded: ``{"step", "type", "message"}`` each, as the run's ``error`` is."""
    if state.status != engine.SUCCEEDED:
        return []
    return [
        {
            "step": sid,
            "type": (s.error or {}).get("type"),
            "message": (s.error or {}).get("message"),
        }
        for sid, s in state.steps.items()
        if s.status == engine.FAILED
    ]


def run_item(record: RunRecord, status: str, finished_at: float | None) -> dict[str, Any]:
    """A run in a list (``runs --json``, the API's ``GET /v1/runs``): the same names as a run's
    summary (``started_at``, ``finished_at``, ``duration``)."""
    return {
        "run_id": record.run_id,
        "workflow": record.workflow_name,
        "status": status,
        "started_at": iso(record.created_at),
        "finished_at": iso(finished_at),
        "duration": duration(record.created_at, finished_at),
        "executor": record.executor,
        "lineage": record.lineage(),
        "source": record.source,
    }


class RunHead(Protocol):
    """What a summary says of a run besides its state: a ``RunRecord``, or what the driver that
    started the run knows of it (no read of the record back)."""

    @property
    def run_id(self) -> str: ...
    @property
    def workflow_name(self) -> str: ...
    @property
    def inputs(self) -> dict[str, Any]: ...
    @property
    def executor(self) -> str: ...
    def lineage(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class StartedRun:
    """A ``RunHead`` from what the driver started the run with."""

    run_id: str
    workflow_name: str
    inputs: dict[str, Any]
    executor: str
    lineage_: dict[str, Any] | None = None

    def lineage(self) -> dict[str, Any] | None:
        return lineage_of(self.lineage_)


def lineage_of(lineage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A derived run's lineage as its record shows it (``RunRecord.lineage``)."""
    fields = lineage_fields(lineage)
    if fields["parent_run_id"] is None:
        return None
    return {"parent": fields["parent_run_id"], "mode": fields["mode"],
            "from_steps": fields["from_steps"]}  # fmt: skip


def run_summary(
    record: RunHead,
    state: engine.RunState,
    trace: str,
    *,
    detail: bool = False,
    steps: bool = True,
) -> dict[str, Any]:
    """The run as ``run --json`` prints it; ``detail``: as ``show --json`` and the API's
    ``GET /v1/runs/{id}`` do, each step's attempts too, and the plan in force at the end
    (``plan``, a workflow as data; ``plan_revisions``: how often it was revised).
    ``steps=False`` leaves out the steps (``steps: None``): the CLI's lines after a run, which
    cost the same for a plan of any size."""
    return {
        "run_id": record.run_id,
        "workflow": record.workflow_name,
        "status": state.status,
        "output": state.output,
        "error": state.error,
        "failed_optional": failed_optional(state),
        "inputs": record.inputs,
        "lineage": record.lineage(),
        "executor": record.executor,
        "started_at": iso(state.started_at),
        "finished_at": iso(state.finished_at),
        "duration": duration(state.started_at, state.finished_at),
        "steps": (
            {sid: step_summary(s, detail=detail) for sid, s in state.steps.items()}
            if steps
            else None
        ),
        "trace": trace,
    } | (
        {"plan": state.current_plan.workflow.to_data(), "plan_revisions": state.revisions}
        if detail
        else {}
    )


__all__ = [
    "RunHead",
    "StartedRun",
    "lineage_of",
    "duration",
    "event_item",
    "failed_optional",
    "iso",
    "run_item",
    "run_summary",
    "state_of",
    "step_summary",
]
