"""The API's request and response bodies (their JSON schemas are the OpenAPI document's)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

Inputs = dict[str, Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SubmitRun(_Body):
    """Exactly one of ``workflow`` (a known workflow's name), ``workflow_yaml`` (a workflow as
    YAML text: registered tools only) or ``task`` (planned by ``model``)."""

    workflow: str | None = Field(None, min_length=1, max_length=200)
    workflow_yaml: str | None = Field(None, min_length=1)
    task: str | None = Field(None, min_length=1, max_length=20_000)
    model: str | None = Field(None, min_length=1, max_length=200)
    inputs: Inputs = Field(default_factory=dict)
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first when work waits.")

    @model_validator(mode="after")
    def _one_source(self) -> SubmitRun:
        given = [k for k in ("workflow", "workflow_yaml", "task") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of workflow, workflow_yaml or task")
        if self.model is not None and self.task is None:
            raise ValueError("model goes with task")
        return self


class ResumeRun(_Body):
    workflow: str | None = Field(None, min_length=1, max_length=200)
    workflow_yaml: str | None = Field(None, min_length=1)
    from_steps: list[str] = Field(default_factory=list, alias="from", max_length=1000)
    inputs: Inputs = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_workflow(self) -> ResumeRun:
        if self.workflow is not None and self.workflow_yaml is not None:
            raise ValueError("give workflow or workflow_yaml, not both")
        return self


class ForkRun(_Body):
    sets: list[str] = Field(default_factory=list, alias="set", max_length=1000)
    from_steps: list[str] = Field(default_factory=list, alias="from", max_length=1000)

    @model_validator(mode="after")
    def _something(self) -> ForkRun:
        if not self.sets and not self.from_steps:
            raise ValueError('a fork needs "set" and/or "from"')
        return self


class Links(BaseModel):
    self: str
    events: str
    stream: str


class RunAccepted(BaseModel):
    run_id: str
    status: str
    links: Links


__all__ = ["ForkRun", "Links", "ResumeRun", "RunAccepted", "SubmitRun"]
