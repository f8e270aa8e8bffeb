"""The one run lifecycle: plan revisions folded by the reducer, following a run to its end, and
the model-call cache under retries (against a local OpenAI-compatible TEST DOUBLE)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_stub import OpenAIStub, text_reply

from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import AttemptCache, fold_run, follow
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry


def wf(steps: list[dict[str, Any]], **extra: Any) -> Workflow:
    return Workflow.model_validate({"name": "life", "steps": steps, **extra})


ORIGINAL = wf(
    [
        {"id": "a", "uses": "echo", "with": {"x": 1}},
        {
            "id": "b",
            "uses": "flaky",
            "with": {"fail_times": 9},
            "needs": ["a"],
            "on_failure": "replan",
        },
    ]  # fmt: skip
)
REVISED = wf(
    [
        {"id": "a", "uses": "echo", "with": {"x": 1}},
        {"id": "c", "uses": "echo", "with": {"y": "${{ steps.a.output.x }}"}},
    ],
    output="${{ steps.c.output }}",
)


def e(kind: str, step: str | None = None, attempt: int | None = None, **data: Any) -> Event:
    return Event(kind, "r", 0.0, step, attempt, data)


def revised_trace() -> list[Event]:
    return [
        e(ev.RUN_STARTED, inputs={}),
        e(ev.STEP_SCHEDULED, "a", 1),
        e(ev.ATTEMPT_STARTED, "a", 1, attempt_id="1"),
        e(ev.ATTEMPT_FINISHED, "a", 1, status="succeeded", output={"x": 1}),
        e(ev.STEP_FINISHED, "a", 1, status="succeeded", output={"x": 1}),
        e(ev.STEP_SCHEDULED, "b", 1),
        e(ev.ATTEMPT_STARTED, "b", 1, attempt_id="2"),
        e(ev.ATTEMPT_FINISHED, "b", 1, status="failed", error={"message": "no"}),
        e(ev.STEP_FINISHED, "b", 1, status="failed", error={"message": "no"}),
        e(ev.PLAN_REVISED, revision=1, workflow=REVISED.to_data(), kept=["a"], failed_step="b"),
        # a step the revised plan added, then a late report on the step it dropped
        e(ev.STEP_SCHEDULED, "c", 1),
        e(ev.ATTEMPT_STARTED, "c", 1, attempt_id="3"),
        e(ev.ATTEMPT_FINISHED, "b", 1, status="failed", error={"message": "late"}),
        e(ev.ATTEMPT_FINISHED, "c", 1, status="succeeded", output={"y": 1}),
        e(ev.STEP_FINISHED, "c", 1, status="succeeded", output={"y": 1}),
    ]


def test_the_reducer_folds_a_plan_revision_like_any_event() -> None:
    state = engine.RunState.initial(Plan.from_workflow(ORIGINAL), "r")
    seen_plans = []
    for event in revised_trace():
        state = engine.apply(state, event)
        seen_plans.append(sorted(state.current_plan.steps))
    assert seen_plans[8] == ["a", "b"] and seen_plans[9] == ["a", "c"]
    assert state.revisions == 1
    assert state.steps["a"].status == "succeeded" and len(state.steps["a"].attempts) == 1
    assert state.steps["c"].status == "succeeded" and "b" not in state.steps
    assert engine.is_settled(state) and not engine.ready_steps(state.current_plan, state)
    # fold is the same reducer over the whole trace
    folded = engine.fold(Plan.from_workflow(ORIGINAL), "r", revised_trace())
    assert sorted(folded.steps) == ["a", "c"] and folded.steps["c"].output == {"y": 1}


def test_follow_returns_the_final_state_and_sees_every_event(tmp_path: Path) -> None:
    store = SqlTraceStore(str(tmp_path / "t.db"))
    ran: dict[str, Any] = {}

    def run() -> None:
        executor = LocalExecutor(store, replanner=lambda *a: REVISED)
        ran["result"] = executor.run(ORIGINAL, run_id="run-1")

    thread = threading.Thread(target=run)
    thread.start()
    seen: list[tuple[str, list[str]]] = []
    try:
        follower_state = _follow_when_created(store, "run-1", seen)
    finally:
        thread.join(30)
    result = ran["result"]
    assert follower_state.status == result.status == "succeeded"
    assert follower_state.output == result.output == {"y": 1}
    assert sorted(follower_state.current_plan.steps) == ["a", "c"]
    kinds = [k for k, _ in seen]
    assert kinds.count(ev.PLAN_REVISED) == 1 and kinds[-1] == ev.RUN_FINISHED
    assert len(seen) == len(store.events("run-1")), "every stored event was seen once"
    # the events after the revision are folded under the revised plan
    after = kinds.index(ev.PLAN_REVISED)
    assert all(steps == ["a", "c"] for _, steps in seen[after:])
    _, folded = fold_run(store, "run-1")
    assert folded.status == "succeeded" and folded.output == {"y": 1}
    store.close()


def _follow_when_created(
    store: SqlTraceStore, run_id: str, seen: list[tuple[str, list[str]]]
) -> engine.RunState:
    import time

    from dagwright.errors import RunNotFound

    deadline = time.monotonic() + 30
    while True:
        try:
            store.get_run(run_id)
            break
        except RunNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)

    def on_event(event: Event, state: engine.RunState) -> None:
        seen.append((event.type, sorted(state.current_plan.steps)))

    return follow(store, run_id, on_event=on_event, poll=0.01, timeout=30)


def test_follow_gives_up_after_its_timeout() -> None:
    from dagwright.errors import DagwrightError
    from dagwright.executors.lifecycle import NewRun, open_run

    store = MemoryTraceStore()
    new = NewRun(ORIGINAL, {}, "stuck")
    open_run(store, new, executor="local", clock=lambda: 1.0)
    waits: list[float] = []
    with pytest.raises(DagwrightError, match="did not end within"):
        follow(store, "stuck", wait=waits.append, poll=0.5, timeout=0)
    assert waits == [] or all(w == 0.5 for w in waits)


def test_a_run_starts_at_one_instant_for_its_record_and_its_run_started_event() -> None:
    """``runs`` lists ``created_at`` and ``show``/``run --json`` the ``run_started`` time: with two
    clock readings they differed by a millisecond now and then (seen in CI)."""
    from dagwright.executors.lifecycle import NewRun, open_run

    store = MemoryTraceStore()
    readings = iter(float(t) for t in range(100, 200))
    open_run(store, NewRun(ORIGINAL, {}, "r1"), executor="local", clock=lambda: next(readings))
    record = store.get_run("r1")
    started = [e for e in store.events("r1") if e.type == ev.RUN_STARTED]
    assert [e.at for e in started] == [record.created_at] == [100.0]


# -- the model-call cache and retries ----------------------------------------------------------


class DictCache:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value


def test_an_attempt_cache_reads_only_on_the_first_attempt_and_keeps_only_successes() -> None:
    cache = DictCache()
    cache.put("k", {"value": "old"})
    first = AttemptCache(cache, read=True)
    assert first.get("k") == {"value": "old"}
    retry = AttemptCache(cache, read=False)
    assert retry.get("k") is None, "a retry reaches the model"
    retry.put("k2", {"value": "new"})
    assert cache.get("k2") is None, "nothing is cached before the attempt succeeded"
    retry.commit()
    assert cache.get("k2") == {"value": "new"}


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIStub]:
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    with OpenAIStub() as server:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", server.base_url)
        yield server


def test_cache_true_does_not_defeat_retries(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry
) -> None:
    """Attempts 2 and 3 send the same request (the same feedback): the third must still reach
    the model, and a rejected answer must not be served to a later run."""
    stub.replies.extend([text_reply("bad"), text_reply("bad"), text_reply("good")])
    store = SqlTraceStore(str(tmp_path / "t.db"))
    step = {"id": "say", "uses": "llm.generate", "cache": True,
            "with": {"model": "openai:stub-1", "prompt": "Say good"},
            "verify": [{"contains": "good"}], "retry": {"max_attempts": 3, "backoff": 0}}  # fmt: skip
    workflow = Workflow.model_validate({"name": "llm", "steps": [step]})
    first = LocalExecutor(store, registry).run(workflow)
    assert first.status == "succeeded", first.error
    assert len(first.state.steps["say"].attempts) == 3
    assert len(stub.requests) == 3, "every attempt reached the model"
    assert stub.requests[1]["body"]["messages"] == stub.requests[2]["body"]["messages"]
    # a new run: its first request is the first attempt's, whose answer was rejected: not cached
    stub.replies.append(text_reply("good"))
    second = LocalExecutor(store, registry).run(workflow)
    assert second.status == "succeeded"
    assert len(stub.requests) == 4
    hits = [e.data["cache_hit"] for e in store.events(second.run_id) if e.type == ev.MODEL_CALL]
    assert hits == [False]
    store.close()


# -- the run's tools ------------------------------------------------------------------------------


def test_a_workflow_s_tools_stay_in_its_own_registry(tmp_path: Path) -> None:
    """Two workflows whose `tools:` define the same tool name each get their own; neither
    leaks into the default registry (where a worker would see it for every other run)."""
    from dagwright.executors.lifecycle import run_registry
    from dagwright.tools import default_registry

    registries = []
    for word in ("one", "two"):
        folder = tmp_path / word
        folder.mkdir()
        (folder / "own_tools.py").write_text(
            "from dagwright import tool\n\n\n"
            '@tool("own.word")\n'
            "def word() -> str:\n"
            f"    return {word!r}\n"
        )
        workflow = Workflow.model_validate(
            {"name": word, "tools": ["own_tools"], "steps": [{"id": "w", "uses": "own.word"}]}
        )
        registries.append(run_registry(workflow, default_registry, (), str(folder / "wf.yaml")))
    assert [r.get("own.word").fn() for r in registries] == ["one", "two"]
    assert "own.word" not in default_registry
    assert "echo" in registries[0] and "llm.generate" in registries[1]


def test_ctrl_c_while_the_replanner_is_asked_ends_the_run_without_waiting_for_it() -> None:
    asked, release, answered = threading.Event(), threading.Event(), threading.Event()

    def slow_replanner(*_: Any) -> Workflow:
        asked.set()
        release.wait(30)  # answers only once the test is over
        answered.set()
        return REVISED

    store = MemoryTraceStore()
    executor = LocalExecutor(store, replanner=slow_replanner)

    async def interrupted() -> None:
        run = asyncio.ensure_future(executor.run_async(ORIGINAL, run_id="r"))
        for _ in range(3000):
            if asked.is_set():
                break
            await asyncio.sleep(0.01)
        run.cancel()  # what Ctrl-C does to asyncio.run's main task
        with pytest.raises(asyncio.CancelledError):
            await run

    try:
        asyncio.run(interrupted())
        replanner_pending = not answered.is_set()
    finally:
        release.set()
    assert asked.is_set() and replanner_pending, "asyncio.run waited for the replanner's answer"
    kinds = [e.type for e in store.events("r")]
    assert ev.PLAN_REVISED not in kinds and kinds[-1] == ev.RUN_FINISHED
    assert store.events("r")[-1].data["status"] == "cancelled"
