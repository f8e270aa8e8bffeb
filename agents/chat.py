"""Conversations in which a model may call tools (the agents of an ``agents.team`` step).

One format on our side, OpenAI's: messages ``{"role": "system" | "user" | "assistant" |
"tool", ...}`` (an assistant message may carry ``tool_calls``; a ``tool`` message answers one
by ``tool_call_id``), tools ``{"name", "description", "parameters"}``, and an answer
``{"content": str, "tool_calls": [{"id", "name", "arguments"}]}`` (arguments as JSON text).

Each provider's adapter sends the conversation in its own API's shape and records the raw
response; the answer is read from that raw response by ``CHAT_ANSWERS`` — live, and again by
``dagwright replay`` from the recording, so both read it the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dagwright.agents.models import CallTimer, ModelCall, ModelError, Recorder


def _dump(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def openai_chat_answer(response: dict[str, Any]) -> dict[str, Any]:
    message = response["choices"][0]["message"]
    calls = [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.get("tool_calls") or []
    ]
    return {"content": message.get("content") or "", "tool_calls": calls}


def anthropic_chat_answer(response: dict[str, Any]) -> dict[str, Any]:
    blocks = response["content"]
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [
        {"id": b["id"], "name": b["name"],
         "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False, sort_keys=True)}
        for b in blocks if b.get("type") == "tool_use"
    ]  # fmt: skip
    return {"content": text, "tool_calls": calls}


CHAT_ANSWERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "openai": openai_chat_answer,
    "anthropic": anthropic_chat_answer,
}
"""How each provider's recorded raw response holds a tool-calling turn's answer."""


def openai_chat(
    provider: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
    record: Recorder, purpose: str,
) -> dict[str, Any]:  # fmt: skip
    """One request to an OpenAI-compatible endpoint, with function tools."""
    params = {"temperature": 0, "seed": provider.settings.seed,
              "max_tokens": provider.settings.max_tokens}  # fmt: skip
    functions = [{"type": "function", "function": t} for t in tools]
    request = {"messages": messages, "tools": functions, **params}
    name = f"{provider.name}:{provider.model}"
    timer = CallTimer(ModelCall(model=name, provider=provider.name, request=request,
                                purpose=purpose))  # fmt: skip
    try:
        response = provider.client.chat.completions.create(
            model=provider.model, messages=messages, tools=functions or None, **params
        )
    except Exception as exc:  # noqa: BLE001 - the client's own errors (network, HTTP)
        timer.done(record, error=f"{type(exc).__name__}: {exc}")
        raise ModelError(f"{name}: {type(exc).__name__}: {exc}") from None
    raw = _dump(response)
    usage = _dump(response.usage) if response.usage else None
    return _answered(timer, record, raw, response.model, usage, openai_chat_answer)


def anthropic_chat(
    provider: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
    record: Recorder, purpose: str,
) -> dict[str, Any]:  # fmt: skip
    """One request to Anthropic's Messages API, with tools (``tool_use`` blocks)."""
    system, chat = anthropic_messages(messages)
    specs = [{"name": t["name"], "description": t.get("description", ""),
              "input_schema": t["parameters"]} for t in tools]  # fmt: skip
    params = {"max_tokens": provider.settings.max_tokens}
    request = {"system": system, "messages": chat, "tools": specs, **params}
    name = f"{provider.name}:{provider.model}"
    timer = CallTimer(ModelCall(model=name, provider=provider.name, request=request,
                                purpose=purpose))  # fmt: skip
    optional: dict[str, Any] = {"system": system} if system else {}
    if specs:
        optional["tools"] = specs
    try:
        response = provider.client.messages.create(
            model=provider.model, messages=chat, **optional, **params
        )
    except Exception as exc:  # noqa: BLE001
        timer.done(record, error=f"{type(exc).__name__}: {exc}")
        raise ModelError(f"{name}: {type(exc).__name__}: {exc}") from None
    raw = _dump(response)
    return _answered(timer, record, raw, response.model, _dump(response.usage),
                     anthropic_chat_answer)  # fmt: skip


def _answered(
    timer: CallTimer, record: Recorder, raw: Any, model_id: Any, usage: Any,
    parse: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    try:
        answer = parse(raw)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        timer.done(record, response=raw, model_id=model_id, usage=usage,
                   error=f"unreadable answer: {exc}")  # fmt: skip
        raise ModelError(f"{timer.call.model}: unreadable answer: {exc}") from None
    timer.done(record, response=raw, model_id=model_id, usage=usage)
    return answer


def anthropic_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Our (OpenAI-style) messages as Anthropic's: the system text apart; tool calls as
    ``tool_use`` blocks, tool results as ``tool_result`` blocks of a user turn; consecutive
    turns of one role merged (the API alternates user and assistant)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    chat: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role == "system":
            continue
        blocks: list[dict[str, Any]] = []
        if role == "tool":
            role = "user"
            blocks.append({"type": "tool_result", "tool_use_id": m["tool_call_id"],
                           "content": m.get("content") or ""})  # fmt: skip
        else:
            if m.get("content"):
                blocks.append({"type": "text", "text": m["content"]})
            for call in m.get("tool_calls") or []:
                fn = call["function"]
                blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                               "input": json.loads(fn["arguments"] or "{}")})  # fmt: skip
        if chat and chat[-1]["role"] == role:
            chat[-1]["content"].extend(blocks)
        else:
            chat.append({"role": role, "content": blocks})
    return system, chat


__all__ = [
    "CHAT_ANSWERS",
    "anthropic_chat",
    "anthropic_chat_answer",
    "anthropic_messages",
    "openai_chat",
    "openai_chat_answer",
]
