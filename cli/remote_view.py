"""What ``submit --wait``, ``status`` and ``follow`` print from the API's documents: progress
lines from a stream's events, and a run's status and summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.markup import escape

from dagwright.cli.common import _error_text, _plural, _secs, _status_text, out

Json = dict[str, Any]


class EventLines:
    """Progress from a stream's events, a line per change (as `run` prints it when piped)."""

    def __init__(self, run: Json) -> None:
        from dagwright.cli.progress import ICONS

        self.icons = ICONS
        self.workflow = str(run.get("workflow") or "")
        self.steps = len(run.get("steps") or {})
        self.started: dict[str, float] = {}

    def line(self, e: Json) -> str | None:
        kind, data = e.get("type"), e.get("data") or {}
        sid, n = escape(str(e.get("step") or "")), e.get("attempt") or 1
        if kind == "run_started":
            steps = _plural(self.steps, "step")
            return f"run [bold]{e.get('run_id')}[/bold]: {escape(self.workflow)}, {steps}"
        if kind == "attempt_started":
            self.started.setdefault(sid, _seconds(e.get("at")))
            return f"  ▶ {sid}" + (f" (attempt {n})" if n > 1 else "")
        if kind == "attempt_finished" and data.get("retry_in") is not None:
            msg = escape(str((data.get("error") or {}).get("message", "")))
            wait = _secs(data["retry_in"])
            return f"  ↻ {sid} attempt {n} {data.get('status')}: {msg} (retry in {wait})"
        if kind == "step_finished":
            return self._finished(e, sid, n, data)
        if kind == "run_queued":
            key, limit = escape(repr(data.get("key"))), data.get("limit")
            return f"  queued: waiting for a slot of {key} (limit {limit})"
        if kind == "run_admitted":
            return "  admitted: its steps may start"
        if kind == "plan_revised":
            from dagwright.cli.progress import revision_line

            return revision_line(data)
        return None

    def _finished(self, e: Json, sid: str, n: int, data: Json) -> str:
        status = str(data.get("status"))
        if data.get("reused"):
            return f"  ↺ {sid}  reused from run {data['reused'].get('run_id')}"
        took = _secs(_seconds(e.get("at")) - self.started[sid]) if sid in self.started else ""
        attempts = _plural(n, "attempt")
        why = f" ({escape(str(data['reason']))})" if data.get("reason") else ""
        tail = {
            "succeeded": f"{attempts}, {took}",
            "failed": f"failed after {attempts}: "
            + escape(str((data.get("error") or {}).get("message", "")))
            + why,
            "skipped": f"skipped: {escape(str(data.get('reason') or ''))}",
            "cancelled": "cancelled",
        }.get(status, status)
        return f"  {self.icons.get(status, '?')} {sid}  {tail}"


def _seconds(at: Any) -> float:
    """An event's ``at`` (ISO 8601; Unix seconds from an older server) as Unix seconds."""
    if isinstance(at, str):
        try:
            return datetime.fromisoformat(at).timestamp()
        except ValueError:
            return 0.0
    return float(at or 0)


def print_status(summary: Json, again: str | None = None) -> None:
    from dagwright.cli.ending import status_words

    out.print(
        f"run [bold]{summary['run_id']}[/bold]  workflow [bold]{escape(str(summary.get('workflow')))}"
        "[/bold]  ",
        _status_text(summary["status"]),
        f"[yellow]{escape(status_words(summary)[len(str(summary['status'])) :])}[/yellow]",
        f"  {_secs(summary['duration'])}" if summary.get("duration") is not None else "",
    )
    counts: dict[str, int] = {}
    for step in (summary.get("steps") or {}).values():
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    out.print("steps: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"))
    lineage = summary.get("lineage")
    if lineage:
        out.print(f"lineage: {lineage.get('mode')} of run {lineage.get('parent')}")
    error = summary.get("error")
    if error:
        out.print(f"[red]error:[/red] {escape(_error_text(error))}")
    for failed in summary.get("failed_optional") or []:
        out.print(f"[yellow]failed optional step[/yellow] {escape(str(failed.get('step')))}: "
                  f"{escape(str(failed.get('message')))}")  # fmt: skip
    if summary["status"] == "succeeded":
        from dagwright.cli.ending import Output, print_output

        print_output(summary.get("output"), Output())
    if again:
        out.print(f"status: {again}")


__all__ = ["EventLines", "print_status"]
