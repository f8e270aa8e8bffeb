"""The pure core: ready_steps over a fold of events, with no executor involved."""

from __future__ import annotations

from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.retry import backoff_delay, should_retry
from dagwright.planner.plan import Plan
from dagwright.planner.schema import RetryPolicy, Workflow

PLAN = Plan.from_workflow(
    Workflow.model_validate(
        {
            "name": "p",
            "steps": [
                {"id": "a", "uses": "echo"},
                {"id": "b", "uses": "echo", "with": {"x": "${{ steps.a.output }}"}},
                {"id": "c", "uses": "echo", "needs": ["a"]},
                {"id": "d", "uses": "echo", "needs": ["b", "c"]},
                {"id": "e", "uses": "echo"},
            ],
        }
    )
)


def finish(step: str, status: str = "succeeded") -> Event:
    return Event(ev.STEP_FINISHED, "r", 0.0, step, 1, {"status": status, "output": step})


def schedule(step: str) -> Event:
    return Event(ev.STEP_SCHEDULED, "r", 0.0, step, 1, {})


def test_plan_dependencies_come_from_needs_and_references() -> None:
    assert PLAN.deps == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}
    assert PLAN.dependents["a"] == ("b", "c")


def test_a_step_is_ready_the_moment_its_last_dependency_succeeds() -> None:
    state = engine.RunState.initial(PLAN, "r")
    assert engine.ready_steps(PLAN, state) == ["a", "e"]
    for e in (schedule("a"), schedule("e"), finish("a")):
        state = engine.apply(state, e)
    assert engine.ready_steps(PLAN, state) == ["b", "c"], "e still running does not hold b and c"
    for e in (schedule("b"), schedule("c"), finish("b")):
        state = engine.apply(state, e)
    assert engine.ready_steps(PLAN, state) == []
    state = engine.apply(state, finish("c"))
    assert engine.ready_steps(PLAN, state) == ["d"]


def test_ready_steps_is_pure() -> None:
    events = [schedule("a"), finish("a")]
    first = engine.fold(PLAN, "r", events)
    assert engine.ready_steps(PLAN, first) == engine.ready_steps(PLAN, first) == ["e", "b", "c"]
    assert engine.ready_steps(PLAN, engine.fold(PLAN, "r", events)) == ["e", "b", "c"]


def test_a_failure_halts_dispatch_and_blocks_dependents() -> None:
    state = engine.fold(PLAN, "r", [schedule("a"), schedule("e"), finish("a", "failed")])
    assert state.halted and engine.ready_steps(PLAN, state) == []
    assert engine.blocked_steps(PLAN, state) == {
        "b": "upstream step 'a' failed",
        "c": "upstream step 'a' failed",
        "d": "upstream step 'b' was skipped",
    }
    assert not engine.is_settled(state), "e is still running"
    state = engine.apply(state, finish("e"))
    assert engine.is_settled(state)
    assert engine.final_status(PLAN, state) == "failed"


def test_backoff_is_exponential_capped_and_deterministic() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=1, backoff_factor=3, max_backoff=5)
    assert [backoff_delay(policy, n, "s") for n in (1, 2, 3)] == [1, 3, 5]
    jittery = RetryPolicy(backoff=1, jitter=0.5)
    delays = {backoff_delay(jittery, 1, f"run{i}/s/1") for i in range(20)}
    assert len(delays) > 1 and all(0.5 <= d <= 1.5 for d in delays)
    assert backoff_delay(jittery, 1, "run1/s/1") == backoff_delay(jittery, 1, "run1/s/1")


def test_should_retry_respects_attempts_kind_and_retryable() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=["error", "verification"])
    assert should_retry(policy, 1, "error", True)
    assert not should_retry(policy, 3, "error", True)
    assert not should_retry(policy, 1, "timeout", True)
    assert not should_retry(policy, 1, "error", False)


FAILING = Plan.from_workflow(
    Workflow.model_validate(
        {
            "name": "failing",
            "steps": [
                {"id": "bad", "uses": "echo"},
                {"id": "r", "uses": "echo", "retry": {"max_attempts": 3, "backoff": 5}},
                {"id": "q", "uses": "echo"},
            ],
        }
    )
)


def test_once_a_step_failed_the_run_no_attempt_starts_and_none_is_retried() -> None:
    from dagwright.executors.engine import decisions
    from dagwright.executors.engine.outcome import Outcome

    error = {"type": "StepError", "message": "boom", "kind": "error", "retryable": True}
    state = engine.RunState.initial(FAILING, "r")
    for sid in ("bad", "r", "q"):
        state = engine.apply(state, Event(ev.STEP_SCHEDULED, "r", 0.0, sid, 1, {}))
    for sid in ("bad", "r"):
        state = engine.apply(state, Event(ev.ATTEMPT_STARTED, "r", 0.0, sid, 1, {}))
    # r's first attempt fails while the run is fine: a retry is scheduled
    events, delay = decisions.outcome_events(
        FAILING, "r", "r", 1, "a1", Outcome("failed", error=error), 1.0, "a2"
    )
    assert delay == 5
    for e in events:
        state = engine.apply(state, e)
    assert engine.stoppable(state) == [], "nothing to stop while the run is not failing"
    state = engine.apply(state, Event(ev.STEP_FINISHED, "r", 2.0, "bad", 1,
                                      {"status": "failed", "error": error}))  # fmt: skip
    assert state.failing == "bad"
    # r waits to retry and q was dispatched, not started: both end without a new attempt
    assert engine.stoppable(state) == ["r", "q"]
    stops = {sid: decisions.stop_events(state, sid, 3.0) for sid in ("r", "q")}
    assert stops["r"][0].data == {
        "status": "failed", "output": None, "error": error,
        "reason": "not retried: step 'bad' failed the run", "stopped_by": "bad",
    }  # fmt: skip
    assert stops["q"][0].data == {
        "status": "skipped", "reason": "not started: step 'bad' failed the run",
        "stopped_by": "bad",
    }  # fmt: skip
    for e in stops["r"] + stops["q"]:
        state = engine.apply(state, e)
    # a late start of the retry (a worker that had its message) changes nothing
    late = engine.apply(state, Event(ev.ATTEMPT_STARTED, "r", 4.0, "r", 2, {}))
    assert late.steps["r"].status == "failed" and len(late.steps["r"].attempts) == 1
    assert engine.is_settled(state)
    end = decisions.conclude(FAILING, state, 5.0, cancelled=False)[-1]
    assert end.data["error"]["step"] == "bad"
    # an attempt that fails once the run is failing is not retried, whatever its policy
    events, delay = decisions.outcome_events(
        FAILING, "r", "r", 1, "a1", Outcome("failed", error=error), 1.0, "a2", failing="bad"
    )
    assert delay is None
    assert events[-1].data["status"] == "failed" and events[-1].data["stopped_by"] == "bad"
