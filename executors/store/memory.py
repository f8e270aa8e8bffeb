"""The in-memory trace store: the twin of the SQL store, for fast tests and embedding."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from dagwright.errors import StaleState, StoreError
from dagwright.executors.engine.events import RUN_ADMITTED, RUN_FINISHED, RUN_QUEUED, Event
from dagwright.executors.store.base import (
    RunRecord,
    RunSummary,
    Submission,
    listed,
    match_run_id,
    run_not_found,
)


class MemoryTraceStore:
    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[Event]] = {}
        self._claims: dict[str, set[str]] = {}
        self._cache: dict[str, Any] = {}
        self._beats: dict[str, dict[tuple[str, int], float]] = {}
        self._submissions: dict[str, Submission] = {}
        self._slots: dict[str, tuple[str, int, float, float | None]] = {}
        self._lock = threading.Lock()

    def create_run(
        self, run: RunRecord, events: Sequence[Event] = (), *, claims: Sequence[str] = ()
    ) -> list[Event]:
        with self._lock:
            if run.run_id in self._runs:
                raise StoreError(f"run {run.run_id!r} exists already")
            stored = [e.with_seq(i + 1) for i, e in enumerate(events)]
            self._runs[run.run_id] = run
            self._events[run.run_id] = stored
            self._claims[run.run_id] = set(claims)
            return list(stored)

    def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        claims: Sequence[str] = (),
        expect_seq: int | None = None,
    ) -> list[Event] | None:
        with self._lock:
            if run_id not in self._runs:
                raise StoreError(f"cannot append to unknown run {run_id!r}")
            taken = self._claims.setdefault(run_id, set())
            if any(k in taken for k in claims):
                return None
            trace = self._events[run_id]
            if expect_seq is not None and len(trace) + 1 != expect_seq:
                raise StaleState(f"run {run_id!r} changed since seq {expect_seq - 1}")
            taken.update(claims)
            stored = [e.with_seq(len(trace) + i + 1) for i, e in enumerate(events)]
            trace.extend(stored)
            return stored

    def heartbeat(self, run_id: str, step: str, attempt: int, at: float) -> None:
        with self._lock:
            self._beats.setdefault(run_id, {})[(step, attempt)] = at

    def heartbeats(self, run_id: str) -> dict[tuple[str, int], float]:
        with self._lock:
            return dict(self._beats.get(run_id, {}))

    def cache_get(self, key: str) -> Any:
        with self._lock:
            return self._cache.get(key)

    def cache_put(self, key: str, value: Any) -> None:
        with self._lock:
            self._cache.setdefault(key, value)

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        with self._lock:
            return list(self._events.get(run_id, [])[after:])

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            return self._runs[match_run_id(run_id, list(self._runs))]

    def _summary(self, run: RunRecord) -> RunSummary:
        events = self._events[run.run_id]
        finished = next((e for e in events if e.type == RUN_FINISHED), None)
        kinds = {e.type for e in events}
        waiting = RUN_QUEUED in kinds and RUN_ADMITTED not in kinds
        running = "queued" if waiting else "running"
        run_status = str(finished.data["status"]) if finished else running
        return RunSummary(run, run_status, finished.at if finished else None)

    def summary(self, run_id: str) -> RunSummary:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise run_not_found(run_id)
            return self._summary(run)

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
        with self._lock:
            summaries = []
            runs = sorted(self._runs.values(), key=lambda r: (r.created_at, r.run_id), reverse=True)
            for run in runs:
                summary = self._summary(run)
                if listed(
                    summary,
                    status=status,
                    workflow=workflow,
                    created_after=created_after,
                    created_before=created_before,
                    after=after,
                ):
                    summaries.append(summary)
            return summaries[:limit]

    def claim_submission(self, key: str, fingerprint: str, run_id: str, at: float) -> Submission:
        with self._lock:
            return self._submissions.setdefault(key, Submission(key, fingerprint, run_id, at))

    def submission(self, key: str) -> Submission | None:
        with self._lock:
            return self._submissions.get(key)

    def release_submission(self, key: str, run_id: str) -> None:
        with self._lock:
            held = self._submissions.get(key)
            if held is not None and held.run_id == run_id:
                del self._submissions[key]

    def queue_run(self, key: str, run_id: str, priority: int, at: float) -> None:
        with self._lock:
            self._slots[run_id] = (key, priority, at, None)

    def admit(self, key: str, limit: int, at: float) -> list[str]:
        with self._lock:
            mine = [(rid, v) for rid, v in self._slots.items() if v[0] == key]
            free = limit - sum(1 for _, v in mine if v[3] is not None)
            waiting = sorted(  # a slot is admitted once its run is recorded
                (-v[1], v[2], rid) for rid, v in mine if v[3] is None and rid in self._runs
            )
            chosen = [rid for _, _, rid in waiting][: max(0, free)]
            for rid in chosen:
                k, priority, queued, _ = self._slots[rid]
                self._slots[rid] = (k, priority, queued, at)
            return chosen

    def release(self, run_id: str) -> None:
        with self._lock:
            self._slots.pop(run_id, None)

    def slot(self, run_id: str) -> tuple[str, float | None] | None:
        with self._lock:
            found = self._slots.get(run_id)
            return None if found is None else (found[0], found[3])

    def slot_keys(self) -> dict[str, list[tuple[str, float | None]]]:
        with self._lock:
            keys: dict[str, list[tuple[str, float | None]]] = {}
            for rid, (key, _, _, admitted) in self._slots.items():
                keys.setdefault(key, []).append((rid, admitted))
            return keys

    def location(self) -> str:
        return "memory"

    def close(self) -> None:
        pass


__all__ = ["MemoryTraceStore"]
