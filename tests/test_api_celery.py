"""The queue API on Celery: a real ``dagwright serve --executor celery`` process, real worker
processes on the session's own redis-server, and a PostgreSQL trace store (a fresh schema) —
the production set-up. Submissions of a known and an inline workflow followed over SSE to
``run_finished``, a running run cancelled, readiness; then the broker stopped under a running
server: a submission is refused 503 (problem details, ``Retry-After``) and the run it recorded is
ended, never left running for a sweeper to execute later.

What the API does on the local executor (every kind of submission, idempotency, resume, the
guards) is in test_api.py and test_api_guard.py; this module checks what differs on Celery."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from apitools import Server, wait_final
from conftest import (
    API_CELERY_DB,
    Workers,
    celery_env,
    flush_broker,
    free_port,
    fresh_schema,
    require_postgres,
    start_redis,
    stop_redis,
)

PROBLEM = "application/problem+json"
INLINE = """\
name: inline-celery
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
  - id: bye
    uses: echo
    needs: [nap]
    with: {said: "${{ steps.hello.output.greeting }}", slept: "${{ steps.nap.output.slept_ms }}"}
output: ${{ steps.bye.output }}
"""


def chain(name: str, steps: int, ms: int) -> str:
    """A workflow of ``steps`` sleeps, one after the other."""
    lines = [f"name: {name}", "steps:"]
    for i in range(steps):
        lines += [f"  - id: s{i}", "    uses: sleep", f"    with: {{ms: {ms}}}"]
        lines += [f"    needs: [s{i - 1}]"] if i else []
    return "\n".join(lines) + "\n"


class Deployment(NamedTuple):
    server: Server
    workers: Workers
    db: str


@pytest.fixture(scope="module")
def deployment(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The API server and one worker (2 processes) on one broker database and one store."""
    require_postgres()
    folder = tmp_path_factory.mktemp("api-celery")
    broker = f"{redis_server}/{API_CELERY_DB}"
    flush_broker(broker)
    with fresh_schema() as db:
        workers = Workers(celery_env(db, broker), folder)
        server = Server(folder, db=db, executor="celery", DAGWRIGHT_BROKER=broker,
                        DAGWRIGHT_TOOLS="contract_tools")  # fmt: skip
        try:
            workers.start(concurrency=2)
            with server:
                yield Deployment(server, workers, db)
        finally:
            workers.stop_all()


@pytest.fixture
def client(deployment: Deployment) -> Iterator[httpx.Client]:
    with deployment.server.client() as c:
        yield c


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    return response.json()["run_id"]  # type: ignore[no-any-return]


def follow(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """The run's events as its SSE stream sends them, until the server closes it."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    with client.stream("GET", f"/v1/runs/{run_id}/stream", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in fields:
                    events.append(json.loads(fields["data"]))
                    assert fields["id"] == str(events[-1]["seq"])
                    assert fields["event"] == events[-1]["type"]
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


def trace(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/runs/{run_id}/events").json()["events"]  # type: ignore[no-any-return]


def test_the_server_is_ready_with_its_store_and_broker(client: httpx.Client) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "store": "ok", "broker": "ok"}


@pytest.mark.parametrize(
    ("body", "output"),
    [
        ({"workflow": "diamond", "inputs": {"delay_ms": 30}},
         {"question": "Which branch finishes first?", "left_ms": 30, "right_ms": 30}),
        ({"workflow_yaml": INLINE, "inputs": {"who": "celery"}},
         {"said": "hello celery", "slept": 20}),
    ],
    ids=["known", "inline"],
)  # fmt: skip
def test_a_submitted_run_runs_on_the_workers_and_its_stream_ends_with_run_finished(
    client: httpx.Client, body: dict[str, Any], output: dict[str, Any]
) -> None:
    run_id = submit(client, body)
    streamed = follow(client, run_id)
    assert streamed and streamed[-1]["type"] == "run_finished"
    assert streamed[-1]["data"]["status"] == "succeeded"
    assert [e["seq"] for e in streamed] == list(range(1, len(streamed) + 1)), "none lost"
    assert streamed == trace(client, run_id), "the stream is the recorded trace"
    run = wait_final(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == output
    assert run["executor"] == "celery"
    steps = run["steps"]
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in steps.values()), steps
    started = [e["step"] for e in streamed if e["type"] == "attempt_started"]
    assert sorted(started) == sorted(steps), "each step started once, on a worker"


def test_cancelling_a_run_on_the_workers_ends_it_cancelled(client: httpx.Client) -> None:
    run_id = submit(client, {"workflow_yaml": chain("long-celery", 2, 3000)})
    deadline = time.monotonic() + 30
    while not any(e["type"] == "attempt_started" for e in trace(client, run_id)):
        assert time.monotonic() < deadline, "s0 never started on a worker"
        time.sleep(0.05)
    cancelled = client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["run_id"] == run_id
    run = wait_final(client, run_id)
    assert run["status"] == "cancelled"
    assert run["steps"]["s0"]["status"] == "cancelled"
    assert run["steps"]["s1"]["status"] == "skipped"
    time.sleep(3.5)  # s0's sleep would have ended by now: nothing may follow the run's end
    events = trace(client, run_id)
    assert [e["type"] for e in events].count("run_finished") == 1
    assert events[-1]["type"] == "run_finished" and events[-1]["data"]["status"] == "cancelled"
    assert all(e["step"] != "s1" for e in events if e["type"] == "attempt_started")
    again = client.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 409, "not possible in the run's state: it has ended"
    assert again.headers["content-type"] == PROBLEM


class OwnBroker:
    """A redis-server of the test's own, to stop under a running API server and start again on
    the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None

    def start(self) -> None:
        self.proc = start_redis(self.port, self.folder)

    def stop(self) -> None:
        if self.proc is not None:
            stop_redis(self.proc)


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[tuple[Server, OwnBroker]]:
    """An API server on Celery whose broker (its own redis-server) is stopped once it is up."""
    require_postgres()
    broker = OwnBroker(tmp_path)
    broker.start()
    try:
        with fresh_schema() as db, Server(tmp_path, db=db, executor="celery",
                                          DAGWRIGHT_BROKER=broker.url) as server:  # fmt: skip
            with server.client() as client:
                assert client.get("/readyz").json()["broker"] == "ok"
            broker.stop()
            yield server, broker
    finally:
        broker.stop()


def test_with_the_broker_stopped_a_submission_is_503_and_its_run_is_not_left_running(
    broken: tuple[Server, OwnBroker],
) -> None:
    server, _ = broken
    with httpx.Client(base_url=server.url, timeout=120) as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["store"] == "ok"
        assert "unreachable" in not_ready.json()["broker"]
        refused = client.post("/v1/runs", json={"workflow_yaml": INLINE, "inputs": {"who": "x"}})
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == PROBLEM
        assert int(refused.headers["retry-after"]) > 0
        problem = refused.json()
        assert problem["status"] == 503 and problem["title"] == "Queue unavailable"
        runs = client.get("/v1/runs", params={"workflow": "inline-celery"}).json()["runs"]
        assert runs == [], "the broker is checked before anything is recorded"
        assert "nothing was recorded" in problem["detail"]
        for listed in runs:  # recorded before the send failed: ended, never to be executed
            assert listed["run_id"] in problem["detail"]
            assert listed["status"] in ("cancelled", "failed")
            run = client.get(f"/v1/runs/{listed['run_id']}").json()
            assert run["status"] == listed["status"]
            assert all(s["status"] in ("skipped", "cancelled") for s in run["steps"].values())
            events = trace(client, listed["run_id"])
            assert [e["type"] for e in events].count("run_finished") == 1
            assert not any(e["type"] == "attempt_started" for e in events)


def test_after_a_503_the_same_idempotency_key_submits_the_run_again(
    broken: tuple[Server, OwnBroker],
) -> None:
    """The 503 says to submit again once the broker is back; doing so with the same
    Idempotency-Key must start the run, not answer the one the failed try ended."""
    server, broker = broken
    body = {"workflow_yaml": INLINE, "inputs": {"who": "again"}}
    key = {"Idempotency-Key": "after-503"}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.post("/v1/runs", json=body, headers=key).status_code == 503
        broker.start()
        retried = client.post("/v1/runs", json=body, headers=key)
        assert retried.status_code == 202, retried.text
        assert retried.json()["status"] == "running", retried.json()
