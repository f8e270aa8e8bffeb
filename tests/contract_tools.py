"""Tools the executor contract suite uses, importable by Celery workers (DAGWRIGHT_TOOLS)."""

from __future__ import annotations

import time

from dagwright.errors import StepError
from dagwright.tools import tool


@tool("test.block")
def block(seconds: float = 10.0) -> str:
    """A plain function that blocks (its timeout must stop the waiting)."""
    time.sleep(seconds)
    return "late"


@tool("test.auth")
def auth() -> str:
    """Fails with an error no retry can fix."""
    raise StepError("bad credentials", retryable=False)


@tool("test.boom")
def boom(n: int) -> int:
    """An unexpected exception."""
    return n // 0
