"""A local run's lease, in the one run lifecycle (``executors.lifecycle``): the local executor
renews it while its process works on the run (``lease``); a run whose lease lapsed is
``abandoned`` (``lease_lapsed``, ``abandoned``, ``seen_status``) and is closed as such once,
when it is resumed (``close_abandoned``). Called by the local executor (``lease``), resume and
fork (``executors.derived``), replay (``abandoned``), the CLI (``lease_lapsed``, ``seen_status``)
and the API (``seen_status``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dagwright.errors import DagwrightError
from dagwright.executors import engine
from dagwright.executors.engine import decisions
from dagwright.executors.store.base import RunRecord, TraceStore

LEASE = ("", 0)
"""The heartbeat key of a local run's lease (Celery attempts beat per step and attempt)."""


def renew_lease(store: TraceStore, run_id: str, at: float) -> None:
    """The local executor's process is alive and working on the run."""
    store.heartbeat(run_id, LEASE[0], LEASE[1], at)


@contextmanager
def lease(
    store: TraceStore, run_id: str, *, every: float, clock: Callable[[], float]
) -> Iterator[None]:
    """Hold a run's lease while the block runs: renewed every ``every`` s by a thread of its
    own, so a busy event loop or a long step does not let it lapse; it lapses only when the
    process is gone."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                renew_lease(store, run_id, clock())
            except DagwrightError:
                pass  # the store is unreachable for a moment: the next beat may succeed
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name="dagwright-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(every + 5)


def lease_lapsed(store: TraceStore, record: RunRecord, now: float, heartbeat: float) -> bool:
    """A local run's lease was not renewed for 3 heartbeats (a live run renews it every
    ``heartbeat`` s): its process was killed or its machine lost."""
    if record.executor != "local":
        return False
    last = store.heartbeats(record.run_id).get(LEASE, record.created_at)
    return decisions.lease_expired(last, now, 3 * heartbeat)


def abandoned(
    store: TraceStore, record: RunRecord, state: engine.RunState, now: float, heartbeat: float
) -> bool:
    """A local run that has not ended and whose process is gone."""
    return state.status not in engine.FINAL and lease_lapsed(store, record, now, heartbeat)


def seen_status(
    store: TraceStore, record: RunRecord, status: str, now: float, heartbeat: float
) -> str:
    """A run's status as people should see it: a running local run whose process is gone is
    ``abandoned`` (closed as such when it is resumed)."""
    if status == engine.RUNNING and lease_lapsed(store, record, now, heartbeat):
        return engine.ABANDONED
    return status


def close_abandoned(
    store: TraceStore,
    state: engine.RunState,
    now: float,
    *,
    resumed_by: str | None,
) -> bool:
    """Close an abandoned run (its in-flight steps cancelled, the run ``abandoned``); False
    when something else ended it first (another resume, or the run itself)."""
    message = "the run's process stopped without finishing it (its lease expired)"
    events = decisions.abandon(
        state.current_plan, state, now, message=message, resumed_by=resumed_by
    )
    return store.append(state.run_id, events, claims=["conclude"]) is not None


__all__ = [
    "LEASE",
    "abandoned",
    "close_abandoned",
    "lease",
    "lease_lapsed",
    "renew_lease",
    "seen_status",
]
