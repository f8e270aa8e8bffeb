"""How a local run records (``executors.local``): events are applied to the run's state at once
and appended to the trace store in one transaction per turn of the event loop (group commit);
``durable`` waits until they are stored. The base of ``run.LocalRun``, which sets the state
declared here; its attempts (``attempts.Attempts``) and its loop record through these.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dagwright.executors import engine
from dagwright.executors.engine.events import Event
from dagwright.planner.plan import Plan

if TYPE_CHECKING:
    from dagwright.executors.local.executor import LocalExecutor


class Recording:
    """A local run's recording: its state, and the events on their way to the store."""

    # set by LocalRun.__init__ (LocalRun.execute: the loop and its thread)
    x: LocalExecutor
    run_id: str
    state: engine.RunState
    loop: asyncio.AbstractEventLoop | None
    loop_thread: int
    failing: asyncio.Event
    settled: asyncio.Event
    buffer: list[Event]
    waiters: list[asyncio.Future[None]]
    flush_scheduled: bool
    arriving: int
    store_error: BaseException | None

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


__all__ = ["Recording"]
