"""The SQL store's hot path: held DBAPI connections, statements compiled once, and the rows
they take.

Appending events, creating a run and reading a run's new events happen at every step and every
submission. SQLAlchemy's per-statement result handling and transaction bookkeeping cost more than
a SQLite commit, so these go straight to the DBAPI connection (SQLAlchemy's pooled
``raw_connection``, held) with SQL that SQLAlchemy compiled once for the dialect.

- SQLite: one held connection, used under a lock (SQLite has one writer at a time anyway).
- PostgreSQL: up to ``WRITERS`` held connections, so the appends of concurrent threads (the API's
  submissions, a worker's threads) commit side by side instead of queueing behind one another's
  round trips; PostgreSQL orders them (the lock on the run's counter row).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import bindparam, exists, select
from sqlalchemy.engine import Engine

from dagwright.errors import StoreError
from dagwright.executors.engine.events import RUN_FINISHED, STEP_FINISHED, Event
from dagwright.executors.store.tables import (
    claims_table,
    events_table,
    run_seqs_table,
    runs_table,
)

WRITERS = 8
"""Held connections to PostgreSQL for the hot path (SQLite: 1)."""

EVENT_COLUMNS = ("run_id", "seq", "type", "at", "step", "attempt", "status", "data")
RUN_COLUMNS = (
    "run_id",
    "workflow_name",
    "created_at",
    "workflow",
    "inputs",
    "source",
    "executor",
    "next_seq",
    "parent_run_id",
    "mode",
    "from_steps",
)


class Statement:
    """One statement compiled for a dialect, and how to order its parameters."""

    def __init__(self, compiled: Any, positional: bool) -> None:
        self.sql: str = compiled.string
        self.order: Sequence[str] | None = compiled.positiontup if positional else None

    def params(self, values: Mapping[str, Any]) -> Any:
        if self.order is None:
            return values
        return tuple(values[k] for k in self.order)


class Statements:
    """The hot path's SQL, compiled once for the engine's dialect."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        positional = bool(dialect.positional)

        def compiled(stmt: Any, **kw: Any) -> Statement:
            return Statement(stmt.compile(dialect=dialect, **kw), positional)

        r, t, s = runs_table, events_table, run_seqs_table
        rid: Any = bindparam("rid")
        n: Any = bindparam("n")
        expect: Any = bindparam("expect")

        def take(table: Any, *where: Any) -> Statement:
            """Take ``n`` numbers from the table's ``next_seq`` (returns the next one after)."""
            return compiled(
                table.update()
                .where(table.c.run_id == rid, *where)
                .values(next_seq=table.c.next_seq + n)
                .returning(table.c.next_seq)
            )

        self.insert_run = compiled(r.insert(), column_keys=list(RUN_COLUMNS))
        self.insert_seqs = compiled(s.insert(), column_keys=["run_id", "next_seq"])
        self.insert_event = compiled(t.insert(), column_keys=list(EVENT_COLUMNS))
        self.insert_claim = compiled(claims_table.insert(), column_keys=["run_id", "key"])
        # a run's counter row (tables.run_seqs_table); a run made before schema 6 has none
        # and counts on its runs row, as the dagwright that made it does
        self.take_seq = take(s)
        self.take_seq_expect = take(s, s.c.next_seq == expect)
        counts_on_run_row = ~exists().where(s.c.run_id == r.c.run_id)
        self.legacy_take_seq = take(r, counts_on_run_row)
        self.legacy_take_seq_expect = take(r, counts_on_run_row, r.c.next_seq == expect)
        self.known_run = compiled(select(r.c.run_id).where(r.c.run_id == rid))
        self.select_run = compiled(select(r).where(r.c.run_id == bindparam("rid")))
        self.select_events = compiled(
            select(t.c.seq, t.c.type, t.c.at, t.c.step, t.c.attempt, t.c.data)
            .where(t.c.run_id == bindparam("rid"), t.c.seq > bindparam("after"))
            .order_by(t.c.seq)
        )


def dumps(value: Any) -> str:
    """A value as the JSON text a row holds; StoreError for a value that is not JSON data."""
    try:
        return to_json(value).decode()
    except (PydanticSerializationError, ValueError) as exc:
        raise StoreError(f"cannot record a value that is not JSON data: {exc}") from None


def insert(cur: Any, sql: str, rows: list[Any]) -> None:
    """Insert rows: one alone as a plain statement (psycopg runs ``executemany`` in pipeline
    mode, which costs more than it saves for a single row)."""
    if len(rows) == 1:
        cur.execute(sql, rows[0])
    else:
        cur.executemany(sql, rows)


def event_row(run_id: str, e: Event) -> tuple[Any, ...]:
    """The event's row, in ``EVENT_COLUMNS`` order."""
    status = e.data.get("status") if e.type in (STEP_FINISHED, RUN_FINISHED) else None
    return (run_id, e.seq, e.type, e.at, e.step, e.attempt, status, dumps(e.data))


def event_rows(sql: Statements, run_id: str, events: Sequence[Event]) -> list[Any]:
    """The events' rows as the insert takes them: the tuples as they are when its order is
    ``EVENT_COLUMNS`` (SQLite), else reordered, or as mappings (PostgreSQL)."""
    order = sql.insert_event.order
    rows = [event_row(run_id, e) for e in events]
    if order is None:
        return [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows]
    if tuple(order) == EVENT_COLUMNS:
        return rows
    index = [EVENT_COLUMNS.index(k) for k in order]
    return [tuple(row[i] for i in index) for row in rows]


def claim_rows(sql: Statements, run_id: str, claims: Sequence[str]) -> list[Any]:
    claim = sql.insert_claim
    return [claim.params({"run_id": run_id, "key": k}) for k in claims]


class Writers:
    """Held DBAPI connections, lent one at a time (``with writers.connection() as raw``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.size = 1 if engine.dialect.name == "sqlite" else WRITERS
        self._slots = threading.BoundedSemaphore(self.size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A held connection for one transaction. When the body raises a connection error
        (``broken``), the connection is thrown away and a new one made next time."""
        with self._slots:
            with self._lock:
                raw = self._idle.pop() if self._idle else None
            if raw is None:
                raw = self.engine.raw_connection()
            try:
                yield raw
            except BaseException as exc:
                if _broken(exc, self.engine):
                    _discard(raw, invalidate=True)
                    raise
                with self._lock:
                    self._idle.append(raw)
                raise
            with self._lock:
                self._idle.append(raw)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for raw in idle:
            _discard(raw, invalidate=False)


def _broken(exc: BaseException, engine: Engine) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    dbapi = engine.dialect.loaded_dbapi
    return isinstance(
        exc, (OperationalError, InterfaceError, dbapi.OperationalError, dbapi.InterfaceError)
    )


def _discard(raw: Any, *, invalidate: bool) -> None:
    try:
        if invalidate:  # a broken connection must not go back to the pool
            raw.invalidate()
        else:
            raw.close()
    except Exception:  # noqa: BLE001 - it is being thrown away
        pass


__all__ = [
    "EVENT_COLUMNS",
    "RUN_COLUMNS",
    "WRITERS",
    "Statement",
    "Statements",
    "Writers",
    "claim_rows",
    "dumps",
    "event_row",
    "event_rows",
    "insert",
]
