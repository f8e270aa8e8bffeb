"""A local run's attempts (``executors.local``): one attempt of a step on the event loop
(``runner.Attempt`` resolves, calls and verifies; a replay serves or compares what was
recorded), and the waits around it: no new attempt once the run is failing, a retry's backoff,
and a replay stopping or waiting to be cancelled where its recording did. The middle layer of
``run.LocalRun``, whose loop (``drive``, ``dispatch``) calls these.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from dagwright.executors import engine
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import Outcome
from dagwright.executors.lifecycle import settle_cache, tool_context
from dagwright.executors.local.recording import Recording
from dagwright.executors.runner import Attempt


class Attempts(Recording):
    """A local run's attempts, and when none may start."""

    # set by LocalRun.__init__
    tasks: dict[str, asyncio.Task[None]]
    cancel_requested: asyncio.Event
    waiting_for_cancel: int
    waiting_for_failure: int
    pool: ThreadPoolExecutor

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
                           tools=self.x.registry, settings=self.x.settings)  # fmt: skip
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


__all__ = ["Attempts"]
