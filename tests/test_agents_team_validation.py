"""agents.team before anything runs: its arguments validated (each problem located: file, line,
step, field), the extra it needs, what validation loads, and the planner's schema for it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from clitools import REPO, cli
from openai_stub import OpenAIStub, tool_reply
from team_double import require

from dagwright.errors import PlanError
from dagwright.planner.prepare import prepare
from dagwright.tools import ToolRegistry


@pytest.fixture(autouse=True)
def _agents_extra() -> None:
    require("autogen_agentchat")  # else every team step is refused for it (tested below)


def problems(text: str, registry: ToolRegistry, tmp_path: Path) -> list[str]:
    path = tmp_path / "team.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        prepare(path, registry, inputs_required=False)
    except PlanError as exc:
        return [f"{i.line}:{i.step}:{i.field}: {i.message}" + (f" ({i.hint})" if i.hint else "")
                for i in exc.issues]  # fmt: skip
    return []


BAD = """\
name: debate
steps:
  - id: debate
    uses: agents.team
    with:
      task: Argue both sides.
      team: selector
      agents:
        - name: pro
          model: mistral:large
          tools: [text.nope, http.request]
        - name: con
          model: gpt-4o
"""


def test_each_problem_of_a_team_is_located(registry: ToolRegistry, tmp_path: Path) -> None:
    found = problems(BAD, registry, tmp_path)
    tools = found[3].index(" (registered tools: ")
    assert found[3][tools:].startswith(
        " (registered tools: echo, flaky, http.request, llm.generate, retrieve, sleep"
    )  # and any tool the session's other tests registered
    assert [*found[:3], found[3][:tools], *found[4:]] == [
        "5:debate:with.max_turns: tool 'agents.team' needs argument 'max_turns' "
        "(add it under 'with:' (max_turns: integer))",
        "5:debate:with.selector_model: a selector team needs a selector_model (the selector "
        "model chooses who speaks next: set selector_model, e.g. openai:gpt-4o-mini)",
        "10:debate:with.agents.0.model: model 'mistral:large': unknown provider 'mistral' "
        "(known providers: anthropic, hf, openai)",
        "11:debate:with.agents.0.tools.0: agent 'pro': unknown tool 'text.nope'",
        "13:debate:with.agents.1.model: model 'gpt-4o' is not PROVIDER:MODEL "
        "(e.g. openai:gpt-4o-mini (providers: anthropic, hf, openai))",
    ], "listed at once, in the file's order"


@pytest.mark.parametrize(
    ("max_turns", "message"),
    [
        ("500", "Input should be less than or equal to 50 (got 500)"),
        ("0", "Input should be greater than or equal to 1 (got 0)"),
        (".inf", "Input should be a finite number (got inf)"),
        ("null", "Input should be a valid integer (got None)"),
    ],
)
def test_max_turns_is_bounded(
    max_turns: str, message: str, registry: ToolRegistry, tmp_path: Path
) -> None:
    text = f"""\
        name: t
        steps:
          - id: t
            uses: agents.team
            with:
              task: Write.
              agents: [{{name: writer, model: "openai:gpt-4o-mini"}}]
              max_turns: {max_turns}
        """
    assert problems(text, registry, tmp_path) == [f"8:t:with.max_turns: {message}"]


def test_names_endings_and_schemas_are_checked(registry: ToolRegistry, tmp_path: Path) -> None:
    text = """\
        name: t
        steps:
          - id: t
            uses: agents.team
            with:
              task: Write.
              max_turns: 4
              agents:
                - {name: user, model: "openai:m"}
                - {name: local, model: "hf:./tiny", tools: [echo]}
                - {name: local, model: "openai:m", tools: [agents.team]}
              termination: {final_answer: local}
              answer_from: nobody
              output_schema: {type: object, properties: {n: {type: 3}}}
        """
    assert problems(text, registry, tmp_path) == [
        "9:t:with.agents.0.name: agent name 'user' is reserved (user, selector name the task "
        "and the speaker choice; pick another)",
        "10:t:with.agents.1.tools: agent 'local': hf: models cannot call tools (give the tools "
        "to an openai: or anthropic: agent)",
        "11:t:with.agents.2.name: two agents are named 'local' (agent names must be unique in a "
        "team)",
        "11:t:with.agents.2.tools.0: an agent cannot call agents.team (a team is a step: put the "
        "other team in a step of its own)",
        "12:t:with.termination.final_answer: agent 'local' gives the final answer and cannot call "
        "tools (a structured answer leaves no room for tool calls: give the tools to another "
        "agent)",
        "13:t:with.answer_from: answer_from names no agent of the team: 'nobody' (the agents: "
        "user, local)",
        "14:t:with.output_schema: invalid JSON Schema: 3 is not valid under any of the given "
        "schemas",
    ]


def test_a_valid_team_with_references_validates(registry: ToolRegistry, tmp_path: Path) -> None:
    text = """\
        name: t
        inputs: {model: {type: string, default: "openai:gpt-4o-mini"}}
        steps:
          - id: a
            uses: echo
            with: {text: hello}
          - id: t
            uses: agents.team
            with:
              task: "Improve: ${{ steps.a.output.text }}"
              max_turns: 4
              team: selector
              selector_model: "${{ inputs.model }}"
              agents:
                - {name: writer, model: "${{ inputs.model }}", tools: [echo]}
                - {name: critic}
              termination: {text_mention: APPROVED, max_messages: 12}
        output: ${{ steps.t.output.answer }}
        """
    assert problems(text, registry, tmp_path) == []


def test_the_command_line_refuses_a_bad_team_and_runs_nothing(tmp_path: Path) -> None:
    (tmp_path / "team.yaml").write_text(BAD)
    proc = cli("run", "team.yaml", "--db", str(tmp_path / "t.db"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "team.yaml:5" in proc.stderr and "max_turns" in proc.stderr
    assert "unknown provider 'mistral'" in proc.stderr
    assert not (tmp_path / "t.db").exists() or b"debate" not in (tmp_path / "t.db").read_bytes()


def test_without_the_extra_validation_gives_the_install_command(
    registry: ToolRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "autogen_agentchat" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    text = """\
        name: t
        steps:
          - id: t
            uses: agents.team
            with: {task: Write., max_turns: 2, agents: [{name: writer}]}
        """
    assert problems(text, registry, tmp_path) == [
        "4:t:uses: tool 'agents.team' needs autogen_agentchat, not installed here "
        "(install it: pip install 'dagwright[agents]')"
    ]


def test_validating_a_team_loads_no_autogen_and_no_model_client() -> None:
    """The pure parts stay light: `dagwright validate` of the example imports neither AutoGen
    nor a provider's client; the tool's module alone imports no AutoGen either."""
    code = (
        "import sys, json\n"
        "from dagwright.cli.main import main\n"
        "sys.argv = ['dagwright', 'validate', 'workflows/examples/critique.yaml']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stderr.splitlines()[-1]))
    heavy = {"autogen_agentchat", "autogen_core", "openai", "instructor", "anthropic", "torch"}
    assert loaded & heavy == set()
    out = subprocess.run([sys.executable, "-c", "import sys, dagwright.tools.team; "
                          "print(sorted(n for n in sys.modules if n.startswith('autogen')))"],
                         capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stderr


# -- the planner -----------------------------------------------------------------------------------

TEAM = {
    "id": "review",
    "uses": "agents.team",
    "with": {
        "task": "Review: ${{ steps.draft.output }}",
        "agents": [
            {"name": "writer", "model": "openai:m"},
            {"name": "critic", "model": "openai:m", "tools": ["echo"]},
        ],  # fmt: skip
        "max_turns": 6,
        "termination": {"text_mention": "APPROVED"},
    },
}
PLAN = {
    "name": "reviewed",
    "steps": [{"id": "draft", "uses": "echo", "with": {"text": "hi"}}, TEAM],
    "output": "${{ steps.review.output.answer }}",
}


def _unbounded(schema: dict[str, Any], node: Any, path: str = "") -> list[str]:
    """Where a JSON schema lets a string, array or integer grow without a bound."""
    if isinstance(node, dict) and "$ref" in node:
        return _unbounded(schema, schema["$defs"][node["$ref"].split("/")[-1]], path)
    if not isinstance(node, dict):
        return []
    found = []
    kind = node.get("type")
    if kind == "string" and "maxLength" not in node and "enum" not in node and "const" not in node:
        found.append(path)
    if kind == "array" and "maxItems" not in node:
        found.append(path)
    if kind == "integer" and "maximum" not in node:
        found.append(path)
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(node.get(key, [])):
            found += _unbounded(schema, sub, f"{path}|{i}")
    for name, sub in (node.get("properties") or {}).items():
        found += _unbounded(schema, sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _unbounded(schema, node["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("compact", [False, True])
def test_the_plan_schema_holds_a_bounded_team_step(registry: ToolRegistry, compact: bool) -> None:
    from dagwright.planner.llm import draft_model

    model = draft_model(registry, compact=compact)
    schema = model.model_json_schema()
    step = schema["$defs"]["Step_agents_team"]
    assert step["properties"]["uses"]["const"] == "agents.team"
    args = schema["$defs"][step["properties"]["with"]["$ref"].split("/")[-1]]
    assert sorted(args["required"]) == ["agents", "max_turns", "task"]
    where = _unbounded(schema, args)
    assert [w for w in where if not w.startswith(".output_schema")] == []


def test_a_plan_with_a_team_step_is_valid_and_a_bad_one_is_refused(registry: ToolRegistry) -> None:
    from dagwright.planner.llm import draft_model

    model = draft_model(registry)
    assert model.model_validate(PLAN).as_data()["steps"][1]["uses"] == "agents.team"
    bad = json.loads(json.dumps(PLAN))
    bad["steps"][1]["with"]["agents"][1]["tools"] = ["web.search"]
    with pytest.raises(ValueError, match=r"with\.agents\.1\.tools\.0.*unknown tool 'web\.search'"):
        model.model_validate(bad)


def test_the_planner_may_emit_a_team_step(registry: ToolRegistry) -> None:
    from dagwright.agents.models import ModelSettings, connect
    from dagwright.planner.llm import plan

    with OpenAIStub([tool_reply("Plan", PLAN)]) as stub:
        provider = connect("openai:planner", ModelSettings(base_url=stub.base_url))
        workflow = plan("Draft a greeting and have it reviewed", registry, provider, examples=[])
    assert [s.uses for s in workflow.steps] == ["echo", "agents.team"]
    assert workflow.steps[1].with_["max_turns"] == 6
    sent = stub.requests[0]["body"]
    system = sent["messages"][0]["content"]
    assert "- agents.team: Agents (AutoGen) exchange messages on a task" in system
    assert '"AgentSpec"' in system, "the planner is shown the agents' fields"
