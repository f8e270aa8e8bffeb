"""Looking across recorded runs: ``dagwright runs`` (recent runs, newest first, as they are seen
now) and ``diff`` (two runs compared step by step). ``show`` and ``trace``, which look at one
run, are in ``cli.show``."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from dagwright.cli.common import (
    EXIT_INVALID,
    DbOption,
    JsonOption,
    _die,
    _json,
    _plural,
    _secs,
    _settings,
    _status_text,
    _store,
    out,
)


def runs_cmd(
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only runs with this status: queued, running, succeeded, failed, cancelled, "
            "abandoned (a local run whose process is gone).",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="How many, newest first.")
    ] = 20,
    show_all: Annotated[
        bool,
        typer.Option("--all", "-a", help="Replays too (`dagwright replay` records each as a run)."),
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """List recent runs, newest first (replays only with --all)."""
    from dagwright.executors.engine.outcome import RUN_STATUSES
    from dagwright.executors.summary import run_item

    if status is not None and status not in RUN_STATUSES:
        words = f"{', '.join(RUN_STATUSES[:-1])} or {RUN_STATUSES[-1]}"
        _die(f"--status {status!r}: use {words}", EXIT_INVALID)
    store = _store(db, create=False)
    runs, hidden = _listed(store, status, limit, show_all)
    if as_json:
        _json([run_item(r.record, r.status, r.finished_at) for r in runs])
        return
    if not runs:
        out.print(
            f"no runs{f' with status {status}' if status else ''} in {escape(store.location())}"
            + (f" ({_plural(hidden, 'replay')} hidden: --all shows them)" if hidden else "")
        )
        return
    table = Table(box=None, header_style="bold")
    derived = any(r.record.parent_run_id for r in runs)
    for col in ("run id", "workflow", "status", "started", "duration"):
        table.add_column(col)
    if derived:
        table.add_column("lineage")
    for r in runs:
        item = run_item(r.record, r.status, r.finished_at)
        row: list[RenderableType | None] = [
            r.record.run_id,
            escape(r.record.workflow_name),
            _status_text(r.status),
            item["started_at"],
            _secs(item["duration"]),
        ]
        if derived:
            parent = r.record.parent_run_id
            row.append(f"{r.record.mode} of {parent[:12]}" if parent else "")
        table.add_row(*row)
    out.print(table)
    if hidden:
        out.print(f"[dim]{_plural(hidden, 'replay')} hidden: --all shows them[/dim]")


def _listed(store: Any, status: str | None, limit: int, show_all: bool) -> tuple[list[Any], int]:
    """Up to ``limit`` runs with ``status`` (as they are seen now: ``abandoned`` is a running
    local run whose lease lapsed), newest first; replays left out unless ``show_all``. Also how
    many replays were left out on the way."""
    from dagwright.executors.engine import outcome
    from dagwright.executors.engine.lineage import REPLAY
    from dagwright.executors.lifecycle import seen_status

    now, heartbeat = time.time(), _settings().heartbeat
    wanted = outcome.RUNNING if status == outcome.ABANDONED else status
    shown: list[Any] = []
    hidden = 0
    after = None
    while len(shown) < limit:
        page = store.list_runs(status=wanted, limit=limit, after=after)
        for r in page:
            if r.record.mode == REPLAY and not show_all:
                hidden += 1
                continue
            r = replace(r, status=seen_status(store, r.record, r.status, now, heartbeat))
            if status is None or r.status == status:
                shown.append(r)
                if len(shown) == limit:
                    break
        if len(page) < limit:
            break
        after = (page[-1].record.created_at, page[-1].record.run_id)
    return shown, hidden


def diff_cmd(
    run_a: Annotated[str, typer.Argument(help="A run id (or unique prefix).")],
    run_b: Annotated[str, typer.Argument(help="Another run id (or unique prefix).")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Compare two runs step by step: what differs in status, attempts, inputs and outputs.

    Useful on a run and its resume, fork or replay. A reused step is compared by the inputs and
    output it carries."""
    from dagwright.executors.engine.lineage import compare_runs
    from dagwright.executors.summary import state_of

    store = _store(db, create=False)
    states = []
    for rid in (run_a, run_b):
        record = store.get_run(rid)
        states.append(state_of(record, store.events(record.run_id))[1])
    store.close()
    result = compare_runs(states[0], states[1])
    if as_json:
        _json(result)
        return
    out.print(f"--- run {result['a']}\n+++ run {result['b']}", highlight=False)
    for name, values in result["run"].items():
        out.print(f"[bold]run {name}[/bold]")
        _print_values_diff(values["a"], values["b"])
    for sid, step in result["steps"].items():
        out.print(f"[bold]step {escape(sid)}[/bold]: differs in {', '.join(step['differs'])}")
        a, b = step["a"] or {}, step["b"] or {}
        for name in step["differs"]:
            if name == "presence":
                out.print(f"  only in run {result['a'] if step['a'] else result['b']}")
            else:
                out.print(f"  {name}:")
                _print_values_diff(a.get(name), b.get(name), indent="    ")
    same = result["identical"]
    out.print(
        f"{_plural(len(same), 'step')} identical"
        + (f": {escape(', '.join(same))}" if same else ""),
        highlight=False,
    )


def _print_values_diff(a: Any, b: Any, indent: str = "  ") -> None:
    from dagwright.executors.replay import diff_text

    lines = [x for x in diff_text(a, b).splitlines()[2:] if not x.startswith("@@")]
    for line in lines:
        style = "red" if line.startswith("-") else "green" if line.startswith("+") else ""
        text = escape(indent + line)
        out.print(f"[{style}]{text}[/{style}]" if style else text, highlight=False)


__all__ = ["diff_cmd", "runs_cmd"]
