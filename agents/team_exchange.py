"""One ``agents.team`` attempt's exchange as dagwright sees it (``Exchange``): the turn it is at,
what was said, the first failure, the usage, and the recording of each message (``agent_message``)
and registry tool call (``tool_call``) in the attempt's trace, compared in a replay with the
recorded ones as they happen. Built by ``agents.team.run_team``; AutoGen's side
(``agents.autogen_bridge``: the model client and the tools) reports to it.

Nothing here imports AutoGen at import time (``heard`` reads AutoGen's messages when called).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dagwright.agents.team_spec import Said, Usage
from dagwright.errors import ReplayMismatch, StepError

if TYPE_CHECKING:
    from dagwright.agents.models import ModelCall
    from dagwright.tools.registry import Tool, ToolContext, ToolRegistry

MAX_TOOL_TEXT = 16_000
"""The most characters of a tool's result (or error) an agent is shown, and the trace keeps."""


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a thread of the exchanges' own pool, not the event loop's
    default executor: ``asyncio.run`` waits for that one's threads before it returns, so a team
    step past its timeout (or a cancelled run) would hold the run's end until the blocking
    request it abandoned came back. An abandoned call here finishes on its own. The context
    variables go with the call, as ``asyncio.to_thread`` carries them."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="dagwright-agents")
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_POOL, call)


class Exchange:
    """One attempt's exchange: the turn it is at, what was said, the first failure (which
    ends it), and the recording or replay of each message and tool call."""

    def __init__(self, ctx: ToolContext, registry: ToolRegistry) -> None:
        self.registry = registry
        self.replay = ctx.replay.team if ctx.replay is not None else None
        self._emit = ctx.emit
        self.aborted = False
        """The attempt ended (its step's timeout, a cancelled run): nothing more is asked,
        called or recorded; what is in flight finishes and is dropped."""
        self.ctx = dataclasses.replace(ctx, emit=self.emit)
        """The attempt's context, as the agents' model calls see it (``agents.calls.ask``)."""
        self.tool_ctx = dataclasses.replace(self.ctx, previous_failure=None)
        self.turn = 0
        self.transcript: list[Said] = []
        self.failure: StepError | None = None
        self.usage = Usage(prompt_tokens=0, completion_tokens=0, model_calls=0)
        self._tools_lock = asyncio.Lock()  # an agent's parallel tool calls run one at a time

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if self._emit is not None and not self.aborted:
            self._emit(kind, data)

    # -- failures -------------------------------------------------------------------------------
    def check(self) -> None:
        if self.aborted:
            raise StepError("agents.team: the attempt ended", retryable=False)
        if self.failure is not None:
            raise self.failure

    def fail(self, exc: StepError, agent: str, turn: int) -> StepError:
        """The exchange's failure (the first one wins): a replay divergence as it is, any
        other failure named by its agent and turn."""
        if self.failure is None:
            if isinstance(exc, ReplayMismatch):
                self.failure = exc
            else:
                self.failure = StepError(
                    f"agent {agent!r}, turn {turn}: {exc}", retryable=exc.retryable, kind=exc.kind
                )
        return self.failure

    # -- what was said ----------------------------------------------------------------------------
    def begin(self) -> int:
        self.turn += 1
        return self.turn

    def say(self, entry: Said) -> None:
        self.transcript.append(entry)
        self.emit("agent_message", dict(entry))
        if self.replay is not None:
            try:
                self.replay.message(dict(entry))
            except StepError as exc:
                raise self.fail(exc, entry["agent"], entry["turn"]) from None

    def count_calls(self, calls: list[ModelCall]) -> None:
        from dagwright.agents.autogen_bridge import usage_of

        tokens = usage_of(calls)
        self.usage["prompt_tokens"] += tokens.prompt_tokens
        self.usage["completion_tokens"] += tokens.completion_tokens
        self.usage["model_calls"] += len(calls)

    def heard(self, agent: str, turn: int, item: Any) -> None:
        """Record what an agent's turn yielded (its inner events, then its answer)."""
        from autogen_agentchat.base import Response
        from autogen_agentchat.messages import (
            StructuredMessage,
            TextMessage,
            ThoughtEvent,
            ToolCallExecutionEvent,
            ToolCallRequestEvent,
            ToolCallSummaryMessage,
        )

        message = item.chat_message if isinstance(item, Response) else item
        usage = getattr(message, "models_usage", None)
        tokens = None
        if usage is not None:
            tokens = {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens}
        kind, text = "", ""
        if isinstance(message, StructuredMessage):
            value = message.content.model_dump(mode="json").get("value")
            kind, text = "answer", json.dumps(value, ensure_ascii=False, sort_keys=True)
        elif isinstance(message, TextMessage):
            kind, text = "text", message.content
        elif isinstance(message, ToolCallSummaryMessage):
            kind, text = "tool_summary", message.content
        elif isinstance(message, ToolCallRequestEvent):
            kind = "tool_call"
            text = "\n".join(f"{c.name.replace('-', '.')}({c.arguments})" for c in message.content)
        elif isinstance(message, ToolCallExecutionEvent):
            kind = "tool_result"
            text = "\n".join(
                f"{r.name.replace('-', '.')} → {'error: ' if r.is_error else ''}{r.content}"
                for r in message.content
            )
        elif isinstance(message, ThoughtEvent):
            kind, text = "thought", message.content
        if kind:
            self.say(Said(turn=turn, agent=agent, kind=kind, text=text, tokens=tokens))

    # -- tools ----------------------------------------------------------------------------------
    async def call_tool(self, agent: str, tool: Tool, args: dict[str, Any]) -> str:
        """An agent's call of a registry tool: made (or in a replay served, for tools that
        replay ``serve``), recorded as a ``tool_call`` event, its result shown to the agent
        (an error too: the agent may recover)."""
        async with self._tools_lock:
            self.check()
            turn = self.turn
            recorded = None
            if self.replay is not None:
                try:
                    recorded = self.replay.tool_call(agent, turn, tool.name, args)
                except StepError as exc:
                    raise self.fail(exc, agent, turn) from None
            started = time.perf_counter()
            if recorded is not None and tool.replay == "serve":
                result = {"output": recorded.get("output"), "error": recorded.get("error")}
            else:
                result = await self._run(agent, turn, tool, args)
                if recorded is not None:
                    try:
                        self.replay.tool_result(recorded, result)  # type: ignore[union-attr]
                    except StepError as exc:
                        raise self.fail(exc, agent, turn) from None
            data = {"agent": agent, "turn": turn, "tool": tool.name, "arguments": args, **result,
                    "duration": round(time.perf_counter() - started, 6),
                    "served": recorded is not None and tool.replay == "serve"}  # fmt: skip
            self.emit("tool_call", data)
        if result["error"] is not None:
            raise ToolFailed(str(result["error"]))
        return str(result["output"])

    async def _run(
        self, agent: str, turn: int, tool: Tool, args: dict[str, Any]
    ) -> dict[str, Any]:  # fmt: skip
        from pydantic import ValidationError

        try:
            kwargs = tool.bind(args, self.tool_ctx)
            if tool.is_async:
                value = await tool.fn(**kwargs)
            else:  # in a thread: the event loop (the executor's, other steps') stays free
                value = await in_thread(tool.fn, **kwargs)
            text = json.dumps(tool.to_json(value), ensure_ascii=False, default=str)
            return {"output": _bounded(text), "error": None}
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            return {"output": None, "error": _bounded(f"invalid arguments: {problems}")}
        except StepError as exc:
            if isinstance(exc, ReplayMismatch):  # a model call of the tool diverged
                raise self.fail(exc, agent, turn) from None
            return {"output": None, "error": _bounded(str(exc))}
        except Exception as exc:  # noqa: BLE001 - a tool's failure, told to the agent
            return {"output": None, "error": _bounded(f"{type(exc).__name__}: {exc}")}


class ToolFailed(Exception):
    """A registry tool failed: AutoGen shows the agent the message as the tool's result."""


def _bounded(text: str) -> str:
    if len(text) <= MAX_TOOL_TEXT:
        return text
    return text[:MAX_TOOL_TEXT] + f"… [{len(text) - MAX_TOOL_TEXT} more characters cut]"


__all__ = ["MAX_TOOL_TEXT", "Exchange", "ToolFailed"]
