"""The one run lifecycle. Every driver — the local executor, the Celery engine, replay, the
CLI and the API — calls these; none copies them. Each step of a run's life has a module here:

- ``start``: ``new_id`` (run and attempt ids); ``run_registry`` (the tools a run executes
  with: base registry, settings' modules, the workflow's ``tools:`` next to its file);
  ``open_run``: record a new run with its opening events (``run_started``, the model calls
  that planned it, the outputs a derived run reuses) and what its driver decides from them (the
  first dispatches), in one transaction; returns them as stored.
- ``context``: ``tool_context``, what a tool gets for one attempt (previous failure, trace
  emitter, the model-call cache under the retry rule, recorded calls in a replay);
  ``settle_cache``.
- ``replanning``: ``Replanning``, ask the replanner for a revised plan when a step failed with
  ``on_failure: replan``, validate it with the run's own registry, and say what to record.
- ``leases``: a local run's lease, renewed while its process works on it; ``abandoned`` once it
  lapsed, closed as such when the run is resumed (``close_abandoned``).
- ``following``: ``follow``, tail a run's trace, fold it, and return the state once the run has
  ended; ``fold_run``.

Import the names from here (``dagwright.executors.lifecycle``): the parts are where they live.
"""

from __future__ import annotations

from dagwright.executors.lifecycle.context import AttemptCache, Cache, settle_cache, tool_context
from dagwright.executors.lifecycle.following import fold_run, follow
from dagwright.executors.lifecycle.leases import (
    LEASE,
    abandoned,
    close_abandoned,
    lease,
    lease_lapsed,
    renew_lease,
    seen_status,
)
from dagwright.executors.lifecycle.replanning import (
    Recorder,
    Replanner,
    Replanning,
    Revision,
    model_replanner,
)
from dagwright.executors.lifecycle.start import First, NewRun, new_id, open_run, run_registry

__all__ = [
    "LEASE",
    "AttemptCache",
    "Cache",
    "First",
    "abandoned",
    "close_abandoned",
    "lease",
    "lease_lapsed",
    "renew_lease",
    "seen_status",
    "NewRun",
    "Recorder",
    "Replanner",
    "Replanning",
    "Revision",
    "fold_run",
    "follow",
    "model_replanner",
    "new_id",
    "open_run",
    "run_registry",
    "settle_cache",
    "tool_context",
]
