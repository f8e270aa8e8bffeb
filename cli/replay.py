"""``dagwright replay``: re-execute a recorded run from its trace and report divergences."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from dagwright.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    DbOption,
    JsonOption,
    _db_flag,
    _die,
    _exit,
    _json,
    _plural,
    _print_issues,
    _redacted,
    _secs,
    _settings,
    _store,
    out,
)
from dagwright.errors import PlanError, SecretNotSet


def replay_cmd(
    run_id: Annotated[str, typer.Argument(help="The recorded run: an id or a unique prefix.")],
    rerun: Annotated[
        list[str] | None,
        typer.Option(
            "--rerun",
            help="Run this tool's steps again instead of serving their recorded outcome "
            "(for deterministic tools you are debugging; repeatable).",
            show_default=False,
        ),
    ] = None,
    no_record: Annotated[
        bool, typer.Option("--no-record", help="Keep the replay in memory, not in the store.")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Re-execute a recorded run from its trace, calling no model, and report divergences.

    Every step must reproduce its recorded inputs, status and output. Tools with side effects
    (the default for user tools) get their recorded outcome back; tools marked replay="rerun"
    (echo, llm.generate, …) run again, their model calls served from the trace. The replay is
    recorded as a run linked to RUN_ID. A cancelled run replays to the point where it was
    cancelled and is cancelled there (its running steps are not executed); so does an abandoned
    one (its process stopped), to where it stopped. Secrets (${{ secrets.NAME }}) need not be
    set: served steps compare them as recorded, [REDACTED]; a step whose tool runs again needs
    its secrets set. Exit 0: reproduced; 1: diverged (the first divergence is shown with a diff
    of recorded vs replayed); 2: nothing replayed (a tool module that cannot load, an unknown
    --rerun tool, a secret a re-run tool needs)."""
    from dagwright.executors.lifecycle import run_registry
    from dagwright.executors.replay import replay_run
    from dagwright.executors.store.memory import MemoryTraceStore
    from dagwright.planner.schema import Workflow
    from dagwright.tools import default_registry

    settings = _settings()
    store = _store(db, create=False)
    record = store.get_run(run_id)
    workflow = Workflow.model_validate(record.workflow)
    try:
        registry = run_registry(workflow, default_registry, settings.tools, record.source)
    except PlanError as exc:
        _print_issues(exc)
        raise typer.Exit(EXIT_INVALID) from None
    unknown = [t for t in rerun or [] if t not in registry]
    if unknown:
        _die(f"--rerun {', '.join(unknown)}: no such tool (see `dagwright tools`)", EXIT_INVALID)
    try:
        report = replay_run(
            store,
            record.run_id,
            registry,
            rerun=rerun or (),
            into=MemoryTraceStore() if no_record else None,
            limits=settings.limits(),
            heartbeat=settings.heartbeat,
            secrets=settings.step_secrets(),
            settings=settings.model_copy(update={"db": db}) if db else settings,
        )
    except SecretNotSet as exc:  # a tool that runs again would need it: nothing was recorded
        _die(str(exc), EXIT_INVALID)
    store.close()
    report.divergences = _redacted(report.divergences)  # what is printed holds no secret
    if as_json:
        _json(report.as_dict())
    else:
        _print_replay(report, db, recorded=not no_record)
    _exit(EXIT_OK if not report.divergences else EXIT_FAILED)


def _print_replay(report: Any, db: str | None, *, recorded: bool) -> None:
    out.print(
        f"replayed run [bold]{report.recorded_run_id}[/bold] in {_secs(report.seconds)}: "
        f"{_plural(report.attempts_compared, 'attempt')} compared, "
        f"{_plural(report.model_calls_served, 'model call')} served from the trace, "
        "no provider called",
        highlight=False,
    )
    abandoned = report.recorded_status == "abandoned"
    if not report.divergences:
        ended = "stopped where it was abandoned" if abandoned else f"{report.status} again"
        out.print(f"[green]✓ reproduced[/green]: the run {ended}, step for step")
    if report.cancelled_at:
        where = ", ".join(
            f"step {w['step']!r} attempt {w['attempt']} "
            + ("(running)" if w["running"] else "(waiting to start)")
            for w in report.cancelled_at
        )
        why = (
            "where the recording was abandoned (its process stopped)"
            if abandoned
            else "as the recording was"
        )
        out.print(f"cancelled at {escape(where)}, {why}", highlight=False)
    if report.divergences:
        first = report.divergences[0]
        out.print(f"[red]✗ diverged[/red]: {escape(first['message'])}")
        if first.get("diff"):
            out.print(escape(first["diff"]), highlight=False)
        more = len(report.divergences) - 1
        if more:
            out.print(f"({more} more divergence{'s' if more != 1 else ''} after it)")
    if recorded:  # (`runs` leaves replays out; `runs --all` lists them)
        out.print(f"the replay's run: dagwright show {report.run_id}{escape(_db_flag(db))}")


__all__ = ["replay_cmd"]
