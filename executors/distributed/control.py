"""Ending or changing a run from outside its steps: cancelling it, failing it when this worker
cannot load its tools, revising its plan. Each ends or changes the run once, through a claim."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from dagwright.errors import DagwrightError, PlanError
from dagwright.executors import engine
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import Replanning
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow

if TYPE_CHECKING:
    from dagwright.executors.distributed.dispatch import Dispatch
    from dagwright.executors.distributed.engine import Engine


def cancel(eng: Engine, run_id: str) -> list[str]:
    """End a run as cancelled; returns the attempt ids that may still be running (to revoke)."""
    for _ in range(20):
        with eng.lock:
            cancelled = _cancel_once(eng, run_id)
        if cancelled is not None:
            return cancelled
    raise DagwrightError(f"could not cancel run {run_id!r}: it kept changing")


def _cancel_once(eng: Engine, run_id: str) -> list[str] | None:
    """The attempt ids to revoke; None when the run changed meanwhile (try again)."""
    plan, _, state = eng.state(run_id)
    if state.status in engine.FINAL:
        return []
    now = eng.clock()
    events: list[Event] = []
    claims = ["conclude"]
    running = []
    for sid in state.active():
        step = state.steps[sid]
        events += decisions.cancel_events(state, sid, now)
        if step.attempts and step.attempts[-1].status == engine.RUNNING:
            claims.append(f"finish:{sid}:{step.attempts[-1].number}")
            running.append(step.attempts[-1].attempt_id or "")
    after = copy.deepcopy(state)  # the cached state only follows stored events
    for e in events:
        after = engine.apply(after, e)
    events += decisions.conclude(plan, after, now, cancelled=True)
    if not eng._conclude(run_id, events, claims):
        return None
    return [a for a in running if a]


def refuse(eng: Engine, run_id: str, problem: PlanError) -> list[Dispatch]:
    """The run's tools cannot load here (``run_registry`` refused them): the run fails, once
    (the ``conclude`` claim), naming the modules and why. Its steps in flight are cancelled
    and the rest skipped, as when a lost run is closed; nothing runs."""
    record = eng.store.get_run(run_id)
    plan = Plan.from_workflow(Workflow.model_validate(record.workflow))
    state = engine.fold(plan, run_id, eng.store.events(run_id))
    if state.status in engine.FINAL:
        return []
    now = eng.clock()
    why = "; ".join(str(i) for i in problem.issues)
    error = {"type": "ToolsRefused", "message": f"a worker cannot load this run's tools: {why}"}
    events = decisions.abandon(plan, state, now, message="")[:-1]  # all but its run_finished
    data = {"status": engine.FAILED, "output": None, "error": error}
    events.append(Event(ev.RUN_FINISHED, run_id, now, None, None, data))
    with eng.lock:  # _conclude folds the state through plan_of: the plan, without tools
        eng._plans[run_id] = (plan, eng.registry)
        try:
            eng._conclude(run_id, events)
        finally:
            eng._plans.pop(run_id, None)
    return eng._drain_admitted()  # runs the freed concurrency slot admitted, if any


def revise(
    eng: Engine, run_id: str, replanning: Replanning, state: engine.RunState
) -> list[Dispatch]:
    """Ask the replanner for a revised plan; exactly one outcome of revision n is recorded.

    One worker asks (the ``replan:n:k`` claim); another may ask again only a minute after
    the step failed for each earlier try (its worker may have been lost while replanning),
    never at once. Whichever outcome comes first is recorded — the revision, or the run's
    end when replanning failed — under the one ``revise:n`` claim; a late one is dropped."""
    number = state.revisions + 1
    failed = state.steps[state.replan_for or ""].finished_at or eng.clock()
    tries = int(max(0.0, eng.clock() - failed) // 60)
    if eng.store.append(run_id, [], claims=[f"replan:{number}:{tries}"]) is None:
        return []
    revision = replanning.revise(state, eng.clock)
    outcome_claim = f"revise:{number}"
    if revision.problem is not None:  # no revision: the failure stands
        with eng.lock:
            plan, _, now = eng.state(run_id)
            events = decisions.conclude(plan, now, eng.clock(), cancelled=False,
                                        replan_problem=revision.problem)  # fmt: skip
        eng._conclude(run_id, revision.events + events, ["conclude", outcome_claim])
        return []
    if eng.store.append(run_id, revision.events, claims=[outcome_claim]) is None:
        return []
    return eng.advance(run_id)


__all__ = ["cancel", "refuse", "revise"]
