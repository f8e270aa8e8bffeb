"""Serving recorded model calls (``dagwright replay``): no provider is created, nothing is sent.

A replayed attempt gets the model calls its recorded attempt made, in order. Each request must
match the recorded one (same request key: model, messages, schema, parameters); the answer is
parsed from the *recorded raw response* the way the live provider parses it, so a replay
re-checks the parsing and validation, and an altered recording shows up as a divergence.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from dagwright.agents.chat import CHAT_ANSWERS
from dagwright.agents.models import ModelCall, Recorder
from dagwright.errors import ReplayMismatch, StepError


class ReplayDiverged(StepError, ReplayMismatch):
    """The replayed attempt asked for something its recording does not have."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def _openai_answer(response: dict[str, Any], structured: bool) -> Any:
    message = response["choices"][0]["message"]
    if not structured:
        return message.get("content") or ""
    if message.get("tool_calls"):  # Instructor's TOOLS mode: the tool call's arguments
        return json.loads(message["tool_calls"][0]["function"]["arguments"])
    text = message.get("content") or ""  # JSON_SCHEMA and JSON: the text; MD_JSON: a fenced block
    fenced = _FENCED.search(text)
    return json.loads(fenced.group(1) if fenced else text)


def _anthropic_answer(response: dict[str, Any], structured: bool) -> Any:
    blocks = response["content"]
    if structured:
        return next(b["input"] for b in blocks if b.get("type") == "tool_use")
    return "".join(b.get("text", "") for b in blocks if b.get("type") == "text")


def _hf_answer(response: Any, structured: bool) -> Any:
    return json.loads(response) if structured else str(response)


ANSWERS: dict[str, Callable[[Any, bool], Any]] = {
    "openai": _openai_answer,
    "anthropic": _anthropic_answer,
    "hf": _hf_answer,
}
"""How each provider's recorded raw response holds the answer (what its adapter parses)."""

Report = Callable[[str, Any, Any, str], None]
"""``report(what, expected, actual, message)``: a divergence of this attempt."""

_FIELDS = {f.name for f in dataclasses.fields(ModelCall)}


class ModelReplay:
    """The recorded model calls of one attempt, served in order; for an ``agents.team`` step
    also its recorded exchange (``team``: its agents' messages and tool calls)."""

    def __init__(
        self,
        calls: list[dict[str, Any]],
        report: Report,
        *,
        messages: list[dict[str, Any]] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        self.calls = calls
        self.report = report
        self.pos = 0
        self.served = 0
        self.team = TeamReplay(messages or [], tool_calls or [], self._diverge)

    def _next(self) -> dict[str, Any] | None:
        return self.calls[self.pos] if self.pos < len(self.calls) else None

    def model(self) -> str:
        """The model the next recorded call went to (a replay needs no DAGWRIGHT_MODEL)."""
        call = self._next()
        return str(call.get("model") or "") if call else ""

    def params(self) -> dict[str, Any] | None:
        """The parameters the next recorded call was made with (its seed, not this env's)."""
        call = self._next()
        return call.get("params") if call else None

    def ask(
        self,
        key: str,
        model: str,
        messages: list[dict[str, Any]],
        answer_model: type[BaseModel] | None,
        purpose: str,
        record: Recorder,
        *,
        chat: bool = False,
        where: str = "",
    ) -> Any:
        """What ``agents.calls.ask`` gets instead of a provider's answer (``chat``: a
        tool-calling turn's ``{"content", "tool_calls"}``; ``where``: the agent and turn of a
        team's call, named by a divergence)."""
        asked = {"model": model, "messages": messages, "purpose": purpose}
        at = f" ({where})" if where else ""
        if self.pos >= len(self.calls):
            self._diverge("model call", None, asked, f"the recorded attempt made no more calls{at}")
        first = self.calls[self.pos]
        recorded_key = first.get("request_key") or (first.get("request") or {}).get("key")
        if recorded_key is not None and recorded_key != key:
            expected = {"model": first.get("model"), "purpose": first.get("purpose"),
                        **_messages_of(first)}  # fmt: skip
            self._diverge("model request", expected, asked, f"the model request differs{at}")
        group = [first]
        self.pos += 1
        if not first.get("cache_hit"):  # a provider's own re-asks belong to the same request
            while self.pos < len(self.calls) and (self.calls[self.pos].get("attempt") or 1) > 1:
                group.append(self.calls[self.pos])
                self.pos += 1
        for call in group:
            self.served += 1
            record(_replayed(call))
        if first.get("cache_hit"):
            return (first.get("response") or {}).get("value")
        return _answer(model, str(first.get("provider")), group, answer_model, chat)

    def _diverge(self, what: str, expected: Any, actual: Any, message: str) -> None:
        self.report(what, expected, actual, message)
        raise ReplayDiverged(f"replay diverged: {message}")


def _messages_of(call: dict[str, Any]) -> dict[str, Any]:
    request = call.get("request") or {}
    return {k: request[k] for k in ("system", "messages", "prompt") if k in request}


def _replayed(call: dict[str, Any]) -> ModelCall:
    served = ModelCall(**{k: v for k, v in call.items() if k in _FIELDS})
    served.replayed = True
    served.latency = 0.0
    return served


def _answer(
    model: str,
    provider: str,
    group: list[dict[str, Any]],
    answer_model: type[BaseModel] | None,
    chat: bool = False,
) -> Any:
    parse = ANSWERS.get(provider)
    if chat:
        read = CHAT_ANSWERS.get(provider)
        parse = (lambda response, _: read(response)) if read is not None else None
    if parse is None:
        raise ReplayDiverged(f"replay cannot read recorded answers of provider {provider!r}")
    last_error = ""
    for call in group:
        response = call.get("response")
        if response is None:
            last_error = str(call.get("error") or "no response")
            continue
        try:
            if answer_model is None:
                return parse(response, False)
            return answer_model.model_validate(parse(response, True)).model_dump(mode="json")
        except (ValidationError, ValueError, KeyError, IndexError, TypeError, StopIteration) as exc:
            last_error = f"invalid answer: {exc}"
    raise StepError(
        f"{model} gave no valid answer in {len(group)} attempt{'s' if len(group) != 1 else ''} "
        "(replayed): "
        f"{last_error.strip().splitlines()[-1][:500] if last_error.strip() else 'no answer'}"
    )


class TeamReplay:
    """The recorded exchange of an ``agents.team`` attempt: each message its agents said and
    each tool call they made, in order. The replayed exchange is compared with it message by
    message; a difference is a divergence naming the agent and the turn."""

    def __init__(
        self,
        messages: list[dict[str, Any]],
        tool_calls: list[dict[str, Any]],
        diverge: Callable[[str, Any, Any, str], None],
    ) -> None:
        self.messages, self.tool_calls = messages, tool_calls
        self._diverge = diverge
        self.said = 0
        self.called = 0

    def message(self, entry: dict[str, Any]) -> None:
        """The replayed exchange said ``entry`` (``{"turn", "agent", "kind", "text", …}``)."""
        where = f"agent {entry.get('agent')!r}, turn {entry.get('turn')}"
        if self.said >= len(self.messages):
            self._diverge("agent message", None, entry,
                          f"{where}: the recorded exchange had ended here")  # fmt: skip
        recorded = self.messages[self.said]
        self.said += 1
        if _said(recorded) != _said(entry):
            self._diverge("agent message", _said(recorded), _said(entry),
                          f"{where}: the message differs from the recorded one")  # fmt: skip

    def tool_call(
        self, agent: str, turn: int, tool: str, arguments: Any
    ) -> dict[str, Any]:  # fmt: skip
        """The recorded call this one replays (same agent, turn, tool and arguments)."""
        where = f"agent {agent!r}, turn {turn}"
        asked = {"agent": agent, "turn": turn, "tool": tool, "arguments": arguments}
        if self.called >= len(self.tool_calls):
            self._diverge(
                "tool call", None, asked, f"{where}: the recording made no more tool calls"
            )
        recorded = self.tool_calls[self.called]
        self.called += 1
        expected = {k: recorded.get(k) for k in asked}
        if expected != asked:
            self._diverge("tool call", expected, asked, f"{where}: the tool call differs")
        return recorded

    def tool_result(self, recorded: dict[str, Any], result: dict[str, Any]) -> None:
        """A tool run again (``replay="rerun"``) must give what it gave."""
        expected = {k: recorded.get(k) for k in ("output", "error")}
        actual = {k: result.get(k) for k in ("output", "error")}
        if expected != actual:
            where = f"agent {recorded.get('agent')!r}, turn {recorded.get('turn')}"
            self._diverge("tool result", expected, actual,
                          f"{where}: tool {recorded.get('tool')!r} gave another result")  # fmt: skip


def _said(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("turn", "agent", "kind", "text")}


__all__ = ["ANSWERS", "ModelReplay", "ReplayDiverged", "TeamReplay"]
