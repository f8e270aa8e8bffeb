"""What a request becomes before anything is recorded: a validated run to start (``Ready``),
from a known workflow's name, a workflow given as YAML text, a task planned by a model, or a
resume or fork of a recorded run, with the operator-only checks (docs/security.md). Called by
``service.RunService`` (submit, resume, fork); a bad request raises ``Problem`` (404) or
``PlanError`` (422) here, and no run is recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagwright.api.problems import Problem
from dagwright.api.schemas import ResumeRun, SubmitRun
from dagwright.errors import PlanError, PlanIssue
from dagwright.executors.wiring import plan_task
from dagwright.planner import operator_only
from dagwright.planner.prepare import prepare, prepare_text
from dagwright.planner.schema import Workflow
from dagwright.planner.source import Source

if TYPE_CHECKING:
    from dagwright.api.service import RunService


@dataclass
class Ready:
    """A validated run to start."""

    workflow: Workflow
    inputs: dict[str, Any]
    source: str | None = None
    prelude: list[dict[str, Any]] | None = None
    reused: dict[str, dict[str, Any]] | None = None
    lineage: dict[str, Any] | None = None
    priority: int = 0


def submitted(service: RunService, body: SubmitRun) -> Ready:
    """The run a submission names: a known workflow, a workflow as text, or a planned task."""
    if body.workflow is not None:
        entry = service.catalog.find(body.workflow)
        if entry is None:
            known = ", ".join(service.catalog.names()) or "none"
            raise Problem(
                404, "Unknown workflow", f"no workflow {body.workflow!r} (known: {known})"
            )
        p = prepare(
            entry.path,
            service.registry,
            tool_modules=service.settings.tools,
            inputs=body.inputs,
            limits=service.limits,
            # the server's threads run it with its secrets; Celery workers, with theirs
            secrets=service.settings.step_secrets() if service.executor == "api" else None,
        )
        return Ready(p.workflow, p.inputs, source=str(entry.path))
    if body.workflow_yaml is not None:
        p = prepare_text(
            body.workflow_yaml, service.registry, inputs=body.inputs, limits=service.limits
        )
        check_operator_only(p.workflow, p.source, "a workflow given as text")
        return Ready(p.workflow, p.inputs)
    assert body.task is not None
    model = body.model or service.settings.model
    if not model:
        issue = PlanIssue("a task needs a model (or DAGWRIGHT_MODEL on the server)", field="model")
        raise PlanError([issue])
    planned = plan_task(body.task, model, service.registry, service.settings, service.store)
    check_operator_only(planned.workflow, Source(), "a plan written by a model")
    from dagwright.planner.inputs import resolve_inputs

    inputs = resolve_inputs(planned.workflow, body.inputs)
    return Ready(planned.workflow, inputs, prelude=planned.prelude)


def derived(
    service: RunService,
    run_id: str,
    mode: str,
    from_steps: list[str],
    inputs: dict[str, Any],
    body: ResumeRun | None,
    sets: list[str] | None = None,
) -> tuple[Ready, str]:
    """A resume or fork of a recorded run (``executors.derived``): the run to start and its id."""
    from dagwright.executors.derived import derived_run

    workflow_file = _workflow_file(service, body)
    parent, derivation, _registry, source, child = derived_run(
        service.store,
        run_id,
        mode=mode,
        registry=service.registry,
        tool_modules=service.settings.tools,
        from_steps=list(from_steps),
        workflow_file=workflow_file,
        workflow_text=body.workflow_yaml if body is not None else None,
        inputs={k: v if isinstance(v, str) else json.dumps(v) for k, v in inputs.items()},
        sets=sets,
        heartbeat=service.settings.heartbeat,
        limits=service.limits,
    )
    if body is not None and body.workflow_yaml is not None:
        check_operator_only(derivation.workflow, Source(), "a workflow given as text")
    elif sets:  # a caller's edits: the parent's operator-only steps stay as they were
        original = Workflow.model_validate(parent.workflow)
        issues = operator_only.changed(original, derivation.workflow, "a fork's edits")
        if issues:
            raise PlanError(issues)
    ready = Ready(
        derivation.workflow,
        derivation.inputs,
        source=source,
        reused=derivation.reused,
        lineage=derivation.lineage,
    )
    return ready, child


def _workflow_file(service: RunService, body: ResumeRun | None) -> Path | None:
    if body is None or body.workflow is None:
        return None
    entry = service.catalog.find(body.workflow)
    if entry is None:
        raise Problem(404, "Unknown workflow", f"no workflow {body.workflow!r}")
    return entry.path


def check_operator_only(workflow: Workflow, source: Source, what: str) -> None:
    """Secrets and internal hosts go only to the workflows the operator put in
    DAGWRIGHT_WORKFLOWS: a workflow from a request body (or a model) could send a secret, or a
    request, anywhere (docs/security.md)."""
    issues = operator_only.refused(workflow, source, what)
    if issues:
        raise PlanError(issues)


__all__ = ["Ready", "check_operator_only", "derived", "submitted"]
