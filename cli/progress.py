"""Live progress of a run while it executes: a table on a terminal, a line per change otherwise."""

from __future__ import annotations

import heapq
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from dagwright.cli.common import _plural, _secs
from dagwright.executors import engine
from dagwright.executors.engine import events as ev
from dagwright.executors.engine.events import Event
from dagwright.planner.schema import Workflow

ICONS = {
    engine.PENDING: "·",
    engine.SCHEDULED: "○",
    engine.RUNNING: "▶",
    engine.RETRYING: "↻",
    engine.SUCCEEDED: "[green]✓[/green]",
    engine.FAILED: "[red]✗[/red]",
    engine.SKIPPED: "[dim]-[/dim]",
    engine.CANCELLED: "[yellow]■[/yellow]",
}
PLAIN_ICONS = {
    engine.PENDING: "·",
    engine.SCHEDULED: "○",
    engine.RUNNING: "▶",
    engine.RETRYING: "↻",
    engine.SUCCEEDED: "✓",
    engine.FAILED: "✗",
    engine.SKIPPED: "-",
    engine.CANCELLED: "■",
}
MAX_ROWS = 24


class Progress:
    def __init__(self, workflow: Workflow, *, enabled: bool, live: bool, console: Console) -> None:
        self.workflow = workflow
        self.enabled = enabled
        self.console = console
        self.state: engine.RunState | None = None
        self._live = (
            Live(console=console, auto_refresh=False, transient=False) if enabled and live else None
        )
        self._next = 0.0  # when the live table may be drawn again
        self._tools: tuple[Workflow | None, dict[str, str]] = (None, {})

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            if self.state is not None:
                self._live.update(self.render(self.state), refresh=True)
            self._live.stop()
        elif self.enabled:
            self.console.file.flush()

    def on_event(self, event: Event, state: engine.RunState) -> None:
        if not self.enabled:
            return
        self.state = state
        if event.type == ev.PLAN_REVISED:  # said once (above the live table), against the
            said = revision_line(event.data, self.workflow)  # plan it revises
            self.workflow = Workflow.model_validate(event.data["workflow"])
            self.console.print(said, highlight=False)
        if self._live is not None:
            now = time.monotonic()
            if now >= self._next or event.type == ev.RUN_FINISHED:
                self._live.update(self.render(state), refresh=True)
                done = time.monotonic()
                # at most 10 redraws a second, and at most a tenth of the time (a table of a
                # large plan takes milliseconds to draw)
                self._next = done + max(0.1, 10 * (done - now))
            return
        line = self.line(event, state)
        if line:  # plain text, written as is: not a terminal (no colours), one line per fact
            self.console.file.write(line + "\n")

    def line(self, event: Event, state: engine.RunState) -> str | None:
        """The line a fact makes, as plain text (printed when the output is not a terminal)."""
        sid = event.step or ""
        data = event.data
        if event.type == ev.RUN_STARTED:
            steps = _plural(len(state.steps), "step")
            return f"run {event.run_id}: {self.workflow.name}, {steps}"
        if event.type == ev.RUN_QUEUED:
            key, limit = data.get("key"), int(data.get("limit") or 1)
            runs = "1 run" if limit == 1 else f"{limit} runs"
            return f"  ⏸ queued: {runs} of key {key} may run at once; waiting for a slot"
        if event.type == ev.RUN_ADMITTED:
            return "  ▷ admitted: a slot is free"
        if event.type == ev.ATTEMPT_STARTED:
            return f"  ▶ {sid}" + (
                f" (attempt {event.attempt})" if (event.attempt or 1) > 1 else ""
            )
        if event.type == ev.ATTEMPT_FINISHED and data.get("retry_in") is not None:
            msg = (data.get("error") or {}).get("message", "")
            wait = _secs(data["retry_in"])
            return f"  ↻ {sid} attempt {event.attempt} {data['status']}: {msg} (retry in {wait})"
        if event.type == ev.STEP_FINISHED:
            step = state.steps[event.step or ""]
            n = len(step.attempts)
            took = engine_duration(step)
            if step.reused:
                return f"  ↺ {sid}  reused from run {step.reused.get('run_id')}"
            why = f" ({step.reason})" if step.reason else ""
            tail = {
                engine.SUCCEEDED: f"{_plural(n, 'attempt')}, {took}",
                engine.FAILED: f"failed after {_plural(n, 'attempt')}: "
                + (step.error or {}).get("message", "")
                + why,
                engine.SKIPPED: f"skipped: {step.reason or ''}",
                engine.CANCELLED: "cancelled",
            }.get(step.status, step.status)
            return f"  {PLAIN_ICONS.get(step.status, '?')} {sid}  {tail}"
        return None

    def _uses(self, sid: str) -> str:
        if self._tools[0] is not self.workflow:  # the plan was revised: its steps' tools
            self._tools = (self.workflow, {s.id: s.uses for s in self.workflow.steps})
        return self._tools[1].get(sid, "")

    def render(self, state: engine.RunState) -> Table:
        counts: dict[str, int] = {}
        for s in state.steps.values():
            counts[s.status] = counts.get(s.status, 0) + 1
        title = "  ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        table = Table(
            title=f"{escape(self.workflow.name)} — {title}", box=None, title_justify="left"
        )
        for col in ("", "step", "tool", "attempts", "time"):
            table.add_column(col)
        steps = list(state.steps.values())
        if len(steps) > MAX_ROWS:  # big plans: what is running, then what failed, then the latest
            order = {engine.RUNNING: 0, engine.RETRYING: 0, engine.FAILED: 1, engine.SCHEDULED: 2}
            steps = heapq.nsmallest(
                MAX_ROWS, steps, key=lambda s: (order.get(s.status, 3), -(s.finished_at or 0))
            )
        for s in steps:
            table.add_row(
                ICONS.get(s.status, "?"),
                escape(s.id),
                escape(self._uses(s.id)),
                "reused" if s.reused else str(len(s.attempts)),
                engine_duration(s),
            )
        return table


def engine_duration(step: engine.StepState) -> str:
    if step.started_at is None:
        return ""
    end = step.finished_at if step.finished_at is not None else time.time()
    return _secs(end - step.started_at)


def revision_line(data: dict[str, Any], workflow: Workflow | None = None) -> str:
    """A plan revision, as live progress announces it: which step failed and why, which
    steps are kept (not run again), and what the revised plan adds, changes and drops."""
    now = [s.get("id") for s in (data.get("workflow") or {}).get("steps") or []]
    kept = list(data.get("kept") or [])
    before = {s.id: s.model_dump() for s in workflow.steps} if workflow is not None else {}
    error = escape(str((data.get("error") or {}).get("message", "")))
    parts = [f"kept: {', '.join(map(str, kept)) or 'none'}"]
    if before:
        added = [sid for sid in now if sid not in before]
        dropped = [sid for sid in before if sid not in now]
        again = [sid for sid in now if sid in before and sid not in kept]
        parts += [f"{label}: {', '.join(map(str, ids))}" for label, ids in
                  (("new", added), ("run again", again), ("dropped", dropped)) if ids]  # fmt: skip
    else:
        parts.append(f"steps now: {', '.join(map(str, now))}")
    return (
        f"  ⟳ plan revised (revision {data.get('revision')}) after step "
        f"{escape(repr(data.get('failed_step')))} failed: {error}\n    " + "; ".join(parts)
    )


__all__ = ["Progress"]
