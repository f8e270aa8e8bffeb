"""Recovery on Celery workers: heartbeats for running attempts, and the sweep that sends again
what a stalled run waits for (a worker lost mid-step, a message lost with the broker)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dagwright.errors import DagwrightError, PlanError
from dagwright.executors import admission, engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event

if TYPE_CHECKING:
    from dagwright.executors.distributed.dispatch import Dispatch
    from dagwright.executors.distributed.engine import Engine


def sweep(eng: Engine, *, limit: int = 200, restarted: bool = False) -> list[Dispatch]:
    """Send again what a stalled run of this engine's executor is waiting for; end runs that
    can end. ``restarted``: this process is the only one running the executor's attempts and
    has just started (the API server's own threads), so every dispatch not started yet was lost
    with the previous process and is sent again at once; running attempts are sent again when
    their heartbeats lapse (``Timing.lost_after``), as on Celery."""
    out: list[Dispatch] = []
    for run_id in admission.reconcile(eng.store, lambda r: eng.state(r)[2].status, eng.clock):
        out += eng.advance_own(run_id)
    for summary in eng.store.list_runs(status=engine.RUNNING, limit=limit):
        if summary.record.executor != eng.executor:
            continue  # a local run (it holds its own lease), or another driver's
        try:
            out += _sweep_run(eng, summary.record.run_id, restarted)
        except DagwrightError:
            continue
    return out


def _sweep_run(eng: Engine, run_id: str, restarted: bool = False) -> list[Dispatch]:
    try:
        eng.plan_of(run_id)
    except PlanError as exc:  # its tools cannot load here: it fails, rather than stall
        return eng.refuse(run_id, exc)
    out = eng.advance(run_id)
    with eng.lock:
        return out + _resend(eng, run_id, restarted)


def _resend(eng: Engine, run_id: str, restarted: bool = False) -> list[Dispatch]:
    out: list[Dispatch] = []
    plan, _, state = eng.state(run_id)
    if state.status in engine.FINAL:
        return out
    now = eng.clock()
    beats = eng.store.heartbeats(run_id)
    schedules = latest_schedules(eng.store.events(run_id))
    for sid, step in state.steps.items():
        if step.status not in (engine.SCHEDULED, engine.RUNNING) or sid not in schedules:
            continue
        at, not_before, attempt = schedules[sid]
        if restarted and step.status == engine.SCHEDULED:
            reason = "its dispatch was lost when the server stopped"
            d = eng._dispatch(plan, run_id, sid, attempt=attempt, reason=reason)
            out += [d] if d else []
            continue  # a running attempt is sent again once its heartbeats lapse (below)
        if step.status == engine.SCHEDULED:
            if now - max(at, not_before) > eng.timing.redispatch_after:
                reason = f"not started {now - at:.0f}s after it was dispatched"
                d = eng._dispatch(plan, run_id, sid, attempt=attempt, reason=reason)
                out += [d] if d else []
            continue
        last = step.attempts[-1]
        beat = max(beats.get((sid, last.number), 0.0), last.started_at or 0.0)
        if attempt == last.number:
            beat = max(beat, at)
        if now - beat > eng.timing.lost_after:
            reason = f"no heartbeat for {now - beat:.0f}s: its worker was lost"
            d = eng._dispatch(plan, run_id, sid, attempt=last.number, reason=reason)
            out += [d] if d else []
    return out


class HeartbeatPump:
    """One thread per process beats for every attempt running in it (a thread per attempt
    would cost more than a short step)."""

    def __init__(self, owner: Engine) -> None:
        self.owner = owner
        self.running: dict[int, Dispatch] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @contextmanager
    def beating(self, d: Dispatch) -> Iterator[None]:
        key = id(d)
        with self.lock:
            self.running[key] = d  # attempt_started is the first beat
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._pump, name="dagwright-heartbeat", daemon=True
                )
                self.thread.start()
        try:
            yield
        finally:
            with self.lock:
                self.running.pop(key, None)

    def _pump(self) -> None:
        while True:
            time.sleep(self.owner.timing.heartbeat)
            with self.lock:
                running = list(self.running.values())
            for d in running:
                try:
                    self.owner.store.heartbeat(d.run_id, d.step, d.attempt, self.owner.clock())
                except DagwrightError:
                    pass  # the sweeper may resend the attempt; its finish claim keeps one outcome


def latest_schedules(events: list[Event]) -> dict[str, tuple[float, float, int]]:
    """For each step: when it was last dispatched, not before when, and which attempt."""
    latest: dict[str, tuple[float, float, int]] = {}
    for e in events:
        if e.type == ev.STEP_SCHEDULED and e.step:
            latest[e.step] = (e.at, float(e.data.get("not_before") or e.at), e.attempt or 1)
    return latest


__all__ = ["HeartbeatPump", "latest_schedules", "sweep"]
