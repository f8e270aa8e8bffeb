"""The API's endpoints: runs (submit, list, read, follow, act on), the catalog, health."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from dagwright.api.problems import Problem
from dagwright.api.schemas import ForkRun, Links, ResumeRun, RunAccepted, SubmitRun
from dagwright.api.security import Guard
from dagwright.api.service import Accepted, RunService
from dagwright.api.stream import trace_events

router = APIRouter()

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or wrong token", **PROBLEM},
    404: {"description": "No such run or workflow", **PROBLEM},
    409: {"description": "Not possible in the run's state, or idempotency key reused", **PROBLEM},
    413: {"description": "Body too large", **PROBLEM},
    422: {"description": "Invalid workflow, inputs or request", **PROBLEM},
    429: {"description": "Too many submissions", **PROBLEM},
}
MAX_SEQ = 2**63 - 1  # the largest seq a trace store holds (a 64-bit integer)


# The dependencies are ``async``: they do no I/O (a dict lookup, a token compare, a bucket
# under a lock held for microseconds), and a plain ``def`` would cost each request one more
# hop through the thread pool.
async def service(request: Request) -> RunService:
    return request.app.state.service  # type: ignore[no-any-return]


async def caller(request: Request) -> str:
    guard: Guard = request.app.state.guard
    return guard.caller(request)


async def submitter(request: Request, who: Annotated[str, Depends(caller)]) -> str:
    guard: Guard = request.app.state.guard
    guard.take(who)
    return who


Service = Annotated[RunService, Depends(service)]
Authed = Depends(caller)
Submits = Depends(submitter)


def _accepted(accepted: Accepted, response: Response) -> RunAccepted:
    base = f"/v1/runs/{accepted.run_id}"
    response.headers["Location"] = base
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return RunAccepted(
        run_id=accepted.run_id,
        status=accepted.status,
        links=Links(self=base, events=f"{base}/events", stream=f"{base}/stream"),
    )


def _when(value: str | None, name: str) -> float | None:
    """Unix seconds, or an ISO 8601 date-time."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise Problem(
            422, "Invalid request", f"{name}: give Unix seconds or an ISO 8601 time"
        ) from None


@router.post("/v1/runs", status_code=202, response_model=RunAccepted, responses=ERRORS,
             dependencies=[Submits], tags=["runs"])  # fmt: skip
def submit_run(
    body: SubmitRun,
    svc: Service,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> RunAccepted:
    """Submit a run of a known workflow, of a workflow given as YAML, or of a plan for a task."""
    return _accepted(svc.submit(body, idempotency_key), response)


@router.get("/v1/runs", responses=ERRORS, dependencies=[Authed], tags=["runs"])
def list_runs(
    svc: Service,
    status: str | None = None,
    workflow: str | None = None,
    started_after: str | None = None,
    started_before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    created_after: Annotated[str | None, Query(deprecated=True)] = None,
    created_before: Annotated[str | None, Query(deprecated=True)] = None,
) -> dict[str, Any]:
    """Runs, newest first; follow ``next_cursor`` for the next page. ``started_after`` and
    ``started_before`` (Unix seconds or ISO 8601, exclusive) filter on ``started_at``;
    ``created_after``/``created_before`` are their former names."""
    after, after_name = (started_after, "started_after") if started_after is not None else (
        created_after, "created_after")  # fmt: skip
    before, before_name = (started_before, "started_before") if started_before is not None else (
        created_before, "created_before")  # fmt: skip
    return svc.list(
        status=status,
        workflow=workflow,
        created_after=_when(after, after_name),
        created_before=_when(before, before_name),
        limit=limit,
        cursor=cursor,
    )


@router.get("/v1/runs/{run_id}", responses=ERRORS, dependencies=[Authed], tags=["runs"])
def get_run(run_id: str, svc: Service) -> dict[str, Any]:
    """A run's status, output, error and steps (as ``dagwright show RUN --json``)."""
    return svc.get(run_id)


@router.get("/v1/runs/{run_id}/events", responses=ERRORS, dependencies=[Authed], tags=["runs"])
def run_events(
    run_id: str,
    svc: Service,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The run's trace events with ``seq > after``."""
    return svc.events(run_id, after, limit)


@router.get("/v1/runs/{run_id}/stream", responses=ERRORS, dependencies=[Authed], tags=["runs"],
            response_class=EventSourceResponse)  # fmt: skip
async def stream_run(
    run_id: str,
    svc: Service,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> EventSourceResponse:
    """Server-Sent Events of the trace while the run goes on; resumable with Last-Event-ID."""
    if last_event_id is not None:
        try:
            after = max(after, int(last_event_id))
            if after > MAX_SEQ:
                raise ValueError
        except ValueError:
            raise Problem(422, "Invalid request", "Last-Event-ID: a seq (an integer)") from None
    record = await run_in_threadpool(svc.store.get_run, run_id)  # 404 before the stream opens
    return EventSourceResponse(trace_events(svc, record.run_id, after), ping=15)


@router.post("/v1/runs/{run_id}/cancel", status_code=202, response_model=RunAccepted,
             responses=ERRORS, dependencies=[Authed], tags=["runs"])  # fmt: skip
def cancel_run(run_id: str, svc: Service, response: Response) -> RunAccepted:
    """End a run as cancelled (attempts running now finish; their outcome is ignored)."""
    return _accepted(svc.cancel(run_id), response)


@router.post("/v1/runs/{run_id}/resume", status_code=202, response_model=RunAccepted,
             responses=ERRORS, dependencies=[Submits], tags=["runs"])  # fmt: skip
def resume_run(run_id: str, body: ResumeRun, svc: Service, response: Response) -> RunAccepted:
    """Continue a failed run in a new, linked run that reuses the steps that succeeded."""
    return _accepted(svc.resume(run_id, body), response)


@router.post("/v1/runs/{run_id}/fork", status_code=202, response_model=RunAccepted,
             responses=ERRORS, dependencies=[Submits], tags=["runs"])  # fmt: skip
def fork_run(run_id: str, body: ForkRun, svc: Service, response: Response) -> RunAccepted:
    """Try a change from a step on, in a new run reusing everything upstream of it."""
    return _accepted(svc.fork(run_id, body), response)


@router.post("/v1/runs/{run_id}/replay", responses=ERRORS, dependencies=[Submits],
             tags=["runs"])  # fmt: skip
def replay_run(run_id: str, svc: Service) -> dict[str, Any]:
    """Re-execute a recorded run from its trace, calling no model; report divergences."""
    return svc.replay(run_id)


@router.get("/v1/runs/{run_a}/diff/{run_b}", responses=ERRORS, dependencies=[Authed],
            tags=["runs"])  # fmt: skip
def diff_runs(run_a: str, run_b: str, svc: Service) -> dict[str, Any]:
    """Two runs compared step by step (as ``dagwright diff A B --json``)."""
    return svc.diff(run_a, run_b)


@router.get("/v1/workflows", dependencies=[Authed], responses=ERRORS, tags=["catalog"])
def workflows(svc: Service) -> dict[str, Any]:
    """The known workflows (``DAGWRIGHT_WORKFLOWS``), by name."""
    return svc.workflows()


@router.get("/v1/tools", dependencies=[Authed], responses=ERRORS, tags=["catalog"])
def tools(svc: Service) -> dict[str, Any]:
    """The registered tools a workflow may use, with their argument schemas."""
    return svc.tools()


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The server is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"description": "Not ready"}})
def readyz(svc: Service, response: Response) -> dict[str, Any]:
    """The trace store and the broker are reachable."""
    good, checks = svc.ready()
    response.status_code = 200 if good else 503
    return {"status": "ready" if good else "not ready", **checks}


__all__ = ["router"]
