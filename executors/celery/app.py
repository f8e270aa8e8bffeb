"""The Celery app, built by a factory from settings: a thin wrapper around
``executors.distributed.engine.Engine``.

``create_app(settings)`` returns a configured ``Celery`` app with the attempt task, the
``dagwright.submit`` task (a known workflow by name, from any Celery client: ``submit``), the
run-finished wake-ups and the sweeper; nothing is configured at import time. Workers get theirs
from ``dagwright.worker`` (``dagwright worker``, or ``celery -A dagwright.worker worker``);
clients (the CLI, the API, tests) build one with the same settings and use ``runtime(app)``
to send, wait and cancel. Every worker and client must use the same trace store
(``DAGWRIGHT_DB``): a SQLite file when they share one machine, PostgreSQL across hosts.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celery import Celery, signals

from dagwright.errors import DagwrightError
from dagwright.executors.distributed.engine import Dispatch, Engine, Timing
from dagwright.settings import Settings
from dagwright.tools import ToolRegistry, default_registry

if TYPE_CHECKING:
    from dagwright.planner.catalog import Catalog

log = logging.getLogger("dagwright.worker")

ATTEMPT_TASK = "dagwright.attempt"
SUBMIT_TASK = "dagwright.submit"
SUBMIT_RESULT_EXPIRES = 86400
"""Seconds a ``dagwright.submit`` answer stays readable in the result backend (a day)."""
_MAX_WAIT = 60.0


def create_app(settings: Settings, *, registry: ToolRegistry | None = None) -> Celery:
    """A Celery app for dagwright's workers and clients, configured from ``settings``."""
    app = Celery("dagwright", broker=settings.broker, set_as_current=False)
    redis_broker = settings.broker.startswith(("redis://", "rediss://"))
    app.conf.update(
        # Progress lives in the trace store, never in Celery results (no chords: Celery's chords
        # on a Redis result backend have open bugs #4207, #8211, #5229). The one result kept is
        # dagwright.submit's answer (the run id), in the broker's Redis, for clients to read.
        task_ignore_result=True,
        result_backend=settings.broker if redis_broker else None,
        result_expires=SUBMIT_RESULT_EXPIRES,
        # At-least-once execution: a message is acknowledged only after its task ran, and put
        # back when the worker process running it dies. The trace records each outcome once.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Each worker process reserves one message at a time, so a long step never holds others.
        worker_prefetch_multiplier=1,
        # Redis gives an unacknowledged message to another worker after `visibility_timeout`
        # seconds: it must exceed the longest step timeout, or a running step is delivered twice.
        # Lost workers are detected sooner by heartbeats (the sweeper), not by this timeout.
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
    rt = Runtime(app, settings, registry or default_registry)
    app.dagwright = rt  # type: ignore[attr-defined]

    @app.task(name=ATTEMPT_TASK)
    def run_attempt(
        run_id: str, step: str, attempt: int, attempt_id: str, timeout: float | None = None
    ) -> None:
        rt.send(rt.engine().execute(Dispatch(run_id, step, attempt, attempt_id, 0.0, timeout)))

    @app.task(name=SUBMIT_TASK, bind=True, ignore_result=False)
    def submit(
        task: Any, workflow: Any, inputs: Any = None, idempotency_key: Any = None
    ) -> dict[str, Any]:
        """Start a run of a known workflow (DAGWRIGHT_WORKFLOWS) by its name, for any Celery
        client: ``{"run_id", "status": "running"}``, or ``{"status": "invalid", "errors"}``
        with nothing recorded (``executors.celery.submit.submit_known``)."""
        from dagwright.executors.celery.submit import submit_known

        return submit_known(rt, workflow, inputs, idempotency_key, task_id=task.request.id)

    rt.connect_worker_signals()
    return app


class SendFailed(DagwrightError):
    """A dispatch the broker did not take, retries spent; ``reason``: the broker's error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def runtime(app: Celery) -> Runtime:
    """The dagwright side of an app made by ``create_app``."""
    rt = getattr(app, "dagwright", None)
    if not isinstance(rt, Runtime):
        raise DagwrightError("this Celery app was not made by dagwright's create_app(settings)")
    return rt


class Runtime:
    """One app's engine (per process), and what clients do with it: send dispatches, wait for
    a run's end, cancel a run."""

    def __init__(self, app: Celery, settings: Settings, registry: ToolRegistry) -> None:
        self.app = app
        self.settings = settings
        self.registry = registry
        self._engines: dict[int, Engine] = {}
        self._redis: dict[tuple[int, str], Any] = {}
        self._stop_sweeper = threading.Event()
        self._catalog: Catalog | None = None

    def catalog(self) -> Catalog:
        """The known workflows (DAGWRIGHT_WORKFLOWS), re-read as their files change."""
        if self._catalog is None:
            from dagwright.planner.catalog import Catalog

            self._catalog = Catalog(self.settings.workflows, self.settings.limits())
        return self._catalog

    def engine(self) -> Engine:
        """This process's engine (one per process: database connections don't survive a
        fork)."""
        pid = os.getpid()
        if pid not in self._engines:
            from dagwright.executors.store import open_store

            self._engines.clear()
            s = self.settings
            self._engines[pid] = Engine(
                open_store(s.db, secrets=s.secrets()),
                self.registry,
                tool_modules=s.tools,
                timing=Timing(heartbeat=s.heartbeat, redispatch_after=s.redispatch_after),
                cache=_model_cache(s),
                replanner=_replanner(s),
                on_finished=self._announce,
                limits=s.limits(),
                eval_timeout=s.eval_timeout,
                secrets=s.step_secrets(),  # this worker's: DAGWRIGHT_SECRET_*, SECRETS_FILE
                settings=s,  # what its tools run under (ToolContext.settings)
            )
        return self._engines[pid]

    def send(
        self, dispatches: Iterable[Dispatch], *, retry_policy: dict[str, Any] | None = None
    ) -> None:
        """Send recorded dispatches to the workers. A broker that cannot be reached is retried
        with backoff (``retry_policy``, default ``SEND_RETRY``, each retry logged); a send that
        still fails raises DagwrightError, and the dispatch, recorded already, is left to the
        sweepers (sent again after DAGWRIGHT_REDISPATCH_AFTER once the broker is back). A new
        run is submitted with ``submit.enqueue``, which ends the run when its send fails."""
        from kombu.exceptions import OperationalError

        for d in dispatches:
            # no result: an attempt's outcome is in the trace (and a client never waits on it)
            options: dict[str, Any] = {"task_id": d.attempt_id, "ignore_result": True}
            if d.countdown:
                options["countdown"] = d.countdown
            if d.timeout:
                options["time_limit"] = d.timeout + 30  # the runner stops waiting at `timeout`
            args = (d.run_id, d.step, d.attempt, d.attempt_id, d.timeout)
            # short strings and numbers: repr() is safe, and saves Celery's saferepr per send
            options["argsrepr"], options["kwargsrepr"] = repr(args), "{}"
            try:
                self.app.send_task(
                    ATTEMPT_TASK,
                    args,
                    retry=True,
                    retry_policy=dict(retry_policy or SEND_RETRY),
                    **options,
                )
            except (OperationalError, OSError) as exc:
                raise SendFailed(
                    str(exc),
                    f"cannot send step {d.step!r} (attempt {d.attempt}) of run {d.run_id} to the "
                    f"broker, after retrying: {exc}. The dispatch is recorded: the "
                    "workers' sweepers send it again DAGWRIGHT_REDISPATCH_AFTER seconds after it "
                    "was recorded, once the broker is back",
                ) from None

    def cancel(self, run_id: str, using: Engine | None = None) -> None:
        """Cancel a run: record it, then stop its running attempts."""
        running = (using or self.engine()).cancel(run_id)
        if running:
            self.app.control.revoke(running, terminate=True)

    # -- "run finished" wake-ups: clients waiting for a run block on a Redis list instead of
    # polling the trace store (the trace stays the truth: a missed signal means a later poll)

    def _broker_redis(self) -> Any:
        url = str(self.app.conf.broker_url or self.settings.broker)
        if not url.startswith(("redis://", "rediss://")):
            return None
        key = (os.getpid(), url)
        if key not in self._redis:
            import redis

            self._redis.clear()
            # a blocking wait needs a socket timeout longer than the wait (redis-py's is 5 s)
            self._redis[key] = redis.Redis.from_url(url, socket_timeout=_MAX_WAIT + 10)
        return self._redis[key]

    def _announce(self, run_id: str, status: str) -> None:
        client = self._broker_redis()
        if client is not None:
            key = _finished_key(run_id)
            client.pipeline().rpush(key, status).expire(key, 3600).execute()

    def wait_finished(self, run_id: str, timeout: float) -> str | None:
        """Block until a worker announces the run's end, for at most ``timeout`` seconds (60
        at most); the status, or None (no announcement yet, or a broker that is not Redis: poll
        the trace). One waiter takes the announcement: others see the end in the trace."""
        client = self._broker_redis()
        if client is None:
            time.sleep(timeout)
            return None
        got = client.blpop([_finished_key(run_id)], timeout=min(max(timeout, 0.01), _MAX_WAIT))
        return got[1].decode() if got else None

    # -- worker processes: warm-up and the sweeper ---------------------------------------------

    def connect_worker_signals(self) -> None:
        """Signals fire only in a worker started with this app; a client never sees them."""
        signals.worker_process_init.connect(self._warm_up, weak=False)
        signals.worker_ready.connect(self._start_sweeper, weak=False)
        signals.worker_shutdown.connect(self._stop_sweeping, weak=False)

    def _warm_up(self, **_: Any) -> None:
        """Open the trace store and run one no-op attempt in each new pool process, so that a
        run's first steps don't each pay a cold start (hundreds of ms) in parallel."""
        from dagwright.executors.runner import run_step
        from dagwright.planner.schema import Step
        from dagwright.tools.registry import ToolContext

        try:
            self.engine().store.list_runs(limit=1)
            step = Step(id="warm_up", uses="echo")
            run_step(self.registry.get("echo"), step, {}, ToolContext("", "warm_up", 1), {})
        except Exception:  # noqa: BLE001 - warming up is an optimisation; tasks report errors
            log.exception("warm-up failed")
        # what the process holds by now lives as long as it: full collections skip it (they
        # walked every imported library's objects, for a pause per collection)
        gc.freeze()

    def _start_sweeper(self, sender: Any = None, **_: Any) -> None:
        if sender is not None and getattr(sender, "app", self.app) is not self.app:
            return
        threading.Thread(target=self._sweep_forever, name="dagwright-sweeper", daemon=True).start()

    def _stop_sweeping(self, **_: Any) -> None:
        self._stop_sweeper.set()

    def _sweep_forever(self) -> None:
        """Each worker's main process re-advances stalled runs."""
        while not self._stop_sweeper.wait(self.settings.sweep_interval):
            try:
                self.send(self.engine().sweep())
            except DagwrightError as exc:
                log.warning("sweep failed: %s", exc)
            except Exception:  # noqa: BLE001 - keep sweeping; the next round may succeed
                log.exception("sweep failed")


def _broker_unreachable(exc: BaseException, interval: float) -> None:
    log.warning("cannot reach the broker to send a step (%s); trying again in %.1fs", exc, interval)


SEND_RETRY: dict[str, Any] = {
    "max_retries": 12,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 4.0,
    "errback": _broker_unreachable,
}
"""kombu's publish retry policy for dispatches: reconnect and send again after 0.2, 0.7, 1.2 …
then every 4 seconds, 12 times (about 30 s in all), logging each retry."""


def _finished_key(run_id: str) -> str:
    return f"dagwright:finished:{run_id}"


def _model_cache(settings: Settings) -> Any:
    if not settings.model_cache:
        return None  # the trace store's cache table
    from dagwright.agents.cache import RedisCache

    return RedisCache(settings.model_cache)


def _replanner(settings: Settings) -> Any:
    """Steps with ``on_failure: replan`` are revised with DAGWRIGHT_MODEL."""
    if not settings.model:
        return None
    from dagwright.agents.models import ModelSettings
    from dagwright.executors.lifecycle import model_replanner

    return model_replanner(settings.model, ModelSettings.from_settings(settings))


__all__ = ["ATTEMPT_TASK", "SUBMIT_TASK", "Runtime", "SendFailed", "create_app", "runtime"]
