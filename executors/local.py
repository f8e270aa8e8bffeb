"""The local executor (the embedded default): the engine's loop in one process.

Steps start the moment their last dependency succeeds; at most ``max_parallel`` attempts run at
once (async tools on the event loop, plain functions in a thread pool). Every fact is appended to
the trace store before the in-memory state follows it, so the trace is always the truth.

Timeouts stop *waiting*: an async tool is cancelled; a plain function keeps running in its
thread until it returns (Python cannot kill a thread), and its late result is discarded.
Cancellation (Ctrl-C, or ``cancel()``) records every running attempt and unfinished step as
cancelled and finishes the run as ``cancelled``, so the trace stays consistent.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dagwright.agents.cache import StoreCache
from dagwright.errors import PlanError
from dagwright.executors import decisions, engine
from dagwright.executors import events as ev
from dagwright.executors.events import Event
from dagwright.executors.runner import (
    Outcome,
    execute_attempt,
)
from dagwright.executors.store.base import RunRecord, TraceStore, lineage_fields
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.planner.validate import resolve_inputs, validate
from dagwright.tools.registry import ToolContext, ToolRegistry, default_registry


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RunResult:
    run_id: str
    status: str
    output: Any
    error: dict[str, Any] | None
    state: engine.RunState
    store_location: str


class LocalExecutor:
    def __init__(
        self,
        store: TraceStore,
        registry: ToolRegistry | None = None,
        *,
        max_parallel: int = 8,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_id,
        on_event: Callable[[Event, engine.RunState], None] | None = None,
        cache: Any = None,
        replanner: Callable[..., Workflow] | None = None,
        replayer: Any = None,
    ) -> None:
        """``replanner(workflow, outputs, failure, record) -> Workflow`` revises the plan when a
        step with ``on_failure: replan`` fails for good (the CLI wires the planner's model).

        ``replayer`` (``executors.replay.Replayer``): this run replays a recorded one — recorded
        outcomes and model calls are served, every attempt is compared, retry waits skipped."""
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.store = store
        self.registry = registry or default_registry
        self.max_parallel = max_parallel
        self.clock = clock
        self.id_factory = id_factory
        self.on_event = on_event
        self.cache = cache if cache is not None else StoreCache(store)
        self.replanner = replanner
        self.replayer = replayer
        self._current: _Run | None = None

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
    ) -> RunResult:
        """Run to the end. Ctrl-C cancels the run (recorded) and raises KeyboardInterrupt.

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
    ) -> RunResult:
        issues = validate(workflow, self.registry)
        if issues:
            raise PlanError(issues)
        resolved = resolve_inputs(workflow, dict(inputs or {}))  # defaults filled, types checked
        run = _Run(self, Plan.from_workflow(workflow), run_id or self.id_factory(), resolved)
        self._current = run
        try:
            return await run.execute(source, prelude or [], reused or {}, lineage)
        finally:
            self._current = None

    def cancel(self) -> None:
        """Cancel the current run from another thread (or a signal handler)."""
        run = self._current
        if run is not None and run.loop is not None:
            run.loop.call_soon_threadsafe(run.cancel_requested.set)


class _Run:
    def __init__(
        self, executor: LocalExecutor, plan: Plan, run_id: str, inputs: dict[str, Any]
    ) -> None:
        self.x = executor
        self.plan = plan
        self.run_id = run_id
        self.inputs = inputs
        self.state = engine.RunState.initial(plan, run_id)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cancel_requested = asyncio.Event()
        self.settled = asyncio.Event()
        self.sem = asyncio.Semaphore(executor.max_parallel)
        self.cancelled = False
        self.buffer: list[Event] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.flush_scheduled = False
        self.arriving = 0  # steps dispatched in this turn whose task has not started yet
        self.store_error: BaseException | None = None
        self.pool = ThreadPoolExecutor(
            max_workers=executor.max_parallel + 4, thread_name_prefix="dagwright-step"
        )

    # -- recording -----------------------------------------------------------------------------
    # Group commit: events emitted in the same turn of the loop are appended in one transaction
    # (a chain costs one commit per step; a fan-out of 100 one commit for all of their starts).
    # The state follows each event at once (scheduling reads it), but nothing outside the process
    # happens before the events that lead to it are durable: a tool is called only after its
    # `attempt_started` (and everything before it) is in the store, and a run ends with a flush.
    def event(
        self, kind: str, step: str | None = None, attempt: int | None = None, **data: Any
    ) -> Event:
        return Event(kind, self.run_id, self.x.clock(), step, attempt, data)

    def emit(self, *events: Event) -> None:
        for e in events:
            engine.apply(self.plan, self.state, e)
        self.buffer.extend(events)
        if not self.flush_scheduled and self.loop is not None:
            self.flush_scheduled = True
            # two hops: tasks woken in this turn get to add their events to the same commit
            self.loop.call_soon(self.loop.call_soon, self.flush)

    def tool_emitter(
        self, sid: str | None, attempt: int | None
    ) -> Callable[[str, dict[str, Any]], None]:
        """Facts a tool reports (model calls), from the loop or from a worker thread."""
        loop = self.loop
        assert loop is not None

        def emit(kind: str, data: dict[str, Any]) -> None:
            event = Event(kind, self.run_id, self.x.clock(), sid, attempt, data)
            if threading.get_ident() == self.loop_thread:
                self.emit(event)
            else:
                loop.call_soon_threadsafe(self.emit, event)

        return emit

    def flush(self) -> None:
        self.flush_scheduled = False
        events, self.buffer = self.buffer, []
        waiters, self.waiters = self.waiters, []
        try:
            stored = (self.x.store.append(self.run_id, events) or []) if events else []
        except Exception as exc:  # noqa: BLE001 - the run cannot go on without its trace
            self.store_error = exc
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            self.settled.set()
            return
        for w in waiters:
            if not w.done():
                w.set_result(None)
        if self.x.on_event is not None:
            for e in stored:
                self.x.on_event(e, self.state)

    async def durable(self) -> None:
        """Wait until every event emitted so far is in the trace store.

        When steps dispatched in this turn are still on their way here, wait for the shared
        flush (one commit for all of them); the last one to arrive flushes at once."""
        if self.store_error is not None:
            raise self.store_error
        if not self.buffer:
            return
        if self.arriving == 0:
            self.flush()
            if self.store_error is not None:
                raise self.store_error
            return
        waiter = self.loop.create_future() if self.loop else None
        assert waiter is not None
        self.waiters.append(waiter)
        await waiter

    # -- the loop ------------------------------------------------------------------------------
    async def execute(
        self,
        source: str | None,
        prelude: list[dict[str, Any]],
        reused: dict[str, dict[str, Any]],
        lineage: dict[str, Any] | None,
    ) -> RunResult:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        wf = self.plan.workflow
        self.x.store.create_run(
            RunRecord(
                run_id=self.run_id,
                workflow_name=wf.name,
                created_at=self.x.clock(),
                workflow=wf.to_data(),
                inputs=self.inputs,
                source=source,
                executor="local",
                **lineage_fields(lineage),
            )
        )
        started = {"inputs": self.inputs, "executor": "local", "max_parallel": self.x.max_parallel}
        self.emit(
            self.event(ev.RUN_STARTED, **started, **({"lineage": lineage} if lineage else {})),
            *(
                Event(ev.MODEL_CALL, self.run_id, self.x.clock(), None, None, call)
                for call in prelude
            ),
            *decisions.reused_events(self.run_id, self.x.clock(), reused),
        )
        try:
            self.dispatch()
            while True:
                waiters = [
                    asyncio.ensure_future(self.settled.wait()),
                    asyncio.ensure_future(self.cancel_requested.wait()),
                ]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
                if self.store_error is not None:
                    await self.cancel_all()
                    raise self.store_error
                if self.cancel_requested.is_set() and not self.settled.is_set():
                    await self.cancel_all()
                    break
                if not (self.state.replan_for and await self.replan()):
                    break
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the main task
            await self.cancel_all()
            self.finish()
            raise
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
        return self.finish()

    async def replan(self) -> bool:
        """A step failed with ``on_failure: replan``: ask the replanner for a revised plan and go
        on under it, keeping the succeeded steps it leaves unchanged. False: the run fails."""
        failed = self.state.replan_for
        workflow = self.plan.workflow
        if (
            self.x.replanner is None
            or failed is None
            or self.state.revisions >= workflow.max_replans
        ):
            return False
        outputs = decisions.succeeded_outputs(self.state)
        failure = {"step": failed, "error": self.state.steps[failed].error}
        await self.durable()
        record = self.tool_emitter(None, None)

        def ask() -> Workflow:
            assert self.x.replanner is not None
            return self.x.replanner(
                workflow, outputs, failure, lambda c: record("model_call", c.as_dict())
            )

        try:
            revised = await asyncio.get_running_loop().run_in_executor(None, ask)
        except Exception as exc:  # noqa: BLE001 - the run fails with the step's own error
            self.state.steps[failed].reason = f"replanning failed: {exc}"
            return False
        issues = validate(revised, self.x.registry)
        if issues:
            return False
        kept = decisions.kept_steps(workflow, revised, outputs)
        revision = self.event(
            ev.PLAN_REVISED,
            revision=self.state.revisions + 1,
            workflow=revised.to_data(),
            kept=kept,
            failed_step=failed,
            error=failure["error"],
        )
        self.buffer.append(revision)  # recorded as is; the state moves to the revised plan
        self.flush()
        self.plan = Plan.from_workflow(revised)
        self.state = engine.revise(self.state, self.plan, kept)
        self.settled.clear()
        self.dispatch()
        return True

    def dispatch(self) -> None:
        ready = engine.ready_steps(self.plan, self.state)
        if ready:
            self.emit(*(self.event(ev.STEP_SCHEDULED, sid, 1) for sid in ready))
            self.arriving += len(ready)
            for sid in ready:
                self.tasks[sid] = asyncio.create_task(self.drive(sid), name=f"dagwright:{sid}")
        if not self.tasks and engine.is_settled(self.state):
            self.settled.set()

    async def drive(self, sid: str) -> None:
        self.arriving -= 1
        step = self.plan.steps[sid]
        tool = self.x.registry.get(step.uses)
        attempt = 0
        attempt_id = self.x.id_factory()
        try:
            while True:
                attempt += 1
                async with self.sem:
                    outcome = await self.attempt(sid, attempt, attempt_id, tool)
                next_id = self.x.id_factory()
                events, delay = decisions.outcome_events(
                    self.plan,
                    self.run_id,
                    sid,
                    attempt,
                    attempt_id,
                    outcome,
                    self.x.clock(),
                    next_id,
                )
                attempt_id = next_id
                self.emit(*events)
                if delay is None:
                    break
                await self.durable()
                if self.x.replayer is None:  # a replay does not wait to retry
                    await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.emit(*decisions.cancel_events(self.state, sid, self.x.clock()))
            raise
        finally:
            self.tasks.pop(sid, None)
        self.dispatch()

    async def attempt(self, sid: str, attempt: int, attempt_id: str, tool: Any) -> Outcome:
        args, failed = decisions.resolve_args(self.plan, self.state, sid)
        self.emit(self.event(ev.ATTEMPT_STARTED, sid, attempt, attempt_id=attempt_id, inputs=args))
        replay = self.x.replayer
        if replay is None:
            return failed or await self.call(sid, attempt, tool, args)
        rev = self.state.revisions
        outcome = failed or replay.served(rev, sid, attempt, tool, args)
        if outcome is None:
            outcome = await self.call(sid, attempt, tool, args, replay.models(rev, sid, attempt))
        for d in replay.observe(rev, sid, attempt, args, outcome):
            at = self.x.clock()
            self.emit(Event(ev.REPLAY_DIVERGED, self.run_id, at, sid, attempt, d.as_dict()))
        return outcome

    async def call(
        self, sid: str, attempt: int, tool: Any, args: Any, models: Any = None
    ) -> Outcome:
        """Call the tool (``models``: recorded model calls to serve, in a replay)."""
        step = self.plan.steps[sid]
        await self.durable()  # the attempt is on record before the tool is called
        ctx = ToolContext(
            run_id=self.run_id,
            step_id=sid,
            attempt=attempt,
            previous_failure=decisions.previous_failure(self.state, sid, attempt),
            emit=self.tool_emitter(sid, attempt),
            cache=self.x.cache if step.cache and models is None else None,
            replay=models,
        )
        context = engine.step_context(self.plan, self.state, sid)
        return await execute_attempt(tool, step, args, ctx, context, pool=self.pool)

    async def cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.state.halted = True
        self.cancelled = True

    def finish(self) -> RunResult:
        events = decisions.conclude(self.plan, self.state, self.x.clock(), cancelled=self.cancelled)
        self.emit(*events)
        self.flush()
        if self.store_error is not None:
            raise self.store_error
        state = self.state
        return RunResult(
            self.run_id, state.status, state.output, state.error, state, self.x.store.location()
        )


__all__ = ["LocalExecutor", "RunResult", "new_id"]
