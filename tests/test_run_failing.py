"""Once a step has failed the run, no new attempt starts (the local executor's side, and its
replay); the Celery side is in the executor contract suite."""

from __future__ import annotations

import time

from dagwright.errors import StepError
from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor
from dagwright.executors.replay import replay_run
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry


def test_a_step_waiting_for_a_slot_does_not_start_once_the_run_is_failing(
    registry: ToolRegistry,
) -> None:
    wf = Workflow.model_validate(
        {
            "name": "one-slot",
            "steps": [
                {"id": "bad", "uses": "flaky", "with": {"fail_times": 1}},
                {"id": "queued", "uses": "echo", "with": {"x": 1}},
            ],
        }
    )
    store = MemoryTraceStore()
    result = LocalExecutor(store, registry, max_parallel=1).run(wf)
    assert result.status == "failed"
    queued = result.state.steps["queued"]
    assert queued.status == "skipped" and queued.attempts == []
    assert queued.reason == "not started: step 'bad' failed the run"
    assert [e.step for e in store.events(result.run_id) if e.type == ev.ATTEMPT_STARTED] == ["bad"]


def test_a_replay_stops_steps_where_the_recording_did(registry: ToolRegistry) -> None:
    """The recording stopped `retrier` while it waited 20 s to retry; its replay waits no
    backoff, so without following the recording it would start attempt 2 before `bad` (run
    again: 0.3 s) fails."""

    @registry.tool("test.slow_failure", replay="rerun")
    def slow_failure() -> None:
        time.sleep(0.3)
        raise StepError("failed slowly", retryable=False)

    wf = Workflow.model_validate(
        {
            "name": "stopped",
            "steps": [
                {"id": "retrier", "uses": "flaky", "with": {"fail_times": 9},
                 "retry": {"max_attempts": 3, "backoff": 20}},
                {"id": "bad", "uses": "test.slow_failure"},
            ],
        }
    )  # fmt: skip
    store = MemoryTraceStore()
    recorded = LocalExecutor(store, registry).run(wf)
    stop = [e for e in store.events(recorded.run_id) if e.type == ev.STEP_FINISHED
            and e.step == "retrier"][0]  # fmt: skip
    assert stop.data["stopped_by"] == "bad" and len(recorded.state.steps["retrier"].attempts) == 1
    report = replay_run(store, recorded.run_id, registry)
    assert report.divergences == []
    replayed = store.events(report.run_id)
    assert [(e.step, e.attempt) for e in replayed if e.type == ev.ATTEMPT_STARTED and
            e.step == "retrier"] == [("retrier", 1)]  # fmt: skip
