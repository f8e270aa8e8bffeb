"""Shared fixtures. Real backends are part of the suite: PostgreSQL tests skip on a laptop without
it, but fail when CI=true (CI has PostgreSQL at 127.0.0.1:5432)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagwright.executors.store import MemoryTraceStore, TraceStore
from dagwright.tools import ToolRegistry, default_registry

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("DAGWRIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"{type(exc).__name__}: {exc}"


def require_postgres() -> None:
    problem = _pg_available()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_URL}: {problem}")
    pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {problem}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    require_postgres()
    import psycopg

    schema = f"dw_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


STORE_KINDS = ["memory", "sqlite", "postgres"]


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> TraceStore:
    if kind == "memory":
        return MemoryTraceStore()
    from dagwright.executors.store.sql import SqlTraceStore

    if kind == "sqlite":
        return SqlTraceStore(str(tmp_path / "trace.db"))
    return SqlTraceStore(request.getfixturevalue("pg_url"))


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TraceStore]:
    s = make_store(request.param, tmp_path, request)
    yield s
    s.close()


@pytest.fixture
def registry() -> ToolRegistry:
    return default_registry.copy()
