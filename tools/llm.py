"""LLM steps: ``llm.generate`` — a prompt (rendered from references like any ``with``), an
optional output JSON Schema enforced through the provider's structured output."""

from __future__ import annotations

from typing import Annotated, Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dagwright.errors import StepError
from dagwright.tools.registry import ToolContext, tool


def json_schema_answer(schema: dict[str, Any]) -> type[BaseModel]:
    """A response model whose JSON schema is ``{"value": schema}`` and whose validation is
    jsonschema's: any JSON Schema a workflow gives becomes structured output."""
    wrapped = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    validator = jsonschema.validators.validator_for(schema)(schema)

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


@tool("llm.generate")
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
    from dagwright.agents.cache import request_key
    from dagwright.agents.models import ModelCall, ModelError, ModelSettings, connect
    from dagwright.settings import Settings

    settings = Settings.from_env()
    model = model or settings.model
    if not model:
        raise StepError(
            "llm.generate needs a model: set with.model or DAGWRIGHT_MODEL", retryable=False
        )
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    if ctx.previous_failure:  # a failed verify or error: tell the model what to fix
        messages.append(
            {
                "role": "user",
                "content": f"Your previous answer was rejected: {ctx.previous_failure}\nAnswer again, fixing that.",
            }
        )
    params = {"temperature": 0, "seed": settings.model_seed, "max_tokens": max_tokens}
    key = request_key(model, messages, schema, params)

    def record(call: ModelCall) -> None:
        if ctx.emit is not None:
            ctx.emit("model_call", call.as_dict())

    if ctx.cache is not None:
        hit = ctx.cache.get(key)
        if hit is not None:
            record(ModelCall(model=model, provider=model.partition(":")[0], request={"key": key},
                             response=hit, cache_hit=True, purpose="llm.generate"))  # fmt: skip
            return hit["value"]
    provider = connect(
        model,
        ModelSettings(
            base_url=settings.model_base_url or None,
            api_key=settings.model_api_key or None,
            seed=settings.model_seed,
            max_tokens=max_tokens,
        ),
    )
    try:
        if schema is not None:
            answer = provider.structured(
                messages,
                json_schema_answer(schema),
                max_retries=1,
                record=record,
                purpose="llm.generate",
            )
            value = answer.value  # type: ignore[attr-defined]
        else:
            value = provider.text(messages, record=record, purpose="llm.generate")
    except ModelError as exc:
        raise StepError(str(exc)) from None
    if ctx.cache is not None:
        ctx.cache.put(key, {"value": value})
    return value
