"""The engine's attempts run on threads of this process: the API server's embedded default (no
broker), with the same engine, claims and recovery as Celery workers.

``InProcessRuntime`` has the Celery runtime's shape — ``send(dispatches)``, ``cancel(run_id)``,
``wait_finished(run_id, seconds)`` — so the API drives either one. Dispatches wait in a queue
ordered by when they are due (a retry's backoff) and then by their order of arrival; a pool of
``workers`` threads executes them (``Engine.execute``) and sends on what each returns. A sweeper
thread sends again what stalled, and on start sends again what the previous server process left
dispatched (``recovery.sweep(restarted=True)``): runs unfinished when the server stopped are
continued from their trace. One server process per trace store runs the ``api`` executor's
attempts; run more servers against Celery workers instead.

A cancelled run's running attempts are not interrupted (threads cannot be): each ends in its own
time budget and its outcome is ignored (the run's end claimed the attempt's outcome first).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterable

from dagwright.executors.distributed.engine import Dispatch, Engine

log = logging.getLogger(__name__)


class InProcessRuntime:
    def __init__(self, engine: Engine, *, workers: int = 4, sweep_every: float = 5.0) -> None:
        self.engine = engine
        self.workers = workers
        self.sweep_every = sweep_every
        self._queue: list[tuple[float, int, Dispatch]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._finished = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._busy = 0

    # -- lifetime ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads and the sweeper; continue what a previous process left."""
        self._stopping = False
        for i in range(self.workers):
            self._spawn(self._work, f"dagwright-api-worker-{i}")
        self._spawn(self._sweep_forever, "dagwright-api-sweeper")
        self.send(self.engine.sweep(restarted=True))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking dispatches; wait up to ``timeout`` for the attempts running now. What is
        still queued stays recorded as dispatched: the next start sends it again."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def _spawn(self, target: object, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    # -- the Celery runtime's shape ------------------------------------------------------------
    def send(self, dispatches: Iterable[Dispatch]) -> None:
        now = time.monotonic()
        with self._cond:
            for d in dispatches:
                heapq.heappush(self._queue, (now + max(0.0, d.countdown), next(self._order), d))
            self._cond.notify_all()

    def cancel(self, run_id: str) -> None:
        self.engine.cancel(run_id)
        self._announce()

    def problem(self, *, fresh: bool = False) -> str | None:
        """None: this process's queue always takes work (while it runs)."""
        return None if not self._stopping else "the server is stopping"

    def unsent(self, run_id: str, message: str) -> None:  # pragma: no cover - send cannot fail
        self.engine.cancel(run_id)

    def wait_finished(self, run_id: str, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until some run ends in this process."""
        with self._finished:
            self._finished.wait(timeout)

    def pending(self) -> int:
        """Dispatches waiting, and attempts running, in this process."""
        with self._cond:
            return len(self._queue) + self._busy

    def _announce(self) -> None:
        with self._finished:
            self._finished.notify_all()

    # -- threads -------------------------------------------------------------------------------
    def _take(self) -> Dispatch | None:
        with self._cond:
            while not self._stopping:
                if self._queue:
                    due = self._queue[0][0] - time.monotonic()
                    if due <= 0:
                        self._busy += 1
                        return heapq.heappop(self._queue)[2]
                    self._cond.wait(due)
                else:
                    self._cond.wait()
            return None

    def _work(self) -> None:
        while (d := self._take()) is not None:
            try:
                self.send(self.engine.execute(d))
            except Exception:  # noqa: BLE001 - a broken attempt must not kill the pool
                log.exception("attempt %s of step %s in run %s", d.attempt, d.step, d.run_id)
            finally:
                with self._cond:
                    self._busy -= 1
                self._announce()

    def _sweep_forever(self) -> None:
        while True:
            with self._cond:
                if self._stopping or self._cond.wait_for(lambda: self._stopping, self.sweep_every):
                    return
            try:
                self.send(self.engine.sweep())
            except Exception:  # noqa: BLE001 - the store may be away for a moment
                log.exception("sweep")


__all__ = ["InProcessRuntime"]
