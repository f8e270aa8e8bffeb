"""The status words of runs, steps and attempts, and an attempt's ``Outcome`` (pure data).

Every other module, the CLI and the trace use these names; none spells them as literals.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

# statuses: a run and a step are pending → (scheduled → running → retrying …) → one final status
PENDING, SCHEDULED, RUNNING, RETRYING = "pending", "scheduled", "running", "retrying"
SUCCEEDED, FAILED, SKIPPED, CANCELLED = "succeeded", "failed", "skipped", "cancelled"
TIMED_OUT = "timed_out"
"""An attempt that ran past its step's ``timeout`` (a step that fails that way is ``failed``)."""
ABANDONED = "abandoned"
"""A local run whose process stopped without finishing it (killed, machine lost): its lease
expired. It is closed as such when it is resumed (once)."""

QUEUED = "queued"
"""A run waiting for a slot of its concurrency key (a workflow's ``concurrency:``)."""

FINAL = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED, ABANDONED})
"""A step or run in one of these states never changes again."""
ACTIVE = frozenset({SCHEDULED, RUNNING, RETRYING})
"""A step in one of these states is in flight: dispatched, running, or waiting to retry."""
RUN_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, ABANDONED)
"""What ``dagwright runs --status`` and the API filter on."""

# error kinds a retry policy names in ``retry_on``
ERROR, TIMEOUT, VERIFICATION = "error", "timeout", "verification"


@dataclass
class Outcome:
    """What one attempt came to: its status, output or error, check results and duration."""

    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0

    @property
    def kind(self) -> str:
        return str((self.error or {}).get("kind", ERROR))

    @property
    def retryable(self) -> bool:
        return bool((self.error or {}).get("retryable", False))


def error_info(
    exc: BaseException | None,
    *,
    kind: str,
    message: str | None = None,
    retryable: bool = True,
    with_traceback: bool = True,
) -> dict[str, Any]:
    """An error as the trace records it: type, message, kind, retryable (and traceback)."""
    info: dict[str, Any] = {
        "type": type(exc).__name__ if exc else kind,
        "message": message if message is not None else str(exc),
        "kind": kind,
        "retryable": retryable,
    }
    if exc is not None and with_traceback:
        info["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
    return info


__all__ = [
    "ABANDONED",
    "ACTIVE",
    "CANCELLED",
    "ERROR",
    "FAILED",
    "FINAL",
    "Outcome",
    "PENDING",
    "QUEUED",
    "RETRYING",
    "RUNNING",
    "RUN_STATUSES",
    "SCHEDULED",
    "SKIPPED",
    "SUCCEEDED",
    "TIMED_OUT",
    "TIMEOUT",
    "VERIFICATION",
    "error_info",
]
