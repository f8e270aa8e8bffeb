"""Replanning, in the one run lifecycle (``executors.lifecycle``): when a step failed with
``on_failure: replan``, ask the replanner for a revised plan, validate it with the run's own
registry, and say what to record (``Replanning``, ``Revision``); ``model_replanner`` asks a
model through the planner. Called by the local executor and the distributed engine (Celery
workers, the API's threads); ``executors.wiring`` and the Celery app build ``model_replanner``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagwright.executors import engine
from dagwright.executors.engine import decisions
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.planner.operator_only import changed
from dagwright.planner.schema import Workflow
from dagwright.planner.validate import validate
from dagwright.tools.registry import ToolRegistry

Recorder = Callable[[Any], None]
Replanner = Callable[[Workflow, dict[str, Any], dict[str, Any], ToolRegistry, Recorder], Workflow]
"""``replanner(workflow, outputs, failure, registry, record) -> Workflow``: a revised plan for
the run after ``failure`` (``{"step", "error"}``), naming only tools of the run's ``registry``;
``record(call)`` records each model call it makes."""


def model_replanner(model: str, model_settings: Any) -> Replanner:
    """A replanner that asks ``model`` (``PROVIDER:MODEL``) through the planner."""
    from dagwright.agents.models import connect
    from dagwright.planner.llm import replan

    provider = connect(model, model_settings)

    def replanner(
        workflow: Workflow,
        outputs: dict[str, Any],
        failure: dict[str, Any],
        registry: ToolRegistry,
        record: Recorder,
    ) -> Workflow:
        return replan(workflow, outputs, failure, registry, provider, record=record)

    return replanner


@dataclass
class Revision:
    """What replanning came to: the events to record (the replanner's model calls, then
    ``plan_revised``), or the reason there is no revision (then the run fails)."""

    events: list[Event]
    problem: str | None = None


class Replanning:
    """Replanning for one run: when, and with what. Drivers decide where the replanner runs
    (a thread, a worker holding a claim) and record the events."""

    def __init__(self, replanner: Replanner | None, registry: ToolRegistry) -> None:
        self.replanner = replanner
        self.registry = registry

    def wanted(self, state: engine.RunState) -> bool:
        """A step failed with ``on_failure: replan``, revisions are left, and there is a
        replanner: the plan is to be revised before the run can go on."""
        return self.replanner is not None and decisions.may_replan(state)

    def revise(self, state: engine.RunState, clock: Callable[[], float]) -> Revision:
        """Ask the replanner (blocking) and validate the revised plan with the run's registry."""
        assert self.replanner is not None and state.replan_for is not None
        plan = state.current_plan
        failure = {"step": state.replan_for, "error": state.steps[state.replan_for].error}
        outputs = decisions.succeeded_outputs(state)
        calls: list[Event] = []

        def record(call: Any) -> None:
            data = call.as_dict() if hasattr(call, "as_dict") else dict(call)
            calls.append(Event(ev.MODEL_CALL, state.run_id, clock(), None, None, data))

        try:
            revised = self.replanner(plan.workflow, outputs, failure, self.registry, record)
        except Exception as exc:  # noqa: BLE001 - the run then fails with the step's own error
            return Revision(calls, f"replanning failed: {exc}")
        issues = validate(revised, self.registry) + changed(
            plan.workflow, revised, "a revised plan"
        )
        if issues:
            problems = "; ".join(str(i) for i in issues[:5])
            return Revision(calls, f"the revised plan is not valid: {problems}")
        event = decisions.revision_event(state, revised, failure, clock())
        return Revision([*calls, event])


__all__ = ["Recorder", "Replanner", "Replanning", "Revision", "model_replanner"]
