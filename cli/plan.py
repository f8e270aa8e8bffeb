"""``dagwright plan``, and the planner's part in ``run``: planning from a task
(``run --task``), the replanner for ``on_failure: replan``, few-shot examples, model settings
and the model cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from dagwright.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    _die,
    _parse_inputs,
    _plural,
    _settings,
    err,
)

if TYPE_CHECKING:
    from dagwright.executors.store import TraceStore
    from dagwright.planner.schema import Workflow
    from dagwright.settings import Settings
    from dagwright.tools import ToolRegistry


def plan_cmd(
    task: Annotated[
        str, typer.Option("--task", "-t", help="What the workflow should do, in plain words.")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="PROVIDER:MODEL, e.g. openai:gpt-4o-mini.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the plan here as YAML.")
    ] = None,
    max_repairs: Annotated[
        int,
        typer.Option("--max-repairs", min=0, max=10, help="Re-asks after a plan fails validation."),
    ] = 2,
    calls: Annotated[
        Path | None,
        typer.Option(
            "--calls", help="Write every model call (request, response, error, usage) as JSON."
        ),
    ] = None,
) -> None:
    """Ask a model for a plan; print it (or write it with -o) as a reviewable YAML workflow.

    The model can only name registered tools (`dagwright tools`); the plan is validated like a
    YAML workflow and its problems fed back for up to --max-repairs re-asks. Endpoint settings:
    DAGWRIGHT_MODEL_BASE_URL, DAGWRIGHT_MODEL_API_KEY (or OPENAI_API_KEY), DAGWRIGHT_MODEL_SEED."""
    from dagwright.agents.models import ModelCall, connect
    from dagwright.planner.llm import PlanningFailed, plan
    from dagwright.planner.loader import dump_workflow

    settings = _settings()
    registry = _registry_with(settings)
    recorded: list[ModelCall] = []
    notes: list[str] = []
    try:
        provider = connect(model, _model_settings(settings))
        workflow = plan(
            task,
            registry,
            provider,
            max_repairs=max_repairs,
            examples=_examples(registry, None),
            record=recorded.append,
            notes=notes,
        )
    except PlanningFailed as exc:
        _die(f"no valid plan: {exc}", EXIT_FAILED)
    finally:
        _write_calls(calls, recorded)
        for note in notes:
            err.print(f"note: {escape(note)}")
    text = dump_workflow(workflow)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        err.print(f"plan written to {escape(str(output))} after "
                  f"{_plural(len(recorded), 'model call')}; review it, then: dagwright run "
                  f"{escape(str(output))}")  # fmt: skip
    else:
        sys.stdout.write(text)


def _plan_for_run(
    task: str, model: str | None, pairs: list[str] | None, db: str | None = None
) -> tuple[Workflow, ToolRegistry, dict[str, Any], list[dict[str, Any]]]:
    """`run --task`: plan, then resolve inputs like a workflow file's. A plan that stays
    invalid is refused (PlanError, exit 2) with the model's last problems."""
    from dagwright.executors.wiring import plan_task
    from dagwright.planner.inputs import resolve_inputs

    settings = _settings()
    model = model or settings.model
    if not model:
        _die("--task needs --model PROVIDER:MODEL (or DAGWRIGHT_MODEL)", EXIT_INVALID)
    registry = _registry_with(settings)
    store = _examples_store(db)
    try:
        planned = plan_task(task, model, registry, settings, store)
    finally:
        if store is not None:
            store.close()
    for note in planned.notes:
        err.print(f"note: {escape(note)}")
    steps, calls = len(planned.workflow.steps), len(planned.prelude)
    err.print(f"planned {_plural(steps, 'step')} after {_plural(calls, 'model call')}")
    inputs = resolve_inputs(planned.workflow, _parse_inputs(pairs), as_text=True)
    return planned.workflow, registry, inputs, planned.prelude


def _replanner(wf: Workflow, model: str, settings: Settings) -> Any:
    """For steps with on_failure: replan — the planner's model (--model, else DAGWRIGHT_MODEL)."""
    from dagwright.executors.wiring import replanner

    return replanner(wf, model, settings)


def _examples_store(db: str | None) -> TraceStore | None:
    """The trace store few-shot examples come from, when it exists (planning never creates
    one)."""
    from dagwright.executors.store import open_store

    target = db or _settings().db
    if "://" in target or Path(target).exists():
        try:
            return open_store(target)
        except Exception:  # noqa: BLE001 - examples are a help, not a requirement
            return None
    return None


def _examples(registry: ToolRegistry, db: str | None) -> list[str]:
    from dagwright.executors.wiring import examples

    store = _examples_store(db)
    try:
        return examples(registry, store)
    finally:
        if store is not None:
            store.close()


def _registry_with(settings: Settings) -> ToolRegistry:
    from dagwright.executors.wiring import registry_with

    return registry_with(settings)


def _model_cache(settings: Settings) -> Any:
    from dagwright.executors.wiring import model_cache

    return model_cache(settings)


def _model_settings(settings: Settings) -> Any:
    from dagwright.executors.wiring import model_settings

    return model_settings(settings)


def _write_calls(path: Path | None, recorded: list[Any]) -> None:
    if path is not None:
        path.write_text(json.dumps([c.as_dict() for c in recorded], indent=2, default=str))


__all__ = ["plan_cmd"]
