"""The trace store's tables, at the latest version of the schema (SQLAlchemy Core).

A store made by an earlier dagwright is brought to these definitions by the migrations
(``executors.store.migrations``); a change here needs a migration there.
"""

from __future__ import annotations

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
    literal_column,
)

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
    # the next free `seq` of a run made before schema 6 (a store shared with an earlier
    # dagwright); runs made since count in `dagwright_run_seqs` instead (see there)
    Column("next_seq", Integer, nullable=False, server_default="1"),
    # lineage: the run this one was resumed, forked or replayed from
    Column("parent_run_id", String(64), index=True),
    Column("mode", String(16)),
    Column("from_steps", Text),
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
# A run's own events (its end, its place in a concurrency queue) by run, for listing runs with
# their status: partial indexes, so the bulk of a trace (the steps' events) writes to none of
# them (an index on every event cost a page written per commit).
RUN_LEVEL_INDEXES = {
    kind: Index(
        f"ix_dagwright_events_{kind}",
        events_table.c.run_id,
        sqlite_where=events_table.c.type == literal_column(f"'{kind}'"),
        postgresql_where=events_table.c.type == literal_column(f"'{kind}'"),
    )
    for kind in ("run_finished", "run_queued", "run_admitted")
}

# The next free `seq` of each run's events, in a row of its own: appends take numbers from it in
# their own transaction, so concurrent writers never collide and commit order is seq order. (On
# the run's row, which holds the whole workflow, every append rewrote the workflow: 5.5 ms per
# append for a 50,000-step plan on SQLite.) A run made before schema 6 has no row here and goes
# on counting in `dagwright_runs.next_seq`, so an earlier dagwright may still append to it.
run_seqs_table = Table(
    "dagwright_run_seqs",
    metadata,
    Column("run_id", String(64), ForeignKey("dagwright_runs.run_id"), primary_key=True),
    Column("next_seq", Integer, nullable=False),
    sqlite_with_rowid=False,  # one b-tree page written per append, not two
)

# Compare-and-set for workers: a claim key (e.g. "dispatch:step:1") is taken by exactly one
# append, whoever calls first; the events of a losing append are not written.
claims_table = Table(
    "dagwright_claims",
    metadata,
    Column("run_id", String(64), ForeignKey("dagwright_runs.run_id"), primary_key=True),
    Column("key", String(300), primary_key=True),
)

# Model answers by request key (model id, messages, schema, parameters): the model-call cache
# when no Redis cache is configured.
cache_table = Table(
    "dagwright_model_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
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

# Submissions by idempotency key (the API's ``Idempotency-Key``, the ``dagwright.submit`` task's
# key): the first submission with a key names the run; a retry with the key gets the same run.
submissions_table = Table(
    "dagwright_submissions",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Concurrency slots (a workflow's ``concurrency:``): the runs of a key waiting or admitted.
slots_table = Table(
    "dagwright_slots",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("key", String(600), nullable=False, index=True),
    Column("priority", Integer, nullable=False),
    Column("queued_at", Float, nullable=False),
    Column("admitted_at", Float),
)

# The schema's version: one row per migration applied (``executors.store.migrations``).
schema_table = Table(
    "dagwright_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("applied_at", Float, nullable=False),
)

__all__ = [
    "RUN_LEVEL_INDEXES",
    "cache_table",
    "claims_table",
    "events_table",
    "heartbeats_table",
    "metadata",
    "run_seqs_table",
    "runs_table",
    "schema_table",
    "slots_table",
    "submissions_table",
]
