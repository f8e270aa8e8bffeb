"""Where a SQL trace store lives and how it is reached: ``store_url`` (a file path or a URL) and
the SQLAlchemy engine ``SqlTraceStore`` opens on it (``open_engine``): SQLite in WAL mode with
``synchronous=NORMAL``; PostgreSQL through psycopg 3, its pool sized for the hot path's held
connections (``hot.WRITERS``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

from dagwright.executors.store.hot import WRITERS


def store_url(target: str) -> URL:
    """A SQLAlchemy URL from a file path or a URL (``postgresql://`` uses psycopg 3)."""
    if "://" not in target:
        return URL.create("sqlite", database=str(Path(target).expanduser().resolve()))
    url = make_url(target)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def open_engine(url: URL) -> Engine:
    """The SQLAlchemy engine for a store's URL (``store_url``)."""
    if url.get_backend_name() != "sqlite":
        # the hot path holds up to WRITERS connections; the rest serve reads and claims
        return create_engine(url, pool_pre_ping=True, pool_size=WRITERS + 4, max_overflow=10)
    engine = create_engine(url, connect_args={"timeout": 30})

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


__all__ = ["open_engine", "store_url"]
