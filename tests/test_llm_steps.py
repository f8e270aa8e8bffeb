"""llm.generate steps, recorded model calls and the model-call cache, against a local
OpenAI-compatible server serving recorded responses (a labelled test double)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_stub import OpenAIStub, text_reply, tool_reply

from dagwright.executors.engine import events as ev
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIStub]:
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    with OpenAIStub() as server:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", server.base_url)
        monkeypatch.setenv("DAGWRIGHT_MODEL_SEED", "11")
        yield server


def wf(step: dict[str, Any]) -> Workflow:
    return Workflow.model_validate(
        {"name": "llm", "inputs": {"topic": {"type": "string", "default": "DAGs"}}, "steps": [step]}
    )


def test_llm_generate_records_the_call_in_the_trace(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry
) -> None:
    stub.replies.append(text_reply("DAGs are graphs without cycles."))
    store = SqlTraceStore(str(tmp_path / "t.db"))
    result = LocalExecutor(store, registry).run(
        wf({"id": "say", "uses": "llm.generate",
            "with": {"model": "openai:stub-1", "prompt": "Define ${{ inputs.topic }} in one line."}})
    )  # fmt: skip
    assert result.status == "succeeded"
    assert result.output == {"say": "DAGs are graphs without cycles."}
    request = stub.requests[0]["body"]
    assert request["messages"][-1]["content"] == "Define DAGs in one line."
    assert request["temperature"] == 0 and request["seed"] == 11
    calls = [e for e in store.events(result.run_id) if e.type == ev.MODEL_CALL]
    assert len(calls) == 1 and calls[0].step == "say" and calls[0].attempt == 1
    assert calls[0].data["model_id"] == "stub-model-2026-11-01"
    assert calls[0].data["usage"]["total_tokens"] == 15 and calls[0].data["latency"] > 0


def test_the_same_request_twice_makes_one_call(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry
) -> None:
    stub.replies.append(text_reply("cached answer"))
    store = SqlTraceStore(str(tmp_path / "t.db"))
    step = {"id": "say", "uses": "llm.generate", "cache": True,
            "with": {"model": "openai:stub-1", "prompt": "Same question"}}  # fmt: skip
    first = LocalExecutor(store, registry).run(wf(step))
    second = LocalExecutor(store, registry).run(wf(step))
    assert first.output == second.output == {"say": "cached answer"}
    assert len(stub.requests) == 1, "the second run was served from the cache"
    hits = [
        e.data["cache_hit"]
        for r in (first, second)
        for e in store.events(r.run_id)
        if e.type == ev.MODEL_CALL
    ]
    assert hits == [False, True]


def test_structured_output_follows_the_schema(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry
) -> None:
    schema = {"type": "object", "required": ["title", "tags"],
              "properties": {"title": {"type": "string"}, "tags": {"type": "array", "minItems": 2}}}  # fmt: skip
    stub.replies.append(tool_reply("Answer", {"value": {"title": "t", "tags": ["one"]}}))
    stub.replies.append(tool_reply("Answer", {"value": {"title": "t", "tags": ["one", "two"]}}))
    store = SqlTraceStore(str(tmp_path / "t.db"))
    result = LocalExecutor(store, registry).run(
        wf(
            {
                "id": "tag",
                "uses": "llm.generate",
                "with": {"model": "openai:stub-1", "prompt": "Tag it", "schema": schema},
            }
        )
    )
    assert result.status == "succeeded", result.error
    assert result.output == {"tag": {"title": "t", "tags": ["one", "two"]}}
    sent = stub.requests[0]["body"]["tools"][0]["function"]["parameters"]
    assert sent["properties"]["value"] == schema
    # one re-ask: the second request tells the model why its first answer was refused
    assert len(stub.requests) == 2
    reask = stub.requests[1]["body"]["messages"][-1]
    assert reask["role"] == "tool" and reask["content"].startswith("Validation Error found:")
    assert "value at tags: ['one'] is too short" in reask["content"]
    errors = [e.data["error"] for e in store.events(result.run_id) if e.type == ev.MODEL_CALL]
    assert len(errors) == 2 and errors[1] is None
    assert errors[0].startswith("invalid answer: ")
    assert "value at tags: ['one'] is too short" in errors[0]


def test_a_failed_verify_is_told_to_the_model_on_retry(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry
) -> None:
    stub.replies.extend([text_reply("short"), text_reply("a much longer answer now")])
    store = SqlTraceStore(str(tmp_path / "t.db"))
    result = LocalExecutor(store, registry).run(
        wf({"id": "say", "uses": "llm.generate", "with": {"model": "openai:stub-1", "prompt": "Explain"},
            "verify": [{"expr": "output | length > 10", "name": "long enough"}],
            "retry": {"max_attempts": 2, "backoff": 0}})
    )  # fmt: skip
    assert result.status == "succeeded"
    retry_messages = stub.requests[1]["body"]["messages"]
    assert "long enough failed" in retry_messages[-1]["content"]


def test_no_model_is_a_clear_non_retryable_error(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry
) -> None:
    store = SqlTraceStore(str(tmp_path / "t.db"))
    result = LocalExecutor(store, registry).run(
        wf(
            {
                "id": "say",
                "uses": "llm.generate",
                "with": {"prompt": "x"},
                "retry": {"max_attempts": 3, "backoff": 0},
            }
        )
    )
    assert result.status == "failed"
    assert "needs a model" in result.error["message"]
    assert len([e for e in store.events(result.run_id) if e.type == ev.ATTEMPT_STARTED]) == 1
    assert stub.requests == []


def test_a_judge_check_asks_the_model_and_its_no_is_retried(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry
) -> None:
    stub.replies.extend([
        tool_reply("Verdict", {"reason": "it never names the topic", "passed": False}),
        tool_reply("Verdict", {"reason": "names DAGs", "passed": True}),
    ])  # fmt: skip
    store = SqlTraceStore(str(tmp_path / "t.db"))
    result = LocalExecutor(store, registry).run(
        wf({"id": "draft", "uses": "echo", "with": {"text": "About ${{ inputs.topic }}"},
            "verify": [{"judge": "The text must name the topic ${{ inputs.topic }}.", "model": "openai:judge-1"}],
            "retry": {"max_attempts": 2, "backoff": 0}})
    )  # fmt: skip
    assert result.status == "succeeded"
    first = [e for e in store.events(result.run_id) if e.type == ev.ATTEMPT_FINISHED][0]
    assert "the judge said no: it never names the topic" in first.data["error"]["message"]
    assert (
        "The text must name the topic DAGs." in stub.requests[0]["body"]["messages"][0]["content"]
    )
    calls = [e for e in store.events(result.run_id) if e.type == ev.MODEL_CALL]
    assert [c.data["purpose"] for c in calls] == ["llm.judge", "llm.judge"]


def test_redis_as_the_model_cache(
    stub: OpenAIStub, tmp_path: Path, registry: ToolRegistry, redis_server: str
) -> None:
    from conftest import MODEL_CACHE_DB, flush_broker

    from dagwright.agents.cache import RedisCache

    url = f"{redis_server}/{MODEL_CACHE_DB}"  # the session's own Redis, not a broker database
    flush_broker(url)
    cache = RedisCache(url, prefix=f"test:{tmp_path.name}:")
    stub.replies.append(text_reply("from the model"))
    step = {"id": "say", "uses": "llm.generate", "cache": True,
            "with": {"model": "openai:stub-1", "prompt": "cache me in Redis"}}  # fmt: skip
    stores = [SqlTraceStore(str(tmp_path / f"t{i}.db")) for i in range(2)]
    results = [LocalExecutor(s, registry, cache=cache).run(wf(step)) for s in stores]
    assert [r.output for r in results] == [{"say": "from the model"}] * 2
    assert len(stub.requests) == 1, "a second trace store, the same Redis cache: one request"
    flush_broker(url)
