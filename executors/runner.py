"""Execute one attempt of one step, outside any worker loop (huey's ``Huey.execute``).

An attempt is one time budget, an ``Attempt``: resolve the step's ``with`` (``resolve``) →
the driver records ``attempt_started`` → call the tool, verify its output and classify the
failure (error, timeout, verification; retryable or not) (``execute``). Both drivers run
attempts through it: the local executor on its event loop and thread pool, Celery workers
through ``run_sync`` on a loop of their thread's own.

- With ``timeout: T`` on the step, the whole attempt — resolving, the tool, the checks (a
  ``judge``'s model call too) — ends within T of its start, or it is ``timed_out`` (error kind
  ``timeout``, retried per the step's policy).
- With no ``timeout:``, the tool is not bounded, but the evaluation is: resolving the arguments
  and running the checks (each run of checks without a model call) get ``eval_timeout``
  seconds each (``DAGWRIGHT_EVAL_TIMEOUT``), else the attempt is ``timed_out`` as well.
- ``${{ secrets.NAME }}`` in the ``with`` resolves from the attempt's ``secrets`` (the
  executor's, from the settings), and nothing else can read them (its checks cannot). The
  tool gets the real values; what the attempt hands back — its output, error and checks, and
  ``redacted(args)`` for the record — has every secret value replaced by ``[REDACTED]``, so
  later steps, the trace and a replay's comparison never see one.

Expressions and checks are CPU work that asyncio cannot interrupt, so they run in the thread
pool while the loop waits with the remaining budget: the loop stays responsive and records the
timeout when it passes. The runaway thread is abandoned, like a plain-function tool past its
timeout (Python cannot kill a thread: it runs until it returns and its result is discarded;
the sandbox's size bounds keep any single operation of it small, see
``planner/sandbox_limits.py``). Arguments that are only plain references
(``${{ steps.a.output.x }}``) are resolved inline: a lookup cannot be slow.

It records nothing itself: executors turn the ``Outcome`` into trace events.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json

from dagwright.errors import StepError
from dagwright.executors.engine.decisions import render_args
from dagwright.executors.engine.outcome import FAILED, SUCCEEDED, TIMED_OUT, Outcome, error_info
from dagwright.executors.engine.verify import Judge, run_check
from dagwright.planner.references import ExpressionError, expressions_in
from dagwright.planner.schema import Check, Step
from dagwright.planner.secret_refs import SECRETS, secret_name
from dagwright.secret_values import NO_SECRETS, SecretValues
from dagwright.tools.registry import Tool, ToolContext

T = TypeVar("T")

EVAL_TIMEOUT = 10.0
"""Seconds for resolving a step's arguments, and for its checks, when it has no ``timeout:``
(the default of DAGWRIGHT_EVAL_TIMEOUT)."""
RESOLVING, VERIFYING = "resolving its arguments", "verifying its output"


class _Late(Exception):
    """The budget ran out."""


class Attempt:
    """One attempt of a step under one time budget, which starts when the attempt is made.

    ``context`` is what the step's references read (its ``with`` and its checks). ``pool`` runs
    plain-function tools, expressions and checks (default: a thread of the attempt's own,
    ``close()`` lets it go). An output bigger than ``max_output_bytes`` as JSON fails the
    attempt (not retryable). ``secrets``: what ``${{ secrets.NAME }}`` in its ``with`` reads."""

    def __init__(
        self,
        step: Step,
        context: dict[str, Any],
        *,
        number: int,
        eval_timeout: float = EVAL_TIMEOUT,
        pool: Executor | None = None,
        max_output_bytes: int | None = None,
        secrets: SecretValues = NO_SECRETS,
    ) -> None:
        self.step = step
        self.context = context
        self.secrets = secrets
        self.redactor = secrets.redactor()
        self.number = number
        self.eval_timeout = eval_timeout
        self.max_output_bytes = max_output_bytes
        self._pool = pool
        self._own_pool: ThreadPoolExecutor | None = None
        self.started = time.perf_counter()
        self.deadline = self.started + step.timeout if step.timeout else None

    @property
    def pool(self) -> Executor:
        if self._pool is None:
            self._pool = self._own_pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="dagwright-step"
            )
        return self._pool

    def close(self) -> None:
        """Let the attempt's own thread go; one still running is not waited for."""
        if self._own_pool is not None:
            self._own_pool.shutdown(wait=False, cancel_futures=True)

    # -- the budget --------------------------------------------------------------------------------
    def _limit(self, evaluation: bool) -> float | None:
        """Seconds left for the next part: the rest of the step's timeout; with none,
        ``eval_timeout`` for evaluation and no bound for the tool or a model call."""
        if self.deadline is not None:
            return max(0.0, self.deadline - time.perf_counter())
        return self.eval_timeout if evaluation else None

    async def _in_pool(self, fn: Callable[[], T], *, evaluation: bool = True) -> T:
        """``fn()`` in the pool, waited for within the budget (the thread is abandoned after)."""
        limit = self._limit(evaluation)
        if limit is not None and limit <= 0:
            raise _Late
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn)
        if limit is None:
            return await future
        try:
            return await asyncio.wait_for(future, limit)
        except TimeoutError:
            raise _Late from None

    def _done(self, outcome: Outcome) -> Outcome:
        outcome.duration = round(time.perf_counter() - self.started, 6)
        if self.redactor:
            outcome.output = self.redacted(outcome.output)
            outcome.error = self.redacted(outcome.error)
            outcome.checks = self.redacted(outcome.checks)
        return outcome

    def redacted(self, value: Any) -> Any:
        """``value`` with the secrets' values replaced (``[REDACTED]``): as it is recorded."""
        return self.redactor.value(value)

    def _timed_out(self, doing: str | None, output: Any = None) -> Outcome:
        step = self.step
        if self.deadline is not None:
            msg = f"step {step.id!r} timed out after {step.timeout:g}s (attempt {self.number})"
            msg += f" while {doing}" if doing else ""
        else:
            msg = (
                f"step {step.id!r}: {doing} took longer than {self.eval_timeout:g}s "
                "(DAGWRIGHT_EVAL_TIMEOUT; a `timeout:` on the step sets its own budget) "
                f"(attempt {self.number})"
            )
        error = error_info(TimeoutError(), kind="timeout", message=msg, with_traceback=False)
        return self._done(Outcome(TIMED_OUT, output=output, error=error))

    # -- the parts ---------------------------------------------------------------------------------
    async def resolve(self) -> tuple[Any, Outcome | None]:
        """The step's ``with`` rendered, or the outcome that ends the attempt (a reference that
        cannot resolve: failed, not retryable; past the budget: timed out)."""
        step = self.step
        context = self.context
        try:
            found = [expr for _, expr in expressions_in(step.with_)]
        except ExpressionError:  # resolving says what is wrong with it
            found = None
        wanted = list(dict.fromkeys(n for e in found or () if (n := secret_name(e)) is not None))
        if wanted:
            missing = [name for name in wanted if name not in self.secrets]
            if missing:
                return None, self._done(_no_secret(step, missing))
            context = {**context, SECRETS: self.secrets}
        resolve = functools.partial(render_args, step.id, step.with_, context)
        if found is None or all(e.is_path for e in found):  # lookups only: never slow
            args, failed = resolve()
        else:
            try:
                args, failed = await self._in_pool(resolve)
            except _Late:
                return None, self._timed_out(RESOLVING)
        return args, self._done(failed) if failed is not None else None

    async def execute(self, tool: Tool, args: Any, ctx: ToolContext) -> Outcome:
        """Call the tool with the resolved arguments, then verify its output.

        Cancellation (``asyncio.CancelledError``) propagates to the caller."""
        step = self.step
        try:
            kwargs = tool.bind(args, ctx)
        except ValidationError as exc:
            msg = f"step {step.id!r}: invalid arguments for tool {tool.name!r}: " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'with'}: {e['msg']}" for e in exc.errors()
            )
            info = error_info(exc, kind="error", message=msg, retryable=False, with_traceback=False)
            return self._done(Outcome(FAILED, error=info))
        limit = self._limit(evaluation=False)
        if limit is not None and limit <= 0:  # spent before the call: the tool is not called
            return self._timed_out(None)
        try:
            if tool.is_async:
                call = tool.fn(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                call = loop.run_in_executor(self.pool, functools.partial(tool.fn, **kwargs))
            result = await (asyncio.wait_for(call, limit) if limit is not None else call)
            output = self.redacted(tool.to_json(result))
        except TimeoutError:
            return self._timed_out(None)
        except StepError as exc:
            info = error_info(exc, kind=exc.kind, retryable=exc.retryable)
            return self._done(Outcome(FAILED, error=info))
        except PydanticSerializationError as exc:
            msg = f"step {step.id!r}: the output of tool {tool.name!r} is not JSON data: {exc}"
            info = error_info(exc, kind="error", message=msg, retryable=False)
            return self._done(Outcome(FAILED, error=info))
        except Exception as exc:  # noqa: BLE001 - a tool's own failure, recorded with its traceback
            # named by its type, as Python prints it: `KeyError: 'sales'`, not `'sales'`
            said = str(exc)
            msg = f"{type(exc).__name__}: {said}" if said else type(exc).__name__
            return self._done(Outcome(FAILED, error=error_info(exc, kind="error", message=msg)))
        if self.max_output_bytes is not None:
            too_big = _oversize(step, tool, output, self.max_output_bytes)
            if too_big is not None:
                return self._done(too_big)
        try:
            checks = await self._verify(output, ctx)
        except _Late:
            return self._timed_out(VERIFYING, output)
        failures = [c["message"] for c in checks if not c["passed"]]
        if failures:
            msg = f"step {step.id!r}: " + "; ".join(failures)
            error = error_info(None, kind="verification", message=msg)
            error["type"] = "VerificationFailed"
            return self._done(Outcome(FAILED, output=output, error=error, checks=checks))
        return self._done(Outcome(SUCCEEDED, output=output, checks=checks))

    async def _verify(self, output: Any, ctx: ToolContext) -> list[dict[str, Any]]:
        """The checks' results, in order: runs of checks without a model call in the pool
        under the evaluation budget, a ``judge`` (a model call) by itself."""
        checks = self.step.verify
        if not checks:
            return []
        judge: Judge | None = None
        if any(c.judge is not None for c in checks):
            from dagwright.tools.llm import judge_with

            judge = judge_with(ctx)
        results: list[dict[str, Any]] = []
        for batch in _batches(checks):
            run = functools.partial(_run_checks, batch, output, self.context, judge)
            results += await self._in_pool(run, evaluation=batch[0][1].judge is None)
        return results


def _no_secret(step: Step, names: list[str]) -> Outcome:
    """The step reads a secret this process does not have (not retryable)."""
    msg = (
        f"step {step.id!r}: secret {', '.join(map(repr, names))} is not set where the step "
        f"runs: set DAGWRIGHT_SECRET_{names[0]} (or add it to DAGWRIGHT_SECRETS_FILE) in the "
        "environment of the process that runs steps (each Celery worker reads its own)"
    )
    return _refused("SecretNotSet", msg)


def _refused(kind: str, message: str) -> Outcome:
    """A failed outcome no retry can change, with its error's ``type``."""
    error = error_info(None, kind="error", message=message, retryable=False)
    error["type"] = kind
    return Outcome(FAILED, error=error)


def _batches(checks: list[Check]) -> list[list[tuple[int, Check]]]:
    """Consecutive checks without a model call together; each ``judge`` alone."""
    batches: list[list[tuple[int, Check]]] = []
    for i, check in enumerate(checks):
        alone = check.judge is not None
        if alone or not batches or batches[-1][0][1].judge is not None:
            batches.append([])
        batches[-1].append((i, check))
    return batches


def _run_checks(
    batch: list[tuple[int, Check]], output: Any, context: dict[str, Any], judge: Judge | None
) -> list[dict[str, Any]]:
    return [run_check(check, i, output, context, judge) for i, check in batch]


def _oversize(step: Step, tool: Tool, output: Any, limit: int) -> Outcome | None:
    """A failed outcome when the output is bigger than ``limit`` bytes of JSON: it is not
    recorded, and a retry would return as much again."""
    size = len(to_json(output))
    if size <= limit:
        return None
    msg = (
        f"step {step.id!r}: the output of tool {tool.name!r} is {size:,} bytes of JSON, more "
        f"than the limit of {limit:,}; have the tool return less (e.g. a file's path), or raise "
        "DAGWRIGHT_MAX_OUTPUT_BYTES"
    )
    return _refused("OutputTooLarge", msg)


async def execute_attempt(
    tool: Tool,
    step: Step,
    args: Any,
    ctx: ToolContext,
    context: dict[str, Any],
    *,
    pool: Executor | None = None,
    max_output_bytes: int | None = None,
    eval_timeout: float = EVAL_TIMEOUT,
) -> Outcome:
    """An attempt whose arguments are resolved already: call the tool, verify (``Attempt``)."""
    attempt = Attempt(
        step,
        context,
        number=ctx.attempt,
        eval_timeout=eval_timeout,
        pool=pool,
        max_output_bytes=max_output_bytes,
    )
    try:
        return await attempt.execute(tool, args, ctx)
    finally:
        attempt.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on this thread's event loop (one per worker thread, reused:
    a new loop per step costs). Not ``asyncio.run``: it would wait for abandoned threads."""
    holder = getattr(_local, "holder", None)
    if holder is None:
        holder = _local.holder = _Loop()
    return holder.loop.run_until_complete(coro)


def run_step(
    tool: Tool,
    step: Step,
    args: Any,
    ctx: ToolContext,
    context: dict[str, Any],
    *,
    max_output_bytes: int | None = None,
    eval_timeout: float = EVAL_TIMEOUT,
) -> Outcome:
    """Synchronous ``execute_attempt``: for worker processes and tests.

    A plain-function tool runs in a thread of its own, which is not waited for after a
    timeout."""
    return run_sync(
        execute_attempt(
            tool,
            step,
            args,
            ctx,
            context,
            max_output_bytes=max_output_bytes,
            eval_timeout=eval_timeout,
        )
    )


class _Loop:
    """A thread's event loop, closed when the thread ends (its thread-local storage goes)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        if not self.loop.is_closed():
            self.loop.close()


_local = threading.local()


__all__ = ["EVAL_TIMEOUT", "Attempt", "execute_attempt", "run_step", "run_sync"]
