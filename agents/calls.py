"""One model request made from a step: the single path every model call of an attempt takes
(``llm.generate``, ``judge`` checks, the agents of an ``agents.team`` step).

The model string (``with.model``, else DAGWRIGHT_MODEL, else in a replay the recorded one),
temperature 0 and the run's seed, the request key (model, messages, schema or tools,
parameters), then: in ``dagwright replay`` the recorded answer (``ToolContext.replay``, no
provider); else the step's cache (``cache: true``); else the provider (``connect``), whose
calls are redacted and recorded as ``model_call`` events of the attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from dagwright.agents.models import ModelCall, Provider, Recorder
from dagwright.errors import StepError


def ask(
    ctx: Any,
    model: str,
    messages: list[dict[str, Any]],
    answer_model: type[BaseModel] | None,
    purpose: str,
    *,
    schema: Any = None,
    tools: list[dict[str, Any]] | None = None,
    max_tokens: int = 1024,
    agent: str | None = None,
    turn: int | None = None,
    observe: Callable[[ModelCall], None] | None = None,
) -> Any:
    """One recorded, cached model request; ``ctx`` is the attempt's ``ToolContext``.

    Returns the text; with ``answer_model``, the structured answer as plain data; with
    ``tools`` (a tool-calling turn), ``{"content", "tool_calls"}`` (``agents.chat``).
    ``agent``/``turn`` label the recorded calls of a team's exchange; ``observe`` sees each
    recorded call (e.g. for its token usage). Raises StepError when no answer came."""
    from dagwright.agents.cache import request_key
    from dagwright.agents.models import ModelError, ModelSettings, connect
    from dagwright.settings import tool_settings

    settings = tool_settings(ctx)  # the driver's, read once at its edge
    replay = ctx.replay  # dagwright replay: the recording's model and parameters, not this env's
    model = model or settings.model or (replay.model() if replay is not None else "")
    if not model:
        raise StepError(
            f"{purpose} needs a model: set its model or DAGWRIGHT_MODEL", retryable=False
        )
    params = {"temperature": 0, "seed": settings.model_seed, "max_tokens": max_tokens}
    if replay is not None:
        params = replay.params() or params
    key = request_key(model, messages, _shape(answer_model, schema, tools), params)

    def record(call: ModelCall) -> None:
        call.request_key, call.params = key, params
        if agent is not None:
            call.agent, call.turn = agent, turn
        if observe is not None:
            observe(call)
        if ctx.emit is not None:
            ctx.emit("model_call", call.as_dict())

    if replay is not None:  # the recorded answer: no provider is called
        where = f"agent {agent!r}, turn {turn}" if agent is not None else ""
        return replay.ask(key, model, messages, answer_model, purpose, record,
                          chat=bool(tools), where=where)  # fmt: skip
    if ctx.cache is not None:
        hit = ctx.cache.get(key)
        if hit is not None:
            record(ModelCall(model=model, provider=model.partition(":")[0], request={"key": key},
                             response=hit, cache_hit=True, purpose=purpose))  # fmt: skip
            return hit["value"]
    provider = connect(model, ModelSettings.from_settings(settings, max_tokens=max_tokens))
    try:
        value = _asked(provider, messages, answer_model, tools, record, purpose)
    except ModelError as exc:
        raise StepError(str(exc)) from None
    if ctx.cache is not None:
        ctx.cache.put(key, {"value": value})
    return value


def _shape(
    answer_model: type[BaseModel] | None, schema: Any, tools: list[dict[str, Any]] | None
) -> Any:
    """What the request key holds besides the model, messages and parameters."""
    if tools:
        return {"tools": tools}
    if schema is not None:
        return schema
    return answer_model.model_json_schema() if answer_model else None


def _asked(
    provider: Provider, messages: list[dict[str, Any]], answer_model: type[BaseModel] | None,
    tools: list[dict[str, Any]] | None, record: Recorder, purpose: str,
) -> Any:  # fmt: skip
    if tools:
        return provider.chat(messages, tools, record=record, purpose=purpose)
    if answer_model is not None:
        parsed = provider.structured(
            messages, answer_model, max_retries=1, record=record, purpose=purpose
        )
        return parsed.model_dump(mode="json")
    return provider.text(messages, record=record, purpose=purpose)


__all__ = ["ask"]
