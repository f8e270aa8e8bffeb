"""An ``agents.team`` step, run: AutoGen AgentChat agents exchanging messages until the team's
goal or one of its limits, as one attempt of one step.

The exchange is recorded as it happens, in the attempt's trace: every message an agent says
(``agent_message``: turn, agent, kind, text, tokens), every model call (``model_call``,
labelled with the agent and the turn) and every registry tool an agent calls (``tool_call``).
Turn 0 is the task; each agent's answer is the next turn. In ``dagwright replay`` the model
calls are served from the recording, tools are served or run again by their ``replay`` mode,
and each message is compared with the recorded one as it is said: the first difference is a
divergence naming the agent and the turn, and ends the replayed exchange.

The step's output: ``answer`` (the final message's text, or the value parsed into
``output_schema``), who gave it, why the exchange stopped, its turns, the transcript and the
token usage.

Here: the team built and run (``run_team``, called by the ``agents.team`` tool in
``tools/team.py``) and its output. Its parts: ``team_spec`` (the step's arguments and their
checks), ``team_exchange`` (the exchange: what was said, its recording and replay),
``autogen_bridge`` (AutoGen's model client and tools on dagwright's).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from dagwright.agents.team_exchange import Exchange
from dagwright.agents.team_spec import AgentSpec, AnsweredBy, Said, TeamOutput, Termination
from dagwright.errors import StepError

if TYPE_CHECKING:
    from autogen_agentchat.base import TerminationCondition

    from dagwright.tools.registry import Tool, ToolContext

INSTALL = "pip install 'dagwright[agents]'"
CHAT_KINDS = ("text", "answer", "tool_summary")
"""The kinds of message an agent answers a turn with (the others happen within a turn)."""


# -- the team ---------------------------------------------------------------------------------------


async def run_team(
    ctx: ToolContext,
    *,
    task: str,
    agents: list[AgentSpec],
    max_turns: int,
    team: str,
    selector_model: str,
    termination: Termination | None,
    answer_from: str | None,
    output_schema: dict[str, Any] | None,
    max_tokens: int,
) -> TeamOutput:
    """Run the exchange to its end; the step's output. It runs on the attempt's event loop
    (model calls and plain-function tools in threads): when the attempt is cancelled (its
    step's timeout, a cancelled run), the exchange is aborted — nothing more is asked or
    recorded."""
    try:
        from autogen_core import CancellationToken
    except ImportError:
        raise StepError(f"agents.team needs AutoGen: {INSTALL}", retryable=False) from None
    from dagwright.tools.registry import default_registry

    _quiet_autogen_logs()
    exchange = Exchange(ctx, ctx.tools if ctx.tools is not None else default_registry)
    if ctx.previous_failure:  # a failed verify or error: tell the team what to fix
        task += f"\n\nA previous attempt was rejected: {ctx.previous_failure}\nFix that."
    ending = termination or Termination()
    built = _build(exchange, agents, max_turns, team, selector_model, ending, output_schema,
                   max_tokens)  # fmt: skip
    exchange.say(Said(turn=0, agent="user", kind="task", text=task, tokens=None))
    token = CancellationToken()
    running = asyncio.ensure_future(built.run(task=task, cancellation_token=token))
    running.add_done_callback(_retrieved)
    try:
        result = await asyncio.shield(running)
    except asyncio.CancelledError:
        exchange.aborted = True
        token.cancel()
        raise
    except Exception as exc:  # AutoGen wraps what an agent raised in a RuntimeError
        if exchange.failure is not None:
            raise exchange.failure from None
        raise StepError(
            f"agents.team: the exchange failed at turn {exchange.turn}: {exc}"
        ) from None
    exchange.check()  # a failure AutoGen swallowed (a tool call that diverged in a replay)
    return _output(exchange, result.stop_reason or "", ending, answer_from, output_schema)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """An aborted exchange ends on its own, with an error no one waits for: taken here."""
    if not task.cancelled():
        task.exception()


def _build(
    exchange: Exchange, agents: list[AgentSpec], max_turns: int, team: str,
    selector_model: str, ending: Termination, output_schema: dict[str, Any] | None,
    max_tokens: int,
) -> Any:  # fmt: skip
    from autogen_agentchat.messages import StructuredMessage
    from autogen_agentchat.teams import RoundRobinGroupChat, SelectorGroupChat

    from dagwright.agents.autogen_bridge import ModelClient, RegistryTool
    from dagwright.tools.llm import json_schema_answer

    members = []
    custom: list[Any] = []  # a structured answer's message type, registered with the team
    for spec in agents:
        final = spec.name == ending.final_answer
        answer_type = json_schema_answer(output_schema) if final and output_schema else None
        if answer_type is not None:
            custom.append(StructuredMessage[answer_type])  # type: ignore[valid-type]
        client = ModelClient(exchange, spec.name, spec.model, max_tokens=max_tokens,
                             answer_schema=output_schema if final else None)  # fmt: skip
        tools = [RegistryTool(exchange, spec.name, _tool(exchange, spec, t)) for t in spec.tools]
        members.append(
            _agent_class()(
                exchange, spec.name, client,
                tools=tools or None,
                description=spec.description or spec.system[:500] or spec.name,
                system_message=spec.system or None,
                reflect_on_tool_use=False,
                max_tool_iterations=spec.max_tool_iterations,
                output_content_type=answer_type,
            )
        )  # fmt: skip
    condition = _termination([a.name for a in agents], ending)
    if team == "selector":
        chooser = ModelClient(exchange, "selector", selector_model, max_tokens=max_tokens)
        return SelectorGroupChat(members, chooser, termination_condition=condition,
                                 max_turns=max_turns, custom_message_types=custom or None)  # fmt: skip
    return RoundRobinGroupChat(members, termination_condition=condition, max_turns=max_turns,
                               custom_message_types=custom or None)  # fmt: skip


def _tool(exchange: Exchange, spec: AgentSpec, name: str) -> Tool:
    if name == "agents.team" or name not in exchange.registry:
        raise StepError(f"agent {spec.name!r}: no tool {name!r} in this run", retryable=False)
    return exchange.registry.get(name)


def _agent_class() -> type[Any]:
    """An AssistantAgent whose every turn is numbered and recorded as it happens (a group
    chat runs one speaker at a time, so turns are in a fixed order)."""
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.base import Response
    from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
    from autogen_core import CancellationToken

    class TeamAgent(AssistantAgent):
        def __init__(self, exchange: Exchange, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._exchange = exchange

        async def on_messages_stream(
            self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
        ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
            exchange = self._exchange
            exchange.check()
            turn = exchange.begin()
            async for item in super().on_messages_stream(messages, cancellation_token):
                exchange.heard(self.name, turn, item)
                yield item

    return TeamAgent


def _termination(names: list[str], ending: Termination) -> TerminationCondition | None:
    from autogen_agentchat.conditions import (
        FunctionalTermination,
        MaxMessageTermination,
        SourceMatchTermination,
    )
    from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage

    conditions: list[TerminationCondition] = []
    mention = ending.text_mention
    if mention is not None:

        def mentioned(messages: Sequence[BaseAgentEvent | BaseChatMessage]) -> bool:
            return any(isinstance(m, BaseChatMessage) and m.source in names
                       and mention in m.to_text() for m in messages)  # fmt: skip

        conditions.append(FunctionalTermination(mentioned))
    if ending.max_messages is not None:
        conditions.append(MaxMessageTermination(ending.max_messages))
    if ending.final_answer is not None:
        conditions.append(SourceMatchTermination([ending.final_answer]))
    if not conditions:
        return None
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined | condition
    return combined


# -- the output -------------------------------------------------------------------------------------


def _output(
    exchange: Exchange, autogen_reason: str, ending: Termination, answer_from: str | None,
    output_schema: dict[str, Any] | None,
) -> TeamOutput:  # fmt: skip
    said = [e for e in exchange.transcript if e["kind"] in CHAT_KINDS]
    last = said[-1] if said else None
    turns = exchange.turn
    reason = f"{turns} turn(s): {autogen_reason or 'the team stopped'}"
    if ending.final_answer is not None and last is not None and last["kind"] == "answer":
        reason = f"agent {last['agent']!r} gave the final answer"
    elif (
        ending.text_mention is not None and last is not None and ending.text_mention in last["text"]
    ):
        reason = f"agent {last['agent']!r} said {ending.text_mention!r}"
    elif ending.final_answer is not None or ending.text_mention is not None:
        goal = (f"a final answer from {ending.final_answer!r}" if ending.final_answer
                else f"an agent saying {ending.text_mention!r}")  # fmt: skip
        raise StepError(
            f"agents.team: the exchange stopped without {goal} ({reason}); raise max_turns, "
            "or tell the agents how to finish"
        )
    source = [e for e in said if answer_from is None or e["agent"] == answer_from]
    if not source:
        raise StepError(f"agents.team: agent {answer_from!r} said nothing to answer with")
    final = source[-1]
    answer: Any = final["text"]
    if final["kind"] == "answer":
        answer = json.loads(final["text"])
    elif output_schema is not None:
        answer = _parsed(final, output_schema)
    return TeamOutput(
        answer=answer,
        answered_by=AnsweredBy(agent=final["agent"], turn=final["turn"]),
        stop_reason=reason,
        turns=turns,
        transcript=list(exchange.transcript),
        usage=exchange.usage,
    )


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.S)


def _parsed(final: Said, schema: dict[str, Any]) -> Any:
    """The final message as JSON that follows ``schema`` (a code fence around it is fine)."""
    from dagwright.planner.regex import schema_validator

    text = final["text"]
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError as exc:
        raise StepError(
            f"agents.team: the answer of agent {final['agent']!r} (turn {final['turn']}) is not "
            f"JSON: {exc}; output_schema wants JSON (or use termination.final_answer)"
        ) from None
    errors = sorted(schema_validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "(root)"
        raise StepError(
            f"agents.team: the answer of agent {final['agent']!r} (turn {final['turn']}) does "
            f"not follow output_schema: at {where}: {errors[0].message}"
        )
    return value


def _quiet_autogen_logs() -> None:
    """AutoGen logs every message it delivers (INFO) and, with a traceback, every error an
    agent raised (ERROR). The trace records the exchange, and such an error is the step's own
    (recorded, with the agent and the turn): a worker's log, or the terminal of
    `dagwright replay`, does not repeat them. A level a user set on these loggers is kept."""
    for name in ("autogen_core", "autogen_agentchat"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.CRITICAL)


__all__ = ["Exchange", "run_team"]
