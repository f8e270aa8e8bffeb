"""A worker's job for one message (``Engine.execute``): run the dispatched attempt unless it is
stale (over, superseded, or still beating on another worker) — resolve its arguments, record
``attempt_started``, call the tool and verify while heartbeating — then record its outcome
(``outcomes.record``). Called by Celery's attempt task and the API server's threads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagwright.errors import PlanError
from dagwright.executors import engine
from dagwright.executors.distributed import outcomes
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import Outcome
from dagwright.executors.lifecycle import settle_cache, tool_context
from dagwright.executors.runner import Attempt, run_sync
from dagwright.planner.plan import Plan
from dagwright.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from dagwright.executors.distributed.dispatch import Dispatch
    from dagwright.executors.distributed.engine import Engine


def execute(eng: Engine, d: Dispatch) -> list[Dispatch]:
    """Run one dispatched attempt and record it; returns what to enqueue next."""
    try:
        eng.plan_of(d.run_id)
    except PlanError as exc:  # this worker cannot load the run's tools
        return eng.refuse(d.run_id, exc)
    with eng.lock:
        plan, registry, state = eng.state(d.run_id)
        if state.status in engine.FINAL:
            return []
        if d.step not in state.steps:  # a message for a step a revised plan dropped
            return []
        step = state.steps[d.step]
        if step.status in engine.FINAL or _stale(eng, state, d):
            return eng.advance(d.run_id)
        context = engine.step_context(plan, state, d.step)
    attempt = Attempt(
        plan.steps[d.step],
        context,
        number=d.attempt,
        eval_timeout=eng.eval_timeout,
        max_output_bytes=eng.limits.output_bytes,
        secrets=eng.secrets,
    )  # the attempt's time budget starts: resolving, the tool and the checks count
    try:
        args, failed = run_sync(attempt.resolve())  # not under the lock: it may be slow
        started = Event(
            ev.ATTEMPT_STARTED,
            d.run_id,
            eng.clock(),
            d.step,
            d.attempt,
            {"attempt_id": d.attempt_id, "inputs": attempt.redacted(args)},
        )
        eng._absorb(d.run_id, eng.store.append(d.run_id, [started]))
        outcome = failed or _call(eng, d, plan, registry, state, attempt, args)
    finally:
        attempt.close()
    return outcomes.record(eng, plan, d, outcome)


def _call(
    eng: Engine,
    d: Dispatch,
    plan: Plan,
    registry: ToolRegistry,
    state: engine.RunState,
    attempt: Attempt,
    args: Any,
) -> Outcome:
    """Call the attempt's tool and verify, heartbeating meanwhile."""

    def emit(kind: str, data: dict[str, Any]) -> None:
        eng.store.append(d.run_id, [Event(kind, d.run_id, eng.clock(), d.step, d.attempt, data)])

    with eng.lock:
        ctx = tool_context(
            state, d.step, d.attempt, emit=emit, cache=eng.cache, tools=registry,
            settings=eng.settings,
        )  # fmt: skip
    tool = registry.get(plan.steps[d.step].uses)
    with eng._beats.beating(d):
        outcome = run_sync(attempt.execute(tool, args, ctx))
    settle_cache(ctx, outcome)
    return outcome


def _stale(eng: Engine, state: engine.RunState, d: Dispatch) -> bool:
    """A message for an attempt that is over, superseded, or alive on another worker."""
    step = state.steps[d.step]
    if not step.attempts:
        return False
    last = step.attempts[-1]
    if d.attempt != last.number:
        return d.attempt < last.number  # older: superseded; newer: a retry not started yet
    if last.status != engine.RUNNING:
        return True  # this attempt has its outcome already
    beat = eng.store.heartbeats(d.run_id).get((d.step, d.attempt), last.started_at or 0)
    return eng.clock() - beat < eng.timing.lost_after  # still alive elsewhere


__all__ = ["execute"]
