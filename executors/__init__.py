"""The engine (a pure fold over trace events), the executors that drive it, and trace stores."""

from dagwright.executors.engine import RunState, fold, ready_steps
from dagwright.executors.events import Event
from dagwright.executors.local import LocalExecutor, RunResult

__all__ = ["Event", "LocalExecutor", "RunResult", "RunState", "fold", "ready_steps"]
