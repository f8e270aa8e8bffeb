"""What a replay finds (``executors.replay``): a ``Divergence`` between a recorded attempt (or
run) and its replay, the unified diff it carries (``diff_text``, also used by ``dagwright
diff``), and the ``replay_diverged`` event it is recorded as (``divergence_event``). Made by
``replayer.Replayer``; recorded by the local executor's attempts (as they go) and by
``driver.replay_run`` (those found at the run's end).
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from typing import Any

from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event


def diff_text(expected: Any, actual: Any) -> str:
    """A unified diff of two JSON values, recorded (---) vs replayed (+++)."""
    a = _pretty(expected).splitlines()
    b = _pretty(actual).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "recorded", "replayed", lineterm=""))


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@dataclass
class Divergence:
    step: str | None
    attempt: int | None
    what: str
    """inputs, status, output, error, model request, model call, attempt, run status, …"""
    message: str
    expected: Any
    actual: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "attempt": self.attempt,
            "what": self.what,
            "message": self.message,
            "expected": self.expected,
            "actual": self.actual,
            "diff": diff_text(self.expected, self.actual),
        }


def divergence_event(run_id: str, d: Divergence, at: float | None = None) -> Event:
    return Event(ev.REPLAY_DIVERGED, run_id, at or time.time(), d.step, d.attempt, d.as_dict())


__all__ = ["Divergence", "diff_text", "divergence_event"]
