"""The trace store under hostile conditions: processes racing to create it, stores made by
earlier versions, read-only commands pointed at nothing, replaying a cancelled run, and a
Celery dispatch sent while Redis is down."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from clitools import as_json, cli
from conftest import Workers, celery_env, free_port, start_redis, stop_redis

from dagwright.errors import StoreError
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.local import LocalExecutor, RunResult
from dagwright.executors.store import MemoryTraceStore, RunRecord, TraceStore
from dagwright.planner.schema import Workflow
from dagwright.tools import ToolRegistry, default_registry

# -- schema creation and migrations -----------------------------------------------------------


def _applied(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM dagwright_schema ORDER BY 1")]


def _shape(path: Path) -> dict[str, Any]:
    """Every table's columns (name, type, not null) and every index, as SQLite has them."""
    with sqlite3.connect(path) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
        ]
        shape: dict[str, Any] = {}
        for t in tables:
            columns = sorted(
                (r[1], r[2].upper(), r[3]) for r in conn.execute(f"PRAGMA table_info({t})")
            )
            indexes = sorted(r[1] for r in conn.execute(f"PRAGMA index_list({t})"))
            shape[t] = (columns, indexes)
    return shape


def test_eight_processes_may_open_a_fresh_sqlite_store_at_once(tmp_path: Path) -> None:
    """A worker pool's processes open the same new trace.db at the same moment: the schema is
    created once (each migration applied once), nobody fails on concurrent CREATE TABLEs."""
    db, go = tmp_path / "fresh" / "trace.db", tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from dagwright.executors.store.sql import SqlTraceStore\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        "try:\n"
        "    SqlTraceStore(sys.argv[1]).close(); print('opened')\n"
        "except Exception as exc:\n"
        "    print('failed:', exc)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(8)
    ]  # fmt: skip
    time.sleep(1.0)  # let them import; they all wait for `go`, so the opens overlap anyway
    go.touch()
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outputs == ["opened"] * 8, outputs
    from dagwright.executors.store.migrations import MIGRATIONS

    assert _applied(db) == [m.version for m in MIGRATIONS]


def _earliest_schema(path: Path) -> None:
    """A trace.db as the first dagwright made it: no version table, runs without `next_seq`
    and lineage, one run with two events."""
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE dagwright_runs (run_id VARCHAR(64) NOT NULL PRIMARY KEY,
                workflow_name VARCHAR(200) NOT NULL, created_at FLOAT NOT NULL,
                workflow TEXT NOT NULL, inputs TEXT NOT NULL, source TEXT,
                executor VARCHAR(32) NOT NULL);
            CREATE INDEX ix_dagwright_runs_created_at ON dagwright_runs (created_at);
            CREATE TABLE dagwright_events (run_id VARCHAR(64) NOT NULL, seq INTEGER NOT NULL,
                type VARCHAR(32) NOT NULL, at FLOAT NOT NULL, step VARCHAR(128),
                attempt INTEGER, status VARCHAR(16), data TEXT NOT NULL,
                PRIMARY KEY (run_id, seq), FOREIGN KEY(run_id) REFERENCES dagwright_runs (run_id));
            CREATE INDEX ix_dagwright_events_type ON dagwright_events (type, run_id);
            INSERT INTO dagwright_runs VALUES ('old1', 'wf', 1000.0,
                '{"name": "wf", "steps": []}', '{}', NULL, 'local');
            INSERT INTO dagwright_events VALUES ('old1', 1, 'run_started', 1000.5, NULL, NULL,
                NULL, '{}');
            INSERT INTO dagwright_events VALUES ('old1', 2, 'step_scheduled', 1000.5, 'a', 1,
                NULL, '{}');
            """
        )


def test_a_store_without_a_version_is_brought_to_the_latest_by_the_migrations(
    tmp_path: Path,
) -> None:
    from dagwright.executors.store.migrations import MIGRATIONS
    from dagwright.executors.store.sql import SqlTraceStore

    old, fresh = tmp_path / "old.db", tmp_path / "fresh.db"
    _earliest_schema(old)
    SqlTraceStore(str(fresh)).close()
    store = SqlTraceStore(str(old))
    try:
        assert _applied(old) == [m.version for m in MIGRATIONS]
        assert _shape(old) == _shape(fresh), "upgraded in place to what a new store has"
        record = store.get_run("old1")
        assert (record.workflow_name, record.parent_run_id, record.from_steps) == ("wf", None, [])
        stored = store.append("old1", [Event(ev.STEP_FINISHED, "old1", 1001.0, "a", 1,
                                             {"status": "succeeded"})])  # fmt: skip
        assert stored is not None and stored[0].seq == 3, "next_seq was filled from the events"
    finally:
        store.close()


def test_each_pending_migration_is_applied_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagwright.executors.store import migrations
    from dagwright.executors.store.sql import SqlTraceStore

    ran: list[int] = []
    counted = tuple(
        migrations.Migration(
            m.version, m.name, lambda conn, m=m: (ran.append(m.version), m.apply(conn))[1]
        )
        for m in migrations.MIGRATIONS
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", counted)
    path = tmp_path / "t.db"
    every = [m.version for m in counted]
    SqlTraceStore(str(path)).close()
    assert ran == every and every[:3] == [1, 2, 3]
    SqlTraceStore(str(path)).close()
    assert ran == every, "an up-to-date store runs no migration"
    with sqlite3.connect(path) as conn:  # as if the store were left at version 1
        conn.execute("DELETE FROM dagwright_schema WHERE version > 1")
    ran.clear()
    SqlTraceStore(str(path)).close()
    assert ran == every[1:] and _applied(path) == every
    with sqlite3.connect(path) as conn:  # a newer dagwright migrated it further: still opens
        conn.execute("INSERT INTO dagwright_schema VALUES (99, 'from the future', 0)")
    ran.clear()
    SqlTraceStore(str(path)).close()
    assert ran == []


@pytest.mark.postgres
def test_a_postgres_store_records_its_migrations_once(pg_url: str) -> None:
    from sqlalchemy import create_engine, text

    from dagwright.executors.store.migrations import MIGRATIONS
    from dagwright.executors.store.sql import SqlTraceStore, store_url

    for _ in range(2):
        SqlTraceStore(pg_url).close()
    engine = create_engine(store_url(pg_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version FROM dagwright_schema ORDER BY 1")).all()
    finally:
        engine.dispose()
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


# -- read-only commands open existing stores only ---------------------------------------------

READ_ONLY = [
    ["runs"],
    ["runs", "--json"],
    ["show", "abcd1234"],
    ["trace", "abcd1234"],
    ["diff", "abcd1234", "ef567890"],
    ["replay", "abcd1234"],
    ["cancel", "abcd1234"],
]


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_read_only_command_on_a_missing_store_creates_nothing(
    command: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing" / "dir" / "x.db"
    proc = cli(*command, "--db", str(missing), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"no trace store at {missing}" in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "missing").exists(), "no directory, no file"
    default = cli(*command, cwd=tmp_path)  # DAGWRIGHT_DB's default: .dagwright/trace.db
    assert default.returncode == 1 and "no trace store at" in default.stderr
    assert not (tmp_path / ".dagwright").exists()


def test_runs_on_an_empty_existing_store_lists_nothing(tmp_path: Path) -> None:
    from dagwright.executors.store.sql import SqlTraceStore

    db = tmp_path / "empty.db"
    SqlTraceStore(str(db)).close()
    proc = cli("runs", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 0 and "no runs in" in proc.stdout, proc.stderr
    assert as_json(cli("runs", "--json", "--db", str(db), cwd=tmp_path)) == []


def test_opening_a_missing_store_read_only_is_an_error(tmp_path: Path) -> None:
    from dagwright.executors.store import open_store

    with pytest.raises(StoreError, match="no trace store at"):
        open_store(str(tmp_path / "nope" / "x.db"), create=False)
    assert not (tmp_path / "nope").exists()
    blank = tmp_path / "blank.db"
    blank.touch()  # an empty file (a store a process is creating right now looks like this)
    open_store(str(blank), create=False).close()
    assert _applied(blank), "an empty SQLite file becomes a store"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE someone_elses (x INTEGER)")
    with pytest.raises(StoreError, match="no trace store at .*no dagwright tables"):
        open_store(str(other), create=False)


@pytest.mark.postgres
def test_a_postgres_database_without_a_store_is_not_made_one_by_reading(pg_url: str) -> None:
    from sqlalchemy import create_engine, inspect

    from dagwright.executors.store import open_store
    from dagwright.executors.store.sql import store_url

    with pytest.raises(StoreError, match="no trace store at .*no dagwright tables"):
        open_store(pg_url, create=False)
    engine = create_engine(store_url(pg_url))
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
    open_store(pg_url).close()
    open_store(pg_url, create=False).close()


# -- replaying a cancelled run ------------------------------------------------------------------


def wf(steps: list[dict[str, Any]]) -> Workflow:
    return Workflow.model_validate({"name": "cancelled", "steps": steps})


CANCELLED_WF = [
    {"id": "quick", "uses": "echo", "with": {"v": 1}},
    {
        "id": "long1",
        "uses": "hold",
        "with": {"n": "${{ steps.quick.output.v }}"},
        "needs": ["quick"],
    },
    {"id": "long2", "uses": "hold", "with": {"n": 2}, "needs": ["quick"]},
    {"id": "long3", "uses": "hold", "with": {"n": 3}, "needs": ["quick"]},
    {"id": "never", "uses": "echo", "needs": ["long1"]},
]


def _holding_registry(calls: list[int]) -> ToolRegistry:
    registry = default_registry.copy()

    async def hold(n: int) -> int:
        """Runs until cancelled."""
        import asyncio

        calls.append(n)
        await asyncio.sleep(3600)
        return n

    registry.register(hold, name="hold", replay="rerun")
    return registry


def cancelled_run(store: TraceStore, registry: ToolRegistry, *, max_parallel: int = 2) -> str:
    """quick succeeds; long1 and long2 run (two slots) while long3 waits for a slot; then the
    run is cancelled with ``LocalExecutor.cancel()`` from another thread."""
    executor = LocalExecutor(store, registry, max_parallel=max_parallel)
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(executor.run(wf(CANCELLED_WF))))
    runner.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = store.list_runs(limit=1)
        events = store.events(runs[0].record.run_id) if runs else []
        if sum(e.type == ev.ATTEMPT_STARTED for e in events) == 3:
            break
        time.sleep(0.01)
    executor.cancel()
    runner.join(20)
    assert not runner.is_alive() and results[0].status == "cancelled"
    return results[0].run_id


def _statuses(events: list[Event]) -> dict[str, str]:
    return {e.step: e.data["status"] for e in events if e.type == ev.STEP_FINISHED and e.step}


def _attempts(events: list[Event]) -> list[tuple[str, int, str, str]]:
    return sorted(
        (e.step or "", e.attempt or 0, e.type, e.data.get("status") or "")
        for e in events
        if e.type in (ev.ATTEMPT_STARTED, ev.ATTEMPT_FINISHED)
    )


def test_a_cancelled_run_replays_to_the_point_of_cancellation(tmp_path: Path) -> None:
    from dagwright.executors.replay import replay_run
    from dagwright.executors.store.sql import SqlTraceStore

    calls: list[int] = []
    registry = _holding_registry(calls)
    store = SqlTraceStore(str(tmp_path / "t.db"))
    run_id = cancelled_run(store, registry)
    recorded = store.events(run_id)
    assert _statuses(recorded) == {"quick": "succeeded", "long1": "cancelled",
                                   "long2": "cancelled", "long3": "cancelled",
                                   "never": "skipped"}  # fmt: skip
    assert sorted(calls) == [1, 2], "long3 never started: it waited for a slot"

    report = replay_run(store, run_id, registry)
    assert report.divergences == [], report.divergences
    assert report.status == "cancelled"
    assert report.cancelled_at == [
        {"step": "long1", "attempt": 1, "running": True},
        {"step": "long2", "attempt": 1, "running": True},
        {"step": "long3", "attempt": 1, "running": False},
    ]
    assert sorted(calls) == [1, 2], "the replay called no tool that was cancelled"
    replayed = store.events(report.run_id)
    assert _statuses(replayed) == _statuses(recorded)
    assert _attempts(replayed) == _attempts(recorded), "the same attempts, cancelled the same"
    assert report.attempts_compared == 3  # quick; long1 and long2 by their inputs
    store.close()


def test_a_cancelled_run_that_diverges_before_the_cancellation_says_so(tmp_path: Path) -> None:
    """The recording is tampered with: quick's recorded output differs from what echo gives."""
    from dagwright.executors.replay import replay_run

    calls: list[int] = []
    registry = _holding_registry(calls)
    source = MemoryTraceStore()
    run_id = cancelled_run(source, registry)
    tampered = MemoryTraceStore()
    tampered.create_run(source.get_run(run_id))
    events = []
    for e in source.events(run_id):
        if e.type == ev.ATTEMPT_FINISHED and e.step == "quick":
            e = Event(e.type, e.run_id, e.at, e.step, e.attempt, e.data | {"output": {"v": 9}})
        events.append(e)
    tampered.append(run_id, events)
    report = replay_run(tampered, run_id, registry)
    assert [(d["step"], d["what"]) for d in report.divergences][:1] == [("quick", "output")]
    assert report.status == "cancelled"


def test_replay_of_a_cancelled_run_on_the_command_line(tmp_path: Path) -> None:
    """`dagwright replay` of a run cancelled while `sleep` steps ran: exit 0, `cancelled at`."""
    from dagwright.executors.store.sql import SqlTraceStore

    db = tmp_path / ".dagwright" / "trace.db"
    store = SqlTraceStore(str(db))
    steps = [
        {"id": "quick", "uses": "echo", "with": {"v": 1}},
        {"id": "nap", "uses": "sleep", "with": {"ms": 600_000}, "needs": ["quick"]},
        {"id": "after", "uses": "echo", "needs": ["nap"]},
    ]
    executor = LocalExecutor(store, default_registry)
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(executor.run(wf(steps))))
    runner.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = store.list_runs(limit=1)
        events = store.events(runs[0].record.run_id) if runs else []
        if any(e.type == ev.ATTEMPT_STARTED and e.step == "nap" for e in events):
            break
        time.sleep(0.01)
    executor.cancel()
    runner.join(20)
    run_id = results[0].run_id
    store.close()
    proc = cli("replay", run_id, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    assert "✓ reproduced" in text and "cancelled at step 'nap' attempt 1" in text, text
    data = as_json(cli("replay", run_id, "--json", "--no-record", cwd=tmp_path))
    assert data["reproduced"] is True and data["status"] == "cancelled"
    assert data["cancelled_at"] == [{"step": "nap", "attempt": 1, "running": True}]


def test_replay_of_a_run_that_succeeded_on_the_command_line(tmp_path: Path) -> None:
    """The summary of a plain reproduction (no cancellation, no divergence) prints, exit 0."""
    (tmp_path / "wf.yaml").write_text("name: ok\nsteps:\n  - {id: a, uses: echo, with: {v: 1}}\n")
    run_id = as_json(cli("run", "wf.yaml", "--json", cwd=tmp_path))["run_id"]
    proc = cli("replay", run_id, "--no-record", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓ reproduced: the run succeeded again, step for step" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_run_still_running_does_not_replay_as_cancelled() -> None:
    """Without a recorded cancellation, an attempt that never finished stays a divergence."""
    from dagwright.executors.replay import replay_run

    store = MemoryTraceStore()
    workflow = wf([{"id": "a", "uses": "echo", "with": {"v": 1}}])
    store.create_run(RunRecord("r1", "cancelled", 1000.0, workflow.to_data(), {}))
    store.append("r1", [
        Event(ev.RUN_STARTED, "r1", 1000.0, None, None, {"inputs": {}, "executor": "local"}),
        Event(ev.STEP_SCHEDULED, "r1", 1000.0, "a", 1, {}),
        Event(ev.ATTEMPT_STARTED, "r1", 1000.0, "a", 1, {"attempt_id": "x", "inputs": {"v": 1}}),
    ])  # fmt: skip
    report = replay_run(store, "r1", default_registry, now=1001.0)  # its lease holds
    assert report.cancelled_at == []
    assert "never finished in the recording" in report.divergences[0]["message"]


# -- Celery: a dispatch sent while Redis is down ------------------------------------------------


def test_a_dispatch_sent_while_redis_is_down_is_retried_until_it_is_back(tmp_path: Path) -> None:
    """The client sends a run's first step while Redis is down; Redis comes back 2 s later.
    The send is retried and the run completes with every step scheduled once: nothing was
    left to the sweeper (DAGWRIGHT_REDISPATCH_AFTER is an hour here)."""
    from conftest import use_broker

    from dagwright.executors.distributed.engine import Engine
    from dagwright.executors.lifecycle import follow
    from dagwright.executors.store.sql import SqlTraceStore

    port = free_port()  # a redis-server of its own: this test stops it
    broker = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_redis(port, tmp_path)
    db = str(tmp_path / "trace.db")
    store = SqlTraceStore(db)
    eng = Engine(store, default_registry)
    workers = Workers(celery_env(db, broker, DAGWRIGHT_REDISPATCH_AFTER="3600"), tmp_path)
    client = use_broker(broker)
    try:
        worker = workers.start(concurrency=2)
        client.send([])  # (the client's connection exists before Redis goes away)
        run_id, dispatches = eng.start(wf([
            {"id": "a", "uses": "echo", "with": {"v": 1}},
            {"id": "b", "uses": "echo", "with": {"v": "${{ steps.a.output.v }}"}},
        ]), {})  # fmt: skip
        stop_redis(redis_proc)
        failures: list[BaseException] = []

        def send() -> None:
            try:
                client.send(dispatches)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                failures.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(2)  # the send is retrying meanwhile
        redis_proc = start_redis(port, tmp_path)
        sender.join(60)
        assert not sender.is_alive() and failures == []
        time.sleep(1)
        if worker.poll() is not None:
            # Celery's consumer can die on a lost Redis connection (a known kombu race); in
            # production a supervisor restarts it: so does this test.
            workers.start(concurrency=2)
        state = follow(store, run_id, poll=0.1, timeout=60)
        assert state.status == "succeeded", state.error
        events = store.events(run_id)
        scheduled = Counter(e.step for e in events if e.type == ev.STEP_SCHEDULED)
        assert scheduled == {"a": 1, "b": 1}, "sent once each: no re-dispatch by the sweeper"
    finally:
        workers.stop_all()
        stop_redis(redis_proc)
        store.close()
