"""The SQL trace store: SQLite (embedded default) or PostgreSQL, through SQLAlchemy Core.

SQLite runs in WAL mode with ``synchronous=NORMAL``: every committed event survives a crash of
the process; a power loss may lose the last few transactions. PostgreSQL is the store to use when
workers run on several hosts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import and_, bindparam, case, create_engine, delete, event, func, or_, select
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
        self._lock = threading.Lock()
        self._writer: Any = None  # SQLAlchemy's pooled DBAPI connection, held
        self._insert_sql = ""
        self._insert_order: Sequence[str] | None = None
        self._take_seq_sql = ""
        self._select_sql = ""
        self._select_order: Sequence[str] | None = None
        self._take_seq_order: Sequence[str] | None = None
        self._take_seq_expect_sql = ""
        self._take_seq_expect_order: Sequence[str] | None = None
        self._claim_sql = ""
        self._claim_positional = False
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

    def _engine(self) -> Engine:
        if self.url.get_backend_name() != "sqlite":
            return create_engine(self.url, pool_pre_ping=True)
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

    def create_run(self, run: RunRecord) -> None:
        row = {
            "run_id": run.run_id,
            "workflow_name": run.workflow_name,
            "created_at": run.created_at,
            "workflow": _dumps(run.workflow),
            "inputs": _dumps(run.inputs),
            "source": run.source,
            "executor": run.executor,
            "parent_run_id": run.parent_run_id,
            "mode": run.mode,
            "from_steps": _dumps(run.from_steps) if run.from_steps else None,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(runs_table.insert(), row)
        except IntegrityError:
            raise StoreError(f"run {run.run_id!r} exists already") from None
        except OperationalError as exc:
            raise StoreError(
                f"cannot write to the trace store {self.location()}: {exc.orig}"
            ) from None

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
        with self._lock:
            try:
                return self._append(run_id, events, claims, expect_seq)
            except (IntegrityError, dbapi.IntegrityError):
                if claims and self._claimed(run_id, claims):
                    return None  # someone else took the claim first: nothing was written
                raise StoreError(f"cannot append to run {run_id!r}: conflicting events") from None
            except (OperationalError, InterfaceError, dbapi.OperationalError,
                    dbapi.InterfaceError) as exc:  # fmt: skip
                self._drop_writer(invalidate=True)
                raise StoreError(
                    f"cannot write to the trace store {self.location()}: "
                    f"{getattr(exc, 'orig', None) or exc}"
                ) from None

    def _append(
        self,
        run_id: str,
        events: Sequence[Event],
        claims: Sequence[str],
        expect_seq: int | None = None,
    ) -> list[Event]:
        """The hot path: one transaction on a held DBAPI connection (SQLAlchemy's pooled
        ``raw_connection``), statements compiled once by SQLAlchemy for this dialect.

        (SQLAlchemy's per-statement result handling and transaction bookkeeping cost more than
        the SQLite commit itself; workers append twice per step.)"""
        raw = self._writer_connection()
        cur = raw.cursor()
        try:
            if claims:  # first: a lost claim costs nothing else
                claim_rows = [
                    (run_id, k) if self._claim_positional else {"run_id": run_id, "key": k}
                    for k in claims
                ]
                cur.executemany(self._claim_sql, claim_rows)
            if expect_seq is None:
                sql, params = self._take_seq_sql, self._take_seq_params(run_id, len(events))
            else:
                sql = self._take_seq_expect_sql
                params = self._take_seq_params(run_id, len(events), expect_seq)
            cur.execute(sql, params)
            row = cur.fetchone()
            if row is None and expect_seq is not None:
                raise StaleState(f"run {run_id!r} changed since seq {expect_seq - 1}")
            if row is None:
                raise StoreError(f"cannot append to unknown run {run_id!r}")
            start = int(row[0]) - len(events)
            stored = [e.with_seq(start + i) for i, e in enumerate(events)]
            rows = [self._row(run_id, e) for e in stored]
            inserts: list[Any] = rows
            if self._insert_order is not None:
                inserts = [tuple(r[k] for k in self._insert_order) for r in rows]
            if inserts:
                cur.executemany(self._insert_sql, inserts)
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cur.close()
        return stored

    def _writer_connection(self) -> Any:
        if self._writer is None:
            self._writer = self.engine.raw_connection()
            dialect = self.engine.dialect
            keys = ["run_id", "seq", "type", "at", "step", "attempt", "status", "data"]
            compiled = events_table.insert().compile(dialect=dialect, column_keys=keys)
            self._insert_sql = compiled.string
            self._insert_order = compiled.positiontup if dialect.positional else None
            r = runs_table
            take = (
                r.update()
                .where(r.c.run_id == bindparam("rid"))
                .values(next_seq=r.c.next_seq + bindparam("n"))
                .returning(r.c.next_seq)
                .compile(dialect=dialect)
            )
            self._take_seq_sql = take.string
            take_expect = (
                r.update()
                .where(r.c.run_id == bindparam("rid"), r.c.next_seq == bindparam("expect"))
                .values(next_seq=r.c.next_seq + bindparam("n"))
                .returning(r.c.next_seq)
                .compile(dialect=dialect)
            )
            self._take_seq_expect_sql = take_expect.string
            self._take_seq_expect_order = take_expect.positiontup if dialect.positional else None
            claim = claims_table.insert().compile(dialect=dialect, column_keys=["run_id", "key"])
            self._claim_sql = claim.string
            self._claim_positional = bool(dialect.positional)
            assert not self._claim_positional or list(claim.positiontup or []) == ["run_id", "key"]
            t = events_table
            select_events = (
                select(t.c.seq, t.c.type, t.c.at, t.c.step, t.c.attempt, t.c.data)
                .where(t.c.run_id == bindparam("rid"), t.c.seq > bindparam("after"))
                .order_by(t.c.seq)
                .compile(dialect=dialect)
            )
            self._select_sql = select_events.string
            self._select_order = select_events.positiontup if dialect.positional else None
            self._take_seq_order = take.positiontup if dialect.positional else None
        return self._writer

    def _take_seq_params(self, run_id: str, n: int, expect: int | None = None) -> Any:
        values = {"rid": run_id, "n": n}
        order = self._take_seq_order
        if expect is not None:
            values["expect"] = expect
            order = self._take_seq_expect_order
        if order is not None:
            return tuple(values[k] for k in order)
        return values

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
    def _row(run_id: str, e: Event) -> dict[str, Any]:
        status = e.data.get("status") if e.type in (STEP_FINISHED, RUN_FINISHED) else None
        return {
            "run_id": run_id,
            "seq": e.seq,
            "type": e.type,
            "at": e.at,
            "step": e.step,
            "attempt": e.attempt,
            "status": status,
            "data": _dumps(e.data),
        }

    def _drop_writer(self, *, invalidate: bool = False) -> None:
        if self._writer is not None:
            try:
                if invalidate:  # a broken connection must not go back to the pool
                    self._writer.invalidate()
                else:
                    self._writer.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass
            self._writer = None

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        # the hot read path (workers read the new events of a run at every step): the held
        # DBAPI connection and a statement compiled once
        dbapi = self.engine.dialect.loaded_dbapi
        with self._lock:
            try:
                raw = self._writer_connection()
                params: Any = {"rid": run_id, "after": after}
                if self._select_order is not None:
                    params = tuple(params[k] for k in self._select_order)
                cur = raw.cursor()
                try:
                    cur.execute(self._select_sql, params)
                    rows = cur.fetchall()
                finally:
                    cur.close()
                    # end the read's transaction (PostgreSQL opens one; SQLite does not)
                    if getattr(raw.dbapi_connection, "in_transaction", True):
                        raw.commit()
            except (OperationalError, InterfaceError, dbapi.OperationalError,
                    dbapi.InterfaceError) as exc:  # fmt: skip
                self._drop_writer(invalidate=True)
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
            r.outerjoin(e, (e.c.run_id == r.c.run_id) & (e.c.type == RUN_FINISHED))
            .outerjoin(q, (q.c.run_id == r.c.run_id) & (q.c.type == RUN_QUEUED))
            .outerjoin(a, (a.c.run_id == r.c.run_id) & (a.c.type == RUN_ADMITTED))
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
        with self._lock:
            self._drop_writer()
        self.engine.dispose()


__all__ = ["SqlTraceStore", "store_url"]
