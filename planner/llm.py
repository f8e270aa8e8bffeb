"""The LLM planner: a task in plain words becomes a Workflow that is valid by construction.

The answer schema is built from the tool registry: each step is one of a discriminated union of
per-tool step models, whose ``uses`` is that tool's name (an enum over registered tools) and whose
``with`` follows that tool's argument schema (a reference string is accepted wherever a value
goes). After parsing, the plan goes through the same validation as a YAML workflow; its errors are
fed back to the model for a bounded number of repairs, and every attempt is recorded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from dagwright.agents.models import ModelError, Provider, Recorder, discard
from dagwright.errors import DagwrightError, PlanError
from dagwright.planner.schema import STEP_ID, Workflow
from dagwright.planner.validate import validate
from dagwright.tools.registry import Tool, ToolRegistry

REF_PATTERN = r"^\s*\$\{\{.+\}\}\s*$"
MAX_STEPS = 30


class _DraftBase(BaseModel):
    """A plan as the model writes it; validated like a YAML workflow before it is accepted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    registry: ClassVar[ToolRegistry]

    @model_validator(mode="after")
    def _valid_workflow(self) -> _DraftBase:
        try:
            workflow = Workflow.model_validate(self.as_data())
        except Exception as exc:  # noqa: BLE001 - reported to the model as text
            raise ValueError(f"not a valid workflow: {exc}") from None
        issues = validate(workflow, type(self).registry)
        if issues:
            lines = [
                f"- step {i.step!r}, field {i.field!r}: {i.message}"
                + (f" ({i.hint})" if i.hint else "")
                for i in issues
            ]
            raise ValueError("the plan has problems; fix them all:\n" + "\n".join(lines))
        return self

    def as_data(self) -> dict[str, Any]:
        """The plan as workflow data, without what the model wrote that says nothing (a
        default value: ``needs: []``, ``description: ''``, an argument at its default), so a
        reviewer of the YAML reads only decisions."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name)


def _args_accepting_refs(tool: Tool, max_ref: int = 300) -> type[BaseModel]:
    """The tool's argument model, where any non-string value may also be a ``${{ … }}``."""
    fields: dict[str, Any] = {}
    for name, info in tool.args_model.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        if info.annotation is not str:
            ref = Annotated[str, Field(pattern=REF_PATTERN, max_length=max_ref)]
            annotation = Union[annotation, ref]  # noqa: UP007
        default = ... if info.is_required() else info.default
        fields[name] = (
            annotation,
            Field(default=default, alias=info.alias, description=info.description),
        )
    extra = tool.args_model.model_config.get("extra", "forbid")
    return create_model(
        f"Args_{_slug(tool.name)}",
        __config__=ConfigDict(extra=extra, populate_by_name=True),
        **fields,
    )


class _SchemaOnlyDraft(_DraftBase):
    """The same answer schema without the workflow validation (to test constrained decoding)."""

    @model_validator(mode="after")
    def _valid_workflow(self) -> _SchemaOnlyDraft:
        return self


def draft_model(
    registry: ToolRegistry, *, compact: bool = False, check: bool = True
) -> type[_DraftBase]:
    """The answer schema for a planner call over these tools.

    ``compact``: tighter bounds (3 steps, short ids, no descriptions) for small local models,
    whose constrained output is as long as the schema lets it be. ``check=False`` leaves out the
    workflow validation (schema only)."""
    step_models = []
    max_id, max_ref, max_steps = (8, 40, 3) if compact else (64, 300, MAX_STEPS)
    for tool in registry:
        args = _args_accepting_refs(tool, max_ref)
        required = any(f.is_required() for f in tool.args_model.model_fields.values())
        # field definitions hold type forms (Annotated, Literal), which mypy types as objects
        step_fields: dict[str, Any] = {
            "id": (Annotated[str, Field(pattern=STEP_ID, max_length=max_id)], ...),
            "uses": (Literal[tool.name], ...),
            "with_": (
                args,
                Field(alias="with") if required else Field(alias="with", default=None),
            ),
            "needs": (
                list[Annotated[str, Field(max_length=max_id)]],
                Field(default_factory=list, max_length=2 if compact else 20),
            ),
        }
        if not compact:
            step_fields["description"] = (str, Field(default="", max_length=300))
        step_models.append(
            create_model(
                f"Step_{_slug(tool.name)}",
                __config__=ConfigDict(extra="forbid", populate_by_name=True),
                **step_fields,
            )
        )
    if not step_models:
        raise DagwrightError("the planner needs at least one registered tool")
    step_union = Annotated[Union[tuple(step_models)], Field(discriminator="uses")]  # type: ignore[valid-type]  # noqa: UP007
    fields: dict[str, Any] = {
        "name": (Annotated[str, Field(min_length=1, max_length=24 if compact else 100)], ...),
        # a type built at run time, from the registry: pydantic reads it, mypy cannot
        "steps": (
            list[step_union],  # type: ignore[valid-type]
            Field(min_length=1, max_length=max_steps),
        ),
    }
    if not compact:
        fields["description"] = (str, Field(default="", max_length=500))
        fields["output"] = (Union[str, dict[str, str], None], Field(default=None))  # noqa: UP007
    else:
        ref = Annotated[str, Field(pattern=REF_PATTERN, max_length=max_ref)]
        fields["output"] = (ref | None, Field(default=None))
    model = create_model(
        "Plan",
        __base__=_DraftBase if check else _SchemaOnlyDraft,
        **fields,
    )
    model.registry = registry
    return model


SYSTEM = """You are the planner of dagwright, a workflow engine. Turn the user's task into a plan:
a DAG of steps, each calling one of the registered tools below. Answer only through the plan
schema.

Rules:
- Each step has a unique `id` (letters, digits, underscores), `uses` (a tool name from the list),
  and `with` (the tool's arguments, following its argument schema).
- A step reads an earlier step's output with a reference string "${{{{ steps.<id>.output }}}}"
  (or a path into it, e.g. "${{{{ steps.<id>.output.field }}}}"); this also makes it depend on
  that step. Use `needs: [<id>]` for an order without data.
- Never create cycles. Prefer steps that can run in parallel when they don't depend on each other.
- `output` says what the run returns, usually a reference to the last step's output.

Tools:
{tools}
{examples}"""


def describe_tools(registry: ToolRegistry) -> str:
    lines = []
    for tool in registry:
        lines.append(
            f"- {tool.name}: {tool.description.splitlines()[0] if tool.description else ''}"
        )
        schema = tool.args_schema()
        lines.append(f"  arguments: {json.dumps(schema.get('properties', {}), sort_keys=True)}")
        if schema.get("$defs"):  # the types its arguments refer to ($ref), e.g. a team's agents
            lines.append(f"  where: {json.dumps(schema['$defs'], sort_keys=True)}")
        if tool.output_schema:
            lines.append(f"  returns: {json.dumps(tool.output_schema, sort_keys=True)}")
    return "\n".join(lines)


def example_plans(registry: ToolRegistry, folder: Path | None = None, limit: int = 2) -> list[str]:
    """Plans worth showing the model: example workflows that are valid with these tools (all
    registered, their extras installed, an ``agents.team`` step's agent tools too), and that
    neither read secrets nor name ``allow_hosts`` (a plan a model writes may not)."""
    from dagwright.planner.loader import dump_workflow, load_workflow
    from dagwright.planner.operator_only import operator_only_uses

    folder = folder or Path(__file__).resolve().parent.parent / "workflows" / "examples"
    found = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            wf = load_workflow(path).workflow
        except PlanError:
            continue
        usable = all(step.uses in registry for step in wf.steps) and not validate(wf, registry)
        if usable and not any(operator_only_uses(wf)):
            found.append(dump_workflow(wf))
        if len(found) >= limit:
            break
    return found


def examples_from_runs(store: Any, registry: ToolRegistry, limit: int = 2) -> list[str]:
    """Plans of recent successful runs whose tools are all registered, newest first (one per
    workflow name): the planner's own track record as few-shot examples."""
    from dagwright.planner.loader import dump_workflow

    found: dict[str, str] = {}
    for summary in store.list_runs(status="succeeded", limit=50):
        try:
            wf = Workflow.model_validate(summary.record.workflow)
        except Exception:  # noqa: BLE001 - an old or foreign record: not an example
            continue
        if wf.name not in found and all(step.uses in registry for step in wf.steps):
            found[wf.name] = dump_workflow(wf)
        if len(found) >= limit:
            break
    return list(found.values())


def messages_for(
    task: str, registry: ToolRegistry, examples: list[str] | None = None
) -> list[dict[str, Any]]:
    shown = examples if examples is not None else example_plans(registry)
    examples_text = "".join(f"\nExample plan:\n{e}" for e in shown)
    system = SYSTEM.format(tools=describe_tools(registry), examples=examples_text)
    return [{"role": "system", "content": system}, {"role": "user", "content": task}]


def fit_examples(
    task: str,
    registry: ToolRegistry,
    examples: list[str],
    model: Any,
    notes: list[str] | None = None,
) -> list[str]:
    """The few-shot examples that fit the model's context, with room for its answer. For a
    model that says its context and counts tokens (a local ``hf:`` model): examples that do not
    fit are left out (said in ``notes``); a prompt too long without any is PlanningFailed,
    naming which part is long (the tool list, the task, the instructions). Other models get
    every example."""
    window = getattr(model, "context_window", None)
    count = getattr(model, "count_tokens", None)
    if not window or count is None:
        return examples
    answer = min(int(getattr(model, "answer_tokens", 1024)), window // 2)
    room = window - answer
    base = count(messages_for(task, registry, examples=[]))
    if base > room:
        tools = count([{"role": "system", "content": describe_tools(registry)}])
        asked = count([{"role": "user", "content": task}])
        parts = sorted(
            [(tools, "the tool list (each tool's argument schema)"), (asked, "the task"),
             (max(0, base - tools - asked), "the planner's instructions")], reverse=True,
        )  # fmt: skip
        raise PlanningFailed(
            f"the planner's prompt is {base} tokens without any example, over the {room} that "
            f"the model's context of {window} leaves beside {answer} for the plan; "
            + ", ".join(f"{what}: {n}" for n, what in parts)
            + ". Register fewer tools for planning, shorten the task, or use a model with a "
            "longer context",
            attempts=0,
        )
    kept: list[str] = []
    for example in examples:
        if count(messages_for(task, registry, [*kept, example])) <= room:
            kept.append(example)
    left = len(examples) - len(kept)
    if left and notes is not None:
        notes.append(
            f"{left} of {len(examples)} example plan{'s' if len(examples) != 1 else ''} left "
            f"out of the prompt to fit the model's context of {window} tokens"
        )
    return kept


def plan(
    task: str,
    registry: ToolRegistry,
    model: Provider,
    *,
    max_repairs: int = 2,
    examples: list[str] | None = None,
    record: Recorder = discard,
    notes: list[str] | None = None,
) -> Workflow:
    """A validated Workflow for ``task``, or PlanningFailed with the last problems.
    ``notes``: what the planner tells the user (examples left out to fit a local model)."""
    schema = draft_model(registry, compact=bool(getattr(model, "compact", False)))
    shown = fit_examples(
        task, registry, examples if examples is not None else example_plans(registry), model, notes
    )
    try:
        draft = model.structured(
            messages_for(task, registry, shown),
            schema,
            max_retries=max_repairs,
            record=record,
            purpose="plan",
        )
    except ModelError as exc:
        raise PlanningFailed(str(exc), attempts=exc.attempts) from None
    return Workflow.model_validate({**draft.as_data(), "task": task})


def replan(
    workflow: Workflow,
    outputs: dict[str, Any],
    failure: dict[str, Any],
    registry: ToolRegistry,
    model: Provider,
    *,
    max_repairs: int = 2,
    record: Recorder = discard,
) -> Workflow:
    """A revised plan after a step failed terminally. Succeeded steps the revision keeps
    unchanged (same id, tool and arguments) are reused by the executor, not run again."""
    from dagwright.planner.loader import dump_workflow

    shown = json.dumps(outputs, ensure_ascii=False, default=str)
    if len(shown) > 4000:
        shown = shown[:4000] + "…"
    error = (failure.get("error") or {}).get("message", "")
    request = (
        f"Task: {workflow.task or workflow.description or workflow.name}\n\n"
        f"The current plan:\n{dump_workflow(workflow)}\n"
        f"These steps succeeded, with these outputs: {shown}\n\n"
        f"Step {failure.get('step')!r} failed for good: {error}\n\n"
        "Write a revised plan for the whole task that avoids this failure. Keep every succeeded "
        "step exactly as it is (same id, tool and arguments) so its output is reused; change or "
        "replace the rest."
    )
    messages = messages_for(request, registry, examples=[])
    schema = draft_model(registry, compact=bool(getattr(model, "compact", False)))
    try:
        draft = model.structured(
            messages, schema, max_retries=max_repairs, record=record, purpose="replan"
        )
    except ModelError as exc:
        raise PlanningFailed(str(exc), attempts=exc.attempts) from None
    kept = {"task": workflow.task, "max_replans": workflow.max_replans}
    data = {**draft.as_data(), **{k: v for k, v in kept.items() if k in workflow.model_fields_set}}
    return Workflow.model_validate(data)  # what was set stays set (a default is not written)


class PlanningFailed(DagwrightError):
    """No valid plan came from the model within its repair attempts."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


__all__ = [
    "PlanningFailed",
    "describe_tools",
    "draft_model",
    "example_plans",
    "examples_from_runs",
    "fit_examples",
    "messages_for",
    "plan",
    "replan",
]
