"""How the SQL store numbers a run's events (schema 6): a counter row per run, so an append never
rewrites the run's row (which holds the whole workflow), and stores made by an earlier dagwright
upgraded in place, their runs still counting on their runs row, as that dagwright does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from dagwright.errors import StaleState
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.store import RunRecord
from dagwright.executors.store.migrations import MIGRATIONS
from dagwright.executors.store.sql import SqlTraceStore, store_url


def _target(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return str(tmp_path / "trace.db")
    return str(request.getfixturevalue("pg_url"))


@contextmanager
def _sql(target: str) -> Iterator[Connection]:
    """A connection of its own to the store's database, in one transaction."""
    engine = create_engine(store_url(target))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _event(run_id: str, kind: str = ev.STEP_SCHEDULED, step: str = "a") -> Event:
    return Event(kind, run_id, 1000.5, step, 1, {})


def _new_run(store: SqlTraceStore, run_id: str, steps: int = 1) -> None:
    workflow = {"name": "wf", "steps": [{"id": f"s{i}", "uses": "echo"} for i in range(steps)]}
    store.create_run(RunRecord(run_id, "wf", 1000.0, workflow, {}))


def _earlier_append(conn: Connection, run_id: str) -> int:
    """One event appended as dagwright before schema 6 does: its ``seq`` taken from the
    run's ``dagwright_runs.next_seq``."""
    taken = conn.execute(
        text("UPDATE dagwright_runs SET next_seq = next_seq + 1 WHERE run_id = :r "
             "RETURNING next_seq"),
        {"r": run_id},
    ).scalar_one()  # fmt: skip
    seq = int(taken) - 1
    conn.execute(
        text("INSERT INTO dagwright_events (run_id, seq, type, at, step, attempt, status, data) "
             "VALUES (:r, :s, 'step_scheduled', 1000.5, 'x', 1, NULL, '{}')"),
        {"r": run_id, "s": seq},
    )  # fmt: skip
    return seq


def _seqs(store: SqlTraceStore, run_id: str) -> list[int]:
    return [e.seq or 0 for e in store.events(run_id)]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_schema_5_store_is_upgraded_and_its_runs_go_on_counting_where_they_did(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = _target(kind, tmp_path, request)
    SqlTraceStore(target).close()
    with _sql(target) as conn:  # the store as dagwright at schema 5 left it, with a run
        conn.execute(text("DROP TABLE dagwright_run_seqs"))
        conn.execute(text("DELETE FROM dagwright_schema WHERE version = 6"))
        conn.execute(
            text("INSERT INTO dagwright_runs (run_id, workflow_name, created_at, workflow, "
                 "inputs, executor, next_seq) VALUES ('old1', 'wf', 1000.0, "
                 "'{\"name\": \"wf\", \"steps\": []}', '{}', 'local', 1)")
        )  # fmt: skip
        assert [_earlier_append(conn, "old1") for _ in range(2)] == [1, 2]

    store = SqlTraceStore(target)
    try:
        with _sql(target) as conn:
            versions = conn.execute(text("SELECT version FROM dagwright_schema ORDER BY 1"))
            assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]
            counters = conn.execute(text("SELECT count(*) FROM dagwright_run_seqs"))
            assert counters.scalar_one() == 0, "runs made before are left on their row"
        stored = store.append("old1", [_event("old1"), _event("old1")])
        assert stored is not None and [e.seq for e in stored] == [3, 4]
        with _sql(target) as conn:  # an earlier dagwright, sharing the store, appends too
            assert _earlier_append(conn, "old1") == 5
        stored = store.append("old1", [_event("old1", ev.ATTEMPT_STARTED)])
        assert stored is not None and stored[0].seq == 6
        with pytest.raises(StaleState):  # the compare-and-set works on such runs too
            store.append("old1", [_event("old1")], expect_seq=6)
        assert _seqs(store, "old1") == [1, 2, 3, 4, 5, 6], "nothing was written"
        stored = store.append("old1", [_event("old1")], claims=["k"], expect_seq=7)
        assert stored is not None and stored[0].seq == 7

        _new_run(store, "new1")  # a run made now counts in a row of its own
        stored = store.append("new1", [_event("new1"), _event("new1")])
        assert stored is not None and [e.seq for e in stored] == [1, 2]
        with pytest.raises(StaleState):
            store.append("new1", [_event("new1")], expect_seq=1)
        with pytest.raises(IntegrityError), _sql(target) as conn:
            _earlier_append(conn, "new1")  # an earlier dagwright cannot append to it: refused
        assert _seqs(store, "new1") == [1, 2], "and nothing of it was written"
        with _sql(target) as conn:
            row = conn.execute(text("SELECT next_seq FROM dagwright_run_seqs WHERE run_id = "
                                    "'new1'")).scalar_one()  # fmt: skip
            assert row == 3
    finally:
        store.close()


def _count_run_row_updates(conn: Connection) -> None:
    """A trigger that counts every UPDATE of a ``dagwright_runs`` row into ``row_updates``."""
    conn.execute(text("CREATE TABLE row_updates (n INTEGER NOT NULL)"))
    conn.execute(text("INSERT INTO row_updates VALUES (0)"))
    if conn.dialect.name == "sqlite":
        conn.execute(
            text("CREATE TRIGGER count_updates AFTER UPDATE ON dagwright_runs "
                 "BEGIN UPDATE row_updates SET n = n + 1; END")
        )  # fmt: skip
        return
    conn.execute(
        text("CREATE FUNCTION count_update() RETURNS trigger AS $$ BEGIN "
             "UPDATE row_updates SET n = n + 1; RETURN NEW; END $$ LANGUAGE plpgsql")
    )  # fmt: skip
    conn.execute(
        text("CREATE TRIGGER count_updates AFTER UPDATE ON dagwright_runs "
             "FOR EACH ROW EXECUTE FUNCTION count_update()")
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_appends_never_rewrite_the_runs_row_that_holds_the_workflow(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = _target(kind, tmp_path, request)
    store = SqlTraceStore(target)
    try:
        with _sql(target) as conn:
            _count_run_row_updates(conn)
        _new_run(store, "big", steps=2_000)
        for i in range(50):
            store.append("big", [_event("big", step=f"s{i}"), _event("big", ev.ATTEMPT_STARTED)])
        got = store.append("big", [_event("big")], claims=["c"], expect_seq=101)
        assert got is not None and got[0].seq == 101
        assert _seqs(store, "big") == list(range(1, 102))
        with _sql(target) as conn:
            assert conn.execute(text("SELECT n FROM row_updates")).scalar_one() == 0
    finally:
        store.close()
