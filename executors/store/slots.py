"""Concurrency slots in the SQL stores: which runs of a concurrency key wait, and which hold one
of its ``limit`` slots. Admission takes the key's lock (PostgreSQL: a transaction-scoped
advisory lock on the key; SQLite: ``BEGIN IMMEDIATE``), so two processes admitting at once never
admit more than the limit between them."""

from __future__ import annotations

import zlib

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, Engine

from dagwright.executors.store.tables import runs_table, slots_table

SLOTS_LOCK = 0x6477_0000  # advisory lock keys: this, plus the key's CRC32 (within int8)


def _lock(conn: Connection, key: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"SELECT pg_advisory_xact_lock({SLOTS_LOCK + zlib.crc32(key.encode())})"
        )
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def queue_run(engine: Engine, key: str, run_id: str, priority: int, at: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            slots_table.insert(),
            {"run_id": run_id, "key": key, "priority": priority, "queued_at": at,
             "admitted_at": None},
        )  # fmt: skip


def admit(engine: Engine, key: str, limit: int, at: float) -> list[str]:
    """Give free slots of ``key`` to its waiting runs, in order (priority, then queued_at);
    the run ids admitted now."""
    s = slots_table
    with engine.begin() as conn:
        _lock(conn, key)
        rows = conn.execute(  # a slot is admitted once its run is recorded (a run queues first)
            select(s.c.run_id, s.c.admitted_at)
            .join(runs_table, runs_table.c.run_id == s.c.run_id)
            .where(s.c.key == key)
            .order_by(s.c.priority.desc(), s.c.queued_at, s.c.run_id)
        ).all()
        free = limit - sum(1 for r in rows if r.admitted_at is not None)
        chosen = [r.run_id for r in rows if r.admitted_at is None][: max(0, free)]
        if chosen:
            conn.execute(update(s).where(s.c.run_id.in_(chosen)).values(admitted_at=at))
    return chosen


def release(engine: Engine, run_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(slots_table).where(slots_table.c.run_id == run_id))


def slot(engine: Engine, run_id: str) -> tuple[str, float | None] | None:
    """The run's key and when it was admitted (None: waiting); None when it holds no slot."""
    s = slots_table
    with engine.connect() as conn:
        row = conn.execute(select(s.c.key, s.c.admitted_at).where(s.c.run_id == run_id)).first()
    return None if row is None else (row.key, row.admitted_at)


def keys(engine: Engine) -> dict[str, list[tuple[str, float | None]]]:
    """Every key with runs in it: its runs and when each was admitted."""
    s = slots_table
    with engine.connect() as conn:
        rows = conn.execute(select(s.c.key, s.c.run_id, s.c.admitted_at)).all()
    found: dict[str, list[tuple[str, float | None]]] = {}
    for r in rows:
        found.setdefault(r.key, []).append((r.run_id, r.admitted_at))
    return found


__all__ = ["admit", "keys", "queue_run", "release", "slot"]
