"""The SQL trace store: SQLite (embedded default) or PostgreSQL, through SQLAlchemy Core.

SQLite runs in WAL mode with ``synchronous=NORMAL``: every committed event survives a crash of
the process; a power loss may lose the last few transactions. PostgreSQL is the store to use when
workers run on several hosts.

``SqlTraceStore`` (here) opens the store and runs the trace's own writes and reads: a new run,
appends under claims, a run's new events, a run by its full id. Its parts: ``connect`` (the URL
and the SQLAlchemy engine), ``hot`` (held connections, statements compiled once, their rows),
``queries`` (listing runs, a run by id prefix), ``side_tables`` (heartbeats, the model-call
cache, submissions' idempotency keys), ``slots`` (concurrency slots), ``tables`` and
``migrations`` (the schema).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from dagwright.errors import StaleState, StoreError
from dagwright.executors.engine.events import Event
from dagwright.executors.store import queries, side_tables, slots
from dagwright.executors.store.base import RunRecord, RunSummary, Submission
from dagwright.executors.store.connect import open_engine, store_url
from dagwright.executors.store.hot import Statements, Writers, claim_rows, dumps, event_rows, insert
from dagwright.executors.store.migrations import ensure_schema
from dagwright.executors.store.tables import claims_table


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
        self.engine = open_engine(self.url)
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
            "workflow": dumps(run.workflow),
            "inputs": dumps(run.inputs),
            "source": run.source,
            "executor": run.executor,
            "next_seq": len(stored) + 1,
            "parent_run_id": run.parent_run_id,
            "mode": run.mode,
            "from_steps": dumps(run.from_steps) if run.from_steps else None,
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
                        insert(cur, sql.insert_claim.sql, claim_rows(sql, run.run_id, claims))
                    if stored:
                        insert(cur, sql.insert_event.sql, event_rows(sql, run.run_id, stored))
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
                insert(cur, sql.insert_claim.sql, claim_rows(sql, run_id, claims))
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
                insert(cur, sql.insert_event.sql, event_rows(sql, run_id, stored))
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

    def _claimed(self, run_id: str, claims: Sequence[str]) -> bool:
        c = claims_table
        with self.engine.connect() as conn:
            found = conn.execute(
                select(c.c.key).where(c.c.run_id == run_id, c.c.key.in_(list(claims))).limit(1)
            ).first()
        return found is not None

    def heartbeat(self, run_id: str, step: str, attempt: int, at: float) -> None:
        side_tables.heartbeat(self.engine, run_id, step, attempt, at, self.location)

    def heartbeats(self, run_id: str) -> dict[tuple[str, int], float]:
        return side_tables.heartbeats(self.engine, run_id)

    def cache_get(self, key: str) -> Any:
        return side_tables.cache_get(self.engine, key)

    def cache_put(self, key: str, value: Any) -> None:
        side_tables.cache_put(self.engine, key, value)

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
        return queries.record(found if found is not None else queries.run_row(self.engine, run_id))

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

    def summary(self, run_id: str) -> RunSummary:
        return queries.summary(self.engine, run_id)

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
        return queries.list_runs(
            self.engine, status=status, limit=limit, workflow=workflow,
            created_after=created_after, created_before=created_before, after=after,
        )  # fmt: skip

    def claim_submission(self, key: str, fingerprint: str, run_id: str, at: float) -> Submission:
        return side_tables.claim_submission(self.engine, key, fingerprint, run_id, at)

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
        side_tables.release_submission(self.engine, key, run_id)

    def submission(self, key: str) -> Submission | None:
        return side_tables.submission(self.engine, key)

    def close(self) -> None:
        self._writers.close()
        self.engine.dispose()


__all__ = ["SqlTraceStore", "store_url"]
