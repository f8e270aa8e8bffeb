"""How many attempts the local executor runs at once: unset, up to ``AUTO_PARALLEL`` (async tools
hold no thread), of which up to ``AUTO_THREADS`` of plain-function tools; a fan-out wider than
that waits in a queue, not as thousands of tasks. Counted, never timed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from dagwright.executors.local import AUTO_PARALLEL, AUTO_THREADS, LocalExecutor
from dagwright.executors.store import MemoryTraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry


def fan(tool: str, width: int) -> Workflow:
    steps: list[dict[str, Any]] = [{"id": "root", "uses": tool, "with": {"i": -1}}]
    steps += [
        {"id": f"m{i}", "uses": tool, "with": {"i": i}, "needs": ["root"]} for i in range(width)
    ]
    return Workflow.model_validate({"name": f"fan-{width}", "steps": steps})


def test_async_tools_run_as_wide_as_the_plan_up_to_the_automatic_bound(
    registry: ToolRegistry,
) -> None:
    running, most, tasks_seen = 0, 0, 0
    full = asyncio.Event()

    async def gate(i: int) -> int:
        nonlocal running, most, tasks_seen
        running += 1
        most = max(most, running)
        tasks_seen = max(tasks_seen, len(asyncio.all_tasks()))
        if running == AUTO_PARALLEL:
            full.set()
        if i >= 0 and not full.is_set():  # the first wave waits until it is complete
            await full.wait()  # (the per-test timeout ends a hang)
        await asyncio.sleep(0)
        running -= 1
        return i

    registry.register(gate, name="gate")
    width = AUTO_PARALLEL + 400
    result = LocalExecutor(MemoryTraceStore(), registry).run(fan("gate", width))
    assert result.status == "succeeded"
    assert most == AUTO_PARALLEL
    # the rest waited in the queue, not as tasks on the semaphore (a few more: the run's own)
    assert tasks_seen <= AUTO_PARALLEL + 5


def test_plain_function_tools_hold_at_most_the_automatic_threads(registry: ToolRegistry) -> None:
    lock = threading.Lock()
    counts = {"running": 0, "most": 0}
    full = threading.Event()

    def block(i: int) -> int:
        with lock:
            counts["running"] += 1
            counts["most"] = max(counts["most"], counts["running"])
            if counts["running"] == AUTO_THREADS:
                full.set()
        if i >= 0:
            assert full.wait(30), "the threads never all ran at once"
        with lock:
            counts["running"] -= 1
        return i

    registry.register(block, name="block")
    result = LocalExecutor(MemoryTraceStore(), registry).run(fan("block", AUTO_THREADS + 20))
    assert result.status == "succeeded"
    assert counts["most"] == AUTO_THREADS


def test_a_number_bounds_both(registry: ToolRegistry) -> None:
    running, most = 0, 0

    async def count(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001)
        running -= 1
        return i

    registry.register(count, name="count")
    store = MemoryTraceStore()
    executor = LocalExecutor(store, registry, max_parallel=5)
    assert (executor.max_parallel, executor.max_threads) == (5, 5)
    result = executor.run(fan("count", 40))
    assert result.status == "succeeded" and most == 5
    started = store.events(result.run_id)[0]  # the run records the bounds it ran under
    assert (started.data["max_parallel"], started.data["max_threads"]) == (5, 5)
