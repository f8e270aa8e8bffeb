"""Execute one attempt of one step, outside any worker loop (huey's ``Huey.execute``).

``execute_attempt`` = call the tool with its resolved arguments → verify the output → classify the
failure (error, timeout, verification; retryable or not). It records nothing itself: executors turn
the ``Outcome`` into trace events.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import traceback
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from dagwright.errors import StepError
from dagwright.executors.verify import run_checks
from dagwright.planner.schema import Step
from dagwright.tools.registry import Tool, ToolContext

SUCCEEDED, FAILED, TIMED_OUT, CANCELLED = "succeeded", "failed", "timed_out", "cancelled"


@dataclass
class Outcome:
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0

    @property
    def kind(self) -> str:
        return (self.error or {}).get("kind", "error")

    @property
    def retryable(self) -> bool:
        return bool((self.error or {}).get("retryable", False))


def error_info(
    exc: BaseException | None,
    *,
    kind: str,
    message: str | None = None,
    retryable: bool = True,
    with_traceback: bool = True,
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": type(exc).__name__ if exc else kind,
        "message": message if message is not None else str(exc),
        "kind": kind,
        "retryable": retryable,
    }
    if exc is not None and with_traceback:
        info["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
    return info


async def execute_attempt(
    tool: Tool,
    step: Step,
    args: Any,
    ctx: ToolContext,
    context: dict[str, Any],
    *,
    pool: Executor | None = None,
) -> Outcome:
    """One attempt. ``context`` is what the step's references read (for its checks).

    Cancellation (``asyncio.CancelledError``) propagates to the caller."""
    started = time.perf_counter()

    def done(outcome: Outcome) -> Outcome:
        outcome.duration = round(time.perf_counter() - started, 6)
        return outcome

    try:
        kwargs = tool.bind(args, ctx)
    except ValidationError as exc:
        msg = f"step {step.id!r}: invalid arguments for tool {tool.name!r}: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'with'}: {e['msg']}" for e in exc.errors()
        )
        return done(
            Outcome(
                FAILED,
                error=error_info(
                    exc, kind="error", message=msg, retryable=False, with_traceback=False
                ),
            )
        )
    try:
        if tool.is_async:
            call = tool.fn(**kwargs)
        else:
            loop = asyncio.get_running_loop()
            call = loop.run_in_executor(pool, functools.partial(tool.fn, **kwargs))
        result = await (asyncio.wait_for(call, step.timeout) if step.timeout else call)
        output = tool.to_json(result)
    except TimeoutError as exc:
        msg = f"step {step.id!r} timed out after {step.timeout:g}s (attempt {ctx.attempt})"
        return done(
            Outcome(
                TIMED_OUT, error=error_info(exc, kind="timeout", message=msg, with_traceback=False)
            )
        )
    except StepError as exc:
        return done(Outcome(FAILED, error=error_info(exc, kind="error", retryable=exc.retryable)))
    except PydanticSerializationError as exc:
        msg = f"step {step.id!r}: the output of tool {tool.name!r} is not JSON data: {exc}"
        return done(
            Outcome(FAILED, error=error_info(exc, kind="error", message=msg, retryable=False))
        )
    except Exception as exc:  # noqa: BLE001 - a tool's own failure, recorded with its traceback
        return done(Outcome(FAILED, error=error_info(exc, kind="error")))
    if any(c.judge is not None for c in step.verify):  # a model call: not on the event loop
        from dagwright.tools.llm import judge_with

        loop = asyncio.get_running_loop()
        checks = await loop.run_in_executor(
            pool, functools.partial(run_checks, step.verify, output, context, judge_with(ctx))
        )
    else:
        checks = run_checks(step.verify, output, context)
    failures = [c["message"] for c in checks if not c["passed"]]
    if failures:
        msg = f"step {step.id!r}: " + "; ".join(failures)
        error = error_info(None, kind="verification", message=msg)
        error["type"] = "VerificationFailed"
        return done(Outcome(FAILED, output=output, error=error, checks=checks))
    return done(Outcome(SUCCEEDED, output=output, checks=checks))


def run_step(
    tool: Tool, step: Step, args: Any, ctx: ToolContext, context: dict[str, Any]
) -> Outcome:
    """Synchronous ``execute_attempt``: for worker processes and tests.

    A plain-function tool runs in a thread of its own, which is not waited for after a
    timeout (``asyncio.run`` would wait for its default executor)."""
    holder = getattr(_local, "holder", None)
    if holder is None:  # one event loop per worker thread, reused: a new loop per step costs
        holder = _local.holder = _Loop()
    loop = holder.loop
    pool = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="dagwright-step")
        if not tool.is_async
        else None
    )
    try:
        return loop.run_until_complete(execute_attempt(tool, step, args, ctx, context, pool=pool))
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class _Loop:
    """A thread's event loop, closed when the thread ends (its thread-local storage goes)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        if not self.loop.is_closed():
            self.loop.close()


_local = threading.local()


__all__ = ["Outcome", "error_info", "execute_attempt", "run_step"]
