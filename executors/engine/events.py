"""Trace events: the append-only history a run's state is folded from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RUN_STARTED = "run_started"
STEP_SCHEDULED = "step_scheduled"
ATTEMPT_STARTED = "attempt_started"
ATTEMPT_FINISHED = "attempt_finished"
STEP_FINISHED = "step_finished"
RUN_FINISHED = "run_finished"
MODEL_CALL = "model_call"
PLAN_REVISED = "plan_revised"
REPLAY_DIVERGED = "replay_diverged"
RUN_QUEUED = "run_queued"
"""The run waits for a slot of its concurrency key (data: ``key``, ``limit``, ``priority``)."""
RUN_ADMITTED = "run_admitted"
"""The run holds a slot of its concurrency key: its steps may start."""
AGENT_MESSAGE = "agent_message"
"""One message of an ``agents.team`` step's exchange (data: ``turn``, ``agent``, ``kind``,
``text``, ``tokens``), recorded as it is said."""
TOOL_CALL = "tool_call"
"""A registry tool called by an agent of an ``agents.team`` step (data: ``agent``, ``turn``,
``tool``, ``arguments``, ``output`` or ``error``, ``duration``)."""

EVENT_TYPES = (
    RUN_STARTED,
    STEP_SCHEDULED,
    ATTEMPT_STARTED,
    ATTEMPT_FINISHED,
    STEP_FINISHED,
    RUN_FINISHED,
    MODEL_CALL,
    PLAN_REVISED,
    REPLAY_DIVERGED,
    RUN_QUEUED,
    RUN_ADMITTED,
    AGENT_MESSAGE,
    TOOL_CALL,
)


@dataclass(frozen=True, slots=True)
class Event:
    """One fact about a run. ``seq`` is its position in the run's trace, given by the store."""

    type: str
    run_id: str
    at: float
    step: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None

    def with_seq(self, seq: int) -> Event:
        return Event(self.type, self.run_id, self.at, self.step, self.attempt, self.data, seq)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "run_id": self.run_id,
            "at": self.at,
            "step": self.step,
            "attempt": self.attempt,
            "data": self.data,
        }


__all__ = [
    "AGENT_MESSAGE",
    "ATTEMPT_FINISHED",
    "ATTEMPT_STARTED",
    "EVENT_TYPES",
    "Event",
    "MODEL_CALL",
    "PLAN_REVISED",
    "REPLAY_DIVERGED",
    "RUN_FINISHED",
    "RUN_STARTED",
    "STEP_FINISHED",
    "STEP_SCHEDULED",
    "TOOL_CALL",
]
