"""One contract suite for every trace store: memory (the twin), SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from dagwright.errors import RunNotFound, StoreError
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.store import RunRecord, TraceStore


def _run(store: TraceStore, *, at: float = 1000.0, name: str = "wf") -> str:
    run_id = uuid.uuid4().hex
    store.create_run(
        RunRecord(
            run_id=run_id,
            workflow_name=name,
            created_at=at,
            workflow={"name": name, "steps": []},
            inputs={"x": 1},
        )
    )
    return run_id


def _event(run_id: str, kind: str, step: str | None = None, **data: object) -> Event:
    return Event(kind, run_id, 1000.5, step, 1 if step else None, dict(data))


def test_round_trip_keeps_order_data_and_assigns_seq(store: TraceStore) -> None:
    run_id = _run(store)
    first = store.append(run_id, [_event(run_id, ev.RUN_STARTED, inputs={"x": 1})])
    more = store.append(
        run_id,
        [
            _event(run_id, ev.STEP_SCHEDULED, "a"),
            _event(
                run_id, ev.ATTEMPT_FINISHED, "a", status="succeeded", output={"n": [1, "two", None]}
            ),
        ],
    )
    assert [e.seq for e in first + more] == [1, 2, 3]
    events = store.events(run_id)
    assert [e.type for e in events] == [ev.RUN_STARTED, ev.STEP_SCHEDULED, ev.ATTEMPT_FINISHED]
    assert events[2].data["output"] == {"n": [1, "two", None]}
    assert events[2].step == "a" and events[2].attempt == 1
    assert [e.seq for e in store.events(run_id, after=1)] == [2, 3]
    record = store.get_run(run_id)
    assert record.inputs == {"x": 1} and record.workflow_name == "wf"


def test_runs_are_isolated(store: TraceStore) -> None:
    a, b = _run(store), _run(store)
    store.append(a, [_event(a, ev.RUN_STARTED)])
    store.append(b, [_event(b, ev.RUN_STARTED), _event(b, ev.STEP_SCHEDULED, "x")])
    assert len(store.events(a)) == 1 and len(store.events(b)) == 2
    assert store.events(b)[0].seq == 1


def test_duplicate_run_and_unknown_run_are_refused(store: TraceStore) -> None:
    run_id = _run(store)
    with pytest.raises(StoreError, match="exists already"):
        store.create_run(store.get_run(run_id))
    with pytest.raises(StoreError):
        store.append("no-such-run", [_event("no-such-run", ev.RUN_STARTED)])


def test_a_run_is_created_with_its_first_events_and_claims_at_once(store: TraceStore) -> None:
    run_id = uuid.uuid4().hex
    record = RunRecord(run_id, "wf", 1000.0, {"name": "wf", "steps": []}, {"x": 1})
    opening = [_event(run_id, ev.RUN_STARTED), _event(run_id, ev.STEP_SCHEDULED, "a")]
    stored = store.create_run(record, opening, claims=["dispatch:a:1"])
    assert [e.seq for e in stored] == [1, 2]
    assert store.events(run_id) == stored
    more = store.append(run_id, [_event(run_id, ev.ATTEMPT_STARTED, "a")])
    assert more is not None and [e.seq for e in more] == [3], "appends follow the opening"
    assert (
        store.append(run_id, [_event(run_id, ev.STEP_SCHEDULED, "a")], claims=["dispatch:a:1"])
        is None
    )
    assert len(store.events(run_id)) == 3, "the claim taken at creation holds"
    with pytest.raises(StoreError, match="exists already"):
        store.create_run(record, [_event(run_id, ev.RUN_STARTED)])
    assert len(store.events(run_id)) == 3, "a refused creation writes no event"


def test_a_queued_slot_waits_for_its_run_to_be_recorded(store: TraceStore) -> None:
    """A run takes its place in the key's queue before its record is written: until then
    no admitter gives it a slot (a crash in between leaves a slot nobody admits)."""
    key = "k-" + uuid.uuid4().hex
    early = uuid.uuid4().hex
    store.queue_run(key, early, 0, 1.0)
    assert store.admit(key, 1, 2.0) == []
    store.create_run(RunRecord(early, "wf", 1.0, {"name": "wf"}), [_event(early, ev.RUN_STARTED)])
    assert store.admit(key, 1, 3.0) == [early]


def test_get_run_by_prefix(store: TraceStore) -> None:
    run_id = _run(store)
    assert store.get_run(run_id[:8]).run_id == run_id
    with pytest.raises(RunNotFound, match="no run"):
        store.get_run("ffffffffffffffff-missing")


def test_ambiguous_prefix_is_an_error(store: TraceStore) -> None:
    ids = ["abcd1111", "abcd2222"]
    for rid in ids:
        store.create_run(RunRecord(rid, "wf", 1.0, {"name": "wf"}))
    with pytest.raises(RunNotFound, match="ambiguous"):
        store.get_run("abcd")


def test_list_runs_newest_first_with_status_from_the_trace(store: TraceStore) -> None:
    old = _run(store, at=1.0, name="old")
    new = _run(store, at=2.0, name="new")
    store.append(old, [_event(old, ev.RUN_STARTED), _event(old, ev.RUN_FINISHED, status="failed")])
    store.append(new, [_event(new, ev.RUN_STARTED)])
    runs = store.list_runs()
    assert [r.record.run_id for r in runs][:2] == [new, old]
    assert {r.record.run_id: r.status for r in runs} == {new: "running", old: "failed"}
    assert [r.record.run_id for r in store.list_runs(status="failed")] == [old]
    assert store.list_runs(status="succeeded") == []
    assert len(store.list_runs(limit=1)) == 1


def test_a_run_s_summary_is_its_listing_without_reading_its_trace(store: TraceStore) -> None:
    """``summary(run_id)``: the status ``list_runs`` gives (finished, queued, running), when
    it finished, and its record; an unknown id is RunNotFound."""
    done, waiting, running = _run(store), _run(store), _run(store)
    store.append(done, [_event(done, ev.RUN_STARTED), _event(done, "step_finished", "a"),
                        Event(ev.RUN_FINISHED, done, 1002.0, None, None,
                              {"status": "cancelled"})])  # fmt: skip
    store.append(waiting, [_event(waiting, ev.RUN_STARTED), _event(waiting, ev.RUN_QUEUED)])
    store.append(running, [_event(running, ev.RUN_STARTED)])
    listed = {r.record.run_id: r for r in store.list_runs(limit=500)}
    for run_id, status in ((done, "cancelled"), (waiting, "queued"), (running, "running")):
        summary = store.summary(run_id)
        assert summary == listed[run_id] and summary.status == status
        assert summary.record == store.get_run(run_id)
    assert store.summary(done).finished_at == 1002.0 and store.summary(running).finished_at is None
    with pytest.raises(RunNotFound):
        store.summary(uuid.uuid4().hex)


def test_list_runs_filters_and_pages_with_a_cursor(store: TraceStore) -> None:
    """Filters on workflow and creation time; pages follow (created_at, run_id), so runs
    created at the same instant are neither skipped nor repeated across pages."""
    name = uuid.uuid4().hex  # the store may be shared with other tests: filter on our name
    ids = [_run(store, at=100.0 + (i // 2), name=name) for i in range(7)]  # pairs share a time
    other = _run(store, at=101.0, name="other-" + name)
    pages, after = [], None
    while True:
        page = store.list_runs(workflow=name, limit=3, after=after)
        pages.append([r.record.run_id for r in page])
        if len(page) < 3:
            break
        after = (page[-1].record.created_at, page[-1].record.run_id)
    seen = [rid for page in pages for rid in page]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)) == 7
    assert other not in seen
    expected = sorted(ids, key=lambda rid: (store.get_run(rid).created_at, rid), reverse=True)
    assert seen == expected
    window = store.list_runs(workflow=name, created_after=100.0, created_before=102.0)
    assert sorted(r.record.run_id for r in window) == sorted(ids[2:4])


def test_an_idempotency_key_is_held_by_the_first_submission(store: TraceStore) -> None:
    key = "key-" + uuid.uuid4().hex
    assert store.submission(key) is None
    first = store.claim_submission(key, "fp-a", "run-1", 5.0)
    again = store.claim_submission(key, "fp-b", "run-2", 6.0)
    assert (first.run_id, first.fingerprint) == ("run-1", "fp-a")
    assert (again.run_id, again.fingerprint, again.created_at) == ("run-1", "fp-a", 5.0)
    assert store.submission(key) == first
    other = store.claim_submission(key + "-other", "fp-c", "run-3", 7.0)
    assert other.run_id == "run-3"
    store.release_submission(key, "run-2")  # not the run that holds it: nothing changes
    assert store.submission(key) == first
    store.release_submission(key, "run-1")
    assert store.submission(key) is None
    assert store.claim_submission(key, "fp-d", "run-4", 8.0).run_id == "run-4"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_concurrent_appenders_never_share_a_seq(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two store instances (two processes' worth) appending to one run: seqs stay unique."""
    from dagwright.executors.store.sql import SqlTraceStore

    target = str(tmp_path / "shared.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    a, b = SqlTraceStore(target), SqlTraceStore(target)
    run_id = _run(a)

    def write(store: SqlTraceStore, n: int) -> None:
        for i in range(n):
            store.append(
                run_id,
                [
                    _event(run_id, ev.STEP_SCHEDULED, f"s{i}"),
                    _event(run_id, ev.STEP_FINISHED, f"s{i}", status="succeeded"),
                ],
            )

    threads = [threading.Thread(target=write, args=(s, 25)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = b.events(run_id)
    assert [e.seq for e in events] == list(range(1, 101))
    # every append landed whole: each scheduled event is followed by its finish
    pairs = [(e.type, e.step) for e in events]
    for i in range(0, 100, 2):
        assert pairs[i][0] == ev.STEP_SCHEDULED and pairs[i + 1] == (ev.STEP_FINISHED, pairs[i][1])
    a.close()
    b.close()


def test_a_claim_is_taken_once_and_its_events_only_with_it(store: TraceStore) -> None:
    run_id = _run(store)
    won = store.append(run_id, [_event(run_id, ev.STEP_SCHEDULED, "a")], claims=["dispatch:a:1"])
    assert won is not None and won[0].seq == 1
    lost = store.append(run_id, [_event(run_id, ev.STEP_SCHEDULED, "a")], claims=["dispatch:a:1"])
    assert lost is None
    both = store.append(
        run_id, [_event(run_id, ev.STEP_SCHEDULED, "b")], claims=["dispatch:b:1", "dispatch:a:1"]
    )
    assert both is None, "claims are all or none"
    assert store.append(run_id, [_event(run_id, ev.STEP_SCHEDULED, "b")], claims=["dispatch:b:1"])
    assert [e.step for e in store.events(run_id)] == ["a", "b"]
    other = _run(store)
    assert store.append(other, [_event(other, ev.STEP_SCHEDULED, "a")], claims=["dispatch:a:1"])


def test_heartbeats_keep_the_latest_beat(store: TraceStore) -> None:
    run_id = _run(store)
    store.heartbeat(run_id, "a", 1, 10.0)
    store.heartbeat(run_id, "a", 1, 12.5)
    store.heartbeat(run_id, "b", 2, 11.0)
    assert store.heartbeats(run_id) == {("a", 1): 12.5, ("b", 2): 11.0}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_concurrent_claimers_one_winner(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Eight writers on four connections race for the same claims: each is won exactly once."""
    from dagwright.executors.store.sql import SqlTraceStore

    target = str(tmp_path / "claims.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    stores = [SqlTraceStore(target) for _ in range(4)]
    run_id = _run(stores[0])
    wins: list[str] = []

    def race(store: SqlTraceStore, me: int) -> None:
        for i in range(20):
            got = store.append(
                run_id,
                [_event(run_id, ev.STEP_SCHEDULED, f"s{i}", by=me)],
                claims=[f"dispatch:s{i}:1"],
            )
            if got is not None:
                wins.append(f"s{i}")

    threads = [threading.Thread(target=race, args=(stores[i % 4], i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == sorted(f"s{i}" for i in range(20))
    assert sorted(e.step for e in stores[0].events(run_id)) == sorted(wins)
    for s in stores:
        s.close()


def test_the_model_cache_keeps_the_first_answer(store: TraceStore) -> None:
    assert store.cache_get("k1") is None
    store.cache_put("k1", {"text": "first", "n": [1, 2]})
    store.cache_put("k1", {"text": "second"})
    assert store.cache_get("k1") == {"text": "first", "n": [1, 2]}


def test_a_store_from_an_earlier_version_is_upgraded_in_place(tmp_path: Path) -> None:
    """A trace.db made before runs carried their next sequence number keeps working."""
    import sqlite3

    from dagwright.executors.store.sql import SqlTraceStore

    path = tmp_path / "old.db"
    old = SqlTraceStore(str(path))
    run_id = _run(old)
    old.append(run_id, [_event(run_id, ev.RUN_STARTED), _event(run_id, ev.STEP_SCHEDULED, "a")])
    old.close()
    with sqlite3.connect(path) as conn:  # make it look like the earlier schema
        conn.execute("DROP TABLE dagwright_schema")  # (earlier versions had no version table)
        conn.execute("ALTER TABLE dagwright_runs DROP COLUMN next_seq")
        conn.execute("DROP INDEX ix_dagwright_runs_parent_run_id")
        for column in ("parent_run_id", "mode", "from_steps"):
            conn.execute(f"ALTER TABLE dagwright_runs DROP COLUMN {column}")
    store = SqlTraceStore(str(path))
    assert store.get_run(run_id).parent_run_id is None
    stored = store.append(run_id, [_event(run_id, ev.STEP_FINISHED, "a", status="succeeded")])
    assert stored is not None and stored[0].seq == 3
    assert [e.seq for e in store.events(run_id)] == [1, 2, 3]
    store.close()


def test_runs_keep_their_lineage(store: TraceStore) -> None:
    parent = _run(store)
    child = uuid.uuid4().hex
    store.create_run(
        RunRecord(
            run_id=child,
            workflow_name="wf",
            created_at=1001.0,
            workflow={"name": "wf", "steps": []},
            parent_run_id=parent,
            mode="fork",
            from_steps=["b", "c"],
        )
    )
    record = store.get_run(child)
    assert (record.parent_run_id, record.mode, record.from_steps) == (parent, "fork", ["b", "c"])
    assert record.lineage() == {"parent": parent, "mode": "fork", "from_steps": ["b", "c"]}
    assert store.get_run(parent).lineage() is None


def test_an_append_expecting_a_seq_is_refused_when_the_run_moved_on(store: TraceStore) -> None:
    from dagwright.errors import StaleState

    run_id = _run(store)
    first = store.append(run_id, [_event(run_id, ev.RUN_STARTED)], expect_seq=1)
    assert first is not None and first[0].seq == 1
    store.append(run_id, [_event(run_id, ev.STEP_SCHEDULED, "a")])  # another writer
    with pytest.raises(StaleState):
        store.append(run_id, [_event(run_id, ev.ATTEMPT_STARTED, "a")], claims=["x"],
                     expect_seq=2)  # fmt: skip
    assert [e.seq for e in store.events(run_id)] == [1, 2], "nothing was written"
    # the claim was not taken either
    again = store.append(run_id, [_event(run_id, ev.ATTEMPT_STARTED, "a")], claims=["x"],
                         expect_seq=3)  # fmt: skip
    assert again is not None and again[0].seq == 3
    assert store.append(run_id, [_event(run_id, ev.STEP_SCHEDULED, "b")], claims=["x"],
                        expect_seq=4) is None  # fmt: skip


@pytest.mark.postgres
def test_many_processes_may_open_a_fresh_postgres_store_at_once(pg_url: str) -> None:
    """A worker pool's processes open the (empty) shared store at the same moment: the schema
    is created once, nobody fails on concurrent CREATE TABLEs."""

    from dagwright.executors.store.sql import SqlTraceStore

    barrier = threading.Barrier(8)
    opened: list[SqlTraceStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            opened.append(SqlTraceStore(pg_url))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 8
    for s in opened:
        s.close()


def test_a_concurrency_key_admits_up_to_its_limit_in_order(store: TraceStore) -> None:
    """Waiting runs are admitted into free slots, higher priority first, then in queue order;
    a release frees a slot; another key is independent; a queued run lists as queued."""
    key, other = "k-" + uuid.uuid4().hex, "o-" + uuid.uuid4().hex
    runs = [_run(store) for _ in range(5)]
    for i, rid in enumerate(runs):
        store.queue_run(key, rid, 5 if i == 3 else 0, 10.0 + i)
    store.queue_run(other, (lonely := _run(store)), 0, 10.0)
    assert store.admit(key, 2, 20.0) == [runs[3], runs[0]]
    assert store.admit(key, 2, 21.0) == []
    assert store.slot(runs[3]) == (key, 20.0) and store.slot(runs[1]) == (key, None)
    store.release(runs[0])
    assert store.slot(runs[0]) is None
    assert store.admit(key, 2, 22.0) == [runs[1]]
    assert store.admit(other, 1, 22.0) == [lonely]
    assert sorted(store.slot_keys()[key]) == sorted([(runs[1], 22.0), (runs[2], None),
                                                     (runs[3], 20.0), (runs[4], None)])  # fmt: skip
    waiting = runs[2]
    store.append(waiting, [_event(waiting, ev.RUN_STARTED), _event(waiting, ev.RUN_QUEUED)])
    admitted = runs[1]
    store.append(admitted, [_event(admitted, ev.RUN_STARTED), _event(admitted, ev.RUN_QUEUED),
                            _event(admitted, ev.RUN_ADMITTED)])  # fmt: skip
    listed = {r.record.run_id: r.status for r in store.list_runs(limit=500)}
    assert (listed[waiting], listed[admitted]) == ("queued", "running")
    assert waiting in {r.record.run_id for r in store.list_runs(status="queued", limit=500)}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_concurrent_admitters_never_exceed_the_limit(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Eight threads on their own connections admit and release the same key's runs at once:
    at no time do more runs hold a slot than the limit, and every run is admitted once."""
    from dagwright.executors.store.sql import SqlTraceStore

    target = str(tmp_path / "t.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    stores = [SqlTraceStore(target) for _ in range(4)]
    key = "k-" + uuid.uuid4().hex
    runs = [_run(stores[0]) for _ in range(40)]
    for i, rid in enumerate(runs):
        stores[0].queue_run(key, rid, 0, float(i))
    admitted: list[str] = []
    holding: set[str] = set()
    most = 0
    lock = threading.Lock()

    def worker(n: int) -> None:
        nonlocal most
        s = stores[n % 4]
        for _ in range(200):
            got = s.admit(key, 3, 1.0)
            with lock:
                admitted.extend(got)
                holding.update(got)
                most = max(most, len(holding))
                done = sorted(holding)[:1] if holding else []
                holding.difference_update(done)
            for rid in done:
                s.release(rid)
            if len(admitted) == len(runs):
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(admitted) == sorted(runs), "every run admitted exactly once"
    assert most <= 3
