"""The Celery executor when things go wrong: a worker killed mid-step, load, Redis restarting.

Real worker processes on the session's own redis-server, each test with its own workers and trace
store; the test that restarts Redis starts a redis-server of its own.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    RESILIENCE_DB,
    Workers,
    celery_env,
    flush_broker,
    free_port,
    start_redis,
    stop_redis,
    use_broker,
)

from dagwright.executors import engine
from dagwright.executors.distributed.engine import Engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import follow
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import default_registry


def wf(steps: list[dict[str, Any]], name: str = "resilience") -> Workflow:
    return Workflow.model_validate({"name": name, "steps": steps})


def submit(eng: Engine, workflow: Workflow, broker: str) -> str:
    run_id, dispatches = eng.start(workflow, {})
    use_broker(broker).send(dispatches)
    return run_id


def wait_finished(store: SqlTraceStore, run_ids: list[str], timeout: float) -> None:
    """Follow each run to its end (``lifecycle.follow``, as the CLI does)."""
    deadline = time.monotonic() + timeout
    for rid in run_ids:
        follow(store, rid, poll=0.1, timeout=max(0.0, deadline - time.monotonic()))


def wait_for(store: SqlTraceStore, run_id: str, predicate: Any, timeout: float = 20) -> list[Event]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = store.events(run_id)
        if predicate(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s")


def finished_once(events: list[Event]) -> None:
    """Every step ran to one outcome: one step_finished and one final attempt_finished each."""
    finishes = Counter(e.step for e in events if e.type == ev.STEP_FINISHED)
    assert all(n == 1 for n in finishes.values()), finishes
    outcomes = Counter((e.step, e.attempt) for e in events if e.type == ev.ATTEMPT_FINISHED)
    assert all(n == 1 for n in outcomes.values()), outcomes


@pytest.fixture
def broker(redis_server: str) -> Iterator[str]:
    """This module's database of the session's Redis, emptied around each test."""
    url = f"{redis_server}/{RESILIENCE_DB}"
    flush_broker(url)
    yield url
    flush_broker(url)


@pytest.fixture
def cluster(broker: str, tmp_path: Path) -> Iterator[tuple[SqlTraceStore, Engine, Workers]]:
    db = str(tmp_path / "trace.db")
    store = SqlTraceStore(db)
    workers = Workers(celery_env(db, broker), tmp_path)
    yield store, Engine(store, default_registry), workers
    workers.stop_all()
    store.close()


def test_a_worker_killed_mid_step_loses_no_work(cluster) -> None:  # noqa: ANN001
    store, eng, workers = cluster
    first = workers.start(concurrency=2)
    run_id = submit(eng, wf([
        {"id": "before", "uses": "echo", "with": {"v": 1}},
        {"id": "long", "uses": "sleep", "with": {"ms": 2500}, "needs": ["before"]},
        {"id": "after", "uses": "echo", "with": {"v": "${{ steps.long.output.slept_ms }}"}},
    ]), workers.broker)  # fmt: skip
    wait_for(
        store, run_id, lambda es: any(e.type == ev.ATTEMPT_STARTED and e.step == "long" for e in es)
    )
    workers.kill(first)  # kill -9 of the worker and its pool: the step's worker is gone
    workers.start(concurrency=2)
    wait_finished(store, [run_id], timeout=60)
    events = store.events(run_id)
    plan, _ = eng.plan_of(run_id)
    state = engine.fold(plan, run_id, events)
    assert state.status == "succeeded", state.error
    assert state.output == {"after": {"v": 2500}}
    finished_once(events)
    starts = Counter(e.step for e in events if e.type == ev.ATTEMPT_STARTED)
    assert starts["before"] == 1 and starts["after"] == 1, "every other step ran once"
    assert starts["long"] >= 2, "the lost attempt was sent again"
    assert len(state.steps["long"].attempts) == 1, "…as the same attempt, not a new one"
    resent = [
        e
        for e in events
        if e.type == ev.STEP_SCHEDULED and e.step == "long" and e.data.get("reason")
    ]
    assert any("worker was lost" in e.data["reason"] for e in resent), [e.data for e in resent]


def test_twenty_runs_at_once_on_two_worker_processes(cluster) -> None:  # noqa: ANN001
    store, eng, workers = cluster
    workers.start(concurrency=1)
    workers.start(concurrency=1)
    steps = [{"id": "root", "uses": "echo", "with": {"v": 0}}]
    for i in range(1, 19):
        deps = (
            ["root"] if i < 7 else [f"s{i - 6}", f"s{(i * 5) % 6 + 1}"] if i < 13 else [f"s{i - 6}"]
        )
        steps.append({"id": f"s{i}", "uses": "echo", "with": {"i": i}, "needs": sorted(set(deps))})
    steps.append({"id": "sink", "uses": "echo", "needs": [f"s{i}" for i in range(13, 19)]})
    workflow = wf(steps, name="load")
    assert len(workflow.steps) == 20
    run_ids = [submit(eng, workflow, workers.broker) for _ in range(20)]
    # the worker that records a run's end wakes whoever waits for it (a Redis list)
    assert use_broker(workers.broker).wait_finished(run_ids[0], 60) == "succeeded"
    wait_finished(store, run_ids, timeout=120)
    for rid in run_ids:
        events = store.events(rid)
        plan, _ = eng.plan_of(rid)
        assert engine.fold(plan, rid, events).status == "succeeded"
        finished_once(events)
        starts = Counter(e.step for e in events if e.type == ev.ATTEMPT_STARTED)
        assert set(starts.values()) == {1} and len(starts) == 20, "no step recorded twice"


def test_redis_restarting_mid_run_does_not_lose_the_run(tmp_path: Path) -> None:
    port = free_port()  # a redis-server of its own: this test kills it
    broker = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_redis(port, tmp_path)
    db = str(tmp_path / "trace.db")
    store = SqlTraceStore(db)
    eng = Engine(store, default_registry)
    workers = Workers(celery_env(db, broker), tmp_path)
    try:
        worker = workers.start(concurrency=2)
        steps = [{"id": "s0", "uses": "sleep", "with": {"ms": 100}}]
        steps += [
            {"id": f"s{i}", "uses": "sleep", "with": {"ms": 300}, "needs": [f"s{i - 1}"]}
            for i in range(1, 8)
        ]
        run_id = submit(eng, wf(steps, name="redis-restart"), broker)
        wait_for(
            store, run_id, lambda es: any(e.type == ev.STEP_FINISHED and e.step == "s2" for e in es)
        )
        stop_redis(redis_proc)  # kill -9: Redis dies with the queue in it (no persistence)
        time.sleep(1)
        redis_proc = start_redis(port, tmp_path)
        time.sleep(3)
        if worker.poll() is not None:
            # Celery's consumer can die on a lost Redis connection ("Unrecoverable error",
            # a known kombu race); in production a supervisor restarts it: so does this test.
            workers.start(concurrency=2)
        wait_finished(store, [run_id], timeout=90)
        events = store.events(run_id)
        plan, _ = eng.plan_of(run_id)
        state = engine.fold(plan, run_id, events)
        assert state.status == "succeeded", state.error
        finished_once(events)
        assert [e.type for e in events].count(ev.RUN_FINISHED) == 1
    finally:
        workers.stop_all()
        stop_redis(redis_proc)
        store.close()


def test_replanning_on_celery_workers(broker: str, tmp_path: Path) -> None:
    from openai_stub import OpenAIStub, tool_reply

    revised = {"name": "fragile", "steps": [
        {"id": "fetch", "uses": "echo", "with": {"text": "raw data"}},
        {"id": "summary2", "uses": "echo", "with": {"s": "${{ steps.fetch.output.text }}"}},
    ], "output": "${{ steps.summary2.output }}"}  # fmt: skip
    with OpenAIStub([tool_reply("Plan", revised)]) as stub:
        db = str(tmp_path / "trace.db")
        store = SqlTraceStore(db)
        env = celery_env(
            db, broker, DAGWRIGHT_MODEL="openai:stub", DAGWRIGHT_MODEL_BASE_URL=stub.base_url
        )
        workers = Workers(env, tmp_path)
        try:
            workers.start(concurrency=2)
            run_id = submit(Engine(store, default_registry), wf([
                {"id": "fetch", "uses": "echo", "with": {"text": "raw data"}},
                {"id": "summarise", "uses": "flaky", "with": {"fail_times": 9}, "needs": ["fetch"],
                 "on_failure": "replan"},
            ], name="fragile"), broker)  # fmt: skip
            wait_finished(store, [run_id], timeout=60)
        finally:
            workers.stop_all()
        events = store.events(run_id)
        plan, _ = Engine(store, default_registry).plan_of(run_id)
        state = engine.fold(plan, run_id, events)
        assert state.status == "succeeded", state.error
        assert state.output == {"s": "raw data"}
        starts = Counter(e.step for e in events if e.type == ev.ATTEMPT_STARTED)
        assert starts == {"fetch": 1, "summarise": 1, "summary2": 1}, "fetch was kept, not re-run"
        assert [e.data["kept"] for e in events if e.type == ev.PLAN_REVISED] == [["fetch"]]
        assert len(stub.requests) == 1
        store.close()
