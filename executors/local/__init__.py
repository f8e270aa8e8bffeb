"""The local executor (the embedded default): the engine's loop in one process.

Steps start the moment their last dependency succeeds; at most ``max_parallel`` attempts run at
once (async tools on the event loop, plain functions in a thread pool). Every fact is appended to
the trace store before the in-memory state follows it, so the trace is always the truth.

Timeouts stop *waiting*: an async tool is cancelled; a plain function, a slow expression or a
slow check keeps running in its thread until it returns (Python cannot kill a thread), and its
late result is discarded. A step's ``timeout:`` covers its whole attempt: resolving its
arguments, the tool and the checks (``runner.Attempt``).
Cancellation (Ctrl-C, or ``cancel()``) records every running attempt and unfinished step as
cancelled and finishes the run as ``cancelled``, so the trace stays consistent.

The parts, each importing only the ones below it:

- ``executor``: ``LocalExecutor`` (its options, ``run``, ``cancel``) and its default bounds;
- ``run``: ``LocalRun``, one run's loop (open, admission, dispatch, drive each step, replan,
  cancel, finish) and its ``RunResult``;
- ``attempts``: one attempt on the loop, and the waits around it (the run failing, a retry's
  backoff, a replay stopping where its recording did);
- ``recording``: group commit (events applied at once, appended once per turn; ``durable``).

Import the names from here (``dagwright.executors.local``).
"""

from __future__ import annotations

from dagwright.executors.local.executor import AUTO_PARALLEL, AUTO_THREADS, LocalExecutor
from dagwright.executors.local.run import ADMISSION_POLL, RunResult

__all__ = ["ADMISSION_POLL", "AUTO_PARALLEL", "AUTO_THREADS", "LocalExecutor", "RunResult"]
