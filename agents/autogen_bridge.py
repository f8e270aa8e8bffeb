"""AutoGen's side of an ``agents.team`` step, wired to dagwright's: no AutoGen client talks
to a model, and no AutoGen tool runs anything of its own.

- ``ModelClient`` is an ``autogen_core`` ``ChatCompletionClient`` whose every call goes through
  ``agents.calls.ask`` — the path ``llm.generate`` takes: the provider adapters, temperature 0
  and the run's seed, the step's cache, redaction, a ``model_call`` event per request (labelled
  with the agent and the turn), and in ``dagwright replay`` the recorded answer.
- ``RegistryTool`` is an AutoGen tool that calls a tool of the run's registry (through the
  exchange, which records and replays the call).

Imports AutoGen (the optional extra ``agents``): loaded only when a team step runs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import BaseTool, Tool, ToolSchema
from pydantic import BaseModel

from dagwright.agents.models import ModelCall
from dagwright.agents.team_exchange import in_thread
from dagwright.errors import StepError

if TYPE_CHECKING:
    from dagwright.agents.team_exchange import Exchange
    from dagwright.tools.registry import Tool as RegisteredTool

PURPOSE = "agents.team"
MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=True, family="unknown",
    structured_output=True, multiple_system_messages=True,
)  # fmt: skip


def wire_name(tool: str) -> str:
    """A registered tool's name as models see it: function names may not hold dots
    (``text.word_count`` → ``text-word_count``; registry names hold no ``-``)."""
    return tool.replace(".", "-")


def to_messages(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    """AutoGen's messages as ours (OpenAI-style, ``agents.chat``). Another agent's message
    reaches a model as a user message that names its speaker (``critic: …``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": m.content})
        elif isinstance(m, UserMessage):
            if not isinstance(m.content, str):
                raise StepError("agents.team: images are not supported", retryable=False)
            text = m.content if m.source == "user" else f"{m.source}: {m.content}"
            out.append({"role": "user", "content": text})
        elif isinstance(m, AssistantMessage):
            if isinstance(m.content, str):
                out.append({"role": "assistant", "content": m.content})
            else:
                calls = [{"id": c.id, "type": "function",
                          "function": {"name": c.name, "arguments": c.arguments}}
                         for c in m.content]  # fmt: skip
                out.append({"role": "assistant", "content": m.thought, "tool_calls": calls})
        elif isinstance(m, FunctionExecutionResultMessage):
            out += [{"role": "tool", "tool_call_id": r.call_id, "content": r.content}
                    for r in m.content]  # fmt: skip
    return out


def _schema(tool: Tool | ToolSchema) -> dict[str, Any]:
    spec = dict(tool.schema if isinstance(tool, Tool) else tool)
    return {"name": spec["name"], "description": spec.get("description", ""),
            "parameters": spec.get("parameters") or {"type": "object", "properties": {}}}  # fmt: skip


def usage_of(calls: list[ModelCall]) -> RequestUsage:
    """The tokens of recorded calls (OpenAI's and Anthropic's usage fields; none: 0)."""
    prompt = completion = 0
    for call in calls:
        usage = call.usage or {}
        prompt += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    return RequestUsage(prompt_tokens=prompt, completion_tokens=completion)


class ModelClient(ChatCompletionClient):
    """The model of one agent (or of a selector team's speaker choice), asked through
    dagwright's provider layer. ``answer_schema``: the JSON Schema of its structured answers
    (the final-answer agent's ``output_schema``)."""

    def __init__(
        self, exchange: Exchange, agent: str, model: str, *, max_tokens: int,
        answer_schema: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.exchange, self.agent, self.model = exchange, agent, model
        self.max_tokens, self.answer_schema = max_tokens, answer_schema
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        from dagwright.agents.calls import ask

        exchange = self.exchange
        exchange.check()  # a failure met already ends the exchange here
        turn = exchange.turn + 1 if self.agent == "selector" else exchange.turn
        calls: list[ModelCall] = []
        kw: dict[str, Any] = {"max_tokens": self.max_tokens, "agent": self.agent, "turn": turn,
                              "observe": calls.append}  # fmt: skip
        try:
            ours = to_messages(messages)
            if tools:
                answer = await in_thread(ask, exchange.ctx, self.model, ours, None, PURPOSE,
                                          tools=[_schema(t) for t in tools], **kw)  # fmt: skip
                content: str | list[FunctionCall] = [
                    FunctionCall(id=c["id"], name=c["name"], arguments=c["arguments"])
                    for c in answer["tool_calls"]
                ] or answer["content"]
                thought = answer["content"] or None if isinstance(content, list) else None
            elif isinstance(json_output, type) and issubclass(json_output, BaseModel):
                value = await in_thread(ask, exchange.ctx, self.model, ours, json_output,
                                         PURPOSE, schema=self.answer_schema, **kw)  # fmt: skip
                content, thought = json.dumps(value, ensure_ascii=False), None
            else:
                content = await in_thread(ask, exchange.ctx, self.model, ours, None, PURPOSE, **kw)
                thought = None
        except StepError as exc:
            raise exchange.fail(exc, self.agent, turn) from None
        usage = usage_of(calls)
        self._usage = RequestUsage(
            prompt_tokens=self._usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens + usage.completion_tokens,
        )
        exchange.count_calls(calls)
        return CreateResult(
            finish_reason="function_calls" if isinstance(content, list) else "stop",
            content=content,
            usage=usage,
            cached=bool(calls) and all(c.cache_hit for c in calls),
            thought=thought,
        )

    def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        async def one() -> AsyncGenerator[str | CreateResult, None]:  # no streaming: one result
            yield await self.create(messages, tools=tools, tool_choice=tool_choice,
                                    json_output=json_output, cancellation_token=cancellation_token)  # fmt: skip

        return one()

    async def close(self) -> None:
        return None

    def actual_usage(self) -> RequestUsage:
        return self._usage

    def total_usage(self) -> RequestUsage:
        return self._usage

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        return 0  # contexts are bounded by max_turns, not by a token count

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        return 1 << 30

    @property
    def capabilities(self) -> Any:  # deprecated in AutoGen, still abstract
        return MODEL_INFO

    @property
    def model_info(self) -> ModelInfo:
        return MODEL_INFO


class RegistryTool(BaseTool[BaseModel, str]):  # type: ignore[type-var]  # results are text
    """A tool of the run's registry, as one agent may call it: its arguments' schema is the
    tool's own; each call is made, recorded and replayed by the exchange."""

    def __init__(self, exchange: Exchange, agent: str, tool: RegisteredTool) -> None:
        description = (tool.description or tool.name)[:1000]
        super().__init__(tool.args_model, str, wire_name(tool.name), description)
        self.exchange, self.agent, self.tool = exchange, agent, tool

    async def run(self, args: BaseModel, cancellation_token: CancellationToken) -> str:
        return await self.run_json(args.model_dump(by_alias=True), cancellation_token)

    async def run_json(
        self, args: Mapping[str, Any], cancellation_token: CancellationToken,
        call_id: str | None = None,
    ) -> str:  # fmt: skip
        return await self.exchange.call_tool(self.agent, self.tool, dict(args))


__all__ = ["MODEL_INFO", "ModelClient", "RegistryTool", "to_messages", "usage_of", "wire_name"]
