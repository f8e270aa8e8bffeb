"""A trace store that never keeps a known secret: ``RedactingStore(inner, redactor)`` redacts
every recorded event's data, every run record and every cached answer before the inner store
sees them (``open_store(target, secrets=...)`` wraps the store it opens when there are any;
``redacting(store, secrets)`` makes sure a store an executor was given redacts its secrets)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from dagwright.executors.engine.events import Event
from dagwright.executors.store.base import RunRecord, RunSummary, Submission, TraceStore
from dagwright.redact import Redactor


class RedactingStore:
    """``TraceStore`` by delegation; what is written is redacted, so what is read back (the
    trace, ``show``, ``run --json``, the API) is too."""

    def __init__(self, inner: TraceStore, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor

    def _event(self, e: Event) -> Event:
        data = self.redactor.value(e.data)
        return e if data is e.data else dataclasses.replace(e, data=data)

    def create_run(
        self, run: RunRecord, events: Sequence[Event] = (), *, claims: Sequence[str] = ()
    ) -> list[Event]:
        r = self.redactor
        workflow, inputs = r.value(run.workflow), r.value(run.inputs)
        if workflow is not run.workflow or inputs is not run.inputs:
            run = dataclasses.replace(run, workflow=workflow, inputs=inputs)
        return self.inner.create_run(run, [self._event(e) for e in events], claims=claims)

    def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        claims: Sequence[str] = (),
        expect_seq: int | None = None,
    ) -> list[Event] | None:
        redacted = [self._event(e) for e in events]
        return self.inner.append(run_id, redacted, claims=claims, expect_seq=expect_seq)

    def heartbeat(self, run_id: str, step: str, attempt: int, at: float) -> None:
        self.inner.heartbeat(run_id, step, attempt, at)

    def heartbeats(self, run_id: str) -> dict[tuple[str, int], float]:
        return self.inner.heartbeats(run_id)

    def cache_get(self, key: str) -> Any:
        return self.inner.cache_get(key)

    def cache_put(self, key: str, value: Any) -> None:
        self.inner.cache_put(key, self.redactor.value(value))

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        return self.inner.events(run_id, after)

    def get_run(self, run_id: str) -> RunRecord:
        return self.inner.get_run(run_id)

    def summary(self, run_id: str) -> RunSummary:
        return self.inner.summary(run_id)

    def list_runs(self, **filters: Any) -> list[RunSummary]:
        return self.inner.list_runs(**filters)

    def claim_submission(self, key: str, fingerprint: str, run_id: str, at: float) -> Submission:
        return self.inner.claim_submission(key, fingerprint, run_id, at)

    def submission(self, key: str) -> Submission | None:
        return self.inner.submission(key)

    def release_submission(self, key: str, run_id: str) -> None:
        self.inner.release_submission(key, run_id)

    def queue_run(self, key: str, run_id: str, priority: int, at: float) -> None:
        self.inner.queue_run(key, run_id, priority, at)

    def admit(self, key: str, limit: int, at: float) -> list[str]:
        return self.inner.admit(key, limit, at)

    def release(self, run_id: str) -> None:
        self.inner.release(run_id)

    def slot(self, run_id: str) -> tuple[str, float | None] | None:
        return self.inner.slot(run_id)

    def slot_keys(self) -> dict[str, list[tuple[str, float | None]]]:
        return self.inner.slot_keys()

    def location(self) -> str:
        return self.inner.location()

    def close(self) -> None:
        self.inner.close()


def redacting(store: TraceStore, secrets: Iterable[str]) -> TraceStore:
    """``store``, redacting ``secrets`` too: itself when it redacts them all already (or there
    are none), else a ``RedactingStore`` over it (one, also when it was one already)."""
    wanted = Redactor(secrets)
    if not wanted:
        return store
    if isinstance(store, RedactingStore):
        if set(wanted.secrets) <= set(store.redactor.secrets):
            return store
        both = Redactor((*store.redactor.secrets, *wanted.secrets))
        return RedactingStore(store.inner, both)
    return RedactingStore(store, wanted)


__all__ = ["RedactingStore", "redacting"]
