"""The API's driver of runs: what each endpoint does, on the one run lifecycle.

Runs start through the engine (``executors.distributed.engine.Engine``): recorded, their first steps
dispatched, then sent either to Celery workers (a broker configured: ``executor="celery"``) or to
the server's own threads (``executors.inprocess``, the embedded default). What a request's body
becomes before that (a validated run, ``Ready``) is ``intake``'s. Reading a run folds its trace
like every other consumer (``lifecycle.fold_run``, ``summary.run_summary``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagwright.api import intake
from dagwright.api.intake import Ready
from dagwright.api.problems import Problem
from dagwright.api.schemas import ForkRun, ResumeRun, SubmitRun
from dagwright.errors import RunNotFound
from dagwright.executors import admission
from dagwright.executors import engine as core
from dagwright.executors.distributed.engine import Engine
from dagwright.executors.lifecycle import fold_run, seen_status
from dagwright.executors.store import TraceStore
from dagwright.executors.summary import event_item, run_item, run_summary
from dagwright.planner.catalog import Catalog
from dagwright.planner.schema import Workflow
from dagwright.redact import Redactor
from dagwright.settings import Settings
from dagwright.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from dagwright.api.runtimes import Runtime


@dataclass(frozen=True)
class Accepted:
    run_id: str
    status: str
    replayed: bool = False


def fingerprint(body: dict[str, Any]) -> str:
    """A request's identity for its idempotency key: the JSON body, keys sorted."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class RunService:
    def __init__(
        self,
        settings: Settings,
        store: TraceStore,
        engine: Engine,
        runtime: Runtime,
        *,
        executor: str,
        registry: ToolRegistry,
    ) -> None:
        self.settings, self.store, self.engine, self.runtime = settings, store, engine, runtime
        self.executor = executor
        self.registry = registry
        self.catalog = Catalog(settings.workflows, settings.limits())
        self.redactor = Redactor(settings.secrets())
        self.limits = settings.limits()

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, body: SubmitRun, key: str | None) -> Accepted:
        """Validate, record and enqueue a run (422: nothing recorded). With an idempotency
        key: the run the key already names (409 for another body with the key)."""
        fp = fingerprint(body.model_dump(mode="json")) if key is not None else ""
        if key is not None:
            held = self._held(key, fp)
            if held is not None:
                return held
        ready = self._ready(body)
        ready.priority = body.priority
        self._queue_answers()  # before the key is taken or anything recorded
        run_id = self.engine.id_factory()
        if key is not None:  # the first to claim holds the key; a racing twin gets its run
            held_by = self.store.claim_submission(key, fp, run_id, time.time())
            if held_by.run_id != run_id:
                again = self._held(key, fp)
                if again is not None:
                    return again
                run_id = held_by.run_id  # an earlier try claimed it and stopped: complete it
        return self._start(ready, run_id, key)

    def _held(self, key: str, fp: str) -> Accepted | None:
        """The run an idempotency key names already (None: the key is free, or its first
        submission stopped before recording the run, which this one then completes)."""
        held = self.store.submission(key)
        if held is None:
            return None
        if held.fingerprint != fp:
            raise Problem(
                409,
                "Idempotency key reused",
                f"the key names run {held.run_id}, submitted with another body",
            )
        try:
            record = self.store.get_run(held.run_id)
        except RunNotFound:
            return None
        return Accepted(record.run_id, self._status(record.run_id), replayed=True)

    def _ready(self, body: SubmitRun) -> Ready:
        return intake.submitted(self, body)

    def _start(self, ready: Ready, run_id: str, key: str | None = None) -> Accepted:
        run_id, dispatches = self.engine.start(
            ready.workflow,
            ready.inputs,
            run_id=run_id,
            source=ready.source,
            prelude=ready.prelude,
            reused=ready.reused,
            lineage=ready.lineage,
            priority=ready.priority,
        )
        try:
            self.runtime.send(dispatches)
        except Exception as exc:  # noqa: BLE001 - the broker went away: end the run, say so
            why = str(getattr(exc, "reason", "") or exc).strip().rstrip(".")
            self.runtime.unsent(run_id, f"the run could not be enqueued ({why})")
            if key is not None:  # a retry with the key submits afresh
                self.store.release_submission(key, run_id)
            raise Problem(
                503,
                "Queue unavailable",
                f"the run could not be enqueued ({why}); run {run_id} was recorded as failed "
                "and will not execute: submit again when the broker is back",
                headers={"Retry-After": "5"},
            ) from None
        waiting = ready.workflow.concurrency is not None and not admission.admitted(
            self.store, run_id
        )
        return Accepted(run_id, core.QUEUED if waiting else core.RUNNING)

    def _queue_answers(self) -> None:
        """503 when the queue cannot take runs now: nothing is recorded, so a retry (with the
        same Idempotency-Key too) submits the run afresh."""
        problem = self.runtime.problem()
        if problem is not None:
            raise Problem(
                503,
                "Queue unavailable",
                f"{problem}: nothing was recorded; submit again when it is back",
                headers={"Retry-After": "5"},
            )

    # -- derived runs --------------------------------------------------------------------------
    def resume(self, run_id: str, body: ResumeRun) -> Accepted:
        ready, child = intake.derived(self, run_id, "resume", body.from_steps, body.inputs, body)
        return self._start(ready, child)

    def fork(self, run_id: str, body: ForkRun) -> Accepted:
        ready, child = intake.derived(
            self, run_id, "fork", body.from_steps, {}, None, sets=body.sets
        )
        return self._start(ready, child)

    # -- reading -------------------------------------------------------------------------------
    def _status(self, run_id: str) -> str:
        """The run's status as people should see it (``seen_status``), from the run's own events
        (``TraceStore.summary``), not its whole trace: a stream asks for it on each idle poll,
        and folding the trace of a 10,000-step run took 0.77 s of CPU (``bench/poll_bench.py``)."""
        listed = self.store.summary(run_id)
        return seen_status(
            self.store, listed.record, listed.status, time.time(), self.settings.heartbeat
        )

    def get(self, run_id: str) -> dict[str, Any]:
        record, state = fold_run(self.store, run_id)
        summary = run_summary(record, state, self.store.location(), detail=True)
        summary["status"] = seen_status(
            self.store, record, summary["status"], time.time(), self.settings.heartbeat
        )
        return self.redactor.value(summary)  # type: ignore[no-any-return]

    def list(
        self,
        *,
        status: str | None,
        workflow: str | None,
        created_after: float | None,
        created_before: float | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        after = _decode_cursor(cursor) if cursor else None
        runs = self.store.list_runs(
            status=status,
            workflow=workflow,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            after=after,
        )
        items = [run_item(r.record, r.status, r.finished_at) for r in runs]
        last = runs[-1].record if len(runs) == limit else None
        return {
            "runs": items,
            "next_cursor": _encode_cursor(last.created_at, last.run_id) if last else None,
        }

    def events(self, run_id: str, after: int, limit: int) -> dict[str, Any]:
        """The events after ``after`` (at most ``limit``); ``finished``: the run has ended and
        these reach its last event, so nothing more comes after ``last_seq``."""
        record = self.store.get_run(run_id)
        pending = self.store.events(record.run_id, after=after)
        ended = any(e.type == "run_finished" for e in pending)
        if not ended and self._status(record.run_id) in core.FINAL:
            # it ended after the read above (or ended without ``run_finished``: abandoned):
            # read again, or its last events, ``run_finished`` included, would never be sent
            pending, ended = self.store.events(record.run_id, after=after), True
        events = pending[:limit]
        return {
            "run_id": record.run_id,
            "events": [self.redactor.value(event_item(e)) for e in events],
            "last_seq": events[-1].seq if events else after,
            "finished": ended and len(pending) <= limit,
        }

    def cancel(self, run_id: str) -> Accepted:
        record = self.store.get_run(run_id)
        status = self._status(record.run_id)
        if status in core.FINAL:
            raise Problem(409, "Run has ended", f"run {record.run_id} is {status} already")
        if record.executor not in (self.executor, "celery", "api"):
            raise Problem(
                409,
                "Run is not the server's",
                f"run {record.run_id} runs in a local process ({record.executor}): "
                "cancel it there (Ctrl-C, or SIGTERM to that process)",
            )
        if record.executor == self.executor:
            self.runtime.cancel(record.run_id)
        else:
            self.engine.cancel(record.run_id)
        return Accepted(record.run_id, self._status(record.run_id))

    def replay(self, run_id: str) -> dict[str, Any]:
        from dagwright.executors.lifecycle import run_registry
        from dagwright.executors.replay import replay_run

        record = self.store.get_run(run_id)
        workflow = Workflow.model_validate(record.workflow)
        registry = run_registry(workflow, self.registry, self.settings.tools, record.source)
        report = replay_run(
            self.store,
            record.run_id,
            registry,
            limits=self.limits,
            heartbeat=self.settings.heartbeat,
            secrets=self.settings.step_secrets(),
            settings=self.settings,
        )
        return self.redactor.value(report.as_dict())  # type: ignore[no-any-return]

    def diff(self, a: str, b: str) -> dict[str, Any]:
        from dagwright.executors.engine.lineage import compare_runs

        states = [fold_run(self.store, rid)[1] for rid in (a, b)]
        return self.redactor.value(compare_runs(states[0], states[1]))  # type: ignore[no-any-return]

    def workflows(self) -> dict[str, Any]:
        listing = self.catalog.listing()
        return {
            "workflows": [
                e.as_dict(self.catalog.folder) for _, e in sorted(listing.entries.items())
            ],
            "problems": listing.problems,
        }

    def tools(self) -> dict[str, Any]:
        """As ``dagwright tools --json``: the built-ins and DAGWRIGHT_TOOLS' (what an inline
        workflow may use), each with its source, secret arguments and required packages."""
        from dagwright.planner.tool_modules import listed_tools
        from dagwright.tools import default_registry

        listed, _ = listed_tools(default_registry, self.settings.tools)
        return {"tools": [item.as_dict() for item in sorted(listed, key=lambda i: i.tool.name)]}

    def ready(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            self.store.list_runs(limit=1)
            checks["store"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["store"] = f"unreachable: {exc}"
        if self.executor != "celery":
            checks["broker"] = "none (runs on the server's threads)"
        else:
            problem = self.runtime.problem(fresh=True)
            checks["broker"] = "ok" if problem is None else problem
        good = all(v == "ok" or v.startswith("none") for v in checks.values())
        return good, checks

    def close(self) -> None:
        stop = getattr(self.runtime, "stop", None)
        if stop is not None:
            stop()
        self.store.close()


def _encode_cursor(at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([at, run_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        at, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(at), str(run_id)
    except (ValueError, TypeError) as exc:
        raise Problem(422, "Invalid cursor", f"cursor: {exc}") from None


__all__ = ["Accepted", "Ready", "RunService", "fingerprint"]
