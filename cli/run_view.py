"""Parts of a recorded run that ``dagwright show`` prints on request: its plan as a workflow
file (``--workflow``), and each model call it made (``--calls``)."""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape

from dagwright.cli.common import _plural, _secs, out
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event

CLIPPED = 4000
"""Characters of one message or answer printed by ``show --calls`` (``--json``: all of it)."""


def plan_yaml(workflow: Any, run_id: str, revisions: int, source: str | None) -> str:
    """The run's plan (the one in force at its end) as a workflow file, headed by a comment
    that says where it comes from; ``dagwright run`` and ``resume --workflow`` take it back."""
    from dagwright.planner.loader import dump_workflow

    where = [f"# the plan of run {run_id}"]
    if revisions:
        where.append(f"# (revision {revisions}: the run's plan was revised after a step failed)")
    elif source:
        where.append(f"# (from {source})")
    return "\n".join(where) + "\n" + dump_workflow(workflow)


def calls_json(events: list[Event]) -> list[dict[str, Any]]:
    """Every ``model_call`` event as data: where it was made (``step``, its ``attempt``; none
    for the calls that planned the run) and the recorded ``call`` (request, response or error,
    usage, latency; its own ``attempt`` counts a structured answer's re-asks)."""
    return [
        {"seq": e.seq, "step": e.step, "attempt": e.attempt, "call": e.data}
        for e in events
        if e.type == ev.MODEL_CALL
    ]


def print_calls(events: list[Event]) -> None:
    """Each model call as text: where and why it was made, the model, latency and usage, the
    prompt's messages, and the answer (or the error)."""
    calls = [e for e in events if e.type == ev.MODEL_CALL]
    if not calls:
        out.print("no model calls in this run")
        return
    for n, e in enumerate(calls, 1):
        data = e.data
        purpose = data.get("purpose")
        where = (
            f"step {e.step!r} attempt {e.attempt}"
            if e.step
            else ("revising the plan" if purpose == "replan" else "planning the run")
        )
        model = data.get("model_id") or data.get("model")
        facts = [f"model {model}"]
        if data.get("latency") is not None:
            facts.append(_secs(float(data["latency"])))
        usage = _usage(data.get("usage"))
        if usage:
            facts.append(usage)
        facts += ["cache hit"] * bool(data.get("cache_hit")) + ["replayed"] * bool(
            data.get("replayed")
        )
        out.print(
            f"\n[bold]call {n}[/bold] ({escape(str(data.get('purpose') or 'model call'))}, "
            f"{escape(where)}): {escape(', '.join(map(str, facts)))}",
            highlight=False,
        )
        for message in _messages(data.get("request") or {}):
            role = str(message.get("role") or "?")
            out.print(f"[dim]{escape(role)}:[/dim]", highlight=False)
            out.print(_clip(_content(message.get("content"))), markup=False, highlight=False)
        if data.get("error"):
            out.print(f"[red]error:[/red] {escape(str(data['error']))}", highlight=False)
        answer = _answer(data)
        if answer is not None:
            out.print("[dim]answer:[/dim]", highlight=False)
            out.print(_clip(answer), markup=False, highlight=False)


def _messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    messages = list(request.get("messages") or [])
    if request.get("system"):  # Anthropic's: the system prompt beside the messages
        messages.insert(0, {"role": "system", "content": request["system"]})
    if request.get("prompt") is not None:  # a local model's: one prompt text
        messages.append({"role": "prompt", "content": request["prompt"]})
    if not messages and request.get("key"):
        messages.append({"role": "cache", "content": f"(request {request['key'][:16]}…)"})
    return messages


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(str(p.get("text", p)) if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content, ensure_ascii=False, indent=2, default=str)


def _answer(data: dict[str, Any]) -> str | None:
    """What the model answered, read from the recorded raw response of any provider."""
    response = data.get("response")
    if response is None:
        return None
    if isinstance(response, str):  # a local model's text
        return response
    if isinstance(response, dict) and "value" in response and data.get("cache_hit"):
        return _content(response["value"])
    if isinstance(response, dict) and response.get("choices"):  # OpenAI-compatible
        message = response["choices"][0].get("message") or {}
        parts = [message.get("content") or ""]
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            parts.append(f"{function.get('name')}({_pretty_json(function.get('arguments'))})")
        return "\n".join(p for p in parts if p)
    if isinstance(response, dict) and isinstance(response.get("content"), list):  # Anthropic
        parts = []
        for block in response["content"]:
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                parts.append(f"{block.get('name')}({_pretty_json(block.get('input'))})")
        return "\n".join(parts)
    return _content(response)


def _pretty_json(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    return json.dumps(value, ensure_ascii=False, indent=2)


def _usage(usage: Any) -> str:
    if not isinstance(usage, dict):
        return ""
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    answer = usage.get("completion_tokens", usage.get("output_tokens"))
    if prompt is None and answer is None:
        return ""
    return f"{_plural(int(prompt or 0), 'token')} in, {int(answer or 0)} out"


def _clip(text: str) -> str:
    if len(text) <= CLIPPED:
        return text
    rest = len(text) - CLIPPED
    return f"{text[:CLIPPED]}… ({_plural(rest, 'more character')}: --calls --json has all)"


__all__ = ["calls_json", "plan_yaml", "print_calls"]
