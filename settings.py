"""Typed settings, read once at the edge (CLI, worker). Core code receives values."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dagwright.errors import DagwrightError

DEFAULT_DB = ".dagwright/trace.db"
_KNOWN = {"DAGWRIGHT_DB", "DAGWRIGHT_TOOLS", "DAGWRIGHT_MAX_PARALLEL"}


@dataclass(frozen=True)
class Settings:
    db: str = DEFAULT_DB
    """Trace store: a SQLite file path, ``sqlite:///path`` or ``postgresql://user@host/db``."""
    tools: tuple[str, ...] = ()
    """Modules of user tools loaded for every workflow (comma-separated in the environment)."""
    max_parallel: int = 8
    """Attempts the local executor runs at once."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        unknown = sorted(
            k
            for k in env
            if k.startswith("DAGWRIGHT_")
            and k not in _KNOWN
            and not k.startswith("DAGWRIGHT_TEST_")
        )
        if unknown:
            raise DagwrightError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}"
            )
        max_parallel = env.get("DAGWRIGHT_MAX_PARALLEL", "8")
        if not max_parallel.isdigit() or int(max_parallel) < 1:
            raise DagwrightError(
                f"DAGWRIGHT_MAX_PARALLEL must be a positive integer, got {max_parallel!r}"
            )
        tools = tuple(t.strip() for t in env.get("DAGWRIGHT_TOOLS", "").split(",") if t.strip())
        return cls(
            db=env.get("DAGWRIGHT_DB") or DEFAULT_DB, tools=tools, max_parallel=int(max_parallel)
        )

    def db_location(self) -> str:
        return self.db if "://" in self.db else str(Path(self.db).resolve())


__all__ = ["DEFAULT_DB", "Settings"]
