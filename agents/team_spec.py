"""What an ``agents.team`` step is given: its agents, the kind of team, the bounds of the
exchange and how it ends, as typed arguments (pydantic); and the checks validation runs on them
beyond their types (``team_problems``), each naming where in the step's ``with`` it is.

Nothing here imports AutoGen: a workflow is validated without it (then ``agents.team`` fails
validation with the install command, as every tool whose extra is missing does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

if TYPE_CHECKING:
    from dagwright.tools.registry import ArgProblem, ToolRegistry

MAX_TURNS = 50
"""The most turns (agent answers) an exchange may take: ``max_turns`` is required, 1 to this."""
MAX_AGENTS = 8
AGENT_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,39}$"
RESERVED_NAMES = ("user", "selector")
"""``user`` says the task; ``selector`` is the speaker choice of a selector team."""
TEAM_TOOL = "agents.team"


class AgentSpec(BaseModel):
    """One agent of a team."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: Annotated[str, Field(pattern=AGENT_NAME, max_length=40)]
    """How the others and the transcript call it (letters, digits, underscores)."""
    system: Annotated[str, Field(max_length=8000)] = ""
    """Its system message: its role and how it answers."""
    model: Annotated[str, Field(max_length=200)] = ""
    """``openai:…``, ``anthropic:…`` or ``hf:…``; empty: DAGWRIGHT_MODEL."""
    description: Annotated[str, Field(max_length=500)] = ""
    """What it does, for a selector team's choice of speaker (default: its system message)."""
    tools: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=8)] = []
    """Registered tools it may call, by name (e.g. ``retrieve``, a workflow's own tools)."""
    max_tool_iterations: Annotated[int, Field(ge=1, le=10)] = 3
    """Within one turn, how many rounds of tool calls it may make before it must answer."""


class Termination(BaseModel):
    """How the exchange ends (besides ``max_turns``). ``text_mention`` and ``final_answer``
    are goals: an exchange that stops at a limit (``max_turns``, ``max_messages``) before
    reaching one fails the attempt. With no goal, reaching a limit is the end."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    text_mention: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """The exchange ends when an agent says this text (e.g. ``APPROVED``)."""
    max_messages: Annotated[int, Field(ge=2, le=4 * MAX_TURNS)] | None = None
    """The exchange ends after this many messages (the task counts as one)."""
    final_answer: Annotated[str, Field(pattern=AGENT_NAME, max_length=40)] | None = None
    """This agent answers in ``output_schema`` (structured output), and the exchange ends when
    it has answered."""


class Said(TypedDict):
    """One message of the exchange."""

    turn: int
    agent: str
    kind: str
    """``task``, ``text``, ``answer`` (a final answer in ``output_schema``), ``tool_call``,
    ``tool_result``, ``tool_summary`` (a turn that ended on tool results), ``thought``."""
    text: str
    tokens: dict[str, int] | None
    """``{"prompt", "completion"}`` of the model call that wrote it; None otherwise."""


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    model_calls: int


class AnsweredBy(TypedDict):
    agent: str
    turn: int


class TeamOutput(TypedDict):
    answer: Any
    """The final message's text; with ``output_schema``, the JSON value that follows it."""
    answered_by: AnsweredBy
    stop_reason: str
    turns: int
    transcript: list[Said]
    usage: Usage


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and "${{" in value


def _agents(with_: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    found = with_.get("agents")
    if not isinstance(found, list):
        return []
    return [(i, a) for i, a in enumerate(found) if isinstance(a, dict)]


def team_problems(with_: dict[str, Any], registry: ToolRegistry) -> list[ArgProblem]:
    """What is wrong with an ``agents.team`` step's arguments beyond their types: unknown
    agent tools, unknown model providers, a selector team without its selector model, names
    that are taken or unknown, a final answer without its schema. References are left to the
    attempt (their values are checked when they resolve)."""
    problems: list[ArgProblem] = []
    agents = _agents(with_)
    seen: set[str] = set()
    for i, agent in agents:
        problems += _agent_problems(i, agent, seen, registry)
    team = with_.get("team", "round_robin")
    selector = with_.get("selector_model")
    if team == "selector":
        if not selector:
            problems.append((("selector_model",), "a selector team needs a selector_model",
                             "the selector model chooses who speaks next: set selector_model, "
                             "e.g. openai:gpt-4o-mini"))  # fmt: skip
        if len(agents) < 2 and isinstance(with_.get("agents"), list):
            problems.append((("agents",), "a selector team needs at least two agents",
                             "use team: round_robin for one agent"))  # fmt: skip
    if isinstance(selector, str) and selector and not _is_ref(selector):
        problems += _model_problems(("selector_model",), selector)
    problems += _ending_problems(with_, agents)
    schema = with_.get("output_schema")
    if isinstance(schema, dict) and "${{" not in repr(schema):
        problems += _schema_problems(schema)
    return problems


def _agent_problems(
    i: int, agent: dict[str, Any], seen: set[str], registry: ToolRegistry
) -> list[ArgProblem]:
    at: tuple[str | int, ...] = ("agents", i)
    problems: list[ArgProblem] = []
    name = agent.get("name")
    if isinstance(name, str) and name in RESERVED_NAMES:
        problems.append(((*at, "name"), f"agent name {name!r} is reserved",
                         f"{', '.join(RESERVED_NAMES)} name the task and the speaker choice; "
                         "pick another"))  # fmt: skip
    elif isinstance(name, str) and name in seen:
        problems.append(((*at, "name"), f"two agents are named {name!r}",
                         "agent names must be unique in a team"))  # fmt: skip
    if isinstance(name, str):
        seen.add(name)
    model = agent.get("model")
    if isinstance(model, str) and model and not _is_ref(model):
        problems += _model_problems((*at, "model"), model)
    tools = agent.get("tools")
    for j, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, str) or _is_ref(tool):
            continue
        if tool == TEAM_TOOL:
            problems.append(((*at, "tools", j), f"an agent cannot call {TEAM_TOOL}",
                             "a team is a step: put the other team in a step of its own"))  # fmt: skip
        elif tool not in registry:
            from dagwright.planner.source import did_you_mean

            names_known = [n for n in registry.names() if n != TEAM_TOOL]
            hint = did_you_mean(tool, names_known)
            problems.append(((*at, "tools", j), f"agent {name!r}: unknown tool {tool!r}",
                             (hint + " " if hint else "") + "registered tools: "
                             + ", ".join(names_known)))  # fmt: skip
    if tools and isinstance(model, str) and model.startswith("hf:"):
        problems.append(((*at, "tools"), f"agent {name!r}: hf: models cannot call tools",
                         "give the tools to an openai: or anthropic: agent"))  # fmt: skip
    return problems


def _model_problems(at: tuple[str | int, ...], model: str) -> list[ArgProblem]:
    from dagwright.agents.models import providers

    known = providers()
    prefix, sep, rest = model.partition(":")
    if not sep or not rest:
        return [(at, f"model {model!r} is not PROVIDER:MODEL",
                 f"e.g. openai:gpt-4o-mini (providers: {', '.join(known)})")]  # fmt: skip
    if prefix not in known:
        return [(at, f"model {model!r}: unknown provider {prefix!r}",
                 f"known providers: {', '.join(known)}")]  # fmt: skip
    return []


def _ending_problems(
    with_: dict[str, Any], agents: list[tuple[int, dict[str, Any]]]
) -> list[ArgProblem]:
    problems: list[ArgProblem] = []
    by_name = {a.get("name"): a for _, a in agents}
    known = ", ".join(str(n) for n in by_name)
    termination = with_.get("termination")
    final = termination.get("final_answer") if isinstance(termination, dict) else None
    if isinstance(final, str) and not _is_ref(final) and agents:
        at: tuple[str | int, ...] = ("termination", "final_answer")
        if final not in by_name:
            problems.append((at, f"final_answer names no agent of the team: {final!r}",
                             f"the agents: {known}"))  # fmt: skip
        elif by_name[final].get("tools"):
            problems.append((at, f"agent {final!r} gives the final answer and cannot call tools",
                             "a structured answer leaves no room for tool calls: give the tools "
                             "to another agent"))  # fmt: skip
        if with_.get("output_schema") is None:
            problems.append((at, "a final answer needs an output_schema",
                             "output_schema is the JSON Schema the final answer follows"))  # fmt: skip
    answer_from = with_.get("answer_from")
    if isinstance(answer_from, str) and not _is_ref(answer_from) and agents:
        if answer_from not in by_name:
            problems.append((("answer_from",), f"answer_from names no agent of the team: "
                             f"{answer_from!r}", f"the agents: {known}"))  # fmt: skip
        elif isinstance(final, str) and final != answer_from:
            problems.append((("answer_from",), "answer_from and termination.final_answer "
                             "name different agents", "the final answer is the answer: "
                             "leave answer_from out"))  # fmt: skip
    return problems


def _schema_problems(schema: dict[str, Any]) -> list[ArgProblem]:
    import jsonschema  # only workflows with an output schema need it

    from dagwright.planner.regex import schema_problems

    problems: list[ArgProblem] = [
        (("output_schema",), f"JSON Schema regex {p}", p.hint) for p in schema_problems(schema)
    ]
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        problems.append((("output_schema",), f"invalid JSON Schema: {exc.message}", None))
    return problems


__all__ = [
    "AGENT_NAME",
    "MAX_AGENTS",
    "MAX_TURNS",
    "RESERVED_NAMES",
    "AgentSpec",
    "AnsweredBy",
    "Said",
    "TeamOutput",
    "Termination",
    "Usage",
    "team_problems",
]
