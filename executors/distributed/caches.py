"""What an engine keeps of the runs its process works on: compiled plans (by run, and by
workflow: the runs of one workflow share one compiled plan) and folded states, bounded, under
one lock. ``RunCaches`` is the base of ``engine.Engine``; every part of the distributed engine
reads a run through it (``plan_of``, ``state``) and folds its own appends into it (``_absorb``)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from dagwright.executors import engine
from dagwright.executors.engine.events import Event
from dagwright.executors.lifecycle import run_registry
from dagwright.executors.store.base import RunRecord, TraceStore
from dagwright.planner.plan import Plan
from dagwright.planner.schema import Workflow
from dagwright.tools.registry import ToolRegistry

PLANS_KEPT = 4096
"""Runs whose compiled plan a process keeps (references to a shared plan: cheap)."""
WORKFLOWS_KEPT = 128
"""Distinct workflows whose compiled plan a process keeps."""
STATES_KEPT = 1024
"""Runs whose folded state a process keeps (the others are folded again from their trace)."""


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


class RunCaches:
    """The compiled plans and folded states of the runs this process works on."""

    def __init__(
        self, store: TraceStore, registry: ToolRegistry, tool_modules: tuple[str, ...]
    ) -> None:
        self.store = store
        self.registry = registry
        self.tool_modules = tool_modules
        # compiled plans: by run (recently used first out), and by workflow (the runs of one
        # workflow share one compiled plan), so a worker compiles a workflow once, not per run
        self._plans: OrderedDict[str, tuple[Plan, ToolRegistry]] = OrderedDict()
        self._compiled: OrderedDict[tuple[str, str | None], tuple[Plan, ToolRegistry]] = (
            OrderedDict()
        )
        # folded states of the runs this process works on, under one lock: a threads-pool
        # worker runs many attempts at once, and decisions must not see a half-applied event
        self._states: OrderedDict[str, tuple[engine.RunState, list[int]]] = OrderedDict()
        self.lock = threading.RLock()

    def plan_of(self, run_id: str) -> tuple[Plan, ToolRegistry]:
        with self.lock:
            cached = self._plans.get(run_id)
            if cached is not None:
                self._plans.move_to_end(run_id)
                return cached
        cached = self._compile(self.store.get_run(run_id))
        with self.lock:
            _remember(self._plans, run_id, cached, PLANS_KEPT)
        return cached

    def _compile(self, record: RunRecord) -> tuple[Plan, ToolRegistry]:
        key = (json.dumps(record.workflow, sort_keys=True, separators=(",", ":")), record.source)
        with self.lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled
        workflow = Workflow.model_validate(record.workflow)
        registry = run_registry(workflow, self.registry, self.tool_modules, record.source)
        compiled = (Plan.from_workflow(workflow), registry)
        with self.lock:
            _remember(self._compiled, key, compiled, WORKFLOWS_KEPT)
        return compiled

    def state(self, run_id: str) -> tuple[Plan, ToolRegistry, engine.RunState]:
        """The run's state, folded incrementally from the events this process has not seen.

        Only a gap-free prefix is applied: with several writers, an append that took an earlier
        ``seq`` may become visible after a later one; its writer advances the run itself."""
        plan, registry = self.plan_of(run_id)
        with self.lock:
            state = self._fold_new(plan, run_id)
            return state.current_plan, registry, state

    def _fold_new(self, plan: Plan, run_id: str) -> engine.RunState:
        states = self._states
        folded = states.get(run_id)
        if folded is None:
            folded = states[run_id] = (engine.RunState.initial(plan, run_id), [0])
        state, seen = folded
        for event in self.store.events(run_id, after=seen[0]):
            if event.seq != seen[0] + 1:
                break
            seen[0] = event.seq
            state = engine.apply(state, event)
        if state.status in engine.FINAL:
            states.pop(run_id, None)
        else:
            _remember(states, run_id, (state, seen), STATES_KEPT)
        return state

    def _absorb(self, run_id: str, stored: list[Event] | None) -> None:
        """Fold this process's own appended events into its cached state when they directly
        follow what it has seen (no need to read them back)."""
        if not stored:
            return
        with self.lock:
            folded = self._states.get(run_id)
            if folded is None or stored[0].seq != folded[1][0] + 1:
                return
            state, seen = folded
            for event in stored:
                state = engine.apply(state, event)
            seen[0] = stored[-1].seq or seen[0]
            self._states[run_id] = (state, seen)
            if state.status in engine.FINAL:
                self._states.pop(run_id, None)

    def _cached(self, run_id: str) -> tuple[engine.RunState, int] | None:
        """The cached state and the ``seq`` the next event must get for it to be current."""
        folded = self._states.get(run_id)
        return (folded[0], folded[1][0] + 1) if folded is not None else None

    def _keep(self, run_id: str, plan: Plan, registry: ToolRegistry) -> None:
        """Keep a new run's plan and its initial state (``starting.start``: nothing to read)."""
        with self.lock:
            _remember(self._plans, run_id, (plan, registry), PLANS_KEPT)
            _remember(
                self._states, run_id, (engine.RunState.initial(plan, run_id), [0]), STATES_KEPT
            )


__all__ = ["PLANS_KEPT", "STATES_KEPT", "WORKFLOWS_KEPT", "RunCaches"]
