"""LLM steps: ``llm.generate`` — a prompt (rendered from references like any ``with``), an
optional output JSON Schema enforced through the provider's structured output."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dagwright.errors import StepError
from dagwright.tools.registry import ToolContext, tool


def json_schema_answer(schema: dict[str, Any]) -> type[BaseModel]:
    """A response model whose JSON schema is ``{"value": schema}`` and whose validation is
    jsonschema's: any JSON Schema a workflow gives becomes structured output (its regexes
    matched by RE2, in linear time: ``planner.regex``)."""
    from dagwright.planner.regex import schema_problems, schema_validator

    problems = schema_problems(schema)
    if problems:
        raise StepError("schema: " + "; ".join(map(str, problems)), retryable=False)
    wrapped = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    validator = schema_validator(schema)

    class Answer(BaseModel):
        model_config = ConfigDict(title="Answer")
        value: Any

        @model_validator(mode="before")
        @classmethod
        def _conforms(cls, data: Any) -> Any:
            value = data.get("value") if isinstance(data, dict) else None
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
            if errors:
                where = "/".join(map(str, errors[0].absolute_path)) or "(root)"
                raise ValueError(f"value at {where}: {errors[0].message}")
            return data

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return {"title": "Answer", **wrapped}

    return Answer


@tool("llm.generate", replay="rerun")  # its model calls are served
def generate(
    prompt: Annotated[str, Field(min_length=1)],
    ctx: ToolContext,
    model: str = "",
    system: str = "",
    schema: dict[str, Any] | None = None,
    max_tokens: Annotated[int, Field(ge=1, le=32_000)] = 1024,
) -> Any:
    """Ask a model (temperature 0, seeded); with `schema`, the answer is JSON that follows it.
    Model: `with.model` (e.g. openai:gpt-4o-mini) or DAGWRIGHT_MODEL."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    if ctx.previous_failure:  # a failed verify or error: tell the model what to fix
        messages.append(
            {
                "role": "user",
                "content": f"Your previous answer was rejected: {ctx.previous_failure}\nAnswer again, fixing that.",
            }
        )
    answer_model = json_schema_answer(schema) if schema is not None else None
    answer = _ask(
        ctx, model, messages, answer_model, "llm.generate", schema=schema, max_tokens=max_tokens
    )
    return answer["value"] if schema is not None else answer


def _ask(
    ctx: ToolContext,
    model: str,
    messages: list[dict[str, Any]],
    answer_model: type[BaseModel] | None,
    purpose: str,
    *,
    schema: Any = None,
    max_tokens: int = 1024,
) -> Any:
    """One recorded, cached model request: text, or a structured answer as plain data
    (``agents.calls.ask``, the path every model call of a step takes)."""
    from dagwright.agents.calls import ask

    return ask(ctx, model, messages, answer_model, purpose, schema=schema, max_tokens=max_tokens)


class Verdict(BaseModel):
    reason: Annotated[str, Field(max_length=500)]
    passed: bool


JUDGE_PROMPT = """You judge the output of a workflow step against a rubric. Answer with a short
reason, then passed: true only if the output meets the rubric.

Rubric:
{rubric}

Output:
{output}"""


def judge_with(ctx: ToolContext) -> Any:
    """A ``judge`` check's model call (recorded like llm.generate's, cached when the step is)."""

    def judge(rubric: str, model: str | None, target: Any) -> tuple[bool, str]:
        from dagwright.agents.models import ModelError

        text = (
            target if isinstance(target, str) else json.dumps(target, ensure_ascii=False, indent=2)
        )
        prompt = JUDGE_PROMPT.format(rubric=rubric, output=text)
        try:
            verdict = _ask(
                ctx, model or "", [{"role": "user", "content": prompt}], Verdict, "llm.judge"
            )
        except (ModelError, StepError) as exc:
            return False, f"could not get a judgement: {exc}"
        return bool(verdict["passed"]), str(verdict["reason"])

    return judge
