"""The distributed engine's small data: ``Dispatch``, one message for a worker (what every part
of the engine returns to be enqueued, and what the Celery app and the API's threads send), and
``Timing``, when a running attempt beats and when an attempt or a dispatch counts as lost."""

from __future__ import annotations

from dataclasses import dataclass


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


__all__ = ["Dispatch", "Timing"]
