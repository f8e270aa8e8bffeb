"""Running plans. The rooms:

- ``engine/``: the pure engine (events, the fold, decisions, retry, verify, lineage): no I/O
- ``lifecycle/``: the one run lifecycle every driver calls (start a run, a step's tool context,
  replanning, the run's tool registry, a local run's lease, following a run to its end)
- ``runner``: execute one attempt (call the tool with its timeout, verify, classify)
- the drivers: ``local`` (the embedded default), ``celery/`` (workers over a shared store),
  ``replay``
- ``store/``: trace stores (memory twin, SQLite, PostgreSQL)

Names load on first use, so importing this package starts no runtime.
"""

from __future__ import annotations

from typing import Any

from dagwright.executors.engine import RunState, fold, ready_steps
from dagwright.executors.engine.events import Event

__all__ = ["Event", "LocalExecutor", "RunResult", "RunState", "fold", "ready_steps"]


def __getattr__(name: str) -> Any:
    if name in ("LocalExecutor", "RunResult"):
        from dagwright.executors import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
