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
from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from dagwright.errors import StoreError
from dagwright.executors.events import RUN_FINISHED, STEP_FINISHED, Event
from dagwright.executors.store.base import RunRecord, RunSummary, match_run_id

metadata = MetaData()

runs_table = Table(
    "dagwright_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("workflow_name", String(200), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("workflow", Text, nullable=False),
    Column("inputs", Text, nullable=False),
    Column("source", Text),
    Column("executor", String(32), nullable=False),
)

events_table = Table(
    "dagwright_events",
    metadata,
    Column("run_id", String(64), ForeignKey("dagwright_runs.run_id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("type", String(32), nullable=False),
    Column("at", Float, nullable=False),
    Column("step", String(128)),
    Column("attempt", Integer),
    # the `status` of a finish event, so runs can be listed and filtered by status in SQL
    Column("status", String(16)),
    Column("data", Text, nullable=False),
)
Index("ix_dagwright_events_type", events_table.c.type, events_table.c.run_id)

# Compare-and-set for workers: a claim key (e.g. "dispatch:step:1") is taken by exactly one
# append, whoever calls first; the events of a losing append are not written.
claims_table = Table(
    "dagwright_claims",
    metadata,
    Column("run_id", String(64), ForeignKey("dagwright_runs.run_id"), primary_key=True),
    Column("key", String(300), primary_key=True),
)

# Liveness of running attempts (not part of the trace: a heartbeat is not a fact about the run).
heartbeats_table = Table(
    "dagwright_heartbeats",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("step", String(128), primary_key=True),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
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
        self.url = store_url(target)
        self._next_seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._writer: Connection | None = None
        self._insert_sql = ""
        self._insert_order: Sequence[str] | None = None
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (
            None,
            "",
            ":memory:",
        ):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = self._engine()
            if create:
                metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open the trace store {self.location()}: {exc.orig or exc}"
            ) from None

    def _engine(self) -> Engine:
        if self.url.get_backend_name() != "sqlite":
            return create_engine(self.url, pool_pre_ping=True)
        engine = create_engine(self.url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
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
        self, run_id: str, events: Sequence[Event], *, claims: Sequence[str] = ()
    ) -> list[Event] | None:
        if not events:
            return []
        with self._lock:
            for _ in range(50):
                start = self._next_seq.get(run_id) or self._max_seq(run_id) + 1
                stored = [e.with_seq(start + i) for i, e in enumerate(events)]
                try:
                    self._insert_events(run_id, [self._row(run_id, e) for e in stored], claims)
                except IntegrityError as exc:
                    # a claim was taken, another writer took these sequence numbers, or the
                    # run does not exist
                    self._next_seq.pop(run_id, None)
                    if claims and self._claimed(run_id, claims):
                        return None
                    if self._max_seq(run_id) < start and not self._run_exists(run_id):
                        raise StoreError(f"cannot append to unknown run {run_id!r}") from exc
                    continue
                except (OperationalError, InterfaceError) as exc:
                    self._next_seq.pop(run_id, None)
                    self._drop_writer()
                    raise StoreError(
                        f"cannot write to the trace store {self.location()}: {exc.orig}"
                    ) from None
                self._next_seq[run_id] = start + len(stored)
                return stored
        raise StoreError(f"could not append to run {run_id!r}: too much contention")

    def _insert_events(
        self, run_id: str, rows: list[dict[str, Any]], claims: Sequence[str]
    ) -> None:
        """The hot path: one transaction on a held connection, a statement compiled once.

        (SQLAlchemy's per-call checkout and statement handling cost ~4x the SQLite commit.)"""
        if self._writer is None:
            self._writer = self.engine.connect()
            compiled = events_table.insert().compile(
                dialect=self.engine.dialect, column_keys=list(rows[0])
            )
            self._insert_sql = compiled.string
            self._insert_order = compiled.positiontup if self.engine.dialect.positional else None
        params: list[Any] = rows
        if self._insert_order is not None:
            params = [tuple(row[k] for k in self._insert_order) for row in rows]
        with self._writer.begin():
            if claims:
                self._writer.execute(
                    claims_table.insert(), [{"run_id": run_id, "key": k} for k in claims]
                )
            self._writer.exec_driver_sql(self._insert_sql, params)

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

    def _drop_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except SQLAlchemyError:
                pass
            self._writer = None

    def _max_seq(self, run_id: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.max(events_table.c.seq)).where(events_table.c.run_id == run_id)
            ).scalar()
        return int(value or 0)

    def _run_exists(self, run_id: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(runs_table.c.run_id).where(runs_table.c.run_id == run_id)
            ).first()
        return found is not None

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        t = events_table
        query = (
            select(t.c.seq, t.c.type, t.c.at, t.c.step, t.c.attempt, t.c.data)
            .where(t.c.run_id == run_id, t.c.seq > after)
            .order_by(t.c.seq)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Event(
                type=r.type,
                run_id=run_id,
                at=r.at,
                step=r.step,
                attempt=r.attempt,
                data=json.loads(r.data),
                seq=r.seq,
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
        )

    def list_runs(self, *, status: str | None = None, limit: int = 50) -> list[RunSummary]:
        r, e = runs_table, events_table
        run_status = func.coalesce(e.c.status, "running")
        query = (
            select(r, run_status.label("run_status"), e.c.at.label("finished_at"))
            .select_from(r.outerjoin(e, (e.c.run_id == r.c.run_id) & (e.c.type == RUN_FINISHED)))
            .order_by(r.c.created_at.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(run_status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [RunSummary(self._record(row), row.run_status, row.finished_at) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._drop_writer()
        self.engine.dispose()


__all__ = ["SqlTraceStore", "store_url"]
