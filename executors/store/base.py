"""The trace store port: append-only run events, and the runs they belong to.

Implementations: ``MemoryTraceStore`` (the in-memory twin, for speed) and ``SqlTraceStore``
(SQLite embedded, PostgreSQL by URL). One contract suite runs against all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dagwright.errors import RunNotFound
from dagwright.executors.engine.events import Event


@dataclass(frozen=True)
class RunRecord:
    """What a run was started with. Its status and output live in its trace, not here."""

    run_id: str
    workflow_name: str
    created_at: float
    workflow: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    executor: str = "local"
    parent_run_id: str | None = None
    """Lineage: the run this one was derived from (``resume``, ``fork`` or ``replay``)."""
    mode: str | None = None
    """How it was derived: ``resume``, ``fork`` or ``replay``; None for a fresh run."""
    from_steps: list[str] = field(default_factory=list)
    """The steps it ran again from (everything downstream of them ran again too)."""

    def lineage(self) -> dict[str, Any] | None:
        if self.parent_run_id is None:
            return None
        return {"parent": self.parent_run_id, "mode": self.mode, "from_steps": self.from_steps}


def lineage_fields(lineage: dict[str, Any] | None) -> dict[str, Any]:
    """A ``RunRecord``'s lineage fields from a derived run's lineage (parent, mode, from_steps)."""
    lineage = lineage or {}
    return {
        "parent_run_id": lineage.get("parent"),
        "mode": lineage.get("mode"),
        "from_steps": list(lineage.get("from_steps") or []),
    }


@dataclass(frozen=True)
class RunSummary:
    record: RunRecord
    status: str
    finished_at: float | None = None


@dataclass(frozen=True)
class Submission:
    """The submission that holds an idempotency key."""

    key: str
    fingerprint: str
    """A hash of the request, so a retry with another body can be refused."""
    run_id: str
    created_at: float


def listed(
    summary: RunSummary,
    *,
    status: str | None,
    workflow: str | None,
    created_after: float | None,
    created_before: float | None,
    after: tuple[float, str] | None,
) -> bool:
    """Whether a run passes ``list_runs``' filters (for stores that filter in Python)."""
    r = summary.record
    return (
        (status is None or summary.status == status)
        and (workflow is None or r.workflow_name == workflow)
        and (created_after is None or r.created_at > created_after)
        and (created_before is None or r.created_at < created_before)
        and (after is None or (r.created_at, r.run_id) < after)
    )


def match_run_id(run_id: str, known: Sequence[str]) -> str:
    """Resolve a full run id or a unique prefix of one (like git's short hashes)."""
    if run_id in known:
        return run_id
    matches = [k for k in known if k.startswith(run_id)] if len(run_id) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RunNotFound(
            f"run id prefix {run_id!r} is ambiguous: {', '.join(sorted(matches)[:5])}"
        )
    raise run_not_found(run_id)


def run_not_found(run_id: str) -> RunNotFound:
    """The error for a run id no run has, worded alike by every store."""
    return RunNotFound(f"no run {run_id!r} in this trace store (see `dagwright runs`)")


class TraceStore(Protocol):
    def create_run(
        self, run: RunRecord, events: Sequence[Event] = (), *, claims: Sequence[str] = ()
    ) -> list[Event]:
        """Record a new run with its first ``events`` (and ``claims``) in one transaction: all
        or none, so no reader ever sees a run without its opening events. Returns the events
        with their ``seq`` (1, 2, …). A run id that exists already is an error."""

    def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        claims: Sequence[str] = (),
        expect_seq: int | None = None,
    ) -> list[Event] | None:
        """Append events atomically (all or none), in order; returns them with their ``seq``.

        With ``claims``, the append also takes those keys for the run, all or none: when any of
        them was taken already, nothing is written and the result is None. This is the
        compare-and-set that makes dispatching and recording results idempotent across workers.

        With ``expect_seq``, the append happens only if the first event gets that ``seq``, i.e.
        nobody appended since the caller's last read; otherwise nothing is written and
        ``StaleState`` is raised (a lost claim still returns None first).
        """

    def heartbeat(self, run_id: str, step: str, attempt: int, at: float) -> None:
        """Record that an attempt is still being worked on (kept beside the trace)."""

    def heartbeats(self, run_id: str) -> dict[tuple[str, int], float]:
        """The latest heartbeat of each (step, attempt) of a run."""

    def cache_get(self, key: str) -> Any:
        """A cached model answer by its request key, or None."""

    def cache_put(self, key: str, value: Any) -> None:
        """Keep a model answer under its request key (the first one stays)."""

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        """The run's events with ``seq > after``, in order."""

    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id, or with this unique id prefix; raises RunNotFound."""

    def summary(self, run_id: str) -> RunSummary:
        """The run as ``list_runs`` lists it (its record, its status from its trace, when it
        finished), without reading its trace: the run's row and its own events only, so it grows
        with the plan (the record holds the workflow), not with the trace. ``run_id``: a full id
        (``get_run`` resolves a prefix); raises RunNotFound."""

    def list_runs(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        workflow: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[RunSummary]:
        """Newest first (by ``created_at``, then ``run_id``); ``status`` filters on the run's
        status from its trace, ``workflow`` on its name, ``created_after``/``created_before``
        on when it was created (exclusive). ``after``: the ``(created_at, run_id)`` of the last
        run of the previous page (cursor pagination)."""

    def claim_submission(self, key: str, fingerprint: str, run_id: str, at: float) -> Submission:
        """Take an idempotency key for ``run_id`` unless it is taken; returns the submission
        that holds the key (this one, or the earlier one with its run id and fingerprint)."""

    def submission(self, key: str) -> Submission | None:
        """The submission that holds an idempotency key, if any."""

    def release_submission(self, key: str, run_id: str) -> None:
        """Free an idempotency key held for ``run_id`` (its run could not be enqueued: a retry
        with the key is to submit afresh); a key held for another run stays."""

    def queue_run(self, key: str, run_id: str, priority: int, at: float) -> None:
        """Put a run in the queue of a concurrency key (``admission``)."""

    def admit(self, key: str, limit: int, at: float) -> list[str]:
        """Give the key's free slots (``limit`` minus the runs admitted) to its waiting runs,
        higher priority first, then in order of queueing; atomic across processes. A waiting run
        that is not recorded yet (it queues before its record is written) is passed over.
        Returns the run ids admitted now."""

    def release(self, run_id: str) -> None:
        """The run leaves its key's queue or slot (it ended)."""

    def slot(self, run_id: str) -> tuple[str, float | None] | None:
        """The run's key and when it was admitted (None: still waiting); None when the run is
        in no queue."""

    def slot_keys(self) -> dict[str, list[tuple[str, float | None]]]:
        """Every key with runs waiting or admitted: the runs and when each was admitted."""

    def location(self) -> str:
        """Where the trace lives, for people: a file path or a URL without its password."""

    def close(self) -> None: ...


__all__ = [
    "RunRecord",
    "RunSummary",
    "Submission",
    "TraceStore",
    "lineage_fields",
    "listed",
    "match_run_id",
    "run_not_found",
]
