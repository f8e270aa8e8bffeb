"""Submitting runs to the Celery workers: atomically (nothing stays recorded that was not
enqueued), and by name over the queue itself (the ``dagwright.submit`` task).

- ``broker_problem(app)``: why the broker cannot be reached, checked before anything is
  recorded (a connection and a PING: milliseconds).
- ``enqueue(rt, engine, workflow, inputs, ...)``: record a run and send its first dispatches.
  When the send fails after the run was recorded, the run is ended ``failed`` (under its
  ``conclude`` claim, as a cancellation is), so no sweeper executes it later, and
  ``NotEnqueued`` is raised: a user who retries gets one run, not two.
- ``workers_answer(app)``: whether any worker answers a ping (the CLI says so when none does).
- ``submit_known(rt, workflow, inputs, idempotency_key, task_id)``: the ``dagwright.submit``
  task's body: a known workflow (``DAGWRIGHT_WORKFLOWS``) by name, its inputs as JSON values.
  Bad input is an answer (``{"status": "invalid", "errors": [...]}``, nothing recorded), never
  an exception. Idempotency keys are held in the trace store (``claim_submission``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any

from dagwright.errors import (
    DagwrightError,
    PlanError,
    PlanIssue,
    RunNotFound,
    StaleState,
    StoreError,
)
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.executors.engine.outcome import FAILED, FINAL, RUNNING, SKIPPED

if TYPE_CHECKING:
    from celery import Celery

    from dagwright.executors.celery.app import Runtime
    from dagwright.executors.distributed.engine import Engine
    from dagwright.planner.plan import Plan
    from dagwright.planner.schema import Workflow
    from dagwright.settings import Settings

BROKER_CHECK_TIMEOUT = 3
"""Seconds to connect to the broker before saying it is unreachable."""
PING_TIMEOUT = 1.0
"""Seconds to wait for any worker to answer a ping."""
MAX_KEY = 256
"""The longest idempotency key (the trace store keeps ``celery:<key>``, 300 characters)."""
KEY_PREFIX = "celery:"
"""The ``dagwright.submit`` task's keys, apart from the API's ``Idempotency-Key`` values."""
INVALID, NOT_ENQUEUED = "invalid", "NotEnqueued"


class NotEnqueued(DagwrightError):
    """A recorded run whose first steps could not be sent to the broker; the run was ended
    ``failed`` (nothing will execute it)."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


def shown_broker(app: Celery) -> str:
    """The broker's URL for people: its password masked."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(str(app.conf.broker_url)))


def broker_problem(app: Celery, timeout: int = BROKER_CHECK_TIMEOUT) -> str | None:
    """One line saying that the broker is unreachable (and why); None when it answers."""
    from kombu.exceptions import OperationalError

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except (OperationalError, OSError) as exc:
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
        return f"the broker {shown_broker(app)} is unreachable ({reason})"
    return None


def workers_answer(app: Celery, timeout: float = PING_TIMEOUT) -> bool | None:
    """Whether any worker answers a ping within ``timeout`` seconds (returns at the first
    answer); None when the ping itself failed. A worker of the ``solo`` pool answers only
    between tasks."""
    try:
        return bool(app.control.ping(timeout=timeout, limit=1))
    except Exception:  # noqa: BLE001 - a courtesy check; the run is queued either way
        return None


def visibility_problem(workflow: Workflow, settings: Settings) -> PlanIssue | None:
    """Steps whose timeout reaches Redis' visibility timeout: their messages would be
    delivered twice."""
    visibility = settings.visibility_timeout
    too_long = [s.id for s in workflow.steps if s.timeout and s.timeout >= visibility]
    if not too_long:
        return None
    return PlanIssue(
        f"step{'s' if len(too_long) != 1 else ''} {', '.join(too_long)} may run longer than "
        "Redis' visibility timeout "
        f"({visibility:g}s), so their messages would be delivered twice",
        step=too_long[0],
        field="timeout",
        hint="lower their timeout or raise DAGWRIGHT_VISIBILITY_TIMEOUT (for workers and clients)",
    )


def enqueue(
    rt: Runtime,
    engine: Engine,
    workflow: Workflow,
    inputs: dict[str, Any],
    *,
    retry_policy: dict[str, Any] | None = None,
    **start: Any,
) -> str:
    """Record a run (``engine.start``, with ``start``'s keywords) and send its first steps;
    the run id. When they cannot be sent, the run is ended failed and NotEnqueued raised."""
    from dagwright.executors.celery.app import SendFailed

    run_id, dispatches = engine.start(workflow, inputs, **start)
    try:
        rt.send(dispatches, retry_policy=retry_policy)
    except SendFailed as exc:
        reason = exc.reason.strip().rstrip(".")
        message = (
            f"run {run_id} could not be enqueued: the broker {shown_broker(rt.app)} did not take "
            f"its first steps ({reason}); the run was ended failed, nothing will execute it: "
            "submit again once the broker is back"
        )
        end_unsent(engine, run_id, message)
        raise NotEnqueued(message, run_id) from None
    return run_id


def end_unsent(engine: Engine, run_id: str, message: str) -> bool:
    """End a recorded run whose dispatches could not be sent: its steps skipped (an attempt a
    worker did start, when part of the send got through, is recorded cancelled), the run
    ``failed`` with ``message``, all under the ``conclude`` claim and conditioned on the
    trace's next ``seq``. False when the run had ended already."""
    from dagwright.executors.engine import decisions
    from dagwright.executors.engine.state import apply, fold

    store = engine.store
    plan = _first_plan(store.get_run(run_id).workflow)
    for _ in range(20):
        trace = store.events(run_id)
        state = fold(plan, run_id, trace)
        if state.status in FINAL:
            return False
        now = engine.clock()
        events: list[Event] = []
        claims = ["conclude"]
        skipped = {"status": SKIPPED, "reason": "the run could not be enqueued"}
        for sid, step in list(state.steps.items()):
            last = step.attempts[-1] if step.attempts else None
            if last is not None and last.status == RUNNING:
                claims.append(f"finish:{sid}:{last.number}")
                for e in decisions.cancel_events(state, sid, now):
                    state = apply(state, e)
                    events.append(e)
            elif step.status not in FINAL:
                e = Event(ev.STEP_FINISHED, run_id, now, sid, None, dict(skipped))
                state = apply(state, e)
                events.append(e)
        error = {"type": NOT_ENQUEUED, "message": message}
        data = {"status": FAILED, "output": None, "error": error}
        events.append(Event(ev.RUN_FINISHED, run_id, now, None, None, data))
        expect = (trace[-1].seq or 0) + 1 if trace else 1
        try:
            return store.append(run_id, events, claims=claims, expect_seq=expect) is not None
        except StaleState:
            continue  # a worker wrote meanwhile (part of the send got through): decide again
    return False


def _first_plan(workflow: dict[str, Any]) -> Plan:
    from dagwright.planner.plan import Plan
    from dagwright.planner.schema import Workflow

    return Plan.from_workflow(Workflow.model_validate(workflow))


# -- the dagwright.submit task ---------------------------------------------------------------------


def submit_known(
    rt: Runtime,
    workflow: Any,
    inputs: Any = None,
    idempotency_key: Any = None,
    *,
    task_id: str | None = None,
) -> dict[str, Any]:
    """Start a run of the known workflow named ``workflow``; ``{"run_id", "status"}``, or
    ``{"status": "invalid", "errors": [...]}`` with nothing recorded.

    ``idempotency_key``: a submission with a key used before answers that key's run (and is
    invalid when it names another workflow or other inputs). Without a key the Celery task id
    serves as one, so a message delivered twice (its worker died) starts one run."""
    from dagwright.planner.prepare import prepare

    settings = rt.settings
    problems = _argument_problems(workflow, inputs, idempotency_key)
    if problems:
        return _invalid(problems)
    catalog = rt.catalog()
    entry = catalog.find(workflow)
    if entry is None:
        return _invalid([_unknown(workflow, catalog)])
    try:
        ready = prepare(
            entry.path,
            rt.registry,
            tool_modules=settings.tools,
            inputs=inputs,
            inputs_required=True,
            inputs_as_text=False,
            limits=settings.limits(),
        )
    except PlanError as exc:
        return _invalid(exc.issues)
    issue = visibility_problem(ready.workflow, settings)
    if issue is not None:
        return _invalid([dataclasses.replace(issue, file=str(entry.path))])
    engine = rt.engine()
    run_id = engine.id_factory()
    key = idempotency_key if idempotency_key is not None else task_id and f"task:{task_id}"
    if key:
        fingerprint = _fingerprint(workflow, inputs or {})
        held = engine.store.claim_submission(KEY_PREFIX + key, fingerprint, run_id, engine.clock())
        if held.fingerprint != fingerprint:
            return _invalid([_conflict(held.run_id)])
        if held.run_id != run_id:  # submitted before: that run (recorded now, if it was not)
            return _earlier(rt, engine, held.run_id, ready, str(entry.path))
    try:
        run_id = enqueue(rt, engine, ready.workflow, ready.inputs, source=str(entry.path),
                         run_id=run_id)  # fmt: skip
    except NotEnqueued as exc:
        return {"run_id": exc.run_id, "status": FAILED, "errors": [{"message": str(exc)}]}
    return {"run_id": run_id, "status": RUNNING}


def _earlier(rt: Runtime, engine: Engine, run_id: str, ready: Any, source: str) -> dict[str, Any]:
    """The answer for a key used before: its run's status now. A run the first submission did
    not record (its worker died between taking the key and recording) is recorded now."""
    from dagwright.executors.lifecycle import fold_run

    try:
        _, state = fold_run(engine.store, run_id)
    except RunNotFound:
        try:
            enqueue(rt, engine, ready.workflow, ready.inputs, source=source, run_id=run_id)
        except NotEnqueued as exc:
            return {"run_id": run_id, "status": FAILED, "errors": [{"message": str(exc)}]}
        except StoreError:
            engine.store.get_run(run_id)  # recorded meanwhile by the first submission, or raise
        return {"run_id": run_id, "status": RUNNING}
    status = state.status if state.status in FINAL else RUNNING
    return {"run_id": run_id, "status": status}


def _argument_problems(workflow: Any, inputs: Any, key: Any) -> list[PlanIssue]:
    problems = []
    if not isinstance(workflow, str) or not workflow.strip():
        problems.append(
            PlanIssue("must be the name of a known workflow (a string)", field="workflow")
        )
    if inputs is not None and not (
        isinstance(inputs, dict) and all(isinstance(k, str) for k in inputs)
    ):
        problems.append(PlanIssue("must be an object of input values, or null", field="inputs"))
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_KEY):
        problems.append(
            PlanIssue(f"must be a string of 1 to {MAX_KEY} characters", field="idempotency_key")
        )
    return problems


def _unknown(name: str, catalog: Any) -> PlanIssue:
    names = catalog.names()
    if names:
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        hint = f"known workflows: {shown}"
    else:
        hint = (
            "the workers know no workflow: put workflow files in their DAGWRIGHT_WORKFLOWS folder"
        )
    return PlanIssue(f"no known workflow is named {name[:200]!r}", field="workflow", hint=hint)


def _conflict(run_id: str) -> PlanIssue:
    return PlanIssue(
        f"this idempotency key was used for run {run_id}, submitted with another workflow or "
        "other inputs",
        field="idempotency_key",
        hint="use a new key for a different submission",
    )


def _invalid(issues: list[PlanIssue]) -> dict[str, Any]:
    return {"status": INVALID, "errors": [i.as_dict() for i in issues]}


def _fingerprint(workflow: str, inputs: dict[str, Any]) -> str:
    body = json.dumps({"workflow": workflow, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


__all__ = [
    "NotEnqueued",
    "broker_problem",
    "end_unsent",
    "enqueue",
    "shown_broker",
    "submit_known",
    "visibility_problem",
    "workers_answer",
]
