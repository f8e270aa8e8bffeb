"""Live progress of a run while it executes: a table on a terminal, a line per change otherwise."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

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
        self._last = 0.0

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

    def on_event(self, event: Event, state: engine.RunState) -> None:
        if not self.enabled:
            return
        self.state = state
        if self._live is not None:
            now = time.monotonic()
            if now - self._last > 0.1 or event.type == ev.RUN_FINISHED:
                self._last = now
                self._live.update(self.render(state), refresh=True)
            return
        line = self.line(event, state)
        if line:
            self.console.print(line, highlight=False)

    def line(self, event: Event, state: engine.RunState) -> str | None:
        sid = escape(event.step or "")
        data = event.data
        if event.type == ev.RUN_STARTED:
            return f"run [bold]{event.run_id}[/bold]: {escape(self.workflow.name)}, {len(state.steps)} steps"
        if event.type == ev.RUN_QUEUED:
            key, limit = escape(str(data.get("key"))), data.get("limit")
            return f"  ⏸ queued: {limit} run(s) of key {key} may run at once; waiting for a slot"
        if event.type == ev.RUN_ADMITTED:
            return "  ▷ admitted: a slot is free"
        if event.type == ev.ATTEMPT_STARTED:
            return f"  ▶ {sid}" + (
                f" (attempt {event.attempt})" if (event.attempt or 1) > 1 else ""
            )
        if event.type == ev.ATTEMPT_FINISHED and data.get("retry_in") is not None:
            msg = escape((data.get("error") or {}).get("message", ""))
            return f"  ↻ {sid} attempt {event.attempt} {data['status']}: {msg} (retry in {data['retry_in']:g}s)"
        if event.type == ev.STEP_FINISHED:
            step = state.steps[event.step or ""]
            n = len(step.attempts)
            took = engine_duration(step)
            if step.reused:
                return f"  ↺ {sid}  reused from run {step.reused.get('run_id')}"
            tail = {
                engine.SUCCEEDED: f"{n} attempt{'s' if n != 1 else ''}, {took}",
                engine.FAILED: f"failed after {n} attempt{'s' if n != 1 else ''}: "
                + escape((step.error or {}).get("message", "")),
                engine.SKIPPED: f"skipped: {escape(step.reason or '')}",
                engine.CANCELLED: "cancelled",
            }.get(step.status, step.status)
            return f"  {ICONS.get(step.status, '?')} {sid}  {tail}"
        return None

    def _uses(self, sid: str) -> str:
        try:
            return self.workflow.step(sid).uses
        except KeyError:  # a step a revised plan added
            return ""

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
            steps = sorted(steps, key=lambda s: (order.get(s.status, 3), -(s.finished_at or 0)))[
                :MAX_ROWS
            ]
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
    return f"{end - step.started_at:.2f}s"


__all__ = ["Progress"]
