"""Concurrency keys (a workflow's ``concurrency:``): at most ``limit`` runs with the same key
execute at once, the others wait queued and are admitted in order (priority, then submission),
on the local executor, on the API server's threads and on Celery workers. The bound is checked
on the recorded trace: between a run's ``run_admitted`` and its ``run_finished``, it holds a
slot; no attempt of a run starts before it is admitted."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import Cluster, use_broker

from dagwright.errors import PlanError
from dagwright.executors.distributed.engine import Engine, Timing
from dagwright.executors.engine import events as ev
from dagwright.executors.inprocess import InProcessRuntime
from dagwright.executors.lifecycle import fold_run, follow
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store import TraceStore, open_store
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.loader import loads_workflow
from dagwright.planner.schema import Workflow
from dagwright.tools import default_registry


def workflow(limit: int, ms: int = 150) -> Workflow:
    return loads_workflow(f"""
name: per-customer
inputs: {{customer: string}}
concurrency: {{key: "${{{{ inputs.customer }}}}", limit: {limit}}}
steps:
  - id: work
    uses: sleep
    with: {{ms: {ms}}}
""").workflow


def slots_held(store: TraceStore, run_ids: list[str]) -> int:
    """The most runs that held a slot at the same moment, from the recorded trace."""
    marks: list[tuple[float, int]] = []
    for rid in run_ids:
        events = store.events(rid)
        admitted = next(e.at for e in events if e.type == ev.RUN_ADMITTED)
        finished = next(e.at for e in events if e.type == ev.RUN_FINISHED)
        first_attempt = min(e.at for e in events if e.type == ev.ATTEMPT_STARTED)
        assert first_attempt >= admitted, f"run {rid} started a step before its admission"
        marks += [(admitted, 1), (finished, -1)]
    most = held = 0
    for _, delta in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at a tie
        held += delta
        most = max(most, held)
    return most


def admission_order(store: TraceStore, run_ids: list[str]) -> list[str]:
    def admitted(rid: str) -> int:
        return next(e.seq or 0 for e in store.events(rid) if e.type == ev.RUN_ADMITTED)

    at = {
        rid: next(e.at for e in store.events(rid) if e.type == ev.RUN_ADMITTED) for rid in run_ids
    }
    del admitted
    return sorted(run_ids, key=lambda rid: at[rid])


def test_the_key_may_read_inputs_only() -> None:
    bad = """
name: bad
inputs: {customer: string}
concurrency: {key: "${{ steps.a.output.x }}-${{ inputs.nope }}", limit: 0}
steps:
  - id: a
    uses: echo
"""
    from dagwright.planner.prepare import prepare_text

    with pytest.raises(PlanError) as caught:
        prepare_text(bad, default_registry, inputs={"customer": "x"})
    found = {(i.field, i.line) for i in caught.value.issues}
    assert any(f and f.startswith("concurrency") for f, _ in found), found


def test_local_runs_of_one_key_take_turns(tmp_path: Path) -> None:
    db = str(tmp_path / "trace.db")
    wf, done = workflow(limit=1), []

    def run() -> None:
        store = open_store(db)
        done.append(LocalExecutor(store, default_registry).run(wf, {"customer": "acme"}).run_id)
        store.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = open_store(db)
    assert [fold_run(store, r)[1].status for r in done] == ["succeeded"] * 3
    assert slots_held(store, done) == 1
    assert store.slot_keys() == {}, "every slot released"


def test_the_api_threads_bound_a_key_and_admit_by_priority(tmp_path: Path) -> None:
    store = SqlTraceStore(str(tmp_path / "trace.db"))
    eng = Engine(store, default_registry, executor="api", timing=Timing(heartbeat=0.5))
    runtime = InProcessRuntime(eng, workers=8, sweep_every=0.5)
    runtime.start()
    try:
        wf = workflow(limit=2)
        acme, first = [], []
        for i in range(6):
            rid, dispatches = eng.start(wf, {"customer": "acme"}, priority=9 if i == 5 else 0)
            runtime.send(dispatches)
            (first if i < 2 else acme).append(rid)
        other, dispatches = eng.start(wf, {"customer": "globex"})
        runtime.send(dispatches)
        assert fold_run(store, acme[0])[1].status == "queued"
        assert fold_run(store, other)[1].status == "running", "another key is not held up"
        for rid in [*first, *acme, other]:
            assert follow(store, rid, timeout=60).status == "succeeded"
        assert slots_held(store, first + acme) == 2
        waiting = acme  # queued behind the first two: the priority-9 one is admitted first
        assert admission_order(store, waiting)[0] == acme[-1]
        assert admission_order(store, waiting)[1:] == acme[:-1]
    finally:
        runtime.stop()
        store.close()


def test_a_queued_run_can_be_cancelled_and_leaves_the_queue(tmp_path: Path) -> None:
    store = SqlTraceStore(str(tmp_path / "trace.db"))
    eng = Engine(store, default_registry, executor="api")
    runtime = InProcessRuntime(eng, workers=2, sweep_every=0.5)
    runtime.start()
    try:
        wf = workflow(limit=1, ms=400)
        holder, d = eng.start(wf, {"customer": "acme"})
        runtime.send(d)
        waiting, d = eng.start(wf, {"customer": "acme"})
        runtime.send(d)
        runtime.cancel(waiting)
        assert fold_run(store, waiting)[1].status == "cancelled"
        assert follow(store, holder, timeout=30).status == "succeeded"
        assert not any(e.type == ev.ATTEMPT_STARTED for e in store.events(waiting))
        # the holder's slot is released just after its run_finished, which `follow` may see
        # first: wait for the release (bounded), then nothing is left in the key's queue
        deadline = time.monotonic() + 30
        while store.slot_keys() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.slot_keys() == {}
    finally:
        runtime.stop()
        store.close()


def test_celery_workers_bound_a_key(celery_cluster: Cluster) -> None:
    store = SqlTraceStore(celery_cluster.db)
    workers = use_broker(celery_cluster.broker)
    eng = Engine(store, default_registry)
    wf = workflow(limit=2, ms=200)
    runs, customer = [], f"acme-{uuid.uuid4().hex}"  # the session's store is shared
    for _ in range(5):
        rid, dispatches = eng.start(wf, {"customer": customer})
        workers.send(dispatches)
        runs.append(rid)
    for rid in runs:
        assert follow(store, rid, timeout=90).status == "succeeded"
    assert slots_held(store, runs) == 2
    store.close()


def test_parallel_submissions_through_the_api_never_exceed_the_limit(tmp_path: Path) -> None:
    """Ten clients submit at once to a real server (`dagwright serve`): at most two runs of the
    key ever hold a slot, every run succeeds, the other key's run is not held up."""
    from concurrent.futures import ThreadPoolExecutor

    from apitools import Server, wait_final

    yaml_text = """
name: per-customer-api
inputs: {customer: string}
concurrency: {key: "${{ inputs.customer }}", limit: 2}
steps:
  - id: work
    uses: sleep
    with: {ms: 200}
"""
    with Server(tmp_path, DAGWRIGHT_API_RUNS="8") as server, server.client() as client:

        def submit(customer: str) -> str:
            body = {"workflow_yaml": yaml_text, "inputs": {"customer": customer}}
            response = client.post("/v1/runs", json=body)
            assert response.status_code == 202, response.text
            return str(response.json()["run_id"])

        with ThreadPoolExecutor(10) as pool:
            acme = list(pool.map(submit, ["acme"] * 10))
        other = submit("globex")
        finals = [wait_final(client, rid)["status"] for rid in [*acme, other]]
    assert finals == ["succeeded"] * 11
    store = SqlTraceStore(server.db)
    assert slots_held(store, acme) == 2
    assert store.slot_keys() == {}
    store.close()
