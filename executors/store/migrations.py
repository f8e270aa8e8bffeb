"""The trace store's schema, versioned: an ordered list of migrations, each applied once.

``dagwright_schema`` holds one row per migration applied (version, name, when); the store's
version is the highest. Opening a store (``ensure_schema``) reads it — one query when the store
is up to date. When migrations are pending it takes the schema lock (PostgreSQL: a
transaction-scoped advisory lock; SQLite: a ``BEGIN IMMEDIATE`` transaction, one writer at a
time), reads the version again (another process may have just migrated the store) and applies the
pending migrations in order, in that one transaction. The processes of a worker pool that open a
fresh store at the same moment therefore create it once; the others wait and find it done.

Rules for a migration:

- **additive**: new tables, new columns that are nullable or have a default, new indexes. A store
  upgraded by a newer dagwright then still opens in an older one (it ignores what it does not
  know), so workers can be upgraded one at a time;
- **idempotent**: it checks what is there first. Migration 1 creates missing tables at their
  latest definition (``executors.store.tables``), so on a fresh store the later ones find their
  work done; a store made before the schema had versions (no ``dagwright_schema``: treated as
  version 0) may hold some of their changes already.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from dagwright.errors import StoreError
from dagwright.executors.store.tables import RUN_LEVEL_INDEXES, metadata, schema_table

SCHEMA_LOCK = 0x6461_6777  # "dagw": the PostgreSQL advisory lock key of schema changes


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def _tables(conn: Connection) -> None:
    """The tables that are missing, at their latest definition."""
    metadata.create_all(conn)


def _next_seq(conn: Connection) -> None:
    """Runs carry the next free ``seq`` of their events (appends take numbers from it)."""
    if "next_seq" in _columns(conn, "dagwright_runs"):
        return
    conn.exec_driver_sql(
        "ALTER TABLE dagwright_runs ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 1"
    )
    conn.exec_driver_sql(
        "UPDATE dagwright_runs SET next_seq = 1 + COALESCE((SELECT MAX(seq) FROM "
        "dagwright_events e WHERE e.run_id = dagwright_runs.run_id), 0)"
    )


def _lineage(conn: Connection) -> None:
    """Runs carry their lineage: the run they were resumed, forked or replayed from."""
    present = _columns(conn, "dagwright_runs")
    lineage = {"parent_run_id": "VARCHAR(64)", "mode": "VARCHAR(16)", "from_steps": "TEXT"}
    for name, kind in lineage.items():
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE dagwright_runs ADD COLUMN {name} {kind}")
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_dagwright_runs_parent_run_id "
        "ON dagwright_runs (parent_run_id)"
    )


def _run_seqs(conn: Connection) -> None:
    """Appends write less: runs count their events in ``dagwright_run_seqs``, a small row each,
    instead of on their ``dagwright_runs`` row (which holds the workflow, rewritten whole at
    every append); and a run's own events are indexed by partial indexes, one per type, instead
    of every event by ``(type, run_id)``.

    Runs already in the store get no counter row: they go on counting on their ``dagwright_runs``
    row (the store knows which way a run counts by whether it has a row), so an earlier
    dagwright sharing the store (workers upgraded one at a time) still appends to them. A run
    made by this version is one an earlier dagwright cannot append to: its appends fail as
    conflicting events (nothing is written), never with a wrong ``seq``. Without the index on
    every event, an earlier dagwright lists runs more slowly, and correctly."""
    _tables(conn)  # dagwright_run_seqs: created if missing
    for index in RUN_LEVEL_INDEXES.values():
        index.create(conn, checkfirst=True)
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_dagwright_events_type")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables", _tables),
    Migration(2, "runs.next_seq", _next_seq),
    Migration(3, "run lineage", _lineage),
    Migration(4, "submissions", _tables),  # dagwright_submissions: created if missing
    Migration(5, "concurrency slots", _tables),  # dagwright_slots: created if missing
    Migration(6, "run sequence counters, run-level event indexes", _run_seqs),
)
"""In order of version; append only (a version, once released, never changes)."""


def _version(conn: Connection) -> int | None:
    """The store's schema version; None when it has no version table."""
    if not inspect(conn).has_table(schema_table.name):
        return None
    return int(
        conn.execute(select(func.coalesce(func.max(schema_table.c.version), 0))).scalar_one()
    )


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits (busy timeout) for any other writer


def _blank_sqlite(conn: Connection) -> bool:
    """An SQLite database without any table: a new file (perhaps another process is making a
    store of it at this moment)."""
    return conn.dialect.name == "sqlite" and not inspect(conn).get_table_names()


LOCKED_RETRY_S = 30.0
"""How long opening an SQLite store retries while the file is locked by others opening it."""


def _sqlite_locked(exc: OperationalError) -> bool:
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


def ensure_schema(engine: Engine, location: str, *, create: bool = True) -> None:
    """Bring the store's schema to the latest version: create a new store's tables, or upgrade
    a store made by an earlier dagwright in place.

    ``create=False``: only an existing store — a database without dagwright's tables raises
    StoreError (``no trace store at …``) and gets none (an SQLite file with no table at all,
    the start of a store, is made one).

    SQLite answers "database is locked" without waiting in a few moments of a new file's life
    (turning it to WAL while another process reads it, a read upgraded to a write), which a
    worker pool opening a fresh store together meets under load. Each step here is idempotent
    under the lock, so such an answer is retried, with jittered backoff, for up to
    ``LOCKED_RETRY_S``."""
    deadline = time.monotonic() + LOCKED_RETRY_S
    pause = 0.01
    while True:
        try:
            _ensure_schema(engine, location, create=create)
            return
        except OperationalError as exc:
            if engine.dialect.name != "sqlite" or not _sqlite_locked(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, 0.5)


def _ensure_schema(engine: Engine, location: str, *, create: bool) -> None:
    latest = MIGRATIONS[-1].version
    with engine.connect() as conn:
        found = _version(conn)
    if found is not None and found >= latest:
        return
    with engine.begin() as conn:
        _lock(conn)
        found = _version(conn)
        if found is None:
            found = 0
            has_runs = inspect(conn).has_table("dagwright_runs")
            if not (create or has_runs or _blank_sqlite(conn)):
                raise StoreError(
                    f"no trace store at {location}: the database has no dagwright tables "
                    "(a store is made by the first run recorded there)"
                )
        for migration in MIGRATIONS:
            if migration.version > found:
                migration.apply(conn)
                conn.execute(
                    schema_table.insert(),
                    {"version": migration.version, "name": migration.name,
                     "applied_at": time.time()},
                )  # fmt: skip


__all__ = ["MIGRATIONS", "Migration", "ensure_schema"]
