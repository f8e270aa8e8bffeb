"""The one schema for plans and YAML workflows.

A plan the planner emits and a workflow a person writes are the same object: ``Workflow``.
Field names follow what YAML authors know from GitHub Actions and Argo (``uses``/``with``/``needs``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STEP_ID = r"^[A-Za-z_][A-Za-z0-9_]*$"
STEP_ID_RE = re.compile(STEP_ID)

InputType = Literal["string", "integer", "number", "boolean", "object", "array"]
RetryOn = Literal["error", "timeout", "verification", "non_idempotent"]
DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("error", "timeout", "verification")
"""Not ``non_idempotent``: a failure that a retry could repeat a side effect of (a POST that
may have reached its server) is retried only where ``retry_on`` names it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class InputSpec(_Model):
    """A typed run input. An input without ``default`` is required."""

    type: InputType = "string"
    default: Any = None
    description: str = ""

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class RetryPolicy(_Model):
    """When and how often a failed attempt is tried again (retry as data, like Temporal's).

    The delay before attempt ``n+1`` is ``backoff * backoff_factor**(n-1)``, capped at
    ``max_backoff``, then spread by ``jitter`` (a fraction, drawn from a generator seeded by the
    run, step and attempt, so a replay waits the same).
    """

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 1
    backoff: Annotated[float, Field(ge=0, le=3600)] = 1.0
    backoff_factor: Annotated[float, Field(ge=1, le=10)] = 2.0
    max_backoff: Annotated[float, Field(ge=0, le=86400)] = 60.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.0
    retry_on: list[RetryOn] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))


CHECK_KINDS = ("expr", "contains", "not_contains", "regex", "schema", "judge", "grounded")


class Check(_Model):
    """One verify check. Exactly one of the kinds is set.

    ``target`` selects the part of the output to check (an expression over ``output``, e.g.
    ``output.summary``); by default the whole output is checked.
    """

    expr: str | None = None
    contains: Any = None
    not_contains: Any = None
    regex: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    judge: str | None = None
    """A rubric: a model judges the output pass or fail against it (``llm.judge``)."""
    model: str | None = None
    """For ``judge``: the judging model (else DAGWRIGHT_MODEL)."""
    grounded: bool | None = None
    """``true``: the output cites passages as ``[doc_id#chunk]``, only ones that the steps it
    depends on retrieved (their outputs' ``passages``), and at least one."""
    target: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        kinds = [k for k in CHECK_KINDS if k in self._set_kinds()]
        if self.model is not None and self.judge is None:
            raise ValueError("'model' only goes with a 'judge' check")
        if self.grounded is False:
            raise ValueError("write 'grounded: true', or leave the check out")
        if len(kinds) != 1:
            raise ValueError(
                f"a check needs exactly one of {', '.join(CHECK_KINDS)}; got "
                f"{', '.join(kinds) if kinds else 'none'}"
            )
        return self

    def _set_kinds(self) -> set[str]:
        fields = set(self.model_fields_set)
        if "json_schema" in fields:
            fields.add("schema")
        return fields

    @property
    def kind(self) -> str:
        return next(k for k in CHECK_KINDS if k in self._set_kinds())

    @property
    def spec(self) -> Any:
        return self.json_schema if self.kind == "schema" else getattr(self, self.kind)

    def label(self, index: int) -> str:
        if self.name:
            return self.name
        if self.kind == "grounded":
            return f"check {index + 1} (grounded)"
        spec = self.spec if isinstance(self.spec, str) else "…"
        return f"check {index + 1} ({self.kind}: {spec})"


class Step(_Model):
    id: Annotated[str, Field(pattern=STEP_ID, max_length=128)]
    uses: Annotated[str, Field(min_length=1, max_length=128)]
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    needs: list[str] = Field(default_factory=list)
    verify: list[Check] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: Annotated[float, Field(gt=0, le=86400)] | None = None
    cache: bool = False
    on_failure: Literal["fail", "continue", "replan"] = "fail"
    description: str = ""

    @field_validator("needs", mode="before")
    @classmethod
    def _needs_as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Concurrency(_Model):
    """At most ``limit`` runs of this workflow with the same ``key`` execute at once; the
    others wait, queued, in order (higher ``priority`` first, then by submission)."""

    key: Annotated[str, Field(min_length=1, max_length=500)]
    """Text, with references to the run's inputs: ``"${{ inputs.customer }}"``."""
    limit: Annotated[int, Field(ge=1, le=10_000)] = 1


class Workflow(_Model):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    tools: list[str] = Field(default_factory=list)
    steps: Annotated[list[Step], Field(min_length=1)]
    output: Any = None
    task: str = ""
    """The task in plain words this plan was made for (set by the planner; used to replan)."""
    max_replans: Annotated[int, Field(ge=0, le=10)] = 2
    concurrency: Concurrency | None = None
    """Bound the runs that execute at once per key (``Concurrency``)."""
    """How many times steps with ``on_failure: replan`` may have the plan revised in one run."""

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_shorthand(cls, v: Any) -> Any:
        # `inputs: {topic: string}` is shorthand for `inputs: {topic: {type: string}}`
        if isinstance(v, dict):
            return {k: ({"type": s} if isinstance(s, str) else s) for k, s in v.items()}
        return v

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def to_data(self) -> dict[str, Any]:
        """Plain data in the YAML spelling (``with``, ``schema``), defaults left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


__all__ = ["CHECK_KINDS", "Check", "InputSpec", "RetryPolicy", "Step", "Workflow"]
