"""Built-in deterministic tools, for testing workflows and for benchmarks."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field
from typing_extensions import TypedDict

from dagwright.errors import StepError
from dagwright.tools.registry import ToolContext, tool


@tool("echo", replay="rerun")
def echo(**kwargs: Any) -> dict[str, Any]:
    """Return the arguments it was given, unchanged."""
    return kwargs


class Slept(TypedDict):
    slept_ms: int


@tool("sleep")  # replay serves it: waiting again reproduces nothing
async def sleep(ms: Annotated[int, Field(ge=0, le=86_400_000)]) -> Slept:
    """Wait `ms` milliseconds, then return {"slept_ms": ms}."""
    await asyncio.sleep(ms / 1000)
    return Slept(slept_ms=ms)


@tool("flaky", replay="rerun")
def flaky(
    fail_times: Annotated[int, Field(ge=0)],
    ctx: ToolContext,
    value: Any = None,
    message: str = "flaky failure",
) -> Any:
    """Fail the first `fail_times` attempts of this step in a run, then return `value`."""
    if ctx.attempt <= fail_times:
        raise StepError(f"{message} (attempt {ctx.attempt} of the first {fail_times} that fail)")
    return value
