"""Serving recorded model calls (``dagwright replay``): no provider is created, nothing is sent.

A replayed attempt gets the model calls its recorded attempt made, in order. Each request must
match the recorded one (same request key: model, messages, schema, parameters); the answer is
parsed from the *recorded raw response* the way the live provider parses it, so a replay
re-checks the parsing and validation, and an altered recording shows up as a divergence.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from dagwright.agents.models import ModelCall, Recorder
from dagwright.errors import ReplayMismatch, StepError


class ReplayDiverged(StepError, ReplayMismatch):
    """The replayed attempt asked for something its recording does not have."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def _openai_answer(response: dict[str, Any], structured: bool) -> Any:
    message = response["choices"][0]["message"]
    if structured:  # Instructor's TOOLS mode: the answer is the tool call's arguments
        return json.loads(message["tool_calls"][0]["function"]["arguments"])
    return message.get("content") or ""


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
    """The recorded model calls of one attempt, served in order."""

    def __init__(self, calls: list[dict[str, Any]], report: Report) -> None:
        self.calls = calls
        self.report = report
        self.pos = 0
        self.served = 0

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
    ) -> Any:
        """What ``tools.llm`` gets instead of a provider's answer."""
        asked = {"model": model, "messages": messages, "purpose": purpose}
        if self.pos >= len(self.calls):
            self._diverge("model call", None, asked, "the recorded attempt made no more calls")
        first = self.calls[self.pos]
        recorded_key = first.get("request_key") or (first.get("request") or {}).get("key")
        if recorded_key is not None and recorded_key != key:
            expected = {"model": first.get("model"), "purpose": first.get("purpose"),
                        **_messages_of(first)}  # fmt: skip
            self._diverge("model request", expected, asked, "the model request differs")
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
        return _answer(model, str(first.get("provider")), group, answer_model)

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
    model: str, provider: str, group: list[dict[str, Any]], answer_model: type[BaseModel] | None
) -> Any:
    parse = ANSWERS.get(provider)
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
        f"{model} gave no valid answer in {len(group)} attempt(s) (replayed): "
        f"{last_error.strip().splitlines()[-1][:500] if last_error.strip() else 'no answer'}"
    )


__all__ = ["ANSWERS", "ModelReplay", "ReplayDiverged"]
