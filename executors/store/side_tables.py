"""The SQL store's tables beside the trace (SQLAlchemy Core): running attempts' heartbeats, the
model-call cache, and the idempotency keys of submissions. ``SqlTraceStore`` delegates its
``heartbeat``/``heartbeats``, ``cache_get``/``cache_put`` and ``*submission`` methods here
(``slots.py`` holds the concurrency slots, ``hot.py`` the trace's own statements)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from dagwright.errors import StoreError
from dagwright.executors.store.base import Submission
from dagwright.executors.store.hot import dumps
from dagwright.executors.store.tables import cache_table, heartbeats_table, submissions_table


# -- heartbeats ------------------------------------------------------------------------------------
def heartbeat(
    engine: Engine, run_id: str, step: str, attempt: int, at: float, where: Callable[[], str]
) -> None:
    """Record that an attempt is alive at ``at``; ``where``: the store's location, for an error."""
    h = heartbeats_table
    row = {"run_id": run_id, "step": step, "attempt": attempt, "at": at}
    try:
        with engine.begin() as conn:
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
        raise StoreError(f"cannot write to the trace store {where()}: {exc.orig}") from None


def heartbeats(engine: Engine, run_id: str) -> dict[tuple[str, int], float]:
    h = heartbeats_table
    with engine.connect() as conn:
        rows = conn.execute(select(h.c.step, h.c.attempt, h.c.at).where(h.c.run_id == run_id))
        return {(r.step, r.attempt): r.at for r in rows}


# -- the model-call cache --------------------------------------------------------------------------
def cache_get(engine: Engine, key: str) -> Any:
    c = cache_table
    with engine.connect() as conn:
        row = conn.execute(select(c.c.value).where(c.c.key == key)).first()
    return json.loads(row.value) if row else None


def cache_put(engine: Engine, key: str, value: Any) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(cache_table.insert(), {"key": key, "value": dumps(value)})
    except IntegrityError:
        pass  # the same request answered meanwhile: the first answer stays


# -- submissions' idempotency keys -----------------------------------------------------------------
def claim_submission(
    engine: Engine, key: str, fingerprint: str, run_id: str, at: float
) -> Submission:
    s = submissions_table
    row = {"key": key, "fingerprint": fingerprint, "run_id": run_id, "created_at": at}
    try:
        with engine.begin() as conn:
            conn.execute(s.insert(), row)
        return Submission(key, fingerprint, run_id, at)
    except IntegrityError:
        pass  # taken: by an earlier submission with this key
    held = submission(engine, key)
    assert held is not None  # submissions are never deleted
    return held


def release_submission(engine: Engine, key: str, run_id: str) -> None:
    s = submissions_table
    with engine.begin() as conn:
        conn.execute(delete(s).where((s.c.key == key) & (s.c.run_id == run_id)))


def submission(engine: Engine, key: str) -> Submission | None:
    s = submissions_table
    with engine.connect() as conn:
        row = conn.execute(select(s).where(s.c.key == key)).one_or_none()
    return None if row is None else Submission(row.key, row.fingerprint, row.run_id, row.created_at)


__all__ = [
    "cache_get",
    "cache_put",
    "claim_submission",
    "heartbeat",
    "heartbeats",
    "release_submission",
    "submission",
]
