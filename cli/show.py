"""Looking at one recorded run: ``dagwright show`` (its steps, attempts, errors, exchanges and
output; its plan with --workflow, its model calls with --calls) and ``trace`` (every event).

Its parts: ``run_view`` (show --workflow and --calls), ``team_view`` (an ``agents.team`` step's
exchange in show and trace); ``runs`` and ``diff``, which look across runs, are in ``runs``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dagwright.cli.common import (
    DbOption,
    JsonOption,
    _db_flag,
    _error_text,
    _json,
    _secs,
    _settings,
    _status_text,
    _store,
    err,
    out,
)
from dagwright.cli.ending import Output, OutputFileOption, OutputModeOption
from dagwright.cli.team_view import print_exchanges, team_bits


def show_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    as_json: JsonOption = False,
    db: DbOption = None,
    workflow: Annotated[
        bool,
        typer.Option(
            "--workflow",
            help="Print the run's plan (a planned run's too) as a workflow file, for review "
            "and re-use: `show RUN --workflow > plan.yaml`, edit, `resume RUN --workflow "
            "plan.yaml` or `run plan.yaml`.",
        ),
    ] = False,
    calls: Annotated[
        bool,
        typer.Option(
            "--calls",
            help="Print each model call: its prompt's messages, the answer or error, usage and "
            "latency (--json: the recorded calls as data).",
        ),
    ] = False,
    output_mode: OutputModeOption = "auto",
    output_file: OutputFileOption = None,
) -> None:
    """Show a run: its steps, attempts, timings, errors, each agents.team step's exchange
    (turn, agent, kind, tokens, text) and its output (or, with --workflow, its plan; with
    --calls, its model calls)."""
    from dagwright.cli.run_view import calls_json, plan_yaml, print_calls
    from dagwright.executors.engine import outcome
    from dagwright.executors.lifecycle import seen_status
    from dagwright.executors.summary import run_summary, state_of

    output = Output.chosen(output_mode, output_file)
    store = _store(db, create=False)
    record = store.get_run(run_id)
    events = store.events(record.run_id)
    _, state = state_of(record, events)
    if workflow:
        text = plan_yaml(state.current_plan.workflow, record.run_id, state.revisions, record.source)
        sys.stdout.write(text)
        return
    if calls:
        _json(calls_json(events)) if as_json else print_calls(events)
        return
    summary = run_summary(record, state, store.location(), detail=True)
    summary["status"] = seen_status(
        store, record, summary["status"], time.time(), _settings().heartbeat
    )
    if as_json:
        if output.file is not None and summary["status"] == outcome.SUCCEEDED:
            err.print(f"output: {output.write(summary['output'])}")
        _json(summary)
        return
    _print_run(record, state, summary, events, db, output)


def _print_run(
    record: Any, state: Any, summary: dict[str, Any], events: list[Any], db: str | None,
    output: Output,
) -> None:  # fmt: skip
    """``show``'s text: the run, its steps, revisions, failed attempts, error and output."""
    from dagwright.cli.ending import print_output, status_words
    from dagwright.executors.engine import outcome

    head = Text.assemble("run ", (record.run_id, "bold"), "  workflow ",
                         (record.workflow_name, "bold"), "  ", _status_text(summary["status"]),
                         (status_words(summary)[len(summary["status"]) :], "yellow"),
                         f"  {_secs(summary['duration'])}")  # fmt: skip
    out.print(head, highlight=False)
    if record.source:
        out.print(f"source: {escape(record.source)}   started: {summary['started_at']}")
    if record.inputs:
        out.print(f"inputs: {escape(json.dumps(record.inputs, ensure_ascii=False))}")
    if record.parent_run_id:
        froms = ", ".join(record.from_steps)
        out.print(
            f"lineage: {record.mode} of run [bold]{record.parent_run_id}[/bold]"
            + (
                f", from step{'s' if len(record.from_steps) > 1 else ''} {escape(froms)}"
                if froms
                else ""
            )
        )
    _print_steps(state, summary)
    _print_revisions_and_calls(events, record.workflow)
    print_exchanges(events)
    for sid, step in summary["steps"].items():
        details = step["attempt_details"]
        for i, attempt in enumerate(details):
            if attempt["status"] not in (outcome.SUCCEEDED, outcome.RUNNING):
                retried = i + 1 < len(details)
                _print_failed_attempt(sid, attempt, retried, step.get("reason"))
    if summary.get("error"):
        out.print(f"\n[red]error:[/red] {escape(_error_text(summary['error']))}")
    for failed in summary.get("failed_optional") or []:
        out.print(f"\n[yellow]failed optional step[/yellow] {escape(str(failed['step']))}: "
                  f"{escape(str(failed.get('message')))}")  # fmt: skip
    if state.status == outcome.SUCCEEDED:
        out.print()
        print_output(state.output, output)
    flag = escape(_db_flag(db))
    out.print(f"\ntrace: dagwright trace {record.run_id}{flag}")
    if state.current_plan.workflow.task or state.revisions:
        out.print(f"plan: dagwright show {record.run_id} --workflow{flag}")
    if any(e.type == "model_call" for e in events):
        out.print(f"model calls: dagwright show {record.run_id} --calls{flag}")


def _print_steps(state: Any, summary: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold")
    for col in ("step", "status", "attempts", "started", "duration", "error / note"):
        table.add_column(col)
    now = time.time()
    for sid, step in summary["steps"].items():
        table.add_row(
            sid,
            _status_text(step["status"]),
            str(step["attempts"]),
            step["started_at"] or "",
            _secs(step["duration"]) or _running_for(state.steps[sid], now),
            escape(_note(step)),
        )
    out.print(table)


def _note(step: dict[str, Any]) -> str:
    """The table's last column: the error (and why it was not retried), or why it was skipped,
    or where its output was reused from."""
    if step.get("error"):
        reason = step.get("reason")
        return str(step["error"]) + (f" ({reason})" if reason else "")
    if step.get("reason"):
        return str(step["reason"])
    return f"reused from run {step['reused_from']}" if step.get("reused_from") else ""


def _running_for(step: Any, now: float) -> str:
    """How long a step's running attempt has been running (a run still executing)."""
    last = step.attempts[-1] if step.attempts else None
    if last is None or last.finished_at is not None or last.started_at is None:
        return ""
    return f"running {_secs(max(0.0, now - last.started_at))}"


def _print_revisions_and_calls(events: list[Any], workflow: dict[str, Any] | None = None) -> None:
    from dagwright.cli.progress import revision_line
    from dagwright.executors.engine import events as ev
    from dagwright.planner.schema import Workflow

    before = Workflow.model_validate(workflow) if workflow is not None else None
    for e in events:
        if e.type == ev.PLAN_REVISED:
            out.print("\n" + revision_line(e.data, before).strip(), highlight=False)
            before = Workflow.model_validate(e.data["workflow"])
    diverged = [e for e in events if e.type == ev.REPLAY_DIVERGED]
    if diverged:
        first = diverged[0].data
        out.print(
            f"\n[red]replay diverged[/red] ({len(diverged)} divergence"
            f"{'s' if len(diverged) != 1 else ''}); first: {escape(first.get('message', ''))}"
        )
        if first.get("diff"):
            out.print(escape(first["diff"]), highlight=False)
    calls = [e for e in events if e.type == ev.MODEL_CALL]
    if calls:
        hits = sum(bool(e.data.get("cache_hit")) for e in calls)
        failed = sum(bool(e.data.get("error")) for e in calls)
        out.print(f"\nmodel calls: {len(calls)} ({hits} from the cache, {failed} with an error)")


def _print_failed_attempt(
    sid: str, a: dict[str, Any], retried: bool, reason: str | None = None
) -> None:
    error = a["error"] or {}
    took = f" after {_secs(a['duration'])}" if a["duration"] is not None else ""
    out.print(
        f"\n[bold]{escape(sid)}[/bold] attempt {a['attempt']} [red]{a['status']}[/red]"
        f"{took}: {escape(error.get('message', ''))}"
    )
    for check in a["checks"]:
        if not check["passed"]:
            out.print(f"  ✗ {escape(check['message'])}")
    if error.get("traceback"):
        tail = error["traceback"].splitlines()[-6:]
        out.print("[dim]" + escape("\n".join("  " + line for line in tail)) + "[/dim]")
    if a["retry_in"] is not None and retried:
        out.print(f"  [dim]retried after {_secs(a['retry_in'])}[/dim]")
    elif a["retry_in"] is not None or (reason or "").startswith("not retried"):
        due = f" (it was due in {_secs(a['retry_in'])})" if a["retry_in"] is not None else ""
        out.print(f"  [dim]{escape(reason or 'not retried')}{due}[/dim]")


def trace_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Print a run's trace: every event, in order."""
    from dagwright.executors.summary import event_item

    store = _store(db, create=False)
    record = store.get_run(run_id)
    events = store.events(record.run_id)
    if as_json:
        _json([event_item(e) for e in events])
        return
    t0 = events[0].at if events else 0.0
    for e in events:
        out.print(escape("  ".join(_trace_line(e, t0))), soft_wrap=True)


def _trace_line(e: Any, t0: float) -> list[str]:
    """The words of one event's line in ``dagwright trace``."""
    from dagwright.executors.engine import events as ev

    data = e.data
    bits = [f"{e.seq:>4}", f"+{e.at - t0:8.3f}s", f"{e.type:<17}"]
    if e.step:
        bits.append(f"{e.step}" + (f"#{e.attempt}" if e.attempt else ""))
    if "status" in data:
        bits.append(str(data["status"]))
    if data.get("reused"):
        bits.append(f"reused from run {data['reused'].get('run_id')}")
    if e.type == ev.RUN_STARTED and data.get("lineage"):
        lin = data["lineage"]
        bits.append(f"{lin.get('mode')} of run {lin.get('parent')}")
    if data.get("error"):
        bits.append(str(data["error"].get("message", "")))
    if data.get("reason") and not data.get("reused"):
        bits.append(f"({data['reason']})")
    if data.get("retry_in") is not None:
        bits.append(f"retry in {_secs(data['retry_in'])}")
    if e.type == ev.ATTEMPT_STARTED:
        bits.append(f"inputs={json.dumps(data.get('inputs'), ensure_ascii=False)[:120]}")
    if e.type == ev.MODEL_CALL:
        bits += [str(data.get("purpose") or ""), str(data.get("model_id") or data.get("model"))]
        bits += ["cache hit"] if data.get("cache_hit") else []
        bits += [f"error: {str(data['error'])[:120]}"] if data.get("error") else []
    bits += team_bits(e)
    if e.type == ev.REPLAY_DIVERGED:
        bits.append(str(data.get("message", "")))
    if e.type == ev.PLAN_REVISED:
        bits.append(
            f"revision {data.get('revision')}, kept: {', '.join(data.get('kept') or []) or 'none'}"
        )
    return bits


__all__ = ["show_cmd", "trace_cmd"]
