"""Server-Sent Events of a run's trace: each event's ``id`` is its ``seq``, so a client that
reconnects with ``Last-Event-ID`` continues after the last event it saw (none lost, none
repeated); the stream ends after ``run_finished``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from dagwright.api.service import RunService
from dagwright.executors.engine import events as ev

POLL_MIN, POLL_MAX = 0.05, 0.5
"""Seconds between reads of the trace while nothing happens (backing off to POLL_MAX)."""


async def trace_events(
    service: RunService, run_id: str, after: int, *, batch: int = 500
) -> AsyncIterator[dict[str, Any]]:
    """The run's events after ``after``, as SSE messages, until the run has ended."""
    pause = POLL_MIN
    while True:
        page = await run_in_threadpool(service.events, run_id, after, batch)
        for event in page["events"]:
            after = event["seq"]
            yield {"id": str(event["seq"]), "event": event["type"], "data": json.dumps(event)}
            if event["type"] == ev.RUN_FINISHED:
                return
        if page["events"]:
            pause = POLL_MIN
            continue
        if page["finished"]:
            return  # ended without a run_finished event after ``after``: nothing more comes
        await asyncio.sleep(pause)
        pause = min(POLL_MAX, pause * 2)


__all__ = ["trace_events"]
