"""Tools the executor contract suite uses, importable by Celery workers (DAGWRIGHT_TOOLS)."""

from __future__ import annotations

import time
from pathlib import Path

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


def _wait_for(path: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise StepError(f"{path} did not appear in {seconds:g}s", retryable=False)
        time.sleep(0.01)


@tool("test.mark_then_sleep")
def mark_then_sleep(mark: str, ms: int) -> str:
    """Create the file ``mark`` (this attempt has started), then sleep ``ms``."""
    Path(mark).touch()
    time.sleep(ms / 1000)
    return "done"


@tool("test.mark_and_fail")
def mark_and_fail(mark: str) -> None:
    """Create the file ``mark``, then fail (retryable)."""
    Path(mark).touch()
    raise StepError("failed after marking")


@tool("test.fail_after_mark")
def fail_after_mark(wait_for: list[str], mark: str = "", started: str = "") -> None:
    """Create ``started`` if given (this attempt has started), wait until every file of
    ``wait_for`` exists (other steps' attempts got there), create ``mark`` if given, then fail
    (retryable)."""
    if started:
        Path(started).touch()
    for path in wait_for:
        _wait_for(path)
    if mark:
        Path(mark).touch()
    raise StepError(f"failed after {', '.join(Path(p).name for p in wait_for)}")
