"""The executor contract: scenarios every executor must pass, on every trace store.

The local executor runs them against the in-memory twin, SQLite and PostgreSQL; the Celery
executor against SQLite (one machine) and PostgreSQL (the production set-up), each with real
worker processes kept for the session. Timing facts are read from the recorded trace (what
overlapped, what waited), not from wall-clock thresholds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import contract_tools  # noqa: F401  (registers test.block, test.auth, test.boom)
import pytest
from conftest import make_store, use_broker

from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.local import LocalExecutor, RunResult
from dagwright.executors.store import TraceStore
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry


def wf(steps: list[dict[str, Any]], **extra: Any) -> Workflow:
    return Workflow.model_validate({"name": "contract", "steps": steps, **extra})


@dataclass
class Ran:
    result: RunResult
    events: list[Event]

    @property
    def steps(self) -> dict[str, engine.StepState]:
        return self.result.state.steps

    def of(self, kind: str, step: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type == kind and (step is None or e.step == step)]


COMBOS = [
    ("local", "memory"),
    ("local", "sqlite"),
    ("local", "postgres"),
    ("celery", "sqlite"),
    ("celery", "postgres"),
]
CELERY_CLUSTERS = {"sqlite": "celery_cluster", "postgres": "celery_pg_cluster"}


class CeleryRunner:
    """Submits to real Celery worker processes and follows the shared trace until the end."""

    def __init__(self, store: TraceStore, registry: ToolRegistry, broker: str) -> None:
        from dagwright.executors.distributed.engine import Engine

        self.store = store
        self.engine = Engine(store, registry)
        self.client = use_broker(broker)

    def start(self, workflow: Workflow, inputs: dict[str, Any] | None = None) -> str:
        run_id, dispatches = self.engine.start(workflow, inputs or {})
        self.client.send(dispatches)
        return run_id

    def wait(self, run_id: str, timeout: float = 60) -> RunResult:
        """Follow the run to its end as the CLI does (``lifecycle.follow``)."""
        from dagwright.executors.lifecycle import follow

        state = follow(self.store, run_id, poll=0.02, timeout=timeout)
        return RunResult(run_id, state.status, state.output, state.error, state, "")

    def cancel(self, run_id: str) -> None:
        self.client.cancel(run_id, self.engine)


@pytest.fixture(params=COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
def execute(request: pytest.FixtureRequest, tmp_path: Path, registry: ToolRegistry):  # noqa: ANN201
    executor, kind = request.param
    if executor == "celery":
        from dagwright.executors.store.sql import SqlTraceStore

        cluster = request.getfixturevalue(CELERY_CLUSTERS[kind])
        store: TraceStore = SqlTraceStore(cluster.db)
        celery = CeleryRunner(store, registry, cluster.broker)
    else:
        store = make_store(kind, tmp_path, request)

    def run(workflow: Workflow, inputs: dict[str, Any] | None = None, **kw: Any) -> Ran:
        if executor == "celery":
            result = celery.wait(celery.start(workflow, inputs))
        else:
            result = LocalExecutor(store, registry, **kw).run(workflow, inputs or {})
        return Ran(result, store.events(result.run_id))

    run.executor = executor  # type: ignore[attr-defined]
    run.store = store  # type: ignore[attr-defined]
    run.registry = registry  # type: ignore[attr-defined]
    run.celery = celery if executor == "celery" else None  # type: ignore[attr-defined]
    yield run
    store.close()


def test_diamond_branches_are_dispatched_together_and_the_join_sees_both(execute) -> None:  # noqa: ANN001
    """Dependency-driven dispatch, read from the recorded order (not the clock): b and c are
    both dispatched once a succeeded, before either finishes; d starts after both finished."""
    ran = execute(
        wf(
            [
                {"id": "a", "uses": "echo", "with": {"topic": "dags"}},
                {"id": "b", "uses": "sleep", "with": {"ms": 300}, "needs": ["a"]},
                {"id": "c", "uses": "sleep", "with": {"ms": 300}, "needs": ["a"]},
                {
                    "id": "d",
                    "uses": "echo",
                    "with": {
                        "b": "${{ steps.b.output }}",
                        "c": "${{ steps.c.output.slept_ms }}",
                        "topic": "${{ steps.a.output.topic }}",
                    },
                },
            ],
            output="${{ steps.d.output }}",
        )
    )
    assert ran.result.status == "succeeded"

    def seq(kind: str, step: str) -> int:
        (event,) = ran.of(kind, step)
        assert event.seq is not None
        return event.seq

    dispatched = [seq(ev.STEP_SCHEDULED, s) for s in "bc"]
    assert max(dispatched) < min(seq(ev.ATTEMPT_FINISHED, s) for s in "bc"), (
        "b and c dispatched together, neither waiting for the other"
    )
    assert min(dispatched) > seq(ev.STEP_FINISHED, "a")
    assert seq(ev.ATTEMPT_STARTED, "d") > max(seq(ev.STEP_FINISHED, s) for s in "bc")
    assert ran.result.output == {"b": {"slept_ms": 300}, "c": 300, "topic": "dags"}
    # the resolved inputs are recorded with the attempt
    assert ran.of(ev.ATTEMPT_STARTED, "d")[0].data["inputs"]["c"] == 300


def test_flaky_step_succeeds_on_its_third_attempt(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {
                    "id": "f",
                    "uses": "flaky",
                    "with": {"fail_times": 2, "value": 42},
                    "retry": {"max_attempts": 3, "backoff": 0.01},
                }
            ]
        )
    )
    assert ran.result.status == "succeeded"
    assert ran.result.output == {"f": 42}
    finished = ran.of(ev.ATTEMPT_FINISHED, "f")
    assert [e.attempt for e in ran.of(ev.ATTEMPT_STARTED, "f")] == [1, 2, 3]
    assert [e.data["status"] for e in finished] == ["failed", "failed", "succeeded"]
    assert [e.data["retry_in"] for e in finished] == [0.01, 0.02, None]
    assert len(ran.steps["f"].attempts) == 3


def test_flaky_step_out_of_attempts_fails_the_run_and_keeps_every_attempt(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {
                    "id": "f",
                    "uses": "flaky",
                    "with": {"fail_times": 2},
                    "retry": {"max_attempts": 2, "backoff": 0},
                },
                {"id": "after", "uses": "echo", "with": {"x": "${{ steps.f.output }}"}},
            ]
        )
    )
    assert ran.result.status == "failed"
    assert ran.result.error == {
        "type": "StepError",
        "step": "f",
        "message": "flaky failure (attempt 2 of the first 2 that fail)",
    }
    finished = ran.of(ev.ATTEMPT_FINISHED, "f")
    assert [e.data["status"] for e in finished] == ["failed", "failed"]
    assert all("flaky failure" in e.data["error"]["message"] for e in finished)
    assert all(e.data["error"]["traceback"] for e in finished)
    assert ran.steps["after"].status == "skipped"
    assert ran.steps["after"].reason == "upstream step 'f' failed"
    assert ran.events[-1].type == ev.RUN_FINISHED and ran.events[-1].data["status"] == "failed"


def test_failed_verification_names_the_check_and_is_retried(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {
                    "id": "e",
                    "uses": "echo",
                    "with": {"items": [1, 2]},
                    "verify": [{"expr": "len(output.items) >= 3"}, {"contains": "items"}],
                    "retry": {"max_attempts": 2, "backoff": 0},
                }
            ]
        )
    )
    assert ran.result.status == "failed"
    finished = ran.of(ev.ATTEMPT_FINISHED, "e")
    assert len(finished) == 2
    error = finished[0].data["error"]
    assert error["kind"] == "verification"
    assert "check 1 (expr: len(output.items) >= 3) failed" in error["message"]
    checks = finished[0].data["checks"]
    assert [c["passed"] for c in checks] == [False, True]
    assert finished[0].data["output"] == {"items": [1, 2]}, (
        "the failed output is kept for debugging"
    )


def test_verification_not_retried_when_retry_on_excludes_it(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {
                    "id": "e",
                    "uses": "echo",
                    "with": {"v": "x"},
                    "verify": [{"regex": "^y"}],
                    "retry": {"max_attempts": 3, "backoff": 0, "retry_on": ["error"]},
                }
            ]
        )
    )
    assert ran.result.status == "failed"
    assert len(ran.of(ev.ATTEMPT_STARTED, "e")) == 1


def test_timeout_stops_waiting_for_an_async_tool(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {
                    "id": "slow",
                    "uses": "sleep",
                    "with": {"ms": 10_000},
                    "timeout": 0.2,
                    "retry": {"max_attempts": 2, "backoff": 0},
                }
            ]
        )
    )
    assert ran.result.status == "failed"
    finished = ran.of(ev.ATTEMPT_FINISHED, "slow")
    assert [e.data["status"] for e in finished] == ["timed_out", "timed_out"]
    assert finished[0].data["error"]["kind"] == "timeout"
    assert "timed out after 0.2s" in finished[0].data["error"]["message"]
    # an attempt that waited for the sleep would have lasted 10 s or more
    attempts = ran.steps["slow"].attempts
    assert len(attempts) == 2 and all(a.finished_at - a.started_at < 10 for a in attempts)


def test_timeout_stops_waiting_for_a_blocking_tool(execute) -> None:  # noqa: ANN001
    ran = execute(wf([{"id": "b", "uses": "test.block", "with": {"seconds": 3}, "timeout": 0.2}]))
    assert ran.result.status == "failed"
    assert ran.of(ev.ATTEMPT_FINISHED, "b")[0].data["status"] == "timed_out"


def test_non_retryable_error_is_not_retried(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf([{"id": "x", "uses": "test.auth", "retry": {"max_attempts": 5, "backoff": 0}}])
    )
    assert ran.result.status == "failed"
    assert len(ran.of(ev.ATTEMPT_STARTED, "x")) == 1
    assert ran.of(ev.ATTEMPT_FINISHED, "x")[0].data["error"]["retryable"] is False


def test_unexpected_exception_is_recorded_with_its_traceback(execute) -> None:  # noqa: ANN001
    ran = execute(wf([{"id": "x", "uses": "test.boom", "with": {"n": 1}}]))
    error = ran.of(ev.ATTEMPT_FINISHED, "x")[0].data["error"]
    assert error["type"] == "ZeroDivisionError"
    assert "n // 0" in error["traceback"]
    # the message names the exception's type, as Python prints it (a bare `'sales'` from a
    # KeyError says nothing); the run's error carries it too
    assert error["message"] == "ZeroDivisionError: integer division or modulo by zero"
    assert ran.result.error == {"type": "ZeroDivisionError", "step": "x",
                                "message": "ZeroDivisionError: integer division or modulo by zero"}  # fmt: skip


def test_a_reference_that_cannot_resolve_fails_the_step_without_retrying(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {"id": "a", "uses": "echo", "with": {"x": 1}},
                {
                    "id": "b",
                    "uses": "echo",
                    "with": {"y": "${{ steps.a.output.missing }}"},
                    "retry": {"max_attempts": 3, "backoff": 0},
                },
            ]
        )
    )
    assert ran.result.status == "failed"
    finished = ran.of(ev.ATTEMPT_FINISHED, "b")
    assert len(finished) == 1
    assert (
        "steps.a.output has no field 'missing' (it has: x)" in finished[0].data["error"]["message"]
    )


def test_steps_start_when_their_own_dependencies_finish(execute) -> None:  # noqa: ANN001
    """Dependency-driven: `fast2` does not wait for `slow`, its sibling's level-mate."""
    ran = execute(
        wf(
            [
                {"id": "root", "uses": "sleep", "with": {"ms": 0}},
                {"id": "slow", "uses": "sleep", "with": {"ms": 500}, "needs": ["root"]},
                {"id": "fast", "uses": "sleep", "with": {"ms": 20}, "needs": ["root"]},
                {"id": "fast2", "uses": "sleep", "with": {"ms": 20}, "needs": ["fast"]},
                {"id": "join", "uses": "echo", "needs": ["slow", "fast2"]},
            ]
        )
    )
    s = ran.steps
    assert s["fast2"].finished_at < s["slow"].finished_at
    assert s["join"].started_at >= s["slow"].finished_at


def test_max_parallel_bounds_running_attempts(execute) -> None:  # noqa: ANN001
    if execute.executor != "local":
        pytest.skip("max_parallel bounds the local executor; Celery's bound is worker concurrency")
    steps = [{"id": f"s{i}", "uses": "sleep", "with": {"ms": 60}} for i in range(6)]
    ran = execute(wf(steps), max_parallel=2)
    assert ran.result.status == "succeeded"
    marks = sorted(
        [(a.started_at, 1) for s in ran.steps.values() for a in s.attempts]
        + [(a.finished_at, -1) for s in ran.steps.values() for a in s.attempts],
        key=lambda m: (m[0], m[1]),
    )
    running = peak = 0
    for _, delta in marks:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_on_failure_continue_skips_dependents_and_keeps_going(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {"id": "bad", "uses": "flaky", "with": {"fail_times": 9}, "on_failure": "continue"},
                {"id": "needs_bad", "uses": "echo", "with": {"v": "${{ steps.bad.output }}"}},
                {"id": "then", "uses": "echo", "with": {"v": 1}, "needs": ["needs_bad"]},
                {"id": "other", "uses": "echo", "with": {"v": 2}},
            ],
            output="${{ steps.other.output.v }}",
        )
    )
    assert ran.result.status == "succeeded"
    assert ran.result.output == 2
    assert ran.steps["bad"].status == "failed"
    assert ran.steps["needs_bad"].status == "skipped"
    assert ran.steps["then"].reason == "upstream step 'needs_bad' was skipped"


def test_a_failure_stops_new_steps_but_lets_running_ones_finish(execute, tmp_path) -> None:  # noqa: ANN001
    started = str(tmp_path / "running-started")
    ran = execute(
        wf(
            [
                {"id": "bad", "uses": "test.fail_after_mark", "with": {"wait_for": [started]}},
                {
                    "id": "running",
                    "uses": "test.mark_then_sleep",
                    "with": {"mark": started, "ms": 300},
                },
                {"id": "later", "uses": "echo", "needs": ["running"]},
            ]
        )
    )
    assert ran.result.status == "failed"
    assert ran.steps["running"].status == "succeeded", "its output is kept for a resume"
    assert ran.steps["later"].status == "skipped"
    assert ran.steps["later"].reason == "not started: step 'bad' failed the run"


def test_once_the_run_is_failing_no_new_attempt_starts(execute, tmp_path) -> None:  # noqa: ANN001
    """A step waiting to retry, or finishing a failed attempt, after another step failed the
    run is not retried (their policies allow 3 attempts, 20 s apart): the run ends as soon as
    nothing is running, and names the step that failed it."""
    retrying = {"max_attempts": 3, "backoff": 20}
    a, b = str(tmp_path / "retrier-failed"), str(tmp_path / "bad-failing")
    started = str(tmp_path / "slow-started")  # `bad` fails once `retrier` failed, `slow` started
    ran = execute(
        wf(
            [
                {
                    "id": "retrier",
                    "uses": "test.mark_and_fail",
                    "with": {"mark": a},
                    "retry": retrying,
                },
                {
                    "id": "bad",
                    "uses": "test.fail_after_mark",
                    "with": {"wait_for": [a, started], "mark": b},
                },
                {
                    "id": "slow",
                    "uses": "test.fail_after_mark",
                    "with": {"wait_for": [b], "started": started},
                    "retry": retrying,
                },
            ]
        )
    )
    assert ran.result.status == "failed"
    assert ran.result.error is not None and ran.result.error["step"] == "bad"
    others = sorted((e.step, e.attempt) for e in ran.of(ev.ATTEMPT_STARTED) if e.step != "bad")
    assert others == [("retrier", 1), ("slow", 1)], "one attempt each: no retry started"
    for sid in ("retrier", "slow"):
        finished = ran.of(ev.STEP_FINISHED, sid)
        assert len(finished) == 1, f"{sid} ends once"
        assert finished[0].data["status"] == "failed"
        assert finished[0].data["stopped_by"] == "bad"
        assert finished[0].data["reason"] == "not retried: step 'bad' failed the run"
        assert ran.steps[sid].error is not None


def test_values_are_rendered_once_and_keep_their_types(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {
                    "id": "a",
                    "uses": "echo",
                    "with": {"n": "${{ inputs.n }}", "text": "${{ inputs.text }}"},
                },
                {
                    "id": "b",
                    "uses": "echo",
                    "with": {
                        "n": "${{ steps.a.output.n }}",
                        "label": "n=${{ steps.a.output.n }}",
                        "injected": "${{ steps.a.output.text }}",
                        "list": ["${{ inputs.n }}", "x${{ inputs.n }}"],
                    },
                },
            ],
            inputs={"n": {"type": "integer"}, "text": {"type": "string"}},
        ),
        {"n": 3, "text": "${{ inputs.n }} {{ 7*7 }} {% for x in y %}"},
    )
    out = ran.steps["b"].output
    assert out["n"] == 3 and isinstance(out["n"], int)
    assert out["label"] == "n=3"
    assert out["injected"] == "${{ inputs.n }} {{ 7*7 }} {% for x in y %}", (
        "data is never evaluated"
    )
    assert out["list"] == [3, "x3"]


def test_default_output_is_each_final_step(execute) -> None:  # noqa: ANN001
    ran = execute(
        wf(
            [
                {"id": "a", "uses": "echo", "with": {"v": 1}},
                {"id": "b", "uses": "echo", "with": {"v": "${{ steps.a.output.v }}"}},
                {"id": "c", "uses": "echo", "with": {"v": 3}},
            ]
        )
    )
    assert ran.result.output == {"b": {"v": 1}, "c": {"v": 3}}


def test_cancellation_leaves_a_consistent_trace(execute) -> None:  # noqa: ANN001
    store = execute.store
    workflow = wf([
        {"id": "quick", "uses": "sleep", "with": {"ms": 1}},
        {"id": "long1", "uses": "sleep", "with": {"ms": 20_000}, "needs": ["quick"]},
        {"id": "long2", "uses": "sleep", "with": {"ms": 20_000}, "needs": ["quick"]},
        {"id": "never", "uses": "echo", "needs": ["long1"]},
    ])  # fmt: skip
    if execute.celery is not None:
        run_id = execute.celery.start(workflow)
        cancel = lambda: execute.celery.cancel(run_id)  # noqa: E731
        wait = lambda: execute.celery.wait(run_id)  # noqa: E731
    else:
        executor = LocalExecutor(store, execute.registry)
        results: list[RunResult] = []
        runner = threading.Thread(target=lambda: results.append(executor.run(workflow)))
        runner.start()
        cancel = executor.cancel

        def wait() -> RunResult:
            runner.join(10)
            assert not runner.is_alive()
            return results[0]

        run_id = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rid = run_id or (
            store.list_runs(limit=1)[0].record.run_id if store.list_runs(limit=1) else None
        )
        if rid and sum(e.type == ev.ATTEMPT_STARTED for e in store.events(rid)) == 3:
            break
        time.sleep(0.01)
    cancel()
    result = wait()
    assert result.status == "cancelled"
    events = store.events(result.run_id)
    statuses = {sid: s.status for sid, s in result.state.steps.items()}
    assert statuses == {
        "quick": "succeeded",
        "long1": "cancelled",
        "long2": "cancelled",
        "never": "skipped",
    }
    finished_at = next(i for i, e in enumerate(events) if e.type == ev.RUN_FINISHED)
    before = events[: finished_at + 1]
    started = {(e.step, e.attempt) for e in before if e.type == ev.ATTEMPT_STARTED}
    finished = {(e.step, e.attempt) for e in before if e.type == ev.ATTEMPT_FINISHED}
    assert started == finished, "every attempt that started is recorded as finished"
    assert {e.step for e in before if e.type == ev.STEP_FINISHED} == set(statuses)
    assert events[finished_at].data["status"] == "cancelled"


def test_state_is_the_fold_of_the_stored_trace(execute) -> None:  # noqa: ANN001
    workflow = wf(
        [
            {
                "id": "a",
                "uses": "flaky",
                "with": {"fail_times": 1, "value": "ok"},
                "retry": {"max_attempts": 2, "backoff": 0},
            },
            {"id": "b", "uses": "echo", "with": {"a": "${{ steps.a.output }}"}},
        ]
    )
    ran = execute(workflow)
    folded = engine.fold(
        Plan.from_workflow(workflow), ran.result.run_id, execute.store.events(ran.result.run_id)
    )
    live = ran.result.state
    assert folded.status == live.status == "succeeded"
    for sid in ("a", "b"):
        assert folded.steps[sid].status == live.steps[sid].status
        assert folded.steps[sid].output == live.steps[sid].output
        assert [a.status for a in folded.steps[sid].attempts] == [
            a.status for a in live.steps[sid].attempts
        ]


def test_the_same_workflow_runs_the_same_way_twice(execute) -> None:  # noqa: ANN001
    workflow = wf(
        [
            {
                "id": "a",
                "uses": "flaky",
                "with": {"fail_times": 1, "value": [1, 2]},
                "retry": {"max_attempts": 3, "backoff": 0.01, "jitter": 0.5},
            },
            {
                "id": "b",
                "uses": "echo",
                "with": {"a": "${{ steps.a.output }}", "s": "${{ steps.a.output[1] }}!"},
            },
        ]
    )
    first, second = execute(workflow), execute(workflow)

    def shape(ran: Ran) -> list[tuple[Any, ...]]:
        return [
            (
                e.type,
                e.step,
                e.attempt,
                e.data.get("status"),
                e.data.get("output"),
                e.data.get("inputs"),
            )
            for e in ran.events
            if e.type != ev.RUN_STARTED
        ]

    assert shape(first) == shape(second)
    assert first.result.output == second.result.output == {"b": {"a": [1, 2], "s": "2!"}}
