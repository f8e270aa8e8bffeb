"""The API's events and its stream when the run ends between the read of its events and the read
of its status: the last events, ``run_finished`` included, are still sent (seen in CI: a stream
that ended at ``step_finished``). The race is made certain by a store that hides the run's last
event from one read, as a read that lands just before the run ends sees it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagwright.api.runtimes import open_service
from dagwright.api.schemas import SubmitRun
from dagwright.api.service import RunService
from dagwright.api.stream import trace_events
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.store import TraceStore
from dagwright.settings import Settings

WORKFLOW = """\
name: short
steps:
  - id: a
    uses: echo
    with: {x: 1}
output: ${{ steps.a.output }}
"""


class EndsAfterOneRead:
    """The trace store, except that its first read of events after ``after`` misses the run's
    last event: the run ended just after that read."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        self.reads += 1
        seen = self.store.events(run_id, after)
        return [e for e in seen if e.type != ev.RUN_FINISHED] if self.reads == 1 else seen


@pytest.fixture
def ended(tmp_path: Path) -> Iterator[tuple[RunService, str, int]]:
    """A service, a run of it that succeeded, and the ``seq`` just before its ``run_finished``."""
    service = open_service(Settings(db=str(tmp_path / "trace.db")))
    try:
        run_id = service.submit(SubmitRun(workflow_yaml=WORKFLOW), None).run_id
        for _ in range(600):
            trace = service.store.events(run_id)
            if trace and trace[-1].type == ev.RUN_FINISHED:
                break
            time.sleep(0.05)
        assert trace[-1].type == ev.RUN_FINISHED, [e.type for e in trace]
        yield service, run_id, trace[-2].seq
    finally:
        service.close()


def test_events_read_just_before_the_run_ends_still_reach_run_finished(
    ended: tuple[RunService, str, int],
) -> None:
    service, run_id, before_last = ended
    service.store = EndsAfterOneRead(service.store)  # type: ignore[assignment]
    page = service.events(run_id, before_last, 1000)
    assert [e["type"] for e in page["events"]] == [ev.RUN_FINISHED]
    assert page["finished"] is True and page["last_seq"] == before_last + 1


def test_finished_is_false_while_more_events_than_the_limit_remain(
    ended: tuple[RunService, str, int],
) -> None:
    service, run_id, before_last = ended
    page = service.events(run_id, 0, 2)
    assert len(page["events"]) == 2 and page["finished"] is False
    rest = service.events(run_id, page["last_seq"], 1000)
    assert rest["events"][-1]["type"] == ev.RUN_FINISHED and rest["finished"] is True


def test_the_stream_sends_run_finished_when_the_run_ends_between_two_reads(
    ended: tuple[RunService, str, int],
) -> None:
    service, run_id, before_last = ended
    service.store = EndsAfterOneRead(service.store)  # type: ignore[assignment]

    async def streamed() -> list[str]:
        return [m["event"] async for m in trace_events(service, run_id, before_last)]

    assert asyncio.run(streamed()) == [ev.RUN_FINISHED]


class CountsReads:
    """The trace store, noting where each read of a run's events starts."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.reads_from: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        self.reads_from.append(after)
        return self.store.events(run_id, after)


def test_an_idle_poll_reads_only_the_events_after_the_last_one_seen(
    ended: tuple[RunService, str, int],
) -> None:
    """Whether the run has ended comes from its own events (``TraceStore.summary``), not from a
    fold of its whole trace: each idle poll of a stream following a large run read it all."""
    service, run_id, before_last = ended
    counting = CountsReads(service.store)
    service.store = counting  # type: ignore[assignment]
    last = before_last + 1
    page = service.events(run_id, last, 1000)
    assert page["events"] == [] and page["finished"] is True
    assert counting.reads_from == [last, last], "never the whole trace (from 0)"
