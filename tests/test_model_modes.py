"""The structured-output modes of `openai:` models (tools, json_schema, json, md_json), each
against the local OpenAI-compatible TEST DOUBLE (tests/openai_stub.py): what is sent, what is
parsed and re-asked, what is recorded, and that a replay parses the recording the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai_stub import OpenAIStub, text_reply, tool_reply
from pydantic import BaseModel

from dagwright.agents.models import ModelCall, ModelError, ModelSettings, connect
from dagwright.agents.replay import ANSWERS
from dagwright.executors.local import LocalExecutor
from dagwright.executors.replay import replay_run
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.settings import Settings
from dagwright.tools import ToolRegistry


class Point(BaseModel):
    x: int
    label: str


GOOD, BAD = {"x": 3, "label": "three"}, {"x": "three"}


def reply(mode: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The recorded completion a server in ``mode`` answers with."""
    if mode == "tools":
        return tool_reply("Point", answer)
    if mode == "md_json":
        return text_reply(f"Here it is:\n```json\n{json.dumps(answer)}\n```\n")
    return text_reply(json.dumps(answer))


@pytest.mark.parametrize("mode", ["tools", "json_schema", "json", "md_json"])
def test_each_mode_asks_parses_and_re_asks_against_the_test_double(mode: str) -> None:
    calls: list[ModelCall] = []
    with OpenAIStub([reply(mode, BAD), reply(mode, GOOD)]) as stub:
        model = connect(f"openai:local-1?mode={mode}", ModelSettings(base_url=stub.base_url))
        answer = model.structured(
            [{"role": "user", "content": "a point"}], Point, max_retries=1, record=calls.append
        )
    assert answer.model_dump() == GOOD
    assert len(stub.requests) == 2, "an invalid answer is re-asked once"
    body = stub.requests[0]["body"]
    assert body["model"] == "local-1", "the mode is not sent as part of the model's name"
    sent = {
        "tools": ("tools" in body, body.get("response_format")),
        "json_schema": ("tools" in body, (body.get("response_format") or {}).get("type")),
        "json": ("tools" in body, body.get("response_format")),
        "md_json": ("tools" in body, body.get("response_format")),
    }[mode]
    assert (
        sent
        == {
            "tools": (True, None),
            "json_schema": (False, "json_schema"),
            "json": (False, {"type": "json_object"}),
            "md_json": (False, None),
        }[mode]
    )
    if mode == "json_schema":
        schema = body["response_format"]["json_schema"]["schema"]
        assert set(schema["properties"]) == {"x", "label"}
    # recorded: the mode and, for a failed parse, the error; a replay parses the raw response
    assert [c.request["mode"] for c in calls] == [mode, mode]
    assert calls[0].error and calls[1].error is None
    assert ANSWERS["openai"](calls[1].response, True) == GOOD


def test_the_mode_comes_from_the_setting_unless_the_model_string_says() -> None:
    settings = Settings.from_env({"DAGWRIGHT_OPENAI_MODE": "json_schema"})
    with OpenAIStub([reply("json_schema", GOOD), reply("md_json", GOOD)]) as stub:
        model_settings = ModelSettings.from_settings(settings, base_url=stub.base_url)
        assert model_settings.openai_mode == "json_schema"
        connect("openai:m", model_settings).structured([], Point, max_retries=0, record=print)
        connect("openai:m?mode=md_json", model_settings).structured(
            [], Point, max_retries=0, record=print
        )
    assert stub.requests[0]["body"]["response_format"]["type"] == "json_schema"
    assert "response_format" not in stub.requests[1]["body"]
    with pytest.raises(Exception, match="DAGWRIGHT_OPENAI_MODE"):
        Settings.from_env({"DAGWRIGHT_OPENAI_MODE": "grammar"})
    with pytest.raises(ModelError, match="mode='grammar': use one of tools, json_schema, json"):
        connect("openai:m?mode=grammar", model_settings)
    with pytest.raises(ModelError, match="unknown option 'temperature'; known: mode=tools"):
        connect("openai:m?temperature=1", model_settings)


def test_a_step_in_md_json_mode_replays_without_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: ToolRegistry
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    wf = Workflow.model_validate(
        {"name": "modes", "steps": [{"id": "p", "uses": "llm.generate", "with": {
            "model": "openai:local-1?mode=md_json", "prompt": "a point",
            "schema": {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}},
        }}]}
    )  # fmt: skip
    store = SqlTraceStore(str(tmp_path / "t.db"))
    answer = text_reply('```json\n{"value": {"x": 7}}\n```')
    with OpenAIStub([answer]) as stub:
        monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", stub.base_url)
        result = LocalExecutor(store, registry).run(wf)
    assert result.status == "succeeded" and result.output == {"p": {"x": 7}}
    report = replay_run(store, result.run_id, registry)  # the server is gone
    assert report.divergences == [] and report.model_calls_served == 1
    store.close()


def test_an_endpoint_that_cannot_be_reached_is_named_with_the_setting_that_chooses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from typer.testing import CliRunner

    from dagwright.cli.main import app

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    model = connect("openai:gpt-x", ModelSettings(base_url=url, timeout=5))
    expected = (
        f"openai:gpt-x: could not reach the model endpoint {url} (the connection failed: "
        "[Errno 111] Connection refused); DAGWRIGHT_MODEL_BASE_URL chooses it"
    )
    with pytest.raises(ModelError) as structured:
        model.structured([{"role": "user", "content": "hi"}], Point, max_retries=2, record=print)
    assert str(structured.value) == expected
    with pytest.raises(ModelError) as text:
        model.text([{"role": "user", "content": "hi"}], record=print)
    assert str(text.value) == expected
    for key in [k for k in __import__("os").environ if k.startswith("DAGWRIGHT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DAGWRIGHT_MODEL_BASE_URL", url.replace("127.0.0.1", "user:pw@127.0.0.1"))
    result = CliRunner().invoke(app, ["plan", "--task", "notes", "--model", "openai:gpt-x"])
    assert result.exit_code == 1
    assert "could not reach the model endpoint " + url in result.stderr, "no password shown"
    assert "API call failed" not in result.stderr, "Instructor's own warning is not printed"
