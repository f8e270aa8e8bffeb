"""The SQL store's read side beyond the hot path (SQLAlchemy Core, built per call): runs with
their status (``list_runs``; ``summary``, one run), finding a run by a prefix of its id, and a
runs row as a ``RunRecord``. ``SqlTraceStore``'s ``list_runs``, ``summary`` and ``get_run`` call
these (``hot.py`` holds the reads of every step: a run by its full id, its new events)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, case, func, literal_column, or_, select
from sqlalchemy.engine import Engine

from dagwright.executors.engine.events import RUN_ADMITTED, RUN_FINISHED, RUN_QUEUED
from dagwright.executors.store.base import RunRecord, RunSummary, match_run_id, run_not_found
from dagwright.executors.store.tables import events_table, runs_table


def _literal(kind: str) -> Any:
    """An event type written into the SQL: the planners use the partial index of that type
    only for a literal (``tables.RUN_LEVEL_INDEXES``), never for a bound parameter."""
    return literal_column(f"'{kind}'")


def record(row: Any) -> RunRecord:
    """A runs row (with its columns as attributes) as a ``RunRecord``."""
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


def run_row(engine: Engine, run_id: str) -> Any:
    """The runs row of ``run_id``, a full id or a unique prefix (``match_run_id`` raises
    RunNotFound for none, or for a prefix of several)."""
    r = runs_table
    with engine.connect() as conn:
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
    return row


def _listing() -> tuple[Any, Any]:
    """The runs with their status and end (``select``), and the status column to filter on: a
    run's status from its ``run_finished`` event, else ``queued`` (``run_queued`` without
    ``run_admitted``), else ``running``. Joins only a run's own events (partial indexes)."""
    r, e = runs_table, events_table
    q, a = events_table.alias("queued"), events_table.alias("admitted")
    waiting = case((and_(q.c.seq.is_not(None), a.c.seq.is_(None)), "queued"), else_="running")
    run_status = func.coalesce(e.c.status, waiting)
    joined = (
        r.outerjoin(e, (e.c.run_id == r.c.run_id) & (e.c.type == _literal(RUN_FINISHED)))
        .outerjoin(q, (q.c.run_id == r.c.run_id) & (q.c.type == _literal(RUN_QUEUED)))
        .outerjoin(a, (a.c.run_id == r.c.run_id) & (a.c.type == _literal(RUN_ADMITTED)))
    )
    query = select(r, run_status.label("run_status"), e.c.at.label("finished_at"))
    return query.select_from(joined), run_status


def _summaries(engine: Engine, query: Any) -> list[RunSummary]:
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [RunSummary(record(row), row.run_status, row.finished_at) for row in rows]


def summary(engine: Engine, run_id: str) -> RunSummary:
    """``TraceStore.summary``: one run as ``list_runs`` lists it, by its full id."""
    query, _ = _listing()
    found = _summaries(engine, query.where(runs_table.c.run_id == run_id))
    if not found:
        raise run_not_found(run_id)
    return found[0]


def list_runs(
    engine: Engine,
    *,
    status: str | None = None,
    limit: int = 50,
    workflow: str | None = None,
    created_after: float | None = None,
    created_before: float | None = None,
    after: tuple[float, str] | None = None,
) -> list[RunSummary]:
    """``TraceStore.list_runs``: newest first, each run with its status (``_listing``)."""
    r = runs_table
    query, run_status = _listing()
    query = query.order_by(r.c.created_at.desc(), r.c.run_id.desc()).limit(limit)
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
    return _summaries(engine, query)


__all__ = ["list_runs", "record", "run_row", "summary"]
