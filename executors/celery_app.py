"""The Celery executor: a thin wrapper around ``executors.distributed.Engine``.

Start workers with ``dagwright worker`` or ``celery -A worker worker`` (from the repository
root). Every worker and client must use the same trace store (``DAGWRIGHT_DB``): a SQLite file
when they share one machine, PostgreSQL when they run on several hosts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery, signals

from dagwright.agents.cache import RedisCache
from dagwright.errors import DagwrightError
from dagwright.executors.distributed import Dispatch, Engine, Timing
from dagwright.executors.store import open_store
from dagwright.settings import Settings
from dagwright.tools import default_registry

log = logging.getLogger("dagwright.worker")
settings = Settings.from_env()

app = Celery("dagwright", broker=settings.broker)
app.conf.update(
    # Progress lives in the trace store, never in Celery results (no result backend, no chords:
    # Celery's chords on a Redis result backend have open bugs #4207, #8211, #5229).
    task_ignore_result=True,
    result_backend=None,
    # At-least-once execution: a message is acknowledged only after its task ran, and put back
    # when the worker process running it dies. The trace records each attempt's outcome once.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Each worker process reserves one message at a time, so a long step never holds others.
    worker_prefetch_multiplier=1,
    # Redis gives an unacknowledged message to another worker after `visibility_timeout` seconds:
    # it must exceed the longest step timeout, or a running step is delivered twice. Lost workers
    # are detected sooner by heartbeats (the sweeper), not by this timeout.
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    # Data, never code: JSON messages only.
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

_engines: dict[int, Engine] = {}


def engine() -> Engine:
    """This process's engine (one per process: database connections don't survive a fork)."""
    pid = os.getpid()
    if pid not in _engines:
        _engines.clear()
        store = open_store(settings.db)
        _engines[pid] = Engine(
            store,
            default_registry,
            tool_modules=settings.tools,
            timing=Timing(heartbeat=settings.heartbeat, redispatch_after=settings.redispatch_after),
            cache=RedisCache(settings.model_cache) if settings.model_cache else None,
            replanner=_replanner() if settings.model else None,
            on_finished=_announce,
        )
    return _engines[pid]


# -- "run finished" wake-ups: clients waiting for a run block on a Redis list instead of polling
# the trace store (the trace stays the truth: a missed signal only means a later poll)

_redis: dict[tuple[int, str], Any] = {}


def _finished_key(run_id: str) -> str:
    return f"dagwright:finished:{run_id}"


_MAX_WAIT = 60.0


def _broker_redis() -> Any:
    url = str(app.conf.broker_url or settings.broker)
    if not url.startswith(("redis://", "rediss://")):
        return None
    key = (os.getpid(), url)
    if key not in _redis:
        import redis

        _redis.clear()
        # a blocking wait needs a socket timeout longer than the wait (redis-py's is 5 s)
        _redis[key] = redis.Redis.from_url(url, socket_timeout=_MAX_WAIT + 10)
    return _redis[key]


def _announce(run_id: str, status: str) -> None:
    client = _broker_redis()
    if client is not None:
        key = _finished_key(run_id)
        client.pipeline().rpush(key, status).expire(key, 3600).execute()


def wait_finished(run_id: str, timeout: float) -> str | None:
    """Block until a worker announces the run's end, for at most ``timeout`` seconds (60 at
    most); the status, or None (no announcement yet, or a broker that is not Redis: poll the
    trace). One waiter takes the announcement: others see the end in the trace."""
    client = _broker_redis()
    if client is None:
        time.sleep(timeout)
        return None
    got = client.blpop([_finished_key(run_id)], timeout=min(max(timeout, 0.01), _MAX_WAIT))
    return got[1].decode() if got else None


def _replanner() -> Any:
    """Steps with on_failure: replan are revised with DAGWRIGHT_MODEL."""
    from dagwright.agents.models import ModelSettings, connect
    from dagwright.planner.llm import replan

    provider = connect(settings.model, ModelSettings.from_settings(settings))

    def replanner(workflow: Any, outputs: Any, failure: Any, record: Any) -> Any:
        return replan(workflow, outputs, failure, default_registry, provider, record=record)

    return replanner


def send(dispatches: Iterable[Dispatch]) -> None:
    for d in dispatches:
        options: dict[str, Any] = {"task_id": d.attempt_id}
        if d.countdown:
            options["countdown"] = d.countdown
        if d.timeout:
            options["time_limit"] = d.timeout + 30  # the runner stops waiting at `timeout`
        run_attempt.apply_async((d.run_id, d.step, d.attempt, d.attempt_id, d.timeout), **options)


@app.task(name="dagwright.attempt")
def run_attempt(
    run_id: str, step: str, attempt: int, attempt_id: str, timeout: float | None = None
) -> None:
    send(engine().execute(Dispatch(run_id, step, attempt, attempt_id, 0.0, timeout)))


def cancel(run_id: str, using: Engine | None = None) -> None:
    """Cancel a run: record it, then stop its running attempts."""
    running = (using or engine()).cancel(run_id)
    if running:
        app.control.revoke(running, terminate=True)


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Open the trace store and run one no-op attempt in each new pool process, so that a
    run's first steps don't each pay a cold start (hundreds of ms) in parallel."""
    from dagwright.executors.runner import run_step
    from dagwright.planner.schema import Step
    from dagwright.tools.registry import ToolContext

    try:
        engine().store.list_runs(limit=1)
        step = Step(id="warm_up", uses="echo")
        run_step(default_registry.get("echo"), step, {}, ToolContext("", "warm_up", 1), {})
    except Exception:  # noqa: BLE001 - warming up is an optimisation; tasks report real errors
        log.exception("warm-up failed")


# -- the sweeper: each worker's main process re-advances stalled runs ------------------------------


def _sweep_forever(stop: threading.Event) -> None:
    while not stop.wait(settings.sweep_interval):
        try:
            send(engine().sweep())
        except DagwrightError as exc:
            log.warning("sweep failed: %s", exc)
        except Exception:  # noqa: BLE001 - keep sweeping; the next round may succeed
            log.exception("sweep failed")


_stop_sweeper = threading.Event()


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    threading.Thread(
        target=_sweep_forever, args=(_stop_sweeper,), name="dagwright-sweeper", daemon=True
    ).start()


@signals.worker_shutdown.connect
def _stop_sweeping(**_: Any) -> None:
    _stop_sweeper.set()


__all__ = ["app", "cancel", "engine", "run_attempt", "send", "wait_finished"]
