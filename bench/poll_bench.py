"""The queue API's idle poll of a large running run: what ``GET /v1/runs/{id}/events`` (and each
idle turn of the SSE stream, every 0.05-0.5 s) costs the server while a run of N steps is running
and has nothing new to send.

Run from the repository root::

    .venv/bin/python bench/poll_bench.py                        # 1k, 10k, 50k steps
    .venv/bin/python bench/poll_bench.py --sizes 1000,10000 --repeats 9

For each N, a wide run (N ``echo`` steps) is executed once into a fresh SQLite store, and its
trace, less ``run_finished``, is recorded again as a second run (executor ``celery``, so no local
lease makes it read as abandoned): a run in flight with every step's events, as a stream
following it sees it. Timed on it, with nothing new after the last event:

- ``poll``: ``RunService.events(run, after=last, limit=1000)``, as the API answers it: the run's
  status from its own events (``TraceStore.summary``).
- ``baseline``: the same poll as it was until 2026-12-07 (the ``fold`` figure): the status from
  folding the whole trace (``fold_run``), which read every event of the run on every idle poll.

Each figure is the median of ``--repeats`` calls, in CPU seconds of this process (steadier than
wall time on a shared machine) and wall seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from dagwright.api.runtimes import open_service
from dagwright.api.service import RunService
from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.lifecycle import fold_run, seen_status
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store.sql import SqlTraceStore
from dagwright.planner.schema import Workflow
from dagwright.settings import Settings
from dagwright.tools import default_registry


def running_run(db: str, steps: int) -> tuple[str, int]:
    """A run of ``steps`` wide steps that has not ended: its id and its last ``seq``."""
    wf = Workflow.model_validate(
        {"name": f"wide{steps}",
         "steps": [{"id": f"s{i}", "uses": "echo", "with": {"x": i}} for i in range(steps)]}
    )  # fmt: skip
    store = SqlTraceStore(db)
    try:
        done = LocalExecutor(store, default_registry).run(wf, {})
        record = store.get_run(done.run_id)
        trace = [e for e in store.events(done.run_id) if e.type != ev.RUN_FINISHED]
        run_id = "inflight" + done.run_id[8:]
        twin = dataclasses.replace(record, run_id=run_id, executor="celery")
        moved = [dataclasses.replace(e, run_id=run_id, seq=None) for e in trace]
        recorded = store.create_run(twin, moved)
        return run_id, recorded[-1].seq or 0
    finally:
        store.close()


def baseline(service: RunService, run_id: str, after: int, limit: int) -> dict[str, Any]:
    """The poll until 2026-12-07: the events, then the status from a fold of the whole trace."""
    record = service.store.get_run(run_id)
    events = service.store.events(record.run_id, after=after)[:limit]
    _, state = fold_run(service.store, record.run_id)
    hb = service.settings.heartbeat
    status = seen_status(service.store, record, state.status, time.time(), hb)
    finished = any(e.type == ev.RUN_FINISHED for e in events) or status in engine.FINAL
    return {"events": events, "finished": finished}


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        call()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'steps':>7} {'events':>7} | {'poll cpu':>9} {'wall':>8} | "
          f"{'baseline cpu':>12} {'wall':>8} | {'baseline / poll':>15}")  # fmt: skip
    for steps in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            db = str(Path(folder) / "trace.db")
            run_id, last = running_run(db, steps)
            service = open_service(Settings(db=db))
            try:
                page = service.events(run_id, last, 1000)
                assert page["events"] == [] and page["finished"] is False, page
                assert baseline(service, run_id, last, 1000)["finished"] is False
                poll = timed(partial(service.events, run_id, last, 1000), args.repeats)
                base = timed(partial(baseline, service, run_id, last, 1000), args.repeats)
            finally:
                service.close()
        print(f"{steps:>7} {last:>7} | {poll[0]:>8.4f}s {poll[1]:>7.4f}s | "
              f"{base[0]:>11.4f}s {base[1]:>7.4f}s | {base[0] / max(poll[0], 1e-6):>14.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
