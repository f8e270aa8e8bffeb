"""The replay driver (``executors.replay``): ``replay_run`` reads a recorded run, closes it in
memory as abandoned when its process is gone, runs its plan again on the local executor with a
``replayer.Replayer``, records the divergences found at its end, and returns a
``ReplayReport``. Called by ``dagwright replay``, the API and tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dagwright.executors.engine import decisions
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.lineage import parent_state
from dagwright.executors.lifecycle import abandoned
from dagwright.executors.replay.divergence import divergence_event
from dagwright.executors.replay.replayer import Replayer
from dagwright.executors.store.base import RunRecord, TraceStore
from dagwright.planner.limits import Limits
from dagwright.planner.schema import Workflow
from dagwright.planner.secret_refs import replay_secrets
from dagwright.secret_values import NO_SECRETS, SecretValues
from dagwright.tools.registry import ToolRegistry


@dataclass
class ReplayReport:
    run_id: str
    """The replay's own run (mode ``replay``, parent the recorded run)."""
    recorded_run_id: str
    status: str
    divergences: list[dict[str, Any]]
    attempts_compared: int
    model_calls_served: int
    seconds: float
    cancelled_at: list[dict[str, Any]] = field(default_factory=list)
    """A cancelled or abandoned recording: where the replay was cancelled
    (``Replayer.cancelled_at``)."""
    recorded_status: str | None = None
    """How the recorded run ended (``abandoned`` when its process stopped; the replay of an
    abandoned run is ``cancelled`` where it stopped)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "recorded_run_id": self.recorded_run_id,
            "status": self.status,
            "reproduced": not self.divergences,
            "divergences": self.divergences,
            "attempts_compared": self.attempts_compared,
            "model_calls_served": self.model_calls_served,
            "seconds": self.seconds,
            "cancelled_at": self.cancelled_at,
            "recorded_status": self.recorded_status,
        }


def replay_run(
    store: TraceStore,
    run_id: str,
    registry: ToolRegistry,
    *,
    rerun: Iterable[str] = (),
    into: TraceStore | None = None,
    max_parallel: int = 8,
    limits: Limits | None = None,
    heartbeat: float = 5.0,
    now: float | None = None,
    secrets: SecretValues = NO_SECRETS,
    settings: Any = None,
) -> ReplayReport:
    """Replay a recorded run of ``store``; the replay is recorded in ``into`` (default: the
    same store, as a run linked to the recorded one). ``limits``: the settings' limits
    (``Settings.limits()``; default ``Limits()``), e.g. on the output of a tool run again.
    ``heartbeat`` (DAGWRIGHT_HEARTBEAT) and ``now`` tell a local run whose process is gone
    (``lifecycle.abandoned``): it replays as abandoned, though it was not closed yet.
    ``secrets`` (``Settings.step_secrets()``): what ``${{ secrets.NAME }}`` reads, as in the
    recorded run; the recording holds ``[REDACTED]`` where the replay resolves a secret, and
    the replay compares its inputs redacted the same way. A secret that is not set is needed
    only by a step whose tool runs again (``replay_secrets``): raises SecretNotSet, before
    anything is recorded, naming it. ``settings``: the caller's, for the tools that run again
    (``ToolContext.settings``)."""
    from dagwright.executors.local import LocalExecutor

    record = store.get_run(run_id)
    events = store.events(record.run_id)
    when = time.time() if now is None else now
    replayer = Replayer(record, _closed(store, record, events, when, heartbeat), rerun=rerun)
    ran = {sid for _, sid, _ in replayer.attempts}
    plans = [replayer.workflow(), *replayer.revisions]
    secrets = replay_secrets(plans, ran, registry, replayer.rerun_tools, secrets)
    target = into if into is not None else store
    executor = LocalExecutor(
        target,
        registry,
        max_parallel=max(max_parallel, replayer.steps_that_may_wait() + 1),
        replanner=replayer.replanner if replayer.revisions else None,
        replayer=replayer,
        limits=limits,
        secrets=secrets,
        settings=settings,
    )
    started = time.perf_counter()
    result = executor.run(
        replayer.workflow(),
        record.inputs,
        source=record.source,
        reused=replayer.reused(),
        lineage=replayer.lineage(),
    )
    seconds = time.perf_counter() - started
    final = replayer.finish(result.state)
    if final:
        executor.store.append(result.run_id, [divergence_event(result.run_id, d) for d in final])
    return ReplayReport(
        run_id=result.run_id,
        recorded_run_id=record.run_id,
        status=result.status,
        divergences=[d.as_dict() for d in replayer.divergences],
        attempts_compared=replayer.compared,
        model_calls_served=replayer.model_calls_served(),
        seconds=round(seconds, 6),
        cancelled_at=_in_plan_order(replayer.cancelled_at, replayer.workflow()),
        recorded_status=replayer.recorded.status,
    )


def _closed(
    store: TraceStore, record: RunRecord, events: list[Event], now: float, heartbeat: float
) -> list[Event]:
    """The recording as ``lifecycle.close_abandoned`` would close it, when its process is gone
    and nothing closed it yet (in memory: the store is not written)."""
    state = parent_state(record.workflow, record.run_id, events)
    if not abandoned(store, record, state, now, heartbeat):
        return events
    message = "the run's process stopped without finishing it (its lease expired)"
    return [*events, *decisions.abandon(state.current_plan, state, now, message=message)]


def _in_plan_order(where: list[dict[str, Any]], workflow: Workflow) -> list[dict[str, Any]]:
    order = {s.id: i for i, s in enumerate(workflow.steps)}
    return sorted(where, key=lambda w: (order.get(w["step"], len(order)), w["step"], w["attempt"]))


__all__ = ["ReplayReport", "replay_run"]
