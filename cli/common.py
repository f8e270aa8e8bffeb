"""What every command shares: the consoles, exit codes, option types and small helpers.

Cheap to import on purpose (the command line and ``--help`` load it): executors, stores and the
planner are imported inside the helpers that use them.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from dagwright.errors import DagwrightError, PlanError, PlanIssue

if TYPE_CHECKING:
    from dagwright.executors.store import TraceStore
    from dagwright.planner.schema import Workflow
    from dagwright.settings import Settings
    from dagwright.tools import ToolRegistry

# Piped output is for people reading logs and for grep: don't squeeze tables into 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130
EXIT_AT_ONCE = False
"""Set once a command has written its result while the process holds a parsed workflow (a run's
plan and state, a validated file): the console script then ends the process at once rather
than free those objects one by one (``cli.main.console``)."""

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Trace store: a SQLite file or postgresql:// URL. "
        "[env: DAGWRIGHT_DB; default: .dagwright/trace.db]",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")]
InputOption = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        help="A run input as NAME=VALUE (repeatable). Objects and arrays are JSON.",
        show_default=False,
    ),
]
MaxParallelOption = Annotated[
    int | None,
    typer.Option(
        "--max-parallel",
        min=1,
        help="Local executor: attempts running at once [env: DAGWRIGHT_MAX_PARALLEL; default: "
        "up to 128, of which up to 32 of plain-function tools, which each hold a thread; async "
        "tools hold none].",
        show_default=False,
    ),
]
ExecutorOption = Annotated[
    str,
    typer.Option(
        "--executor",
        "-x",
        help="local: in this process. celery: on `dagwright worker` processes "
        "(broker DAGWRIGHT_BROKER; workers must use the same trace store).",
    ),
]
DetachOption = Annotated[
    bool,
    typer.Option("--detach", help="With --executor celery: print the run id and return at once."),
]
FromOption = Annotated[
    list[str] | None,
    typer.Option(
        "--from",
        "-f",
        help="Run this step and everything downstream of it again (repeatable).",
        show_default=False,
    ),
]


def _settings() -> Settings:
    from dagwright.settings import Settings

    try:
        return Settings.from_env()
    except DagwrightError as exc:
        _die(str(exc), EXIT_INVALID)


def _die(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _store(db: str | None, *, create: bool = True) -> TraceStore:
    """The trace store of ``--db`` (else DAGWRIGHT_DB). ``create=False`` for commands that only
    read: a store that does not exist is an error (exit 1), and nothing is created."""
    from dagwright.executors.store import open_store

    settings = _settings()
    return open_store(db or settings.db, secrets=settings.secrets(), create=create)


def _redacted(value: Any) -> Any:
    """``value`` without the settings' secrets: for what is printed from memory rather than
    from the (redacted) trace, e.g. a local run's summary."""
    from dagwright.redact import Redactor

    return Redactor(_settings().secrets()).value(value)


def _parse_inputs(pairs: list[str] | None) -> dict[str, str]:
    given: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            _die(f"--input {pair!r}: write it as NAME=VALUE", EXIT_INVALID)
        given[name.strip()] = value
    return given


def _prepare(
    file: Path, pairs: list[str] | None, *, inputs_required: bool, check_secrets: bool = True
) -> tuple[Workflow, ToolRegistry, dict[str, Any]]:
    """``check_secrets``: the secrets the workflow reads must be set here (False for a run on
    Celery workers, whose own settings have them)."""
    from dagwright.planner.prepare import prepare
    from dagwright.tools import default_registry

    settings = _settings()
    ready = prepare(
        file,
        default_registry,
        tool_modules=settings.tools,
        inputs=_parse_inputs(pairs),
        inputs_required=inputs_required,
        inputs_as_text=True,
        limits=settings.limits(),
        secrets=settings.step_secrets() if check_secrets else None,
    )
    return ready.workflow, ready.registry, ready.inputs


def _print_issues(exc: PlanError) -> None:
    exc.issues.sort(key=_by_line)
    err.print(f"[red]✗ {len(exc.issues)} problem{'s' if len(exc.issues) != 1 else ''}[/red]")
    for issue in exc.issues:
        err.print(f"  [bold]{escape(issue.location())}[/bold]: {escape(issue.message)}")
        if issue.hint:
            err.print(f"    [dim]→ {escape(issue.hint)}[/dim]")


def _by_line(issue: PlanIssue) -> tuple[bool, int]:
    return (issue.line is None, issue.line or 0)


def _invalid(exc: PlanError, as_json: bool, **fields: Any) -> NoReturn:
    """Refuse a workflow: its problems as JSON (after ``fields``) or listed on stderr; exit 2."""
    if as_json:
        _json(fields | {"errors": [i.as_dict() for i in sorted(exc.issues, key=_by_line)]})
    else:
        _print_issues(exc)
    raise typer.Exit(EXIT_INVALID) from None


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _db_flag(db: str | None) -> str:
    return f" --db {shlex.quote(db)}" if db else ""


def _exit(code: int) -> NoReturn:
    # A timed-out plain-function tool may still be running in its thread; don't wait for it.
    if any(t.name.startswith("dagwright-step") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


@functools.cache
def _status_colors() -> dict[str, str]:
    """Rich styles of the status words (loaded on first use: building the command line
    imports no engine)."""
    from dagwright.executors.engine import outcome

    return {
        outcome.SUCCEEDED: "green",
        outcome.FAILED: "red",
        outcome.CANCELLED: "yellow",
        outcome.SKIPPED: "dim",
        outcome.RUNNING: "cyan",
        outcome.RETRYING: "magenta",
    }


def _status_text(status: str) -> Text:
    return Text(status, style=_status_colors().get(status, "white"))


def _secs(value: float | None) -> str:
    """A duration for people: ``4ms``, ``0.38s``, ``12.5s``, ``2m05s``, ``1h02m`` (JSON keeps
    the seconds)."""
    if value is None:
        return ""
    if value < 0.1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.2f}".rstrip("0").rstrip(".") + "s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _plural(n: int, word: str, words: str | None = None) -> str:
    """``1 step``, ``2 steps`` (``words``: an irregular plural)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _error_text(error: dict[str, Any] | None) -> str:
    """An error's message, naming the step when the message does not already."""
    if not error:
        return ""
    message = str(error.get("message") or error.get("type") or "")
    step = error.get("step")
    if step and not message.startswith(f"step {step!r}"):
        return f"step {step!r}: {message}"
    return message


__all__ = [
    "DbOption",
    "DetachOption",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "ExecutorOption",
    "FromOption",
    "InputOption",
    "JsonOption",
    "MaxParallelOption",
    "err",
    "out",
]
