"""Trace stores. ``open_store`` picks one from a path or URL (SQL stores load lazily)."""

from __future__ import annotations

from collections.abc import Iterable

from dagwright.executors.store.base import RunRecord, RunSummary, TraceStore, match_run_id
from dagwright.executors.store.memory import MemoryTraceStore
from dagwright.redact import Redactor


def open_store(target: str, *, secrets: Iterable[str] = (), create: bool = True) -> TraceStore:
    """``memory``, a SQLite file path (or ``sqlite:///path``), or ``postgresql://…``.

    ``create=False`` (commands that only read): an existing store only; a missing one is a
    StoreError (``no trace store at …``) and nothing is created.

    ``secrets``: values that must never be recorded (``Settings.secrets()``: API keys, URL
    passwords); with any, the store redacts them from everything written to it. Every edge
    (the CLI, the Celery workers, the API) opens its store here with its settings' secrets."""
    store: TraceStore
    if target == "memory":
        store = MemoryTraceStore()
    else:
        from dagwright.executors.store.sql import SqlTraceStore

        store = SqlTraceStore(target, create=create)
    redactor = Redactor(secrets)
    if not redactor:
        return store
    from dagwright.executors.store.redacting import RedactingStore

    return RedactingStore(store, redactor)


__all__ = [
    "MemoryTraceStore",
    "RunRecord",
    "RunSummary",
    "TraceStore",
    "match_run_id",
    "open_store",
]
