"""The distributed engine in one process, two engines on one SQLite trace (as two workers):
recording an outcome is a compare-and-set on the run's next seq, so a decision made on a stale
cached state is never written; the engine reads the trace and decides again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagwright.errors import StaleState
from dagwright.executors.distributed.engine import Dispatch, Engine
from dagwright.executors.engine import events as ev
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry

DIAMOND = Workflow.model_validate({"name": "diamond", "steps": [
    {"id": "a", "uses": "echo", "with": {"x": 1}},
    {"id": "b", "uses": "test.hook", "needs": ["a"]},
    {"id": "c", "uses": "echo", "with": {"x": 3}, "needs": ["a"]},
    {"id": "d", "uses": "echo", "with": {"x": 4}, "needs": ["b", "c"]},
]})  # fmt: skip


def test_a_decision_on_a_stale_state_is_made_again(tmp_path: Path, registry: ToolRegistry) -> None:
    hook: dict[str, Any] = {}

    def run_hook() -> str:
        """While b runs, another worker finishes c."""
        hook["c"] = hook["other"].execute(hook["dispatch"])
        return "b done"

    registry.register(run_hook, name="test.hook")
    db = str(tmp_path / "t.db")
    stores = [SqlTraceStore(db), SqlTraceStore(db)]
    one, other = (Engine(s, registry) for s in stores)
    stale: list[str] = []
    append = stores[0].append

    def counting_append(*args: Any, **kwargs: Any) -> Any:
        try:
            return append(*args, **kwargs)
        except StaleState:
            stale.append(args[0])
            raise

    stores[0].append = counting_append  # type: ignore[method-assign]
    run_id, first = one.start(DIAMOND, {})
    assert [d.step for d in first] == ["a"]
    after_a = one.execute(first[0])
    by_step: dict[str, Dispatch] = {d.step: d for d in after_a}
    assert set(by_step) == {"b", "c"}
    hook.update(other=other, dispatch=by_step["c"])
    after_b = one.execute(by_step["b"])
    # the other worker finished c while b ran, and could not dispatch d (b was running)
    assert hook["c"] == []
    # `one` decided on its cached state (c not finished), its append was refused, it read the
    # trace and dispatched d itself
    assert stale == [run_id]
    assert [d.step for d in after_b] == ["d"]
    assert one.execute(after_b[0]) == []
    events = stores[1].events(run_id)
    assert [e.step for e in events if e.type == ev.STEP_SCHEDULED].count("d") == 1
    assert events[-1].type == ev.RUN_FINISHED and events[-1].data["status"] == "succeeded"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for s in stores:
        s.close()


FRAGILE = Workflow.model_validate({"name": "fragile", "steps": [
    {"id": "a", "uses": "echo", "with": {"x": 1}},
    {"id": "b", "uses": "flaky", "with": {"fail_times": 9}, "needs": ["a"],
     "on_failure": "replan"},
]})  # fmt: skip
REVISED = Workflow.model_validate({"name": "fragile", "steps": [
    {"id": "a", "uses": "echo", "with": {"x": 1}},
    {"id": "c", "uses": "echo", "with": {"y": 2}, "needs": ["a"]},
]})  # fmt: skip


def test_replanning_asks_once_and_records_one_outcome_per_revision(
    tmp_path: Path, registry: ToolRegistry
) -> None:
    """Two workers (or a worker and a sweeper) reach the same failed step: one replanner call;
    another only a minute after the failure (the first worker may be lost), and whichever
    outcome is recorded first wins: a late revision after a failed try is dropped."""
    now = [1019.5]
    calls: list[str] = []
    db = str(tmp_path / "t.db")
    seen: dict[str, Any] = {}

    def slow_revising(*_: Any) -> Workflow:
        calls.append("revising")
        now[0] += 1  # a second later (and across a wall-clock minute): not asked again
        seen["at once"] = other.advance(seen["run_id"])
        now[0] += 61  # the first worker looks lost: the other asks again, and fails first
        seen["a minute later"] = other.advance(seen["run_id"])
        return REVISED

    def failing(*_: Any) -> Workflow:
        calls.append("failing")
        raise RuntimeError("the model is unreachable")

    one = Engine(SqlTraceStore(db), registry, clock=lambda: now[0], replanner=slow_revising)
    other = Engine(SqlTraceStore(db), registry, clock=lambda: now[0], replanner=failing)
    run_id, first = one.start(FRAGILE, {})
    seen["run_id"] = run_id
    (b,) = one.execute(first[0])
    assert one.execute(b) == [], "the late revision is not recorded: nothing to dispatch"
    assert calls == ["revising", "failing"]
    assert seen == {"run_id": run_id, "at once": [], "a minute later": []}
    events = one.store.events(run_id)
    assert [e.type for e in events].count(ev.PLAN_REVISED) == 0
    assert events[-1].type == ev.RUN_FINISHED and events[-1].data["status"] == "failed"
    assert events[-1].data["error"]["replan"] == "replanning failed: the model is unreachable"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_a_revision_recorded_first_wins(tmp_path: Path, registry: ToolRegistry) -> None:
    db = str(tmp_path / "t.db")
    one = Engine(SqlTraceStore(db), registry, replanner=lambda *_: REVISED)
    run_id, first = one.start(FRAGILE, {})
    (b,) = one.execute(first[0])
    (c,) = one.execute(b)  # b failed for good; the revision adds c, dispatched at once
    assert c.step == "c"
    assert one.execute(c) == []
    events = one.store.events(run_id)
    revision = next(e for e in events if e.type == ev.PLAN_REVISED)
    assert revision.data["kept"] == ["a"] and revision.data["failed_step"] == "b"
    assert events[-1].data["status"] == "succeeded" and events[-1].data["output"] == {"c": {"y": 2}}


def test_a_worker_compiles_a_workflow_once_for_all_its_runs(
    tmp_path: Path, registry: ToolRegistry, monkeypatch: Any
) -> None:
    """A worker that meets many runs of one workflow (each run's first step is dispatched by
    another process) compiles its plan once; the runs' traces are each their own."""
    from dagwright.planner import plan as plan_module

    db = str(tmp_path / "t.db")
    submitter, worker = Engine(SqlTraceStore(db), registry), Engine(SqlTraceStore(db), registry)
    wf = Workflow.model_validate({"name": "two", "inputs": {"x": {"type": "integer"}}, "steps": [
        {"id": "a", "uses": "echo", "with": {"x": "${{ inputs.x }}"}},
        {"id": "b", "uses": "echo", "with": {"y": "${{ steps.a.output.x }}"}},
    ]})  # fmt: skip
    compiled: list[str] = []
    real = plan_module.Plan.from_workflow.__func__  # type: ignore[attr-defined]

    def counted(cls: Any, workflow: Workflow) -> Any:
        compiled.append(workflow.name)
        return real(cls, workflow)

    monkeypatch.setattr(plan_module.Plan, "from_workflow", classmethod(counted))
    runs = [submitter.start(wf, {"x": i}) for i in range(5)]
    compiled.clear()  # the submitter compiled each run's plan as it started it
    for _run_id, first in runs:
        (after_a,) = worker.execute(first[0])
        assert worker.execute(after_a) == []
    assert compiled == ["two"], "one compile for the five runs"
    for i, (run_id, _) in enumerate(runs):
        events = worker.store.events(run_id)
        assert events[-1].type == ev.RUN_FINISHED
        assert events[-1].data["status"] == "succeeded"
        outputs = [e.data["output"] for e in events if e.type == ev.STEP_FINISHED]
        assert outputs == [{"x": i}, {"y": i}]
