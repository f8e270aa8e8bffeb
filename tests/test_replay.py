"""dagwright replay: a run recorded against the local OpenAI-compatible TEST DOUBLE server is
replayed with the server stopped and every provider made to raise if called."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_stub import OpenAIStub, text_reply, tool_reply

from dagwright.agents import models
from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor
from dagwright.executors.replay import replay_run
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry

SCHEMA = {
    "type": "object",
    "required": ["title", "points"],
    "properties": {"title": {"type": "string"}, "points": {"type": "array", "minItems": 2}},
}

WORKFLOW = {
    "name": "replayed",
    "inputs": {"topic": {"type": "string", "default": "DAG engines"}},
    "steps": [
        {"id": "outline", "uses": "llm.generate",
         "with": {"model": "openai:stub-1", "prompt": "Outline ${{ inputs.topic }}",
                  "schema": SCHEMA}},
        {"id": "draft", "uses": "llm.generate",
         "with": {"model": "openai:stub-1",
                  "prompt": "Write about ${{ steps.outline.output.title }}: "
                            "${{ steps.outline.output.points | join(', ') }}"},
         "verify": [{"expr": "output | length > 20", "name": "long enough"}],
         "retry": {"max_attempts": 2, "backoff": 0.2}},
        {"id": "review", "uses": "echo", "with": {"text": "${{ steps.draft.output }}"},
         "verify": [{"judge": "The text is about DAG engines.", "model": "openai:judge-1"}]},
        {"id": "publish", "uses": "test.publish", "with": {"text": "${{ steps.review.output.text }}"}},
    ],
    "output": "${{ steps.publish.output }}",
}  # fmt: skip

REPLIES = [
    tool_reply("Answer", {"value": {"title": "Engines", "points": ["one"]}}),  # invalid: re-asked
    tool_reply("Answer", {"value": {"title": "Engines", "points": ["plan", "run"]}}),
    text_reply("too short"),  # fails `long enough`: retried
    text_reply("DAG engines plan, then run, every step recorded."),
    tool_reply("Verdict", {"reason": "on topic", "passed": True}),
]

PUBLISHED: list[str] = []


@pytest.fixture
def registry_with_publish(registry: ToolRegistry) -> ToolRegistry:
    def publish(text: str) -> dict[str, Any]:
        """A tool with a side effect (replay must not call it)."""
        PUBLISHED.append(text)
        return {"published": True, "chars": len(text)}

    registry.register(publish, name="test.publish")
    return registry


@pytest.fixture
def recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_with_publish: ToolRegistry
) -> Iterator[tuple[SqlTraceStore, str]]:
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    store = SqlTraceStore(str(tmp_path / "t.db"))
    with OpenAIStub(list(REPLIES)) as server:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", server.base_url)
        result = LocalExecutor(store, registry_with_publish).run(Workflow.model_validate(WORKFLOW))
        assert len(server.requests) == 5
    assert result.status == "succeeded", result.error
    assert result.output == {"published": True, "chars": 48}
    yield store, result.run_id
    store.close()


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way to a model raises: a replay that called out would fail loudly."""
    called: list[str] = []

    def refuse(model: str, *args: Any, **kwargs: Any) -> Any:
        called.append(model)
        raise AssertionError(f"replay called the provider for {model}")

    monkeypatch.setattr(models, "connect", refuse)
    monkeypatch.setattr(models, "_PROVIDERS", {p: refuse for p in ("openai", "anthropic", "hf")})
    return called


def test_replay_reproduces_the_run_without_calling_out(
    recorded: tuple[SqlTraceStore, str],
    no_provider: list[str],
    registry_with_publish: ToolRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, run_id = recorded
    published = len(PUBLISHED)
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        waits.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(asyncio, "sleep", recording_sleep)
        report = replay_run(store, run_id, registry_with_publish)
    assert report.divergences == [], report.divergences
    assert report.status == "succeeded"
    assert no_provider == [] and len(PUBLISHED) == published, "nothing was called"
    assert report.model_calls_served == 5
    assert report.attempts_compared == 5  # outline, draft ×2, review, publish
    replayed = store.events(report.run_id)
    calls = [e for e in replayed if e.type == ev.MODEL_CALL]
    assert len(calls) == 5 and all(c.data["replayed"] for c in calls)
    assert store.get_run(report.run_id).lineage() == {
        "parent": run_id, "mode": "replay", "from_steps": []
    }  # fmt: skip
    draft = [e for e in replayed if e.type == ev.ATTEMPT_FINISHED and e.step == "draft"]
    assert [d.data["status"] for d in draft] == ["failed", "succeeded"]
    assert draft[0].data["retry_in"] == 0.2, "the retry is scheduled as recorded…"
    assert not [w for w in waits if w >= 0.2], "…but a replay does not wait for it"


def _alter_model_response(db: Path, run_id: str, step: str, attempt: int, text: str) -> None:
    with sqlite3.connect(db) as conn:
        seq, data = conn.execute(
            "SELECT seq, data FROM dagwright_events WHERE run_id=? AND type='model_call' "
            "AND step=? AND attempt=?",
            (run_id, step, attempt),
        ).fetchone()
        call = json.loads(data)
        call["response"]["choices"][0]["message"]["content"] = text
        conn.execute(
            "UPDATE dagwright_events SET data=? WHERE run_id=? AND seq=?",
            (json.dumps(call), run_id, seq),
        )


def test_an_altered_recorded_response_is_reported_at_its_step(
    recorded: tuple[SqlTraceStore, str],
    no_provider: list[str],
    registry_with_publish: ToolRegistry,
    tmp_path: Path,
) -> None:
    store, run_id = recorded
    _alter_model_response(tmp_path / "t.db", run_id, "draft", 2, "DAG engines run steps twice?")
    report = replay_run(store, run_id, registry_with_publish, into=MemoryTraceStore())
    assert no_provider == []
    first = report.divergences[0]
    assert (first["step"], first["attempt"], first["what"]) == ("draft", 2, "output")
    assert '-"DAG engines plan, then run, every step recorded."' in first["diff"]
    assert '+"DAG engines run steps twice?"' in first["diff"]
    # downstream, the judge would now be asked about other text: not in the recording
    assert [(d["step"], d["what"]) for d in report.divergences] == [
        ("draft", "output"),
        ("review", "model request"),
    ]
    assert "DAG engines run steps twice?" in report.divergences[1]["diff"]
    assert report.status == "failed"


def test_a_structured_answer_altered_to_be_invalid_fails_the_replayed_step(
    recorded: tuple[SqlTraceStore, str], no_provider: list[str], registry_with_publish: ToolRegistry,
    tmp_path: Path,
) -> None:  # fmt: skip
    store, run_id = recorded
    with sqlite3.connect(tmp_path / "t.db") as conn:
        rows = conn.execute(
            "SELECT seq, data FROM dagwright_events WHERE run_id=? AND type='model_call' "
            "AND step='outline' ORDER BY seq",
            (run_id,),
        ).fetchall()
        seq, data = rows[1]  # the valid answer, made invalid
        call = json.loads(data)
        function = call["response"]["choices"][0]["message"]["tool_calls"][0]["function"]
        function["arguments"] = json.dumps({"value": {"title": "Engines", "points": []}})
        conn.execute(
            "UPDATE dagwright_events SET data=? WHERE run_id=? AND seq=?",
            (json.dumps(call), run_id, seq),
        )
    report = replay_run(store, run_id, registry_with_publish, into=MemoryTraceStore())
    first = report.divergences[0]
    assert (first["step"], first["attempt"], first["what"]) == ("outline", 1, "status")
    assert first["expected"]["status"] == "succeeded" and first["actual"]["status"] == "failed"
    assert "no valid answer" in first["actual"]["error"]["message"]


def test_a_nondeterministic_tool_marked_rerun_diverges(
    registry: ToolRegistry, tmp_path: Path
) -> None:
    def stamp() -> float:
        """Not deterministic, though declared so."""
        return time.time()

    registry.register(stamp, name="test.stamp", replay="rerun")
    store = MemoryTraceStore()
    wf = Workflow.model_validate(
        {"name": "n", "steps": [{"id": "now", "uses": "test.stamp"},
                                {"id": "later", "uses": "echo", "with": {"t": "${{ steps.now.output }}"}}]}
    )  # fmt: skip
    run = LocalExecutor(store, registry).run(wf)
    report = replay_run(store, run.run_id, registry)
    assert [(d["step"], d["what"]) for d in report.divergences][:2] == [
        ("now", "output"),
        ("later", "inputs"),
    ]
    diverged = [e for e in store.events(report.run_id) if e.type == ev.REPLAY_DIVERGED]
    assert diverged[0].step == "now" and diverged[0].data["diff"].startswith("--- recorded")
    from dagwright.cli.main import _print_revisions_and_calls, out

    with out.capture() as captured:
        _print_revisions_and_calls(store.events(report.run_id))
    shown = captured.get()
    assert "replay diverged (" in shown and "step 'now' attempt 1: output differs" in shown


def test_replay_cli_exit_codes_and_report(
    recorded: tuple[SqlTraceStore, str], tmp_path: Path
) -> None:
    """The CLI in a subprocess: no server is running and no model is reachable."""
    from clitools import as_json, cli

    store, run_id = recorded
    tools = tmp_path / "publish_tool.py"
    tools.write_text(
        "from dagwright.tools import tool\n\n"
        "@tool('test.publish')\n"
        "def publish(text: str) -> dict:\n"
        "    raise RuntimeError('replay must not publish again')\n"
    )
    env = {"DAGWRIGHT_DB": str(tmp_path / "t.db"), "DAGWRIGHT_TOOLS": "publish_tool",
           "PYTHONPATH": str(tmp_path), "DAGWRIGHT_MODEL_BASE_URL": "http://127.0.0.1:9/v1"}  # fmt: skip
    proc = cli("replay", run_id, "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = as_json(proc)
    assert data["reproduced"] is True and data["model_calls_served"] == 5
    _alter_model_response(tmp_path / "t.db", run_id, "draft", 2, "something else entirely")
    proc = cli("replay", run_id, "--no-record", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert "✗ diverged: step 'draft' attempt 2: output differs" in proc.stdout
    assert '+"something else entirely"' in proc.stdout
    proc = cli("replay", run_id, "--rerun", "nope", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "--rerun nope: no such tool" in proc.stderr


def test_cache_hits_and_anthropic_answers_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: ToolRegistry
) -> None:
    pytest.importorskip("anthropic")
    from openai_stub import anthropic_tool_reply

    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    wf = Workflow.model_validate({"name": "a", "steps": [
        {"id": "count", "uses": "llm.generate", "cache": True,
         "with": {"model": "anthropic:claude-stub", "prompt": "How many?", "schema": schema}}]})  # fmt: skip
    store = SqlTraceStore(str(tmp_path / "t.db"))
    with OpenAIStub([anthropic_tool_reply("Answer", {"value": {"n": 3}})]) as server:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", server.root_url)
        first = LocalExecutor(store, registry).run(wf)
        second = LocalExecutor(store, registry).run(wf)  # a cache hit
        assert len(server.requests) == 1
    assert first.output == second.output == {"count": {"n": 3}}

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("replay called a provider")

    monkeypatch.setattr(models, "connect", refuse)
    for run in (first, second):
        report = replay_run(store, run.run_id, registry, into=MemoryTraceStore())
        assert report.divergences == [] and report.model_calls_served == 1
    store.close()


def test_a_replanned_run_replays_its_recorded_revision(
    registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Workflow.model_validate({
        "name": "fragile",
        "steps": [
            {"id": "fetch", "uses": "echo", "with": {"text": "raw"}},
            {"id": "summarise", "uses": "flaky", "with": {"fail_times": 9},
             "needs": ["fetch"], "on_failure": "replan"},
        ],
    })  # fmt: skip
    revised = Workflow.model_validate({
        "name": "fragile",
        "steps": [
            {"id": "fetch", "uses": "echo", "with": {"text": "raw"}},
            {"id": "summary2", "uses": "echo", "with": {"s": "${{ steps.fetch.output.text }}"}},
        ],
    })  # fmt: skip
    store = MemoryTraceStore()
    run = LocalExecutor(store, registry, replanner=lambda *a: revised).run(original)
    assert run.status == "succeeded" and run.output == {"summary2": {"s": "raw"}}
    report = replay_run(store, run.run_id, registry)
    assert report.divergences == [] and report.status == "succeeded"
    kinds = [e.type for e in store.events(report.run_id)]
    assert kinds.count(ev.PLAN_REVISED) == 1


def test_replay_uses_the_recorded_model_and_seed_not_this_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: ToolRegistry
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    wf = Workflow.model_validate({"name": "env", "steps": [
        {"id": "say", "uses": "llm.generate", "with": {"prompt": "Hello"}}]})  # fmt: skip
    store = SqlTraceStore(str(tmp_path / "t.db"))
    with OpenAIStub([text_reply("hi")]) as server:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", server.base_url)
        monkeypatch.setenv("DAGWRIGHT_MODEL", "openai:stub-1")
        monkeypatch.setenv("DAGWRIGHT_MODEL_SEED", "11")
        run = LocalExecutor(store, registry).run(wf)
    assert run.output == {"say": "hi"}
    for key in ("DAGWRIGHT_MODEL_BASE_URL", "DAGWRIGHT_MODEL", "DAGWRIGHT_MODEL_SEED"):
        monkeypatch.delenv(key)  # a laptop without the production settings

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("replay called a provider")

    monkeypatch.setattr(models, "connect", refuse)
    report = replay_run(store, run.run_id, registry, into=MemoryTraceStore())
    assert report.divergences == [] and report.model_calls_served == 1
    store.close()
