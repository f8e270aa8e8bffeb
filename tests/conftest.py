"""Shared fixtures. Real backends are part of the suite: PostgreSQL tests skip on a laptop without
it, but fail when CI=true (CI has PostgreSQL at 127.0.0.1:5432)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# -- Celery: real worker processes on a real Redis ---------------------------------------------------

REDIS_URL = os.environ.get("DAGWRIGHT_TEST_REDIS", "redis://127.0.0.1:6379/15")


def require_redis(url: str = REDIS_URL) -> None:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required in CI but unreachable at {url}: {exc}")
        pytest.skip(f"Redis not reachable at {url}: {exc}")


class Workers:
    """Celery worker processes started for a test, each in its own process group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    def start(
        self, *, concurrency: int = 4, pool: str = "prefork", wait: float = 20.0
    ) -> subprocess.Popen[bytes]:
        name = f"w{len(self.procs)}-{uuid.uuid4().hex[:6]}@%h"
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        self.logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dagwright.executors.celery_app", "worker",
             f"--concurrency={concurrency}", f"--pool={pool}", "--loglevel=INFO", "-n", name,
             "--without-gossip", "--without-mingle"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + wait
        path = self.log_dir / f"worker-{len(self.procs) - 1}.log"
        while time.monotonic() < deadline:
            if b"ready." in path.read_bytes():
                return proc
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {path.read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {wait}s: {path.read_text()[-2000:]}")

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """kill -9 of the worker and its pool processes: a machine lost, not a shutdown."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()


def celery_env(db: str, broker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
    env.update({
        "DAGWRIGHT_DB": db, "DAGWRIGHT_BROKER": broker, "DAGWRIGHT_TOOLS": "contract_tools",
        "PYTHONPATH": str(Path(__file__).resolve().parent),
        "DAGWRIGHT_HEARTBEAT": "0.5", "DAGWRIGHT_SWEEP_INTERVAL": "0.5",
        "DAGWRIGHT_REDISPATCH_AFTER": "5",
    })  # fmt: skip
    env.update(extra)
    return env


def use_broker(broker: str) -> None:
    """Point this process's Celery client at the test broker."""
    from dagwright.executors import celery_app

    if celery_app.app.conf.broker_url == broker:
        return
    celery_app.app.conf.broker_url = broker
    # forget connections and producers made for another broker
    celery_app.app._pool = None
    celery_app.app.amqp._producer_pool = None


def flush_broker(broker: str) -> None:
    import redis

    redis.Redis.from_url(broker).flushdb()


@pytest.fixture(scope="session")
def celery_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Workers]]:
    """One shared SQLite trace store and one worker (4 processes) for the contract suite."""
    require_redis()
    folder = tmp_path_factory.mktemp("celery")
    db = str(folder / "trace.db")
    flush_broker(REDIS_URL)
    use_broker(REDIS_URL)
    workers = Workers(celery_env(db, REDIS_URL), folder)
    workers.start(concurrency=4)
    yield db, workers
    workers.stop_all()
    flush_broker(REDIS_URL)
