"""Trace stores. ``open_store`` picks one from a path or URL (SQL stores load lazily)."""

from __future__ import annotations

from dagwright.executors.store.base import RunRecord, RunSummary, TraceStore, match_run_id
from dagwright.executors.store.memory import MemoryTraceStore


def open_store(target: str) -> TraceStore:
    """``memory``, a SQLite file path (or ``sqlite:///path``), or ``postgresql://…``."""
    if target == "memory":
        return MemoryTraceStore()
    from dagwright.executors.store.sql import SqlTraceStore

    return SqlTraceStore(target)


__all__ = [
    "MemoryTraceStore",
    "RunRecord",
    "RunSummary",
    "TraceStore",
    "match_run_id",
    "open_store",
]
