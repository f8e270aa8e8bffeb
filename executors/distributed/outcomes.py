"""Recording an attempt's outcome once (the claim ``finish:<step>:<attempt>``), with what it
decides in the same transaction: its retry, or the dispatch of the dependents it made ready —
decided on the cached state and written only if nobody wrote meanwhile (``expect_seq``).
Called by ``attempts.execute`` (``Engine.record``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagwright.errors import StaleState
from dagwright.executors import engine
from dagwright.executors.distributed.dispatch import Dispatch
from dagwright.executors.engine import decisions
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import Outcome
from dagwright.planner.plan import Plan

if TYPE_CHECKING:
    from dagwright.executors.distributed.engine import Engine


def record(eng: Engine, plan: Plan, d: Dispatch, outcome: Outcome) -> list[Dispatch]:
    """Record an attempt's outcome once. In the same transaction: its retry, or the
    dispatch of the dependents it made ready (then no separate advance is needed)."""
    next_id = eng.id_factory() if outcome.status != engine.SUCCEEDED else None
    failing = None
    if next_id is not None:  # a failure: no retry once the run is failing
        with eng.lock:
            failing = eng.state(d.run_id)[2].failing
    events, delay = decisions.outcome_events(
        plan, d.run_id, d.step, d.attempt, d.attempt_id, outcome, eng.clock(), next_id,
        failing=failing,
    )  # fmt: skip
    finish = f"finish:{d.step}:{d.attempt}"
    if delay is not None:
        assert next_id is not None  # a retry is decided only for an attempt that failed
        return _retry(eng, d, events, Dispatch(
            d.run_id, d.step, d.attempt + 1, next_id, delay, plan.steps[d.step].timeout
        ))  # fmt: skip
    outcome_events = list(events)
    ready: list[str] = []
    expect: int | None = None
    if outcome.status == engine.SUCCEEDED:
        # Decide on the cached state, and append only if nobody wrote since (compare-and-set
        # on the next seq); when someone did, read the trace and decide again.
        with eng.lock:
            cached = eng._cached(d.run_id)
            if cached is not None:
                expect = cached[1]
                ready = engine.ready_after(plan, cached[0], d.step)

    def with_dispatches(ready: list[str]) -> tuple[list[Event], list[str], list[Dispatch]]:
        """The outcome's events, and the dispatch of each of ``ready``, with their claims."""
        events, claims, dispatches = list(outcome_events), [finish], []
        for sid in ready:
            dispatch, event = eng._schedule(plan, d.run_id, sid, 1)
            events.append(event)
            claims.append(f"dispatch:{sid}:1")
            dispatches.append(dispatch)
        return events, claims, dispatches

    events, claims, dispatches = with_dispatches(ready)
    try:
        stored = eng.store.append(d.run_id, events, claims=claims, expect_seq=expect)
    except StaleState:
        with eng.lock:  # someone wrote meanwhile: decide on the current trace
            _, _, state = eng.state(d.run_id)
            ready = engine.ready_after(plan, state, d.step)
        events, claims, dispatches = with_dispatches(ready)
        stored = eng.store.append(d.run_id, events, claims=claims)
    if stored is None:
        if not dispatches:
            return []  # another delivery of this attempt recorded its outcome first
        # a dependent was dispatched by someone else meanwhile: record the outcome alone
        if eng.store.append(d.run_id, events[: -len(dispatches)], claims=[finish]) is None:
            return []
        return eng.advance(d.run_id)
    eng._absorb(d.run_id, stored)
    if ready and len(ready) == len(plan.dependents[d.step]):
        return dispatches  # every dependent is on its way; nothing else can have changed
    return dispatches + eng.advance(d.run_id)


def _retry(eng: Engine, d: Dispatch, events: list[Event], nxt: Dispatch) -> list[Dispatch]:
    """Record a failed attempt and its retry ``nxt`` (once); unless the run failed
    meanwhile: then the retry does not start (``advance`` ends the step)."""
    claims = [f"finish:{d.step}:{d.attempt}", f"dispatch:{d.step}:{nxt.attempt}"]
    stored = eng.store.append(d.run_id, events, claims=claims)
    if stored is None:
        return []  # another delivery of this attempt recorded its outcome first
    eng._absorb(d.run_id, stored)
    with eng.lock:
        if eng.state(d.run_id)[2].failing is not None:
            return eng.advance(d.run_id)
    return [nxt]


__all__ = ["record"]
