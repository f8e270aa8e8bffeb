"""The recording of one run as its replay reads it (``executors.replay``): ``Replayer`` indexes
the recorded attempts, model calls, exchanges, plan revisions and stops, serves what the replay
must not redo, and compares each replayed attempt (and the run's end) with its recording. Made
by ``driver.replay_run``; its hooks are called by the local executor's attempts and loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dagwright.agents.replay import ModelReplay
from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.lineage import REPLAY, parent_state, reused_record
from dagwright.executors.engine.outcome import (
    ABANDONED,
    CANCELLED,
    FAILED,
    SKIPPED,
    TIMED_OUT,
    Outcome,
)
from dagwright.executors.replay.divergence import Divergence
from dagwright.executors.store.base import RunRecord
from dagwright.planner.schema import Workflow
from dagwright.tools.registry import Tool

Key = tuple[int, str, int]  # (plan revision, step, attempt)


@dataclass
class _Recorded:
    inputs: Any = None
    status: str | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0


class Replayer:
    """The recording of one run, and what its replay did differently. Used by the local
    executor's attempts (``served``, ``models``, ``observe``)."""

    def __init__(
        self, record: RunRecord, events: list[Event], *, rerun: Iterable[str] = ()
    ) -> None:
        self.record = record
        self.recorded = parent_state(record.workflow, record.run_id, events)
        self.rerun_tools = set(rerun)
        self.attempts: dict[Key, _Recorded] = {}
        self.calls: dict[Key, list[dict[str, Any]]] = {}
        self.exchanges: dict[Key, dict[str, list[dict[str, Any]]]] = {}
        """An ``agents.team`` attempt's recorded messages and tool calls, by event type."""
        self.revisions: list[Workflow] = []
        self.revised = 0  # revisions served so far
        self.divergences: list[Divergence] = []
        self.reported = 0
        self.compared = 0
        self.served_calls: list[ModelReplay] = []
        self.cancelled = self.recorded.status in (CANCELLED, ABANDONED)
        """The recorded run was cancelled or abandoned: its replay stops where it did, and is
        cancelled there."""
        self.cancelled_at: list[dict[str, Any]] = []
        """Where the replay stopped, as the recording did: ``{"step", "attempt", "running"}``
        (``running``: the attempt had started; otherwise the step was waiting to start it)."""
        self.reached: set[Key] = set()
        self.stops: dict[tuple[int, str], int] = {}
        """Steps the recording stopped once the run was failing (``stopped_by``), with their
        last attempt (0: stopped before the first): the replay stops them there too."""
        self.retried: set[Key] = set()
        self._index(events)

    def _index(self, events: list[Event]) -> None:
        rev = 0
        for e in events:
            if e.type == ev.PLAN_REVISED:
                rev += 1
                self.revisions.append(Workflow.model_validate(e.data["workflow"]))
            if e.type == ev.STEP_FINISHED and e.step and e.data.get("stopped_by"):
                self.stops[(rev, e.step)] = e.attempt or 0
            if e.step is None or e.attempt is None:
                continue
            key = (rev, e.step, e.attempt)
            if e.type == ev.ATTEMPT_STARTED:  # (again, when its worker was lost: start over)
                self.attempts[key] = _Recorded(inputs=e.data.get("inputs"))
                self.calls[key] = []
                self.exchanges.pop(key, None)
            elif e.type == ev.ATTEMPT_FINISHED and key in self.attempts:
                rec = self.attempts[key]
                rec.status, rec.output = e.data.get("status"), e.data.get("output")
                rec.error, rec.checks = e.data.get("error"), e.data.get("checks") or []
                rec.duration = e.data.get("duration") or 0.0
                if e.data.get("retry_in") is not None:
                    self.retried.add(key)
            elif e.type == ev.MODEL_CALL:
                self.calls.setdefault(key, []).append(e.data)
            elif e.type in (ev.AGENT_MESSAGE, ev.TOOL_CALL):
                self.exchanges.setdefault(key, {}).setdefault(e.type, []).append(e.data)

    # -- what the replayed run starts with -----------------------------------------------------
    def workflow(self) -> Workflow:
        """The plan the recorded run started with (revisions are served as they come)."""
        return Workflow.model_validate(self.record.workflow)

    def reused(self) -> dict[str, dict[str, Any]]:
        """A resumed or forked run started with reused outputs: so does its replay."""
        return {
            sid: reused_record(self.recorded, sid)
            for sid, s in self.recorded.steps.items()
            if s.reused
        }

    def lineage(self) -> dict[str, Any]:
        return {"parent": self.record.run_id, "mode": REPLAY, "from_steps": []}

    def replanner(
        self, workflow: Workflow, outputs: Any, failure: Any, registry: Any, record: Any
    ) -> Workflow:
        """The recorded revisions, in order (no model is asked)."""
        done = self.revised
        if done >= len(self.revisions):
            self._diverge(failure.get("step"), None, "plan revision", None, failure,
                          "the recorded run was not replanned here")  # fmt: skip
            raise RuntimeError("no recorded plan revision to serve")
        self.revised = done + 1
        return self.revisions[done]

    def steps_that_may_wait(self) -> int:
        """How many attempts may wait at the point of cancellation at once (at most one per
        step): the replay needs more slots than that, or a step could wait for a slot forever."""
        if not self.cancelled:
            return 0
        plans = [self.workflow(), *self.revisions]
        return len({s.id for wf in plans for s in wf.steps})

    # -- hooks for each attempt ------------------------------------------------------------------
    def stopped_after(self, rev: int, sid: str, attempt: int) -> bool:
        """The recording stopped the step after this attempt (0: before its first), waiting to
        start the next one when the run failed (``decisions.stop_events``)."""
        last = self.stops.get((rev, sid))
        return last == attempt and (attempt == 0 or (rev, sid, attempt) in self.retried)

    def not_retried(self, rev: int, sid: str, attempt: int) -> bool:
        """The recording did not retry this failed attempt because the run was failing by the
        time it finished (``outcome_events(failing=…)``)."""
        last = self.stops.get((rev, sid))
        return last == attempt and attempt > 0 and (rev, sid, attempt) not in self.retried

    def cancelled_before(self, rev: int, sid: str, attempt: int) -> bool:
        """True when the recording was cancelled before this attempt started (its step was
        waiting to start it): the replay does not start it, and waits to be cancelled."""
        if not self.cancelled or (rev, sid, attempt) in self.attempts:
            return False
        step = self.recorded.steps.get(sid)
        if step is None or step.status not in (CANCELLED, SKIPPED):
            return False
        self.cancelled_at.append({"step": sid, "attempt": attempt, "running": False})
        return True

    def cancelled_during(self, rev: int, sid: str, attempt: int, args: Any) -> bool:
        """True when this attempt was running when the recording was cancelled (recorded as
        cancelled, or never finished): its inputs are compared (a divergence, if any, is
        ``pending()``), the tool is not called, and the replay waits to be cancelled."""
        rec = self.attempts.get((rev, sid, attempt))
        if not self.cancelled or rec is None or rec.status not in (None, CANCELLED):
            return False
        self.compared += 1
        self.reached.add((rev, sid, attempt))
        if args != rec.inputs:
            self._diverge(sid, attempt, "inputs", rec.inputs, args,
                          f"step {sid!r} attempt {attempt}: inputs differ")  # fmt: skip
        self.cancelled_at.append({"step": sid, "attempt": attempt, "running": True})
        return True

    def served(self, rev: int, sid: str, attempt: int, tool: Tool, args: Any) -> Outcome | None:
        """The recorded outcome to serve, or None when the tool runs again."""
        rec = self.attempts.get((rev, sid, attempt))
        if rec is None or rec.status is None:
            message = f"attempt {attempt} of step {sid!r} " + (
                "is not in the recorded run" if rec is None else "never finished in the recording"
            )
            self._diverge(sid, attempt, "attempt", None, {"inputs": args}, message)
            error = {"type": "ReplayDiverged", "message": message, "kind": "error",
                     "retryable": False}  # fmt: skip
            return Outcome(FAILED, error=error)
        rerun = tool.replay == "rerun" or tool.name in self.rerun_tools
        if rerun and rec.status not in (TIMED_OUT, CANCELLED):  # timing does not replay
            return None
        return Outcome(rec.status, rec.output, rec.error, list(rec.checks), rec.duration)

    def models(self, rev: int, sid: str, attempt: int) -> ModelReplay:
        def report(what: str, expected: Any, actual: Any, message: str) -> None:
            where = f"step {sid!r} attempt {attempt}: "
            self._diverge(sid, attempt, what, expected, actual, where + message)

        key = (rev, sid, attempt)
        exchange = self.exchanges.get(key, {})
        replay = ModelReplay(
            list(self.calls.get(key, [])),
            report,
            messages=list(exchange.get(ev.AGENT_MESSAGE, [])),
            tool_calls=list(exchange.get(ev.TOOL_CALL, [])),
        )
        self.served_calls.append(replay)
        return replay

    def observe(
        self, rev: int, sid: str, attempt: int, args: Any, outcome: Outcome
    ) -> list[Divergence]:
        """Compare a replayed attempt with its recording; returns divergences not yet told."""
        self.compared += 1
        self.reached.add((rev, sid, attempt))
        rec = self.attempts.get((rev, sid, attempt))
        told = any(d.step == sid and d.attempt == attempt for d in self.divergences)
        if rec is not None and rec.status is not None and not told:
            self._compare(sid, attempt, rec, args, outcome)
        return self.pending()

    def _compare(self, sid: str, attempt: int, rec: _Recorded, args: Any, outcome: Outcome) -> None:
        where = f"step {sid!r} attempt {attempt}"
        if args != rec.inputs:
            self._diverge(sid, attempt, "inputs", rec.inputs, args, f"{where}: inputs differ")
        elif outcome.status != rec.status:
            self._diverge(
                sid,
                attempt,
                "status",
                _result(rec.status, rec.output, rec.error),
                _result(outcome.status, outcome.output, outcome.error),
                f"{where}: {rec.status} when recorded, {outcome.status} in the replay",
            )
        elif outcome.output != rec.output:
            self._diverge(
                sid, attempt, "output", rec.output, outcome.output, f"{where}: output differs"
            )
        elif (outcome.error or {}).get("type") != (rec.error or {}).get("type"):
            self._diverge(
                sid, attempt, "error", rec.error, outcome.error, f"{where}: the error differs"
            )

    def finish(self, state: engine.RunState) -> list[Divergence]:
        """Compare the replayed run's end with the recorded one's."""
        rec = self.recorded
        ended = CANCELLED if rec.status == ABANDONED else rec.status
        if not self.divergences:
            if state.status != ended:
                self._diverge(None, None, "run status", rec.status, state.status,
                              f"the run {rec.status} when recorded, {state.status} in the replay")  # fmt: skip
            elif state.output != rec.output:
                self._diverge(None, None, "run output", rec.output, state.output,
                              "the run's output differs")  # fmt: skip
            elif self.cancelled:
                self._unreached()
        return self.pending()

    def _unreached(self) -> None:
        """A cancelled replay ends as its recording did, whatever it left out: every recorded
        attempt must have been reached."""
        for rev, sid, attempt in self.attempts:
            if (rev, sid, attempt) not in self.reached:
                self._diverge(sid, attempt, "attempt", {"attempt": attempt}, None,
                              f"attempt {attempt} of step {sid!r} ran in the recording, "
                              "not in the replay")  # fmt: skip
                return

    def pending(self) -> list[Divergence]:
        new = self.divergences[self.reported :]
        self.reported = len(self.divergences)
        return new

    def _diverge(
        self, sid: str | None, attempt: int | None, what: str, expected: Any, actual: Any,
        message: str,
    ) -> None:  # fmt: skip
        self.divergences.append(Divergence(sid, attempt, what, message, expected, actual))

    def model_calls_served(self) -> int:
        return sum(r.served for r in self.served_calls)


def _result(status: str | None, output: Any, error: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "status": status,
        "output": output,
        "error": {k: (error or {}).get(k) for k in ("type", "message")} if error else None,
    }


__all__ = ["Key", "Replayer"]
