"""The ``dagwright`` command line (Typer + Rich): the app, its commands, and ``main()``.

One module per verb group: ``validate``, ``run``, ``derived`` (resume, fork), ``replay``,
``show`` (show, trace), ``runs`` (runs, diff), ``plan``, ``workers`` (worker, cancel), ``tools``,
``serve``, ``remote`` (submit, status, follow), ``index`` (index build, list, query); what they
share is in ``common``. Commands import executors, stores, the planner and model clients inside
their bodies, so building the command line (and ``--help``) loads none of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer
from rich.markup import escape

from dagwright.cli import (
    common,
    derived,
    index,
    plan,
    remote,
    replay,
    run,
    runs,
    serve,
    show,
    tools,
    validate,
    workers,
)
from dagwright.cli.common import EXIT_FAILED, EXIT_INVALID, _print_issues, err
from dagwright.cli.common import out as out  # re-exported: tests capture `show`'s output
from dagwright.cli.show import _print_revisions_and_calls as _print_revisions_and_calls
from dagwright.errors import DagwrightError, PlanError

app = typer.Typer(
    name="dagwright",
    help="Run LLM work as deterministic, verified, replayable DAGs of typed steps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# in the order `dagwright --help` lists them
COMMANDS: dict[str, Callable[..., None]] = {
    "validate": validate.validate_cmd,
    "run": run.run_cmd,
    "resume": derived.resume_cmd,
    "fork": derived.fork_cmd,
    "replay": replay.replay_cmd,
    "diff": runs.diff_cmd,
    "runs": runs.runs_cmd,
    "show": show.show_cmd,
    "trace": show.trace_cmd,
    "plan": plan.plan_cmd,
    "worker": workers.worker_cmd,
    "cancel": workers.cancel_cmd,
    "tools": tools.tools_cmd,
    "serve": serve.serve_cmd,
    "submit": remote.submit_cmd,
    "status": remote.status_cmd,
    "follow": remote.follow_cmd,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
app.add_typer(index.app, name="index")  # index build, list, query


def main() -> None:
    try:
        app()
    except PlanError as exc:
        _print_issues(exc)
        sys.exit(EXIT_INVALID)
    except DagwrightError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(EXIT_FAILED)


def console() -> None:
    """The ``dagwright`` console script: ``main``, then, when a command ran or validated a
    workflow, the process ends at once instead of freeing the plan, the run's state and the
    parsed file object by object, for nothing (0.2-0.5 s for 50,000 steps; mypy exits so too).
    The output is written and the store closed by then. (Tests and embedders call ``main`` or
    ``app``: they return.)"""
    try:
        main()
    except SystemExit as exc:
        if not common.EXIT_AT_ONCE:
            raise
        code = exc.code
        if code is not None and not isinstance(code, int):  # sys.exit("message")
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


__all__ = ["app", "console", "main"]
