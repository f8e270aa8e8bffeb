"""The queue API end to end: a real ``dagwright serve`` process (uvicorn, the local executor, a
SQLite trace store) driven over HTTP — submissions of every kind, the SSE stream across a
reconnect, idempotency keys, cancel, and resume after a fix. Guards and listings are in
test_api_guard.py, a server killed mid-run in test_api_restart.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apitools import Server, wait_final
from clitools import as_json, cli
from openai_stub import OpenAIStub, tool_reply

PLAN = {
    "name": "planned-digest",
    "steps": [
        {"id": "wait", "uses": "sleep", "with": {"ms": 5}},
        {"id": "a", "uses": "echo", "with": {"x": "${{ steps.wait.output.slept_ms }}"}},
    ],
    "output": "${{ steps.a.output }}",
}

INLINE = """\
name: inline
inputs:
  who: {type: string}
steps:
  - id: hello
    uses: echo
    with: {greeting: "hello ${{ inputs.who }}"}
  - id: nap
    uses: sleep
    needs: [hello]
    with: {ms: 20}
output:
  greeting: ${{ steps.hello.output.greeting }}
  slept: ${{ steps.nap.output.slept_ms }}
"""


def chain(name: str, steps: int, ms: int) -> str:
    """A workflow of ``steps`` sleeps, one after the other."""
    lines = [f"name: {name}", "steps:"]
    for i in range(steps):
        lines += [f"  - id: s{i}", "    uses: sleep", f"    with: {{ms: {ms}}}"]
        lines += [f"    needs: [s{i - 1}]"] if i else []
    return "\n".join(lines) + "\n"


FIXME = """\
name: fixme
steps:
  - id: a
    uses: echo
    with: {x: 7}
  - id: b
    uses: flaky
    needs: [a]
    with: {fail_times: FAILS, value: "${{ steps.a.output.x }}"}
output: ${{ steps.b.output }}
"""


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(respond=lambda body: tool_reply("Plan", PLAN)) as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, stub: OpenAIStub) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("api")
    with Server(folder, DAGWRIGHT_MODEL_BASE_URL=stub.base_url,
                DAGWRIGHT_MODEL_API_KEY="sk-stub") as srv:  # fmt: skip
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = client.post("/v1/runs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response


def events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    page = client.get(f"/v1/runs/{run_id}/events").json()
    return page["events"]  # type: ignore[no-any-return]


def wait_started(client: httpx.Client, run_id: str, step: str) -> None:
    """Poll the trace until ``step`` has an attempt running."""
    for _ in range(600):
        if any(e["type"] == "attempt_started" and e["step"] == step
               for e in events(client, run_id)):  # fmt: skip
            return
        time.sleep(0.05)
    raise AssertionError(f"{step} never started in {run_id}")


def sse_messages(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The SSE messages of a streaming response (comments, such as pings, skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


WORKFLOWS = {
    "diamond": (
        {"workflow": "diamond", "inputs": {"delay_ms": 30}},
        {"question": "Which branch finishes first?", "left_ms": 30, "right_ms": 30},
    ),
    "release-digest": ({"workflow": "release-digest", "inputs": {"product": "apitest"}}, None),
    "inline": (
        {"workflow_yaml": INLINE, "inputs": {"who": "api"}},
        {"greeting": "hello api", "slept": 20},
    ),
    "planned": ({"task": "wait, then echo how long", "model": "openai:stub"}, {"x": 5}),
}


@pytest.mark.parametrize("kind", list(WORKFLOWS))
def test_a_run_of_each_kind_succeeds_and_reads_as_show_prints_it(
    kind: str, server: Server, client: httpx.Client, stub: OpenAIStub
) -> None:
    body, expected = WORKFLOWS[kind]
    asked = len(stub.requests)
    accepted = submit(client, body)
    run_id = accepted.json()["run_id"]
    assert accepted.headers["location"] == accepted.json()["links"]["self"] == f"/v1/runs/{run_id}"
    run = wait_final(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    if kind == "release-digest":  # user tools next to the workflow, a flaky step retried
        assert run["output"]["published"] is True
        assert run["output"]["digest"].startswith("apitest release: ")
        assert run["steps"]["publish"]["attempts"] == 3
    else:
        assert run["output"] == expected
    if kind == "planned":
        assert len(stub.requests) == asked + 1, "planned once, by the stub"
        assert run["workflow"] == "planned-digest" and set(run["steps"]) == {"wait", "a"}
        calls = [e["data"] for e in events(client, run_id) if e["type"] == "model_call"]
        assert [c["purpose"] for c in calls] == ["plan"], "the planning call is in the trace"
    else:
        assert len(stub.requests) == asked, "no model call for a given workflow"
    shown = cli("show", run_id, "--json", "--db", server.db, cwd=server.folder)
    assert shown.returncode == 0, shown.stderr
    printed = as_json(shown)
    # `show --json` prints no executor (yet): compare it where it is there
    assert printed.pop("executor", "api") == run.pop("executor") == "api"
    assert printed == run
    assert client.get(f"/v1/runs/{run_id[:10]}").json()["run_id"] == run_id, "a unique prefix"


def test_the_stream_resumes_after_a_disconnect_without_losing_or_repeating_events(
    client: httpx.Client,
) -> None:
    run_id = submit(client, {"workflow_yaml": chain("slow-chain", 5, 250)}).json()["run_id"]
    first: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/runs/{run_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in sse_messages(response):
            first.append(json.loads(message["data"]))
            assert message["id"] == str(first[-1]["seq"]) and message["event"] == first[-1]["type"]
            if message["event"] == "step_finished" and first[-1]["step"] == "s1":
                break  # hang up midway: three steps still to go
    assert all(e["type"] != "run_finished" for e in first)
    last_id = first[-1]["seq"]
    second: list[dict[str, Any]] = []
    headers = {"Last-Event-ID": str(last_id)}
    with client.stream("GET", f"/v1/runs/{run_id}/stream", headers=headers) as response:
        second = [json.loads(m["data"]) for m in sse_messages(response)]
    # the server closed the stream after run_finished (else the read would have timed out)
    assert second and second[-1]["type"] == "run_finished"
    assert second[0]["seq"] == last_id + 1
    union = first + second
    assert [e["seq"] for e in union] == list(range(1, len(union) + 1)), "contiguous, no repeats"
    recorded = client.get(f"/v1/runs/{run_id}/events").json()
    assert recorded["finished"] is True and recorded["last_seq"] == len(union)
    assert union == recorded["events"]
    assert sum(e["type"] == "step_finished" for e in union) == 5
    # times as every JSON document of dagwright gives them: ISO 8601, UTC
    assert all(isinstance(e["at"], str) and e["at"].endswith("+00:00") for e in union)
    tail = client.get(f"/v1/runs/{run_id}/stream", params={"after": len(union) - 1})
    assert [json.loads(m["data"])["type"] for m in sse_messages(tail)] == ["run_finished"]


def test_an_idempotency_key_names_one_run(client: httpx.Client) -> None:
    body = {"workflow_yaml": INLINE.replace("name: inline", "name: idem"), "inputs": {"who": "x"}}
    first = submit(client, body, **{"Idempotency-Key": "order-42"})
    assert "idempotent-replayed" not in first.headers
    again = submit(client, body, **{"Idempotency-Key": "order-42"})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["run_id"] == first.json()["run_id"]
    other = {**body, "inputs": {"who": "y"}}
    refused = client.post("/v1/runs", json=other, headers={"Idempotency-Key": "order-42"})
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert first.json()["run_id"] in refused.json()["detail"]
    wait_final(client, first.json()["run_id"])
    runs = client.get("/v1/runs", params={"workflow": "idem"}).json()["runs"]
    assert [r["run_id"] for r in runs] == [first.json()["run_id"]], "exactly one run recorded"
    fresh = submit(client, body, **{"Idempotency-Key": "order-43"})
    assert fresh.json()["run_id"] != first.json()["run_id"], "another key, another run"
    wait_final(client, fresh.json()["run_id"])


def test_cancelling_a_running_run_ends_it_cancelled(tmp_path: Path) -> None:
    srv = Server(tmp_path).start()  # its own server: the cancelled sleep's thread runs on
    try:
        with srv.client() as client:
            run_id = submit(client, {"workflow_yaml": chain("long", 2, 60_000)}).json()["run_id"]
            wait_started(client, run_id, "s0")
            cancelled = client.post(f"/v1/runs/{run_id}/cancel")
            assert cancelled.status_code == 202 and cancelled.json()["run_id"] == run_id
            run = wait_final(client, run_id)
            assert run["status"] == "cancelled"
            trace = events(client, run_id)
            assert [e["type"] for e in trace].count("run_finished") == 1
            assert trace[-1]["type"] == "run_finished"
            assert trace[-1]["data"]["status"] == "cancelled"
            assert run["steps"]["s0"]["status"] == "cancelled"
            assert run["steps"]["s1"]["status"] == "skipped", "never started"
            assert all(e["step"] != "s1" for e in trace if e["type"] == "attempt_started")
    finally:
        srv.kill()


def test_resume_with_a_fixed_workflow_reuses_the_steps_that_succeeded(
    client: httpx.Client,
) -> None:
    broken = submit(client, {"workflow_yaml": FIXME.replace("FAILS", "5")}).json()["run_id"]
    failed = wait_final(client, broken)
    assert failed["status"] == "failed" and failed["error"]["step"] == "b"
    fixed = FIXME.replace("FAILS", "0")
    resumed = client.post(f"/v1/runs/{broken}/resume", json={"workflow_yaml": fixed})
    assert resumed.status_code == 202, resumed.text
    child_id = resumed.json()["run_id"]
    assert child_id != broken
    child = wait_final(client, child_id)
    assert child["status"] == "succeeded" and child["output"] == 7
    assert child["lineage"]["parent"] == broken and child["lineage"]["mode"] == "resume"
    assert child["steps"]["a"]["reused_from"] == broken and child["steps"]["a"]["attempts"] == 0
    assert child["steps"]["b"]["attempts"] == 1
    started = [e["step"] for e in events(client, child_id) if e["type"] == "attempt_started"]
    assert started == ["b"], "the step that succeeded is not run again"
    listed = client.get("/v1/runs", params={"workflow": "fixme"}).json()["runs"]
    assert {r["run_id"]: r["lineage"] for r in listed}[child_id]["parent"] == broken


def test_an_unknown_run_is_404_and_an_invalid_workflow_is_422_with_nothing_recorded(
    client: httpx.Client,
) -> None:
    for path in ("/v1/runs/no-such-run", "/v1/runs/no-such-run/events"):
        missing = client.get(path)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["status"] == 404 and "no-such-run" in missing.json()["detail"]
    assert client.post("/v1/runs/no-such-run/cancel").status_code == 404
    before = client.get("/v1/runs", params={"limit": 500}).json()["runs"]
    bad = (
        "name: bad\nsteps:\n  - id: a\n    uses: echo\n    with: {x: 1}\n"
        "  - id: b\n    uses: no.such.tool\n    with: {y: '${{ steps.zz.output }}'}\n"
    )
    refused = client.post("/v1/runs", json={"workflow_yaml": bad})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    errors = refused.json()["errors"]
    located = {(e["line"], e["step"], e["field"]) for e in errors}
    assert located == {(7, "b", "uses"), (8, "b", "with.y")}, errors
    not_a_body = client.post("/v1/runs", json={"workflow": "diamond", "task": "both"})
    assert not_a_body.status_code == 422 and not_a_body.json()["errors"]
    unknown = client.post("/v1/runs", json={"workflow": "no-such-workflow"})
    assert unknown.status_code == 404 and "diamond" in unknown.json()["detail"]
    after = client.get("/v1/runs", params={"limit": 500}).json()["runs"]
    assert after == before, "nothing recorded"
