"""One attempt's tool context, in the one run lifecycle (``executors.lifecycle``): what a tool
gets for an attempt (``tool_context``: previous failure, trace emitter, the model-call cache
under the retry rule, recorded calls in a replay, the run's registry) and what becomes of what
the attempt cached (``settle_cache``). Called by the local executor and the Celery engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dagwright.executors import engine
from dagwright.executors.engine import decisions
from dagwright.tools.registry import ToolContext, ToolRegistry


class Cache(Protocol):
    def get(self, key: str) -> Any: ...
    def put(self, key: str, value: Any) -> None: ...


class AttemptCache:
    """The model-call cache as one attempt sees it.

    A retry must reach the model: an attempt after a failure does not read the cache (its
    request may be the same as the failed attempt's, whose answer was cached). What an attempt
    writes is kept back until the driver knows the attempt succeeded (``commit``), so an answer
    that failed verification is never served to a later run."""

    def __init__(self, cache: Cache, *, read: bool) -> None:
        self.cache = cache
        self.read = read
        self.pending: list[tuple[str, Any]] = []

    def get(self, key: str) -> Any:
        if not self.read:
            return None
        for k, value in reversed(self.pending):
            if k == key:
                return value
        return self.cache.get(key)

    def put(self, key: str, value: Any) -> None:
        self.pending.append((key, value))

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        for key, value in pending:
            self.cache.put(key, value)


def tool_context(
    state: engine.RunState,
    sid: str,
    attempt: int,
    *,
    emit: Callable[[str, dict[str, Any]], None] | None,
    cache: Cache | None,
    replay: Any = None,
    tools: ToolRegistry | None = None,
    settings: Any = None,
) -> ToolContext:
    """What the tool of step ``sid`` gets for attempt ``attempt``. ``cache`` is used when the
    step has ``cache: true`` and this is not a replay (a replay serves recorded calls);
    ``tools``: the run's registry (the tools an ``agents.team`` step's agents may call);
    ``settings``: the driver's, read at its edge (``ToolContext.settings``)."""
    step = state.current_plan.steps[sid]
    use_cache = cache is not None and step.cache and replay is None
    return ToolContext(
        run_id=state.run_id,
        step_id=sid,
        attempt=attempt,
        previous_failure=decisions.previous_failure(state, sid, attempt),
        emit=emit,
        cache=AttemptCache(cache, read=attempt == 1) if use_cache and cache else None,
        replay=replay,
        tools=tools,
        settings=settings,
    )


def settle_cache(ctx: ToolContext, outcome: engine.Outcome) -> None:
    """After an attempt: keep what it cached if it succeeded, drop it otherwise."""
    if isinstance(ctx.cache, AttemptCache) and outcome.status == engine.SUCCEEDED:
        ctx.cache.commit()


__all__ = ["AttemptCache", "Cache", "settle_cache", "tool_context"]
