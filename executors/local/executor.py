"""The local executor's face (``executors.local``): ``LocalExecutor``, its options and the
bounds it runs under (``AUTO_PARALLEL``, ``AUTO_THREADS``), ``run`` / ``run_async`` (validate,
resolve the inputs, hold the run's lease while ``run.LocalRun`` executes it) and ``cancel``.
Called by the CLI (``dagwright run``, resume, fork), replay, tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from dagwright.agents.cache import StoreCache
from dagwright.errors import PlanError
from dagwright.executors import engine
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import NewRun, Replanner, lease, new_id
from dagwright.executors.local.run import LocalRun, RunResult
from dagwright.executors.runner import EVAL_TIMEOUT
from dagwright.executors.store.base import TraceStore
from dagwright.executors.store.redacting import redacting
from dagwright.planner.inputs import resolve_inputs
from dagwright.planner.limits import Limits
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.planner.secret_refs import reused_stand_ins
from dagwright.planner.validate import validate
from dagwright.secret_values import NO_SECRETS, SecretValues
from dagwright.tools.registry import ToolRegistry, default_registry

AUTO_PARALLEL = 128
"""Attempts at once when ``max_parallel`` is not set: an async tool's attempt is a coroutine on
the event loop (no thread), so a fan-out runs as wide as its plan (up to this many; a 50-wide
fan-out of 100 ms steps: 1.02 x its critical path, where 8 at once made it 3.04 x)."""
AUTO_THREADS = 32
"""Plain-function tools' attempts at once when ``max_parallel`` is not set: each holds a thread
of the pool while it runs (Python's ``ThreadPoolExecutor`` caps its default at 32 as well)."""


class LocalExecutor:
    def __init__(
        self,
        store: TraceStore,
        registry: ToolRegistry | None = None,
        *,
        max_parallel: int | None = None,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_id,
        on_event: Callable[[Event, engine.RunState], None] | None = None,
        cache: Any = None,
        replanner: Replanner | None = None,
        replayer: Any = None,
        lease_every: float = 5.0,
        limits: Limits | None = None,
        eval_timeout: float = EVAL_TIMEOUT,
        secrets: SecretValues = NO_SECRETS,
        settings: Any = None,
    ) -> None:
        """``max_parallel``: attempts running at once. None (the default): up to
        ``AUTO_PARALLEL`` at once, of which up to ``AUTO_THREADS`` attempts of plain-function
        tools (each holds a thread; async tools hold none). A number bounds both.

        ``replanner`` (``lifecycle.Replanner``) revises the plan when a step with
        ``on_failure: replan`` fails for good (the CLI wires the planner's model).

        ``replayer`` (``executors.replay.Replayer``): this run replays a recorded one — recorded
        outcomes and model calls are served, every attempt is compared, retry waits skipped.

        ``lease_every``: seconds between renewals of the run's lease; a run whose lease was not
        renewed for 3 of them is ``abandoned`` (its process is gone) and may be resumed once.

        ``limits.output_bytes``: an attempt's largest output, as JSON (default ``Limits()``).

        ``eval_timeout`` (DAGWRIGHT_EVAL_TIMEOUT): seconds for resolving a step's arguments, and
        for its checks, when the step has no ``timeout:`` (``runner.Attempt``).

        ``secrets`` (``Settings.step_secrets()``): what ``${{ secrets.NAME }}`` reads; a run
        naming another is refused when it starts. Their values are never recorded: the store
        redacts them (wrapped when it did not already).

        ``settings`` (the caller's ``Settings``, read at its edge): handed to the tools
        (``ToolContext.settings``: the default model, where ``retrieve`` finds indexes);
        None: a tool reads the environment's (``settings.tool_settings``)."""
        if max_parallel is not None and max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.settings = settings
        self.secrets = secrets
        store = redacting(store, secrets.redaction_forms())
        self.store = store
        self.registry = registry or default_registry
        self.max_parallel = max_parallel or AUTO_PARALLEL
        self.max_threads = max_parallel or AUTO_THREADS
        self.clock = clock
        self.id_factory = id_factory
        self.on_event = on_event
        self.cache = cache if cache is not None else StoreCache(store)
        self.replanner = replanner
        self.replayer = replayer
        self.lease_every = lease_every
        self.limits = limits or Limits()
        self.eval_timeout = eval_timeout
        self._current: LocalRun | None = None

    def run(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        source: str | None = None,
        prelude: list[dict[str, Any]] | None = None,
        reused: dict[str, dict[str, Any]] | None = None,
        lineage: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> RunResult:
        """Run to the end. Ctrl-C cancels the run (recorded) and raises KeyboardInterrupt.

        A workflow with ``concurrency:`` waits (``queued``) until its key has a free slot
        (``executors.admission``); ``priority`` orders it among the runs waiting there.

        ``prelude``: model calls that made the plan (``dagwright run --task``), recorded at the
        start of the run's trace as ``model_call`` events.

        ``reused`` and ``lineage``: a derived run (``executors.lineage``): the steps whose
        recorded outputs it reuses without running them, and its parent run."""
        return asyncio.run(
            self.run_async(
                workflow,
                inputs,
                run_id=run_id,
                source=source,
                prelude=prelude,
                reused=reused,
                lineage=lineage,
                priority=priority,
            )
        )

    async def run_async(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        source: str | None = None,
        prelude: list[dict[str, Any]] | None = None,
        reused: dict[str, dict[str, Any]] | None = None,
        lineage: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> RunResult:
        names = reused_stand_ins(workflow, self.secrets, reused or {})  # reused: not called
        issues = validate(workflow, self.registry, secrets=names)
        if issues:
            raise PlanError(issues)
        resolved = resolve_inputs(workflow, dict(inputs or {}))  # defaults filled, types checked
        new = NewRun(
            workflow,
            resolved,
            run_id or self.id_factory(),
            source=source,
            prelude=prelude or (),
            reused=reused or {},
            lineage=lineage,
        )
        run = LocalRun(self, Plan.from_workflow(workflow), new)
        run.priority = priority
        self._current = run
        try:
            with lease(self.store, new.run_id, every=self.lease_every, clock=self.clock):
                return await run.execute()
        finally:
            self._current = None

    def cancel(self) -> None:
        """Cancel the current run from another thread (or a signal handler)."""
        run = self._current
        if run is not None and run.loop is not None:
            run.loop.call_soon_threadsafe(run.cancel_requested.set)


__all__ = ["AUTO_PARALLEL", "AUTO_THREADS", "LocalExecutor"]
