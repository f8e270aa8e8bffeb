"""The pure engine: a run's state is a fold over its trace events, and every decision about
what happens next is a function of the plan and that state.

Nothing in this package does I/O, starts a thread, runs an event loop, reads a clock or draws a
random number: the drivers (``executors.local``, ``executors.celery``, ``executors.replay``) do
that at the edges and feed the results back as events. A test imports each module here in a
fresh interpreter and checks what it loaded.

- ``events``: the event types and ``Event``
- ``outcome``: status words, ``Outcome``, ``error_info``
- ``state``: ``RunState``, ``apply`` (the reducer), ``fold``, ``ready_steps``, …
- ``decisions``: the events an outcome, a cancellation or a run's end produce
- ``retry``, ``verify``: retry policies as data; checks on an output
- ``lineage``: resume and fork (what a derived run reuses), diff
"""

from dagwright.executors.engine.outcome import (
    ABANDONED,
    ACTIVE,
    CANCELLED,
    FAILED,
    FINAL,
    PENDING,
    QUEUED,
    RETRYING,
    RUNNING,
    SCHEDULED,
    SKIPPED,
    SUCCEEDED,
    TIMED_OUT,
    Outcome,
    error_info,
)
from dagwright.executors.engine.state import (
    AttemptState,
    RunState,
    StepState,
    apply,
    blocked_steps,
    final_status,
    fold,
    is_settled,
    ready_after,
    ready_steps,
    revise,
    run_output,
    step_context,
    stoppable,
)

__all__ = [
    # the state and the reducer
    "AttemptState",
    "RunState",
    "StepState",
    "apply",
    "blocked_steps",
    "final_status",
    "fold",
    "is_settled",
    "ready_after",
    "ready_steps",
    "revise",
    "run_output",
    "step_context",
    "stoppable",
    # status words and outcomes
    "ABANDONED",
    "ACTIVE",
    "CANCELLED",
    "FAILED",
    "FINAL",
    "PENDING",
    "QUEUED",
    "RETRYING",
    "RUNNING",
    "SCHEDULED",
    "SKIPPED",
    "SUCCEEDED",
    "TIMED_OUT",
    "Outcome",
    "error_info",
]
