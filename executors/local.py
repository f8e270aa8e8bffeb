"""The local executor (the embedded default): the engine's loop in one process.

Steps start the moment their last dependency succeeds; at most ``max_parallel`` attempts run at
once (async tools on the event loop, plain functions in a thread pool). Every fact is appended to
the trace store before the in-memory state follows it, so the trace is always the truth.

Timeouts stop *waiting*: an async tool is cancelled; a plain function, a slow expression or a
slow check keeps running in its thread until it returns (Python cannot kill a thread), and its
late result is discarded. A step's ``timeout:`` covers its whole attempt: resolving its
arguments, the tool and the checks (``runner.Attempt``).
Cancellation (Ctrl-C, or ``cancel()``) records every running attempt and unfinished step as
cancelled and finishes the run as ``cancelled``, so the trace stays consistent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn

from dagwright.agents.cache import StoreCache
from dagwright.errors import PlanError
from dagwright.executors import admission, engine
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import Outcome
from dagwright.executors.lifecycle import (
    NewRun,
    Replanner,
    Replanning,
    lease,
    new_id,
    open_run,
    settle_cache,
    tool_context,
)
from dagwright.executors.runner import EVAL_TIMEOUT, Attempt
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

ADMISSION_POLL = 0.2
"""Seconds between a queued local run's tries to be admitted (``concurrency:``)."""

AUTO_PARALLEL = 128
"""Attempts at once when ``max_parallel`` is not set: an async tool's attempt is a coroutine on
the event loop (no thread), so a fan-out runs as wide as its plan (up to this many; a 50-wide
fan-out of 100 ms steps: 1.02 x its critical path, where 8 at once made it 3.04 x)."""
AUTO_THREADS = 32
"""Plain-function tools' attempts at once when ``max_parallel`` is not set: each holds a thread
of the pool while it runs (Python's ``ThreadPoolExecutor`` caps its default at 32 as well)."""


@dataclass(repr=False)
class RunResult:
    run_id: str
    status: str
    output: Any
    error: dict[str, Any] | None
    state: engine.RunState
    store_location: str

    def __repr__(self) -> str:
        # short: asyncio.run formats the result of its task when it restores the SIGINT
        # handler, and a whole state's repr costs seconds for a large plan
        return f"RunResult(run_id={self.run_id!r}, status={self.status!r}, steps={len(self.state.steps)})"


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
        redacts them (wrapped when it did not already)."""
        if max_parallel is not None and max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
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
        run = _Run(self, Plan.from_workflow(workflow), new)
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


class _Run:
    def __init__(self, executor: LocalExecutor, plan: Plan, new: NewRun) -> None:
        self.x = executor
        self.new = new
        self.run_id = new.run_id
        self.state = engine.RunState.initial(plan, new.run_id)
        self.replanning = Replanning(executor.replanner, executor.registry)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.queued: deque[str] = deque()  # scheduled, waiting for a free slot to start
        self.sleeping = 0  # tasks waiting out a retry's delay (they hold no slot)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cancel_requested = asyncio.Event()
        self.settled = asyncio.Event()
        self.sem = asyncio.Semaphore(executor.max_parallel)
        self.threads = asyncio.Semaphore(executor.max_threads)  # plain-function tools' attempts
        self.cancelled = False
        self.replan_problem: str | None = None
        self.buffer: list[Event] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.flush_scheduled = False
        self.arriving = 0  # steps dispatched in this turn whose task has not started yet
        self.store_error: BaseException | None = None
        self.priority = 0  # among the runs waiting for the same concurrency key
        self.waiting_for_cancel = 0  # replay: attempts stopped where the recording was cancelled
        self.failing = asyncio.Event()  # set once a step failed the run (state.failing)
        self.waiting_for_failure = 0  # replay: steps stopped where the recording stopped them
        self.pool = ThreadPoolExecutor(
            max_workers=executor.max_threads + 4, thread_name_prefix="dagwright-step"
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

    @property
    def plan(self) -> Plan:
        """The plan in force (the run's, or its latest revision)."""
        return self.state.current_plan

    def emit(self, *events: Event) -> None:
        for e in events:
            self.state = engine.apply(self.state, e)
        if self.state.failing is not None:
            self.failing.set()  # steps waiting to retry stop waiting (and do not retry)
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
    async def execute(self) -> RunResult:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        details = {"max_parallel": self.x.max_parallel, "max_threads": self.x.max_threads}
        opened = open_run(self.x.store, self.new, executor="local", clock=self.x.clock,
                          details=details)  # fmt: skip
        for e in opened:  # recorded with the run already
            self.state = engine.apply(self.state, e)
        if self.x.on_event is not None:
            for e in opened:
                self.x.on_event(e, self.state)
        try:
            await self.wait_for_a_slot()
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

    async def wait_for_a_slot(self) -> None:
        """A workflow with ``concurrency:``: queue the run, and wait until it is admitted (or
        cancelled). Admission is tried here, and by every run of the key that ends."""
        store, clock = self.x.store, self.x.clock
        queued = admission.queue(store, self.run_id, self.new.workflow, self.new.inputs,
                                 priority=self.priority, now=clock())  # fmt: skip
        if not queued:
            return
        self.emit(*queued)
        self.flush()
        key, limit = queued[0].data["key"], queued[0].data["limit"]
        loop = asyncio.get_running_loop()
        while not self.cancel_requested.is_set():
            await loop.run_in_executor(None, admission.admit, store, key, limit, clock)
            if await loop.run_in_executor(None, admission.admitted, store, self.run_id):
                # recorded by whoever admitted it: follow it in this process's state
                admitted = self.event(ev.RUN_ADMITTED, key=key)
                self.state = engine.apply(self.state, admitted)
                if self.x.on_event is not None:
                    self.x.on_event(admitted, self.state)
                return
            try:
                await asyncio.wait_for(self.cancel_requested.wait(), ADMISSION_POLL)
            except TimeoutError:
                pass

    async def replan(self) -> bool:
        """A step failed with ``on_failure: replan``: ask the replanner for a revised plan and go
        on under it, keeping the succeeded steps it leaves unchanged. False: the run fails."""
        if not self.replanning.wanted(self.state):
            return False
        await self.durable()
        state, clock = self.state, self.x.clock
        loop = asyncio.get_running_loop()
        revision = await loop.run_in_executor(None, self.replanning.revise, state, clock)
        self.emit(*revision.events)  # the state moves to the revised plan
        self.flush()
        if revision.problem is not None:
            self.replan_problem = revision.problem
            return False
        self.settled.clear()
        self.dispatch()
        return True

    def dispatch(self) -> None:
        ready = engine.ready_steps(self.plan, self.state)
        if ready:
            self.emit(*(self.event(ev.STEP_SCHEDULED, sid, 1) for sid in ready))
            self.queued.extend(ready)
        self.start_queued()
        if not self.tasks and not self.queued and engine.is_settled(self.state):
            self.settled.set()
        self.cancel_when_all_wait()
        self.release_waits_for_failure()

    def start_queued(self) -> None:
        """Start the scheduled steps' tasks while slots are free (at most ``max_parallel``
        attempts at once): a fan-out of 50,000 steps does not make 50,000 tasks wait on the
        semaphore (whose every acquire then scans its waiters)."""
        while self.queued and len(self.tasks) - self.sleeping < self.x.max_parallel:
            sid = self.queued.popleft()
            self.arriving += 1
            self.tasks[sid] = asyncio.create_task(self.drive(sid), name=f"dagwright:{sid}")

    async def drive(self, sid: str) -> None:
        self.arriving -= 1
        step = self.plan.steps[sid]
        tool = self.x.registry.get(step.uses)
        attempt = 0
        attempt_id = self.x.id_factory()
        try:
            while True:
                attempt += 1
                async with self.sem, nullcontext() if tool.is_async else self.threads:
                    if await self.stopped(sid, attempt):  # the run is failing: no new attempt
                        break
                    outcome = await self.attempt(sid, attempt, attempt_id, tool)
                await self.replayed_stop(sid, attempt)
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
                    failing=self.state.failing,
                )
                attempt_id = next_id
                self.emit(*events)
                if delay is None:
                    break
                await self.durable()
                if self.x.replayer is None:  # a replay does not wait to retry
                    self.sleeping += 1  # its slot goes to a queued step meanwhile
                    self.start_queued()
                    try:
                        await self.backoff(delay)
                    finally:
                        self.sleeping -= 1
        except asyncio.CancelledError:
            self.emit(*decisions.cancel_events(self.state, sid, self.x.clock()))
            raise
        finally:
            self.tasks.pop(sid, None)
        self.dispatch()

    # -- once the run is failing, no new attempt starts ------------------------------------------
    async def backoff(self, delay: float) -> None:
        """Wait ``delay`` before a retry, or less: until the run is failing."""
        try:
            await asyncio.wait_for(self.failing.wait(), delay)
        except TimeoutError:
            pass

    async def stopped(self, sid: str, attempt: int) -> bool:
        """Whether the step must not start ``attempt``, the run failing (its stop recorded).
        A replay stops where its recording stopped: it waits there for the run to fail."""
        replay = self.x.replayer
        if replay is not None and replay.stopped_after(self.state.revisions, sid, attempt - 1):
            await self.wait_for_failing()
        if self.state.failing is None:
            return False
        self.emit(*decisions.stop_events(self.state, sid, self.x.clock()))
        return True

    async def replayed_stop(self, sid: str, attempt: int) -> None:
        """A replay of an attempt that its recording did not retry because the run was failing
        by then: wait for the run to fail before deciding, as the recording did."""
        replay = self.x.replayer
        rev = self.state.revisions
        if replay is not None and replay.not_retried(rev, sid, attempt):
            await self.wait_for_failing()

    async def wait_for_failing(self) -> None:
        """Wait until the run is failing; or until every step in flight waits so (the replay
        diverged elsewhere: then go on, the divergence is reported)."""
        if self.state.failing is not None:
            return
        self.waiting_for_failure += 1
        self.release_waits_for_failure()
        try:
            await self.failing.wait()
        finally:
            self.waiting_for_failure -= 1

    def release_waits_for_failure(self) -> None:
        if self.waiting_for_failure and self.waiting_for_failure == len(self.tasks):
            self.failing.set()

    async def attempt(self, sid: str, attempt: int, attempt_id: str, tool: Any) -> Outcome:
        run = Attempt(
            self.plan.steps[sid],
            engine.step_context(self.plan, self.state, sid),
            number=attempt,
            eval_timeout=self.x.eval_timeout,
            pool=self.pool,
            max_output_bytes=self.x.limits.output_bytes,
            secrets=self.x.secrets,
        )  # the attempt's time budget starts: resolving, the tool and the checks count
        args, failed = await run.resolve()
        shown = run.redacted(args)  # as recorded, and compared in a replay: no secret
        replay = self.x.replayer
        rev = self.state.revisions
        if replay is not None and replay.cancelled_before(rev, sid, attempt):
            await self.wait_for_cancel()
        self.emit(self.event(ev.ATTEMPT_STARTED, sid, attempt, attempt_id=attempt_id, inputs=shown))
        if replay is None:
            return failed or await self.call(sid, attempt, tool, args, run)
        if not failed and replay.cancelled_during(rev, sid, attempt, shown):
            for d in replay.pending():
                self.emit(Event(ev.REPLAY_DIVERGED, self.run_id, self.x.clock(), sid, attempt,
                                d.as_dict()))  # fmt: skip
            await self.wait_for_cancel()
        outcome = failed or replay.served(rev, sid, attempt, tool, shown)
        if outcome is None:
            outcome = await self.call(
                sid, attempt, tool, args, run, replay.models(rev, sid, attempt)
            )
        for d in replay.observe(rev, sid, attempt, shown, outcome):
            at = self.x.clock()
            self.emit(Event(ev.REPLAY_DIVERGED, self.run_id, at, sid, attempt, d.as_dict()))
        return outcome

    async def call(
        self, sid: str, attempt: int, tool: Any, args: Any, run: Attempt, models: Any = None
    ) -> Outcome:
        """Call the tool and verify (``models``: recorded model calls to serve, in a replay)."""
        await self.durable()  # the attempt is on record before the tool is called
        emit = self.tool_emitter(sid, attempt)
        ctx = tool_context(self.state, sid, attempt, emit=emit, cache=self.x.cache, replay=models,
                           tools=self.x.registry)  # fmt: skip
        outcome = await run.execute(tool, args, ctx)
        settle_cache(ctx, outcome)
        return outcome

    async def wait_for_cancel(self) -> NoReturn:
        """A replay reached where its recording was cancelled (an attempt running, or a step
        waiting to start it): wait here as the recording did. Once every step in flight waits
        so, the replay is cancelled as the recording was."""
        self.waiting_for_cancel += 1
        self.cancel_when_all_wait()
        while True:
            await asyncio.sleep(3600)

    def cancel_when_all_wait(self) -> None:
        if self.waiting_for_cancel and self.waiting_for_cancel == len(self.tasks):
            self.cancel_requested.set()

    async def cancel_all(self) -> None:
        self.state.halted = True  # nothing new is scheduled meanwhile
        while self.queued:  # scheduled steps that never got a slot
            sid = self.queued.popleft()
            self.emit(*decisions.cancel_events(self.state, sid, self.x.clock()))
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.state.halted = True
        self.cancelled = True

    def finish(self) -> RunResult:
        events = decisions.conclude(
            self.plan,
            self.state,
            self.x.clock(),
            cancelled=self.cancelled,
            replan_problem=self.replan_problem,
        )
        self.emit(*events)
        self.flush()
        if self.store_error is not None:
            raise self.store_error
        admission.release(self.x.store, self.state, self.x.clock)  # its slot, if it holds one
        state = self.state
        return RunResult(
            self.run_id, state.status, state.output, state.error, state, self.x.store.location()
        )


__all__ = ["LocalExecutor", "RunResult"]
