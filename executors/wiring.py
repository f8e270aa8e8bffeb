"""What every driver (the CLI, the Celery workers, the API) builds from its ``Settings``, once,
at its edge: the tools plans may use, the model cache, the model settings, the replanner, the
planner's few-shot examples, and planning a task into a workflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagwright.errors import PlanError, PlanIssue

if TYPE_CHECKING:
    from dagwright.executors.lifecycle import Replanner
    from dagwright.executors.store import TraceStore
    from dagwright.planner.schema import Workflow
    from dagwright.settings import Settings
    from dagwright.tools import ToolRegistry


def registry_with(settings: Settings) -> ToolRegistry:
    """The built-in tools and DAGWRIGHT_TOOLS' (what plans may use, what ``tools`` lists);
    raises PlanError when a DAGWRIGHT_TOOLS module cannot be loaded."""
    from dagwright.planner.tool_modules import load_tool_modules
    from dagwright.tools import default_registry

    registry, issues = load_tool_modules(default_registry, settings.tools)
    if issues:
        raise PlanError(issues)
    return registry


def model_cache(settings: Settings) -> Any:
    """The model-call cache: Redis when DAGWRIGHT_MODEL_CACHE names one, else None (the trace
    store's cache table)."""
    if not settings.model_cache:
        return None
    from dagwright.agents.cache import RedisCache

    return RedisCache(settings.model_cache)


def model_settings(settings: Settings) -> Any:
    from dagwright.agents.models import ModelSettings

    return ModelSettings.from_settings(settings)


def replanner(wf: Workflow | None, model: str, settings: Settings) -> Replanner | None:
    """For steps with ``on_failure: replan``: the planner's model (else DAGWRIGHT_MODEL). With
    ``wf``, None when none of its steps replans."""
    model = model or settings.model
    if not model:
        return None
    if wf is not None and not any(s.on_failure == "replan" for s in wf.steps):
        return None
    from dagwright.executors.lifecycle import model_replanner

    return model_replanner(model, model_settings(settings))


def examples(registry: ToolRegistry, store: TraceStore | None) -> list[str]:
    """Few-shot plans: the repository's examples, then recent successful runs of ``store``."""
    from dagwright.planner.llm import example_plans, examples_from_runs

    shown = example_plans(registry)
    if store is not None:
        try:
            shown += examples_from_runs(store, registry)
        except Exception:  # noqa: BLE001 - examples are a help, not a requirement
            pass
    return shown


@dataclass
class Planned:
    """A workflow planned from a task, and the model calls that planned it (the run's prelude:
    recorded so that replay serves them)."""

    workflow: Workflow
    prelude: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What planning tells the user (few-shot examples left out to fit a local model)."""


def plan_task(
    task: str,
    model: str,
    registry: ToolRegistry,
    settings: Settings,
    store: TraceStore | None = None,
) -> Planned:
    """Plan ``task`` with ``model``; PlanError when the model gives no valid plan."""
    from dagwright.agents.models import ModelCall, connect
    from dagwright.planner.llm import PlanningFailed, plan

    recorded: list[ModelCall] = []
    notes: list[str] = []
    try:
        provider = connect(model, model_settings(settings))
        workflow = plan(
            task, registry, provider, examples=examples(registry, store), record=recorded.append,
            notes=notes,
        )  # fmt: skip
    except PlanningFailed as exc:
        raise PlanError([PlanIssue(f"the model gave no valid plan: {exc}", field="task")]) from None
    return Planned(workflow, [c.as_dict() for c in recorded], notes)


__all__ = [
    "Planned",
    "examples",
    "model_cache",
    "model_settings",
    "plan_task",
    "registry_with",
    "replanner",
]
