"""Secrets: one way to build a provider's credentials (settings, with each provider's own
variable as the fallback), and known secret values never written to the trace, printed or
returned. The provider is a local OpenAI-compatible TEST DOUBLE (``openai_stub``) that answers
401 and echoes the credentials it was sent, as some providers and proxies do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from clitools import as_json, cli
from openai_stub import OpenAIStub

from dagwright.agents.models import ModelError, ModelSettings, connect, discard
from dagwright.executors.engine.events import Event
from dagwright.executors.store import MemoryTraceStore, RunRecord, open_store
from dagwright.redact import REDACTED, Redactor
from dagwright.settings import Settings

KEY = "sk-test-0123456789abcdefSECRET"
ANTHROPIC_KEY = "sk-ant-test-9876543210ANTHROPIC"


@pytest.fixture
def rejecting() -> Iterator[OpenAIStub]:
    with OpenAIStub(reject_auth=True) as server:
        yield server


def nowhere(text: str) -> None:
    assert KEY not in text
    assert KEY[8:] not in text, "not even a part of it"


# -- credentials: one way, from settings -----------------------------------------------------------


def test_each_provider_gets_its_own_variable_as_the_fallback() -> None:
    env = {"OPENAI_API_KEY": KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    models = ModelSettings.from_settings(Settings.from_env(env))
    assert models.key_for("openai") == KEY
    assert models.key_for("anthropic") == ANTHROPIC_KEY
    assert models.key_for("hf") is None
    only_openai = ModelSettings.from_settings(Settings.from_env({"OPENAI_API_KEY": KEY}))
    assert only_openai.key_for("anthropic") is None, "one provider's key never goes to another"
    explicit = ModelSettings.from_settings(
        Settings.from_env({**env, "DAGWRIGHT_MODEL_API_KEY": "sk-explicit-key"})
    )
    assert explicit.key_for("openai") == explicit.key_for("anthropic") == "sk-explicit-key"
    ours = Settings.from_env({"OPENAI_API_KEY": KEY, "DAGWRIGHT_OPENAI_API_KEY": "sk-dagwright"})
    assert ours.openai_api_key == "sk-dagwright"
    assert Settings() == Settings.from_env({}), "no variable read behind the caller's back"


def test_the_settings_know_their_secrets() -> None:
    s = Settings.from_env(
        {
            "OPENAI_API_KEY": KEY,
            "DAGWRIGHT_MODEL_API_KEY": "sk-explicit-key",
            "DAGWRIGHT_DB": "postgresql://u:db-password-1@h/db",
            "DAGWRIGHT_BROKER": "redis://:broker-password@h:6379/0",
        }
    )
    assert set(s.secrets()) >= {KEY, "sk-explicit-key", "db-password-1", "broker-password"}
    assert Settings().secrets() == ()


def test_anthropic_is_sent_its_own_key_and_its_errors_carry_none(rejecting: OpenAIStub) -> None:
    pytest.importorskip("anthropic")
    env = {
        "OPENAI_API_KEY": KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "DAGWRIGHT_MODEL_BASE_URL": rejecting.root_url,
    }
    provider = connect("anthropic:claude-stub", ModelSettings.from_settings(Settings.from_env(env)))
    calls = []
    with pytest.raises(ModelError) as info:
        provider.text([{"role": "user", "content": "hi"}], record=calls.append)
    headers = rejecting.requests[0]["headers"]
    sent = f"{headers.get('x-api-key')} {headers.get('authorization')}"
    assert ANTHROPIC_KEY in sent, "its own key (this SDK sends it as a bearer token)"
    assert KEY not in json.dumps(headers)
    assert "sk-ant" not in str(info.value) and REDACTED in str(info.value)
    assert calls and ANTHROPIC_KEY not in json.dumps([c.as_dict() for c in calls])


# -- the redactor and the one place that applies it ------------------------------------------------


def test_the_redactor_replaces_known_values_in_every_string() -> None:
    r = Redactor([KEY, "short", ""])
    data = {"a": [f"Bearer {KEY}", ("x", {KEY: 1})], "n": 3, "none": None, "short": "short"}
    assert r.value(data) == {
        "a": [f"Bearer {REDACTED}", ("x", {REDACTED: 1})],
        "n": 3,
        "none": None,
        "short": "short",  # under 8 characters: too common to be a secret worth hiding
    }
    clean = {"a": ["nothing here"]}
    assert r.value(clean) is clean, "nothing copied when nothing is secret"
    assert not Redactor([])


def test_a_store_opened_with_secrets_never_keeps_them() -> None:
    assert isinstance(open_store("memory"), MemoryTraceStore), "no secrets: no wrapper"
    store = open_store("memory", secrets=[KEY])
    store.create_run(
        RunRecord("r1", "wf", 0.0, {"name": "wf", "steps": [], "note": KEY}, {"key": KEY})
    )
    stored = store.append("r1", [Event("model_call", "r1", 1.0, "s", 1, {"error": f"{KEY}!"})])
    assert stored is not None and stored[0].data == {"error": f"{REDACTED}!"}
    store.cache_put("k", {"value": KEY})
    everything = repr((store.get_run("r1"), store.events("r1"), store.cache_get("k")))
    nowhere(everything)
    assert everything.count(REDACTED) == 4
    assert store.list_runs()[0].record.inputs == {"key": REDACTED}


def test_celery_workers_open_a_redacting_store(tmp_path: Path) -> None:
    from dagwright.executors.celery.app import create_app, runtime

    settings = Settings.from_env({"OPENAI_API_KEY": KEY, "DAGWRIGHT_DB": str(tmp_path / "t.db")})
    store = runtime(create_app(settings)).engine().store
    store.create_run(RunRecord("r1", "wf", 0.0, {"name": "wf", "steps": []}, {"key": KEY}))
    assert store.get_run("r1").inputs == {"key": REDACTED}
    store.close()


# -- end to end: the command line ------------------------------------------------------------------

LLM_WORKFLOW = """\
name: asks
steps:
  - id: ask
    uses: llm.generate
    with: {model: "openai:stub-1", prompt: "Say hi"}
"""


def test_an_llm_step_uses_openai_api_key_and_the_key_is_nowhere(
    rejecting: OpenAIStub, tmp_path: Path
) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(LLM_WORKFLOW)
    env = {"OPENAI_API_KEY": KEY, "DAGWRIGHT_MODEL_BASE_URL": rejecting.base_url}
    proc = cli("run", str(wf), "--json", cwd=tmp_path, env=env)
    assert rejecting.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert proc.returncode == 1, proc.stderr
    result = as_json(proc)
    assert result["status"] == "failed"
    nowhere(proc.stdout + proc.stderr)
    assert REDACTED in result["error"]["message"]
    human = cli("run", str(wf), cwd=tmp_path, env=env)
    assert human.returncode == 1 and REDACTED in human.stdout
    nowhere(human.stdout + human.stderr)
    run_id = result["run_id"]
    for command in (("trace", run_id, "--json"), ("show", run_id, "--json"), ("show", run_id)):
        shown = cli(*command, cwd=tmp_path, env=env)
        assert shown.returncode in (0, 1), shown.stderr
        nowhere(shown.stdout + shown.stderr)
        assert REDACTED in shown.stdout, command
    trace = as_json(cli("trace", run_id, "--json", cwd=tmp_path, env=env))
    assert [e["data"]["error"] for e in trace if e["type"] == "model_call"][0].count(REDACTED)
    for path in (tmp_path / ".dagwright").iterdir():  # nor on disk, in any form sqlite keeps
        assert KEY.encode() not in path.read_bytes(), path


def test_the_planner_s_errors_and_recorded_calls_carry_no_key(
    rejecting: OpenAIStub, tmp_path: Path
) -> None:
    env = {"OPENAI_API_KEY": KEY, "DAGWRIGHT_MODEL_BASE_URL": rejecting.base_url}
    calls = tmp_path / "calls.json"
    proc = cli(
        "plan", "--task", "say hi", "--model", "openai:stub", "--calls", str(calls),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert rejecting.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert proc.returncode != 0
    nowhere(proc.stdout + proc.stderr + calls.read_text())
    assert REDACTED in calls.read_text()
    direct = connect("openai:stub", ModelSettings(base_url=rejecting.base_url, api_key=KEY))
    with pytest.raises(ModelError) as info:
        direct.text([{"role": "user", "content": "hi"}], record=discard)
    nowhere(str(info.value))


def test_a_tool_that_returns_a_key_does_not_print_it(tmp_path: Path) -> None:
    """Not only model errors: whatever a step outputs is redacted in the trace and in what
    `run` prints (a local run's summary comes from the executor's own state)."""
    (tmp_path / "leaky.py").write_text(
        "import os\n\nfrom dagwright import tool\n\n\n"
        '@tool("leaky.key")\n'
        "def key() -> str:\n"
        '    return "key=" + os.environ["OPENAI_API_KEY"]\n'
    )
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: leaky\ntools: [leaky]\nsteps:\n  - {id: k, uses: leaky.key}\n")
    env = {"OPENAI_API_KEY": KEY}
    proc = cli("run", str(wf), "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert as_json(proc)["output"] == {"k": f"key={REDACTED}"}
    human = cli("run", str(wf), cwd=tmp_path, env=env)
    nowhere(proc.stdout + proc.stderr + human.stdout + human.stderr)
    shown = cli("show", as_json(proc)["run_id"], "--json", cwd=tmp_path, env=env)
    assert as_json(shown)["output"] == {"k": f"key={REDACTED}"}
