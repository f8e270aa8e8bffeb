"""Submitting runs over the Celery queue: the ``dagwright.submit`` task sent by name from a plain
Celery client, and ``run --executor celery`` when no worker listens or the broker is down.

Real worker processes on the session's own redis-server (never a shared Redis), SQLite trace
stores shared by the test process and the workers.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from celery import Celery
from clitools import DAGWRIGHT, cli
from conftest import Workers, celery_env, flush_broker, free_port

from dagwright.executors.celery.app import SUBMIT_TASK, create_app, runtime
from dagwright.executors.celery.submit import NotEnqueued, enqueue, workers_answer
from dagwright.executors.distributed.engine import Engine
from dagwright.executors.lifecycle import fold_run, follow
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.settings import Settings
from dagwright.tools import default_registry

# This module's databases of the session's Redis (tests/conftest.py hands out 1 to 5).
SUBMIT_DB = 12  # the submit_cluster's workers
NO_WORKER_DB = 13  # a queue no worker listens to until the test starts one

GREET = """\
name: greet
description: Greets someone.
inputs:
  who: {type: string}
  times: {type: integer, default: 1}
steps:
  - id: hello
    uses: echo
    with: {greeting: "hello ${{ inputs.who }}", times: "${{ inputs.times }}"}
output: ${{ steps.hello.output }}
"""
HELLO = "name: hello\nsteps: [{id: a, uses: echo, with: {x: 1}}, {id: b, uses: echo, needs: [a]}]\n"


class SubmitCluster(NamedTuple):
    db: str
    broker: str
    workflows: Path


@pytest.fixture(scope="module")
def submit_cluster(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SubmitCluster]:
    """One worker (2 processes) knowing the workflows of its own DAGWRIGHT_WORKFLOWS folder."""
    folder = tmp_path_factory.mktemp("celery-submit")
    workflows = folder / "workflows"
    workflows.mkdir()
    (workflows / "greet.yaml").write_text(GREET)
    db, broker = str(folder / "trace.db"), f"{redis_server}/{SUBMIT_DB}"
    flush_broker(broker)
    workers = Workers(celery_env(db, broker, DAGWRIGHT_WORKFLOWS=str(workflows)), folder)
    try:
        workers.start(concurrency=2)
        yield SubmitCluster(db, broker, workflows)
    finally:
        workers.stop_all()


@pytest.fixture
def client(submit_cluster: SubmitCluster) -> Iterator[Celery]:
    """A plain Celery client: no dagwright app, the task sent by its name."""
    app = Celery("client", broker=submit_cluster.broker, backend=submit_cluster.broker)
    yield app
    app.close()


@pytest.fixture
def store(submit_cluster: SubmitCluster) -> Iterator[SqlTraceStore]:
    s = SqlTraceStore(submit_cluster.db)
    yield s
    s.close()


def submit(client: Celery, *args: Any, **options: Any) -> dict[str, Any]:
    answer = client.send_task(SUBMIT_TASK, args=list(args), **options).get(timeout=30)
    assert isinstance(answer, dict)
    return answer


def run_ids(store: SqlTraceStore) -> set[str]:
    return {s.record.run_id for s in store.list_runs(limit=10_000)}


# -- dagwright.submit ------------------------------------------------------------------------------


def test_a_plain_celery_client_submits_a_known_workflow_by_name(
    client: Celery, store: SqlTraceStore, submit_cluster: SubmitCluster
) -> None:
    answer = submit(client, "greet", {"who": "ada"})
    assert answer["status"] == "running", answer
    state = follow(store, answer["run_id"], poll=0.1, timeout=30)
    assert state.status == "succeeded"
    assert state.output == {"greeting": "hello ada", "times": 1}  # a default filled in
    record = store.get_run(answer["run_id"])
    assert (record.workflow_name, record.executor) == ("greet", "celery")
    assert record.source == str(submit_cluster.workflows / "greet.yaml")
    # keywords, as another language's client may send them
    answer = client.send_task(
        SUBMIT_TASK, kwargs={"workflow": "greet", "inputs": {"who": "bo", "times": 2}}
    ).get(timeout=30)
    assert follow(store, answer["run_id"], poll=0.1, timeout=30).output == {
        "greeting": "hello bo",
        "times": 2,
    }


def test_an_unknown_workflow_or_bad_inputs_are_answered_invalid_and_nothing_is_recorded(
    client: Celery, store: SqlTraceStore
) -> None:
    before = run_ids(store)
    unknown = submit(client, "no-such-workflow", {})
    assert unknown["status"] == "invalid" and "run_id" not in unknown
    [error] = unknown["errors"]
    assert error["field"] == "workflow" and "no-such-workflow" in error["message"]
    assert "greet" in error["hint"]
    missing = submit(client, "greet")  # `who` is required
    assert missing["status"] == "invalid"
    assert [e["field"] for e in missing["errors"]] == ["inputs.who"]
    assert missing["errors"][0]["file"].endswith("greet.yaml")
    wrong_type = submit(client, "greet", {"who": "ada", "times": "many"})
    assert [e["field"] for e in wrong_type["errors"]] == ["inputs.times"]
    not_an_object = submit(client, "greet", ["ada"])
    assert [e["field"] for e in not_an_object["errors"]] == ["inputs"]
    not_a_name = submit(client, 42, {}, 7)
    assert [e["field"] for e in not_a_name["errors"]] == ["workflow", "idempotency_key"]
    assert run_ids(store) == before


def test_an_idempotency_key_answers_the_same_run(client: Celery, store: SqlTraceStore) -> None:
    before = run_ids(store)
    first = submit(client, "greet", {"who": "ada"}, "order-17")
    again = submit(client, "greet", {"who": "ada"}, "order-17")
    assert first["status"] == "running" and again["run_id"] == first["run_id"]
    follow(store, first["run_id"], poll=0.1, timeout=30)
    after_end = submit(client, "greet", {"who": "ada"}, "order-17")
    assert after_end == {"run_id": first["run_id"], "status": "succeeded"}
    other = submit(client, "greet", {"who": "bo"}, "order-17")  # the key, another request
    assert other["status"] == "invalid" and other["errors"][0]["field"] == "idempotency_key"
    assert first["run_id"] in other["errors"][0]["message"]
    assert run_ids(store) - before == {first["run_id"]}


def test_a_submit_message_delivered_twice_starts_one_run(
    client: Celery, store: SqlTraceStore
) -> None:
    """Without a key, the Celery task id serves as one (a message is delivered again when the
    worker running it dies: acks_late)."""
    before = run_ids(store)
    first = submit(client, "greet", {"who": "ada"}, task_id="submit-twice-1")
    again = submit(client, "greet", {"who": "ada"}, task_id="submit-twice-1")
    assert again["run_id"] == first["run_id"]
    assert run_ids(store) - before == {first["run_id"]}
    follow(store, first["run_id"], poll=0.1, timeout=30)


# -- run --executor celery: the broker down, no worker ---------------------------------------------


def test_run_with_the_broker_down_says_so_in_one_line_and_records_nothing(tmp_path: Path) -> None:
    (tmp_path / "hello.yaml").write_text(HELLO)
    db = str(tmp_path / "trace.db")
    broker = f"redis://:s3cret-password@127.0.0.1:{free_port()}/0"  # nothing listens there
    proc = cli(
        "run", "hello.yaml", "--executor", "celery", cwd=tmp_path,
        env={"DAGWRIGHT_DB": db, "DAGWRIGHT_BROKER": broker},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "is unreachable" in lines[0] and "nothing was submitted" in lines[0]
    assert "s3cret-password" not in lines[0] and "127.0.0.1" in lines[0]
    assert proc.stdout == ""
    store = SqlTraceStore(db)
    try:
        assert store.list_runs() == []
    finally:
        store.close()


def test_a_run_whose_send_fails_after_it_was_recorded_is_ended_failed(tmp_path: Path) -> None:
    """The broker goes away between the check and the send: the recorded run is ended failed
    (nothing runs it later: the sweep finds nothing to send), and NotEnqueued says so."""
    store = SqlTraceStore(str(tmp_path / "trace.db"))
    rt = runtime(create_app(Settings(broker=f"redis://127.0.0.1:{free_port()}/0")))
    engine = Engine(store, default_registry)
    wf = Workflow.model_validate({"name": "hello", "steps": [
        {"id": "a", "uses": "echo"}, {"id": "b", "uses": "echo", "needs": ["a"]},
    ]})  # fmt: skip
    quick = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
    try:
        with pytest.raises(NotEnqueued) as raised:
            enqueue(rt, engine, wf, {}, retry_policy=quick)
        run_id = raised.value.run_id
        assert "could not be enqueued" in str(raised.value)
        _, state = fold_run(store, run_id)
        assert state.status == "failed"
        assert state.error is not None and state.error["type"] == "NotEnqueued"
        assert {s: state.steps[s].status for s in ("a", "b")} == {"a": "skipped", "b": "skipped"}
        assert engine.sweep() == []
        assert [s.status for s in store.list_runs()] == ["failed"]
    finally:
        rt.app.close()
        store.close()


def test_run_with_no_worker_says_so_and_the_run_starts_when_a_worker_does(
    redis_server: str, tmp_path: Path
) -> None:
    (tmp_path / "hello.yaml").write_text(HELLO)
    db = str(tmp_path / "trace.db")
    broker = f"{redis_server}/{NO_WORKER_DB}"
    flush_broker(broker)
    env = celery_env(db, broker)
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err_file:
        proc = subprocess.Popen(
            [DAGWRIGHT, "run", "hello.yaml", "--executor", "celery", "--json"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=err_file,
        )  # fmt: skip
    workers = Workers(env, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while b"no worker answered" not in stderr.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        assert proc.poll() is None  # still following: the run waits in the queue
        workers.start(concurrency=1)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        workers.stop_all()
    assert proc.returncode == 0, stderr.read_text()
    summary = json.loads(out)
    assert summary["status"] == "succeeded"
    lines = stderr.read_text().strip().splitlines()
    assert len(lines) == 1 and summary["run_id"] in lines[0] and "dagwright worker" in lines[0]
    store = SqlTraceStore(db)
    try:
        assert [s.record.run_id for s in store.list_runs()] == [summary["run_id"]]
        _, state = fold_run(store, summary["run_id"])
        assert [len(state.steps[s].attempts) for s in ("a", "b")] == [1, 1]
    finally:
        store.close()


def test_a_listening_worker_answers_the_ping(submit_cluster: SubmitCluster) -> None:
    """What `run --executor celery` asks before saying that no worker answered (here with a
    generous timeout: the ping returns at the first answer)."""
    rt = runtime(create_app(Settings(broker=submit_cluster.broker)))
    try:
        assert workers_answer(rt.app, timeout=30) is True
    finally:
        rt.app.close()
