"""``agents.team``: a multi-agent exchange (AutoGen AgentChat) as one step — its inputs resolved
from upstream outputs like any ``with``, its output verified and retried like any step's, every
message, model call and tool call recorded, and the whole exchange replayed without a model.

AutoGen is the optional extra ``agents``: without it, a workflow using this tool fails
validation with the install command. See docs/agents.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from dagwright.agents.team_spec import (
    AGENT_NAME,
    MAX_AGENTS,
    MAX_TURNS,
    AgentSpec,
    TeamOutput,
    Termination,
    team_problems,
)
from dagwright.tools.registry import Requires, ToolContext, tool

EXTRA = Requires(
    modules=("autogen_agentchat", "autogen_core"), install="pip install 'dagwright[agents]'"
)


@tool("agents.team", replay="rerun", requires=EXTRA, check=team_problems)  # its calls are served
async def team_step(
    task: Annotated[str, Field(min_length=1, max_length=20_000)],
    agents: Annotated[list[AgentSpec], Field(min_length=1, max_length=MAX_AGENTS)],
    max_turns: Annotated[int, Field(ge=1, le=MAX_TURNS)],
    ctx: ToolContext,
    team: Literal["round_robin", "selector"] = "round_robin",
    selector_model: Annotated[str, Field(max_length=200)] = "",
    termination: Termination | None = None,
    answer_from: Annotated[str, Field(pattern=AGENT_NAME, max_length=40)] | None = None,
    output_schema: Annotated[dict[str, Any], Field(max_length=50)] | None = None,
    max_tokens: Annotated[int, Field(ge=1, le=32_000)] = 1024,
) -> TeamOutput:
    """Agents (AutoGen) exchange messages on a task, for critique, review or debate.

    They speak in turns — `round_robin`, or `selector` (a model picks who speaks next) — until
    `termination` (an agent says `text_mention`; the `final_answer` agent answers in
    `output_schema`; `max_messages`) or `max_turns` (required, at most 50). Output: `answer`
    (the last message, or `answer_from`'s; parsed into `output_schema` when given),
    `answered_by`, `stop_reason`, `turns`, `transcript` (turn, agent, kind, text, tokens) and
    `usage`."""
    from dagwright.agents.team import run_team

    return await run_team(
        ctx,
        task=task,
        agents=agents,
        max_turns=max_turns,
        team=team,
        selector_model=selector_model,
        termination=termination,
        answer_from=answer_from,
        output_schema=output_schema,
        max_tokens=max_tokens,
    )


__all__ = ["team_step"]
