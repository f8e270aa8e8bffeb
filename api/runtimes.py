"""Where the API's runs execute: the server's own threads (the embedded default) or Celery
workers; ``open_service`` builds the service over one of them, once, from the settings."""

from __future__ import annotations

import time
from typing import Any, Protocol

from dagwright.api.service import RunService
from dagwright.executors.distributed.engine import Dispatch, Engine, Timing
from dagwright.executors.store import open_store
from dagwright.executors.wiring import model_cache, registry_with, replanner
from dagwright.settings import Settings


class Runtime(Protocol):
    """Where dispatched attempts go: Celery workers or the server's own threads."""

    def send(self, dispatches: list[Dispatch]) -> None: ...

    def cancel(self, run_id: str) -> None: ...

    def problem(self, *, fresh: bool = False) -> str | None:
        """Why the queue cannot take work now (the broker is unreachable); None: it can.
        ``fresh``: check now, not a recent answer."""

    def unsent(self, run_id: str, message: str) -> None:
        """End a recorded run whose dispatches could not be sent (it will never execute)."""


def open_service(settings: Settings, *, executor: str = "local") -> RunService:
    """The service over the settings' trace store: ``executor="local"`` runs attempts on the
    server's own threads (``api_runs`` at once); ``"celery"`` sends them to the broker's
    workers."""
    store = open_store(settings.db, secrets=settings.secrets())
    registry = registry_with(settings)
    timing = Timing(heartbeat=settings.heartbeat, redispatch_after=settings.redispatch_after)
    common: dict[str, Any] = {
        "tool_modules": settings.tools,
        "timing": timing,
        "cache": model_cache(settings),
        "limits": settings.limits(),
        "eval_timeout": settings.eval_timeout,
        "replanner": replanner(None, "", settings),  # DAGWRIGHT_MODEL's, for on_failure: replan
        "secrets": settings.step_secrets(),  # for the server's own threads' attempts
        "settings": settings,  # what their tools run under (ToolContext.settings)
    }
    runtime: Any
    if executor == "celery":
        from dagwright.executors.celery.app import create_app
        from dagwright.executors.celery.app import runtime as celery_runtime

        eng = Engine(store, registry, executor="celery", **common)
        runtime = _CeleryRuntime(celery_runtime(create_app(settings)), eng)
        name = "celery"
    else:
        from dagwright.executors.inprocess import InProcessRuntime

        eng = Engine(store, registry, executor="api", **common)
        runtime = InProcessRuntime(
            eng, workers=settings.api_runs, sweep_every=settings.sweep_interval
        )
        runtime.start()
        name = "api"
    return RunService(settings, store, eng, runtime, executor=name, registry=registry)


class _CeleryRuntime:
    """The Celery runtime in the shape the service drives."""

    def __init__(self, workers: Any, eng: Engine) -> None:
        self.workers, self.eng = workers, eng
        self._fine_until = 0.0

    def send(self, dispatches: list[Dispatch]) -> None:
        self.workers.send(dispatches)

    def cancel(self, run_id: str) -> None:
        self.workers.cancel(run_id, self.eng)

    def problem(self, *, fresh: bool = False) -> str | None:
        """The broker checked at most once a second while it answers (a check is a connection)."""
        from dagwright.executors.celery.submit import broker_problem

        if not fresh and time.monotonic() < self._fine_until:
            return None
        problem = broker_problem(self.workers.app)
        self._fine_until = time.monotonic() + 1.0 if problem is None else 0.0
        return problem

    def unsent(self, run_id: str, message: str) -> None:
        from dagwright.executors.celery.submit import end_unsent

        end_unsent(self.eng, run_id, message)


__all__ = ["Runtime", "open_service"]
