"""One local run's loop (``executors.local``): open the run through the lifecycle, wait for
a slot of its concurrency key, start each step the moment it is ready (at most ``max_parallel``
attempts at once), drive its attempts and retries, replan, cancel, and finish with the run's
result (``RunResult``). ``LocalExecutor.run_async`` makes one per run; what it records goes
through ``recording.Recording`` and each attempt through ``attempts.Attempts``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagwright.executors import admission, engine
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import NewRun, Replanning, open_run
from dagwright.executors.local.attempts import Attempts
from dagwright.planner.plan import Plan

if TYPE_CHECKING:
    from dagwright.executors.local.executor import LocalExecutor

ADMISSION_POLL = 0.2
"""Seconds between a queued local run's tries to be admitted (``concurrency:``)."""


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


class LocalRun(Attempts):
    """One run on the local executor: its state, its steps' tasks and the slots they take."""

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
            await loop.run_in_executor(self.pool, admission.admit, store, key, limit, clock)
            if await loop.run_in_executor(self.pool, admission.admitted, store, self.run_id):
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
        # in the run's pool, not the loop's default executor, which asyncio.run waits for: Ctrl-C
        # while the replanner is asked ends the run without waiting for its answer
        revision = await loop.run_in_executor(self.pool, self.replanning.revise, state, clock)
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


__all__ = ["ADMISSION_POLL", "LocalRun", "RunResult"]
