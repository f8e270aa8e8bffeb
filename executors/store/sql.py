"""The SQL trace store: SQLite (embedded default) or PostgreSQL, through SQLAlchemy Core.

SQLite runs in WAL mode with ``synchronous=NORMAL``: every committed event survives a crash of
the process; a power loss may lose the last few transactions. PostgreSQL is the store to use when
workers run on several hosts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import (
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from dagwright.errors import StaleState, StoreError
from dagwright.executors.engine.events import (
    RUN_ADMITTED,
    RUN_FINISHED,
    RUN_QUEUED,
    STEP_FINISHED,
    Event,
)
from dagwright.executors.store import slots
from dagwright.executors.store.base import RunRecord, RunSummary, Submission, match_run_id
from dagwright.executors.store.hot import EVENT_COLUMNS, WRITERS, Statements, Writers
from dagwright.executors.store.migrations import ensure_schema
from dagwright.executors.store.tables import (
    cache_table,
    claims_table,
    events_table,
    heartbeats_table,
    runs_table,
    submissions_table,
)


def _dumps(value: Any) -> str:
    try:
        return to_json(value).decode()
    except (PydanticSerializationError, ValueError) as exc:
        raise StoreError(f"cannot record a value that is not JSON data: {exc}") from None


def _insert(cur: Any, sql: str, rows: list[Any]) -> None:
    """Insert rows: one alone as a plain statement (psycopg runs ``executemany`` in pipeline
    mode, which costs more than it saves for a single row)."""
    if len(rows) == 1:
        cur.execute(sql, rows[0])
    else:
        cur.executemany(sql, rows)


def _literal(kind: str) -> Any:
    """An event type written into the SQL: the planners use the partial index of that type
    only for a literal (``tables.RUN_LEVEL_INDEXES``), never for a bound parameter."""
    return literal_column(f"'{kind}'")


def store_url(target: str) -> URL:
    """A SQLAlchemy URL from a file path or a URL (``postgresql://`` uses psycopg 3)."""
    if "://" not in target:
        return URL.create("sqlite", database=str(Path(target).expanduser().resolve()))
    url = make_url(target)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


class SqlTraceStore:
    def __init__(self, target: str, *, create: bool = True) -> None:
        """Open the store at ``target`` (``store_url``), bringing its schema to this version
        (``executors.store.migrations``: a store made by an earlier dagwright is upgraded in
        place).

        ``create=False`` (commands that only read): an existing store only. A SQLite file that
        does not exist, or a database without dagwright's tables, raises StoreError
        (``no trace store at …``), and no directory, file or table is created."""
        self.url = store_url(target)
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (
            None,
            "",
            ":memory:",
        ):
            path = Path(self.url.database)
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise StoreError(
                    f"no trace store at {path}: there is no such file "
                    "(a store is made by the first run recorded there)"
                )
        self.engine = self._engine()
        try:
            ensure_schema(self.engine, self.location(), create=create)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            orig = getattr(exc, "orig", None) or exc  # the driver's error, when there is one
            raise StoreError(f"cannot open the trace store {self.location()}: {orig}") from None
        except BaseException:
            self.engine.dispose()
            raise
        self._sql = Statements(self.engine)
        self._writers = Writers(self.engine)

    def _engine(self) -> Engine:
        if self.url.get_backend_name() != "sqlite":
            # the hot path holds up to WRITERS connections; the rest serve reads and claims
            return create_engine(
                self.url, pool_pre_ping=True, pool_size=WRITERS + 4, max_overflow=10
            )
        engine = create_engine(self.url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL is a property of the file, kept once set: only a new file needs the switch
            # (which takes a lock), so the processes opening an existing store never race on it.
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine

    def location(self) -> str:
        if self.url.get_backend_name() == "sqlite":
            return str(self.url.database)
        return self.url.render_as_string(hide_password=True).replace("+psycopg", "")

    def create_run(
        self, run: RunRecord, events: Sequence[Event] = (), *, claims: Sequence[str] = ()
    ) -> list[Event]:
        stored = [e.with_seq(i + 1) for i, e in enumerate(events)]
        row = {
            "run_id": run.run_id,
            "workflow_name": run.workflow_name,
            "created_at": run.created_at,
            "workflow": _dumps(run.workflow),
            "inputs": _dumps(run.inputs),
            "source": run.source,
            "executor": run.executor,
            "next_seq": len(stored) + 1,
            "parent_run_id": run.parent_run_id,
            "mode": run.mode,
            "from_steps": _dumps(run.from_steps) if run.from_steps else None,
        }
        sql = self._sql
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            with self._writers.connection() as raw:
                cur = raw.cursor()
                try:
                    cur.execute(sql.insert_run.sql, sql.insert_run.params(row))
                    counter = {"run_id": run.run_id, "next_seq": len(stored) + 1}
                    cur.execute(sql.insert_seqs.sql, sql.insert_seqs.params(counter))
                    if claims:
                        _insert(cur, sql.insert_claim.sql, self._claim_rows(run.run_id, claims))
                    if stored:
                        _insert(cur, sql.insert_event.sql, self._event_rows(run.run_id, stored))
                    raw.commit()
                except BaseException:
                    raw.rollback()
                    raise
                finally:
                    cur.close()
        except (IntegrityError, dbapi.IntegrityError):
            raise StoreError(f"run {run.run_id!r} exists already") from None
        except (OperationalError, InterfaceError, dbapi.OperationalError,
                dbapi.InterfaceError) as exc:  # fmt: skip
            raise StoreError(
                f"cannot write to the trace store {self.location()}: "
                f"{getattr(exc, 'orig', None) or exc}"
            ) from None
        return stored

    def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        claims: Sequence[str] = (),
        expect_seq: int | None = None,
    ) -> list[Event] | None:
        if not events and not claims:
            return []
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            with self._writers.connection() as raw:
                return self._append(raw, run_id, events, claims, expect_seq)
        except (IntegrityError, dbapi.IntegrityError):
            if claims and self._claimed(run_id, claims):
                return None  # someone else took the claim first: nothing was written
            raise StoreError(f"cannot append to run {run_id!r}: conflicting events") from None
        except (OperationalError, InterfaceError, dbapi.OperationalError,
                dbapi.InterfaceError) as exc:  # fmt: skip
            raise StoreError(
                f"cannot write to the trace store {self.location()}: "
                f"{getattr(exc, 'orig', None) or exc}"
            ) from None

    def _append(
        self,
        raw: Any,
        run_id: str,
        events: Sequence[Event],
        claims: Sequence[str],
        expect_seq: int | None = None,
    ) -> list[Event]:
        """One transaction on a held connection (``hot.Writers``): the claims first (a lost
        claim costs nothing else), the run's next ``seq`` numbers, the events."""
        sql = self._sql
        cur = raw.cursor()
        try:
            if claims:
                _insert(cur, sql.insert_claim.sql, self._claim_rows(run_id, claims))
            take: dict[str, Any] = {"rid": run_id, "n": len(events)}
            if expect_seq is None:
                cur.execute(sql.take_seq.sql, sql.take_seq.params(take))
            else:
                take["expect"] = expect_seq
                cur.execute(sql.take_seq_expect.sql, sql.take_seq_expect.params(take))
            row = cur.fetchone()
            if row is None:
                row = self._take_seq_legacy(cur, run_id, take)
            start = int(row[0]) - len(events)
            stored = [e.with_seq(start + i) for i, e in enumerate(events)]
            if stored:
                _insert(cur, sql.insert_event.sql, self._event_rows(run_id, stored))
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cur.close()
        return stored

    def _take_seq_legacy(self, cur: Any, run_id: str, take: dict[str, Any]) -> Any:
        """The run has no counter row: it was made before schema 6 (it counts on its runs row,
        as the dagwright that made it does), or its counter moved past ``expect``, or there
        is no such run."""
        sql = self._sql
        legacy = sql.legacy_take_seq_expect if "expect" in take else sql.legacy_take_seq
        cur.execute(legacy.sql, legacy.params(take))
        row = cur.fetchone()
        if row is not None:
            return row
        cur.execute(sql.known_run.sql, sql.known_run.params({"rid": run_id}))
        if cur.fetchone() is None:
            raise StoreError(f"cannot append to unknown run {run_id!r}")
        raise StaleState(f"run {run_id!r} changed since seq {take['expect'] - 1}")

    def _claim_rows(self, run_id: str, claims: Sequence[str]) -> list[Any]:
        insert = self._sql.insert_claim
        return [insert.params({"run_id": run_id, "key": k}) for k in claims]

    def _event_rows(self, run_id: str, events: Sequence[Event]) -> list[Any]:
        """The events' rows as the insert takes them: the tuples as they are when its order is
        ``EVENT_COLUMNS`` (SQLite), else reordered, or as mappings (PostgreSQL)."""
        order = self._sql.insert_event.order
        rows = [self._row(run_id, e) for e in events]
        if order is None:
            return [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows]
        if tuple(order) == EVENT_COLUMNS:
            return rows
        index = [EVENT_COLUMNS.index(k) for k in order]
        return [tuple(row[i] for i in index) for row in rows]

    def _claimed(self, run_id: str, claims: Sequence[str]) -> bool:
        c = claims_table
        with self.engine.connect() as conn:
            found = conn.execute(
                select(c.c.key).where(c.c.run_id == run_id, c.c.key.in_(list(claims))).limit(1)
            ).first()
        return found is not None

    def heartbeat(self, run_id: str, step: str, attempt: int, at: float) -> None:
        h = heartbeats_table
        row = {"run_id": run_id, "step": step, "attempt": attempt, "at": at}
        try:
            with self.engine.begin() as conn:
                updated = conn.execute(
                    h.update()
                    .where(h.c.run_id == run_id, h.c.step == step, h.c.attempt == attempt)
                    .values(at=at)
                ).rowcount
                if not updated:
                    conn.execute(h.insert(), row)
        except IntegrityError:  # two first beats at once: the other one is as good
            pass
        except OperationalError as exc:
            raise StoreError(
                f"cannot write to the trace store {self.location()}: {exc.orig}"
            ) from None

    def cache_get(self, key: str) -> Any:
        c = cache_table
        with self.engine.connect() as conn:
            row = conn.execute(select(c.c.value).where(c.c.key == key)).first()
        return json.loads(row.value) if row else None

    def cache_put(self, key: str, value: Any) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(cache_table.insert(), {"key": key, "value": _dumps(value)})
        except IntegrityError:
            pass  # the same request answered meanwhile: the first answer stays

    def heartbeats(self, run_id: str) -> dict[tuple[str, int], float]:
        h = heartbeats_table
        with self.engine.connect() as conn:
            rows = conn.execute(select(h.c.step, h.c.attempt, h.c.at).where(h.c.run_id == run_id))
            return {(r.step, r.attempt): r.at for r in rows}

    @staticmethod
    def _row(run_id: str, e: Event) -> tuple[Any, ...]:
        """The event's row, in ``hot.EVENT_COLUMNS`` order."""
        status = e.data.get("status") if e.type in (STEP_FINISHED, RUN_FINISHED) else None
        return (run_id, e.seq, e.type, e.at, e.step, e.attempt, status, _dumps(e.data))

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        # the hot read path (workers read the new events of a run at every step)
        dbapi = self.engine.dialect.loaded_dbapi
        select_events = self._sql.select_events
        try:
            with self._writers.connection() as raw:
                cur = raw.cursor()
                try:
                    cur.execute(
                        select_events.sql, select_events.params({"rid": run_id, "after": after})
                    )
                    rows = cur.fetchall()
                finally:
                    cur.close()
                    # end the read's transaction (PostgreSQL opens one; SQLite does not)
                    if getattr(raw.dbapi_connection, "in_transaction", True):
                        raw.commit()
        except (OperationalError, InterfaceError, dbapi.OperationalError,
                dbapi.InterfaceError) as exc:  # fmt: skip
            raise StoreError(
                f"cannot read the trace store {self.location()}: "
                f"{getattr(exc, 'orig', None) or exc}"
            ) from None
        return [
            Event(
                type=r[1],
                run_id=run_id,
                at=r[2],
                step=r[3],
                attempt=r[4],
                data=json.loads(r[5]),
                seq=r[0],
            )
            for r in rows
        ]

    def get_run(self, run_id: str) -> RunRecord:
        found = self._run_row(run_id)  # a full id: the hot path (workers, at every new run)
        if found is not None:
            return self._record(found)
        r = runs_table
        with self.engine.connect() as conn:
            row = conn.execute(select(r).where(r.c.run_id == run_id)).first()
            if row is None:
                ids = (
                    conn.execute(
                        select(r.c.run_id)
                        .where(r.c.run_id.startswith(run_id, autoescape=True))
                        .limit(10)
                    )
                    .scalars()
                    .all()
                )
                full = match_run_id(run_id, list(ids))
                row = conn.execute(select(r).where(r.c.run_id == full)).one()
        return self._record(row)

    def _run_row(self, run_id: str) -> Any:
        """The run's row by its full id on a held connection, or None."""
        dbapi = self.engine.dialect.loaded_dbapi
        select_run = self._sql.select_run
        try:
            with self._writers.connection() as raw:
                cur = raw.cursor()
                try:
                    cur.execute(select_run.sql, select_run.params({"rid": run_id}))
                    values = cur.fetchone()
                    names = [c[0] for c in cur.description or ()]
                finally:
                    cur.close()
                    if getattr(raw.dbapi_connection, "in_transaction", True):
                        raw.commit()
        except (OperationalError, InterfaceError, dbapi.OperationalError,
                dbapi.InterfaceError) as exc:  # fmt: skip
            raise StoreError(
                f"cannot read the trace store {self.location()}: "
                f"{getattr(exc, 'orig', None) or exc}"
            ) from None
        return None if values is None else SimpleNamespace(**dict(zip(names, values, strict=True)))

    @staticmethod
    def _record(row: Any) -> RunRecord:
        return RunRecord(
            run_id=row.run_id,
            workflow_name=row.workflow_name,
            created_at=row.created_at,
            workflow=json.loads(row.workflow),
            inputs=json.loads(row.inputs),
            source=row.source,
            executor=row.executor,
            parent_run_id=row.parent_run_id,
            mode=row.mode,
            from_steps=json.loads(row.from_steps) if row.from_steps else [],
        )

    def list_runs(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        workflow: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[RunSummary]:
        r, e = runs_table, events_table
        q, a = events_table.alias("queued"), events_table.alias("admitted")
        waiting = case((and_(q.c.seq.is_not(None), a.c.seq.is_(None)), "queued"), else_="running")
        run_status = func.coalesce(e.c.status, waiting)
        joined = (
            r.outerjoin(e, (e.c.run_id == r.c.run_id) & (e.c.type == _literal(RUN_FINISHED)))
            .outerjoin(q, (q.c.run_id == r.c.run_id) & (q.c.type == _literal(RUN_QUEUED)))
            .outerjoin(a, (a.c.run_id == r.c.run_id) & (a.c.type == _literal(RUN_ADMITTED)))
        )
        query = (
            select(r, run_status.label("run_status"), e.c.at.label("finished_at"))
            .select_from(joined)
            .order_by(r.c.created_at.desc(), r.c.run_id.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(run_status == status)
        if workflow is not None:
            query = query.where(r.c.workflow_name == workflow)
        if created_after is not None:
            query = query.where(r.c.created_at > created_after)
        if created_before is not None:
            query = query.where(r.c.created_at < created_before)
        if after is not None:
            at, run_id = after
            query = query.where(
                or_(r.c.created_at < at, and_(r.c.created_at == at, r.c.run_id < run_id))
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [RunSummary(self._record(row), row.run_status, row.finished_at) for row in rows]

    def claim_submission(self, key: str, fingerprint: str, run_id: str, at: float) -> Submission:
        s = submissions_table
        row = {"key": key, "fingerprint": fingerprint, "run_id": run_id, "created_at": at}
        try:
            with self.engine.begin() as conn:
                conn.execute(s.insert(), row)
            return Submission(key, fingerprint, run_id, at)
        except IntegrityError:
            pass  # taken: by an earlier submission with this key
        held = self.submission(key)
        assert held is not None  # submissions are never deleted
        return held

    def queue_run(self, key: str, run_id: str, priority: int, at: float) -> None:
        slots.queue_run(self.engine, key, run_id, priority, at)

    def admit(self, key: str, limit: int, at: float) -> list[str]:
        return slots.admit(self.engine, key, limit, at)

    def release(self, run_id: str) -> None:
        slots.release(self.engine, run_id)

    def slot(self, run_id: str) -> tuple[str, float | None] | None:
        return slots.slot(self.engine, run_id)

    def slot_keys(self) -> dict[str, list[tuple[str, float | None]]]:
        return slots.keys(self.engine)

    def release_submission(self, key: str, run_id: str) -> None:
        s = submissions_table
        with self.engine.begin() as conn:
            conn.execute(delete(s).where((s.c.key == key) & (s.c.run_id == run_id)))

    def submission(self, key: str) -> Submission | None:
        s = submissions_table
        with self.engine.connect() as conn:
            row = conn.execute(select(s).where(s.c.key == key)).one_or_none()
        return (
            None
            if row is None
            else Submission(row.key, row.fingerprint, row.run_id, row.created_at)
        )

    def close(self) -> None:
        self._writers.close()
        self.engine.dispose()


__all__ = ["SqlTraceStore", "store_url"]
