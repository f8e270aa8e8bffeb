"""The ``dagwright`` command line (Typer + Rich)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dagwright.cli.progress import Progress
from dagwright.cli.report import duration, iso, run_summary, state_of
from dagwright.errors import DagwrightError, PlanError, PlanIssue
from dagwright.executors import engine
from dagwright.executors.local import LocalExecutor
from dagwright.executors.store import TraceStore, open_store
from dagwright.planner.prepare import prepare
from dagwright.planner.schema import Workflow
from dagwright.settings import Settings
from dagwright.tools import ToolRegistry, default_registry

app = typer.Typer(
    name="dagwright",
    help="Run LLM work as deterministic, verified, replayable DAGs of typed steps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output is for people reading logs and for grep: don't squeeze tables into 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130

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
        help="Local executor: steps running at once [env: DAGWRIGHT_MAX_PARALLEL; default: 8].",
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
    try:
        return Settings.from_env()
    except DagwrightError as exc:
        _die(str(exc), EXIT_INVALID)


def _die(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _store(db: str | None) -> TraceStore:
    target = db or _settings().db
    return open_store(target)


def _parse_inputs(pairs: list[str] | None) -> dict[str, str]:
    given: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            _die(f"--input {pair!r}: write it as NAME=VALUE", EXIT_INVALID)
        given[name.strip()] = value
    return given


def _prepare(
    file: Path, pairs: list[str] | None, *, inputs_required: bool
) -> tuple[Workflow, ToolRegistry, dict[str, Any]]:
    ready = prepare(
        file,
        default_registry,
        tool_modules=_settings().tools,
        inputs=_parse_inputs(pairs),
        inputs_required=inputs_required,
        inputs_as_text=True,
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


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _db_flag(db: str | None) -> str:
    return f" --db {shlex.quote(db)}" if db else ""


# -- commands ----------------------------------------------------------------------------------


@app.command("validate")
def validate_cmd(
    file: Annotated[Path, typer.Argument(help="The workflow YAML file.")],
    inputs: InputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a workflow without running anything. Exit 0 when valid, 2 with every problem listed.

    Run inputs are checked too when any --input is given."""
    try:
        wf, registry, _ = _prepare(file, inputs, inputs_required=bool(inputs))
    except PlanError as exc:
        if as_json:
            _json(
                {"valid": False, "errors": [i.as_dict() for i in sorted(exc.issues, key=_by_line)]}
            )
        else:
            _print_issues(exc)
        raise typer.Exit(EXIT_INVALID) from None
    if as_json:
        _json({"valid": True, "errors": [], "steps": len(wf.steps)})
        return
    needs = [f"{n} ({s.type})" for n, s in wf.inputs.items() if s.required]
    out.print(
        f"[green]✓[/green] {escape(str(file))} is valid: {len(wf.steps)} steps"
        + (f"; a run needs --input for: {', '.join(needs)}" if needs and not inputs else "")
    )


@app.command("run")
def run_cmd(
    file: Annotated[
        Path | None, typer.Argument(help="The workflow YAML file (or plan one with --task).")
    ] = None,
    inputs: InputOption = None,
    as_json: JsonOption = False,
    db: DbOption = None,
    max_parallel: MaxParallelOption = None,
    executor_name: ExecutorOption = "local",
    detach: DetachOption = False,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", "-t", help="Plan the workflow from this task with --model, then run it."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="PROVIDER:MODEL that plans (--task) and revises plans (on_failure: replan) "
            "[env: DAGWRIGHT_MODEL].",
        ),
    ] = None,
) -> None:
    """Validate, then run a workflow and record its trace; show progress, then the result.

    Exit code: 0 succeeded, 1 failed, 2 invalid workflow or inputs (nothing runs), 130 cancelled."""
    _check_executor(executor_name, detach)
    prelude: list[dict[str, Any]] = []
    if (file is None) == (task is None):
        _die("give a workflow FILE, or --task with --model (not both)", EXIT_INVALID)
    try:
        if task is not None:
            wf, registry, run_inputs, prelude = _plan_for_run(task, model, inputs, db)
        else:
            assert file is not None
            wf, registry, run_inputs = _prepare(file, inputs, inputs_required=True)
    except PlanError as exc:
        if as_json:
            _json(
                {
                    "status": "invalid",
                    "errors": [i.as_dict() for i in sorted(exc.issues, key=_by_line)],
                }
            )
        else:
            _print_issues(exc)
        raise typer.Exit(EXIT_INVALID) from None
    source = str(file.resolve()) if file is not None else None
    _execute(
        wf,
        registry,
        run_inputs,
        source=source,
        executor_name=executor_name,
        detach=detach,
        as_json=as_json,
        db=db,
        max_parallel=max_parallel,
        model=model,
        prelude=prelude,
    )


def _execute(
    wf: Workflow,
    registry: ToolRegistry,
    run_inputs: dict[str, Any],
    *,
    source: str | None,
    executor_name: str,
    detach: bool,
    as_json: bool,
    db: str | None,
    max_parallel: int | None = None,
    model: str | None = None,
    prelude: list[dict[str, Any]] | None = None,
    reused: dict[str, dict[str, Any]] | None = None,
    lineage: dict[str, Any] | None = None,
) -> NoReturn:
    """Run a validated workflow on the chosen executor, print the result, exit with its code."""
    store = _store(db)
    progress = Progress(wf, enabled=not as_json, live=out.is_terminal, console=out)
    derived = {"reused": reused, "lineage": lineage}
    if executor_name == "celery":
        run_id, interrupted = _run_on_celery(
            store, registry, wf, run_inputs, source, progress, detach, prelude or [], derived
        )
        if detach:
            if as_json:
                _json({"run_id": run_id, "status": "running", "trace": store.location()})
            else:
                out.print(f"run [bold]{run_id}[/bold] submitted")
                out.print(f"follow: dagwright show {run_id}{escape(_db_flag(db))}")
            raise typer.Exit(EXIT_OK)
    else:
        settings = _settings()
        local = LocalExecutor(
            store,
            registry,
            max_parallel=max_parallel or settings.max_parallel,
            on_event=progress.on_event,
            cache=_model_cache(settings),
            replanner=_replanner(wf, registry, model or settings.model or "", settings),
        )
        run_id = local.id_factory()
        interrupted = False
        try:
            with progress:
                local.run(wf, run_inputs, run_id=run_id, source=source, prelude=prelude, **derived)
        except KeyboardInterrupt:
            interrupted = True
    record = store.get_run(run_id)
    _, state = state_of(record, store.events(run_id))
    summary = run_summary(record, state, store.location())
    if as_json:
        _json(summary)
    else:
        _print_result(summary, db)
    code = {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(state.status, EXIT_FAILED)
    store.close()
    _exit(EXIT_CANCELLED if interrupted else code)


def _run_on_celery(
    store: TraceStore,
    registry: ToolRegistry,
    wf: Workflow,
    inputs: dict[str, Any],
    source: str | None,
    progress: Progress,
    detach: bool,
    prelude: list[dict[str, Any]],
    derived: dict[str, Any],
) -> tuple[str, bool]:
    """Submit to the Celery workers and, unless detached, follow the trace until the run ends.
    Ctrl-C cancels the run (recorded; running steps are revoked)."""
    from dagwright.executors import celery_app
    from dagwright.executors.distributed import Engine

    visibility = _settings().visibility_timeout
    too_long = [s.id for s in wf.steps if s.timeout and s.timeout >= visibility]
    if too_long:
        _die(
            f"step(s) {', '.join(too_long)} may run longer than Redis' visibility timeout "
            f"({visibility:g}s), so their messages would be delivered twice: lower their "
            "timeout or raise DAGWRIGHT_VISIBILITY_TIMEOUT (for workers and this client)",
            EXIT_INVALID,
        )
    dist = Engine(store, registry)
    run_id, dispatches = dist.start(wf, inputs, source=source, prelude=prelude, **derived)
    celery_app.send(dispatches)
    if detach:
        return run_id, False
    plan, _ = dist.plan_of(run_id)
    state = engine.RunState.initial(plan, run_id)
    seen = 0
    try:
        with progress:
            while state.status not in ("succeeded", "failed", "cancelled"):
                new = store.events(run_id, after=seen)
                for event in new:
                    engine.apply(plan, state, event)
                    progress.on_event(event, state)
                if new:
                    seen = new[-1].seq or seen
                else:  # woken at once when a worker records the run's end
                    celery_app.wait_finished(run_id, 0.05)
    except KeyboardInterrupt:
        celery_app.cancel(run_id, dist)
        return run_id, True
    return run_id, False


def _exit(code: int) -> NoReturn:
    # A timed-out plain-function tool may still be running in its thread; don't wait for it.
    if any(t.name.startswith("dagwright-step") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def _print_result(summary: dict[str, Any], db: str | None) -> None:
    status = summary["status"]
    color = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(status, "white")
    out.print(
        f"\nrun [bold]{summary['run_id']}[/bold]  [{color}]{status}[/{color}]"
        f"  in {summary['duration']}s",
        highlight=False,
    )
    if summary["error"]:
        err_info = summary["error"]
        where = f"step {err_info['step']!r}: " if err_info.get("step") else ""
        message = err_info.get("message", "")
        if where and message.startswith(where.rstrip(": ")):
            where = ""
        out.print(f"[red]error:[/red] {escape(where + message)}")
    if status == "succeeded":
        out.print("output:")
        out.print_json(json.dumps(summary["output"], default=str))
    out.print(f"trace: {escape(summary['trace'])}")
    out.print(f"inspect: dagwright show {summary['run_id']}{escape(_db_flag(db))}")
    flag = escape(_db_flag(db))
    out.print(f"replay: dagwright replay {summary['run_id']}{flag}")
    if status in ("failed", "cancelled"):
        out.print(
            f"fix and go on: dagwright resume {summary['run_id']} --workflow FIXED.yaml{flag}"
        )


def _check_executor(executor_name: str, detach: bool) -> None:
    if executor_name not in ("local", "celery"):
        _die(f"--executor {executor_name!r}: use local or celery", EXIT_INVALID)
    if detach and executor_name != "celery":
        _die("--detach needs --executor celery (a local run lives in this process)", EXIT_INVALID)


def _run_derived(
    run_id: str,
    *,
    mode: str,
    from_steps: list[str] | None,
    workflow_file: Path | None = None,
    inputs: list[str] | None = None,
    sets: list[str] | None = None,
    executor_name: str,
    detach: bool,
    as_json: bool,
    db: str | None,
    max_parallel: int | None,
) -> NoReturn:
    from dagwright.cli.lineage import derived_run, describe

    _check_executor(executor_name, detach)
    store = _store(db)
    try:
        record, derivation, registry, source = derived_run(
            store,
            run_id,
            mode=mode,
            registry=default_registry,
            tool_modules=_settings().tools,
            from_steps=list(from_steps or []),
            workflow_file=workflow_file,
            inputs=_parse_inputs(inputs),
            sets=list(sets or []),
        )
    except PlanError as exc:
        if as_json:
            errors = [i.as_dict() for i in sorted(exc.issues, key=_by_line)]
            _json({"status": "invalid", "errors": errors})
        else:
            _print_issues(exc)
        raise typer.Exit(EXIT_INVALID) from None
    finally:
        store.close()
    if not as_json:
        err.print(f"{mode} of run {record.run_id}: {escape(describe(derivation))}")
    _execute(
        derivation.workflow,
        registry,
        derivation.inputs,
        source=source,
        executor_name=executor_name,
        detach=detach,
        as_json=as_json,
        db=db,
        max_parallel=max_parallel,
        reused=derivation.reused,
        lineage=derivation.lineage,
    )


@app.command("resume")
def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to resume: an id or a unique prefix.")],
    from_steps: FromOption = None,
    workflow_file: Annotated[
        Path | None,
        typer.Option(
            "--workflow",
            "-w",
            help="Resume under this edited workflow (e.g. with the failed step fixed).",
            show_default=False,
        ),
    ] = None,
    inputs: InputOption = None,
    executor_name: ExecutorOption = "local",
    detach: DetachOption = False,
    max_parallel: MaxParallelOption = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Continue a failed run in a new, linked run, reusing the steps that succeeded.

    Succeeded steps are reused (their recorded outputs; not executed again); the failed ones
    and everything downstream of them run again. With --from, those steps and everything
    downstream run again too. With --workflow, the new run follows the edited file; a reused
    step whose definition changed is refused (name it in --from). --input overrides the
    parent's inputs. Exit codes as for `run`."""
    _run_derived(
        run_id,
        mode="resume",
        from_steps=from_steps,
        workflow_file=workflow_file,
        inputs=inputs,
        executor_name=executor_name,
        detach=detach,
        as_json=as_json,
        db=db,
        max_parallel=max_parallel,
    )


@app.command("fork")
def fork_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to fork: an id or a unique prefix.")],
    from_steps: FromOption = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="A change: steps.<id>.with.<arg>=VALUE (any step field, e.g. "
            "steps.<id>.timeout=5) or inputs.<name>=VALUE. VALUE is JSON, else text. Repeatable.",
            show_default=False,
        ),
    ] = None,
    executor_name: ExecutorOption = "local",
    detach: DetachOption = False,
    max_parallel: MaxParallelOption = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Try a change from a step on, in a new run that reuses everything upstream of it.

    Everything upstream of the --from steps is reused; they and everything downstream run
    again, under the plan edited by --set. Without --from, the steps changed by --set are the
    ones to run from. Exit codes as for `run`."""
    if not sets and not from_steps:
        _die("fork needs --from STEP and/or --set steps.<id>.with.<arg>=VALUE", EXIT_INVALID)
    _run_derived(
        run_id,
        mode="fork",
        from_steps=from_steps,
        sets=sets,
        executor_name=executor_name,
        detach=detach,
        as_json=as_json,
        db=db,
        max_parallel=max_parallel,
    )


@app.command("replay")
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
    recorded as a run linked to RUN_ID. Exit 0: reproduced; 1: diverged (the first divergence
    is shown with a diff of recorded vs replayed)."""
    from dagwright.executors.replay import replay_run
    from dagwright.executors.store.memory import MemoryTraceStore
    from dagwright.planner.validate import registry_for_run

    settings = _settings()
    store = _store(db)
    record = store.get_run(run_id)
    workflow = Workflow.model_validate(record.workflow)
    try:
        registry = registry_for_run(workflow, default_registry, settings.tools, record.source)
    except PlanError as exc:
        _print_issues(exc)
        raise typer.Exit(EXIT_INVALID) from None
    unknown = [t for t in rerun or [] if t not in registry]
    if unknown:
        _die(f"--rerun {', '.join(unknown)}: no such tool (see `dagwright tools`)", EXIT_INVALID)
    report = replay_run(
        store,
        record.run_id,
        registry,
        rerun=rerun or (),
        into=MemoryTraceStore() if no_record else None,
    )
    store.close()
    if as_json:
        _json(report.as_dict())
    else:
        _print_replay(report, db, recorded=not no_record)
    _exit(EXIT_OK if not report.divergences else EXIT_FAILED)


def _print_replay(report: Any, db: str | None, *, recorded: bool) -> None:
    out.print(
        f"replayed run [bold]{report.recorded_run_id}[/bold] in {report.seconds:.3f}s: "
        f"{report.attempts_compared} attempt(s) compared, {report.model_calls_served} model "
        "call(s) served from the trace, no provider called",
        highlight=False,
    )
    if not report.divergences:
        out.print(f"[green]✓ reproduced[/green]: the run {report.status} again, step for step")
    else:
        first = report.divergences[0]
        out.print(f"[red]✗ diverged[/red]: {escape(first['message'])}")
        if first.get("diff"):
            out.print(escape(first["diff"]), highlight=False)
        more = len(report.divergences) - 1
        if more:
            out.print(f"({more} more divergence{'s' if more != 1 else ''} after it)")
    if recorded:
        out.print(f"replay: dagwright show {report.run_id}{escape(_db_flag(db))}")


@app.command("diff")
def diff_cmd(
    run_a: Annotated[str, typer.Argument(help="A run id (or unique prefix).")],
    run_b: Annotated[str, typer.Argument(help="Another run id (or unique prefix).")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Compare two runs step by step: what differs in status, attempts, inputs and outputs.

    Useful on a run and its resume, fork or replay. A reused step is compared by the inputs and
    output it carries."""
    from dagwright.executors.lineage import compare_runs

    store = _store(db)
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
        f"{len(same)} step(s) identical" + (f": {escape(', '.join(same))}" if same else ""),
        highlight=False,
    )


def _print_values_diff(a: Any, b: Any, indent: str = "  ") -> None:
    from dagwright.executors.replay import diff_text

    lines = [x for x in diff_text(a, b).splitlines()[2:] if not x.startswith("@@")]
    for line in lines:
        style = "red" if line.startswith("-") else "green" if line.startswith("+") else ""
        text = escape(indent + line)
        out.print(f"[{style}]{text}[/{style}]" if style else text, highlight=False)


@app.command("runs")
def runs_cmd(
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="Only runs with this status: running, succeeded, failed, cancelled."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="How many, newest first.")
    ] = 20,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """List recent runs."""
    if status is not None and status not in ("running", "succeeded", "failed", "cancelled"):
        _die(f"--status {status!r}: use running, succeeded, failed or cancelled", EXIT_INVALID)
    store = _store(db)
    runs = store.list_runs(status=status, limit=limit)
    if as_json:
        _json(
            [
                {
                    "run_id": r.record.run_id,
                    "workflow": r.record.workflow_name,
                    "status": r.status,
                    "created_at": iso(r.record.created_at),
                    "finished_at": iso(r.finished_at),
                    "source": r.record.source,
                    "lineage": r.record.lineage(),
                }
                for r in runs
            ]
        )
        return
    if not runs:
        out.print(
            f"no runs{f' with status {status}' if status else ''} in {escape(store.location())}"
        )
        return
    table = Table(box=None, header_style="bold")
    derived = any(r.record.parent_run_id for r in runs)
    for col in ("run id", "workflow", "status", "started", "duration"):
        table.add_column(col)
    if derived:
        table.add_column("lineage")
    for r in runs:
        row = [
            r.record.run_id,
            escape(r.record.workflow_name),
            _status_text(r.status),
            iso(r.record.created_at),
            _secs(duration(r.record.created_at, r.finished_at)),
        ]
        if derived:
            parent = r.record.parent_run_id
            row.append(f"{r.record.mode} of {parent[:12]}" if parent else "")
        table.add_row(*row)
    out.print(table)


def _status_text(status: str) -> Text:
    color = {
        "succeeded": "green",
        "failed": "red",
        "cancelled": "yellow",
        "skipped": "dim",
        "running": "cyan",
        "retrying": "magenta",
    }.get(status, "white")
    return Text(status, style=color)


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


@app.command("show")
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Show a run: its steps, attempts, timings, errors and output."""
    store = _store(db)
    record = store.get_run(run_id)
    _, state = state_of(record, store.events(record.run_id))
    summary = run_summary(record, state, store.location(), detail=True)
    if as_json:
        _json(summary)
        return
    out.print(
        f"run [bold]{record.run_id}[/bold]  workflow [bold]{escape(record.workflow_name)}[/bold]  ",
        _status_text(state.status),
        f"  {_secs(summary['duration'])}",
    )
    if record.source:
        out.print(f"source: {escape(record.source)}   started: {summary['started_at']}")
    if record.inputs:
        out.print(f"inputs: {escape(json.dumps(record.inputs, ensure_ascii=False))}")
    if record.parent_run_id:
        froms = ", ".join(record.from_steps)
        out.print(
            f"lineage: {record.mode} of run [bold]{record.parent_run_id}[/bold]"
            + (f", from step(s) {escape(froms)}" if froms else "")
        )
    table = Table(box=None, header_style="bold")
    for col in ("step", "status", "attempts", "started", "duration", "error / note"):
        table.add_column(col)
    for sid, step in summary["steps"].items():
        table.add_row(
            sid,
            _status_text(step["status"]),
            str(step["attempts"]),
            step["started_at"] or "",
            _secs(step["duration"]),
            escape(
                step.get("error")
                or step.get("reason")
                or (f"reused from run {step['reused_from']}" if step.get("reused_from") else "")
            ),
        )
    out.print(table)
    _print_revisions_and_calls(store.events(record.run_id))
    for sid, step in summary["steps"].items():
        for attempt in step["attempt_details"]:
            if attempt["status"] != "succeeded":
                _print_failed_attempt(sid, attempt)
    if state.error:
        out.print(f"\n[red]error:[/red] {escape(state.error.get('message', ''))}")
    if state.status == "succeeded":
        out.print("\noutput:")
        out.print_json(json.dumps(state.output, default=str))
    out.print(f"\ntrace: dagwright trace {record.run_id}{escape(_db_flag(db))}")


def _print_revisions_and_calls(events: list[Any]) -> None:
    for e in events:
        if e.type == "plan_revised":
            steps = [s["id"] for s in e.data["workflow"]["steps"]]
            out.print(
                f"\n[bold]plan revision {e.data.get('revision')}[/bold] after step "
                f"{e.data.get('failed_step')!r} failed: "
                f"{escape((e.data.get('error') or {}).get('message', ''))}\n"
                f"  kept (not run again): {', '.join(e.data.get('kept') or []) or 'none'}; "
                f"steps now: {', '.join(steps)}"
            )
    diverged = [e for e in events if e.type == "replay_diverged"]
    if diverged:
        first = diverged[0].data
        out.print(
            f"\n[red]replay diverged[/red] ({len(diverged)} divergence"
            f"{'s' if len(diverged) != 1 else ''}); first: {escape(first.get('message', ''))}"
        )
        if first.get("diff"):
            out.print(escape(first["diff"]), highlight=False)
    calls = [e for e in events if e.type == "model_call"]
    if calls:
        hits = sum(bool(e.data.get("cache_hit")) for e in calls)
        failed = sum(bool(e.data.get("error")) for e in calls)
        out.print(f"\nmodel calls: {len(calls)} ({hits} from the cache, {failed} with an error)")


def _print_failed_attempt(sid: str, a: dict[str, Any]) -> None:
    error = a["error"] or {}
    out.print(
        f"\n[bold]{sid}[/bold] attempt {a['attempt']} [red]{a['status']}[/red]"
        f" after {_secs(a['duration'])}: {escape(error.get('message', ''))}"
    )
    for check in a["checks"]:
        if not check["passed"]:
            out.print(f"  ✗ {escape(check['message'])}")
    if error.get("traceback"):
        tail = error["traceback"].splitlines()[-6:]
        out.print("[dim]" + escape("\n".join("  " + line for line in tail)) + "[/dim]")
    if a["retry_in"] is not None:
        out.print(f"  [dim]retried after {a['retry_in']:g}s[/dim]")


@app.command("trace")
def trace_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Print a run's trace: every event, in order."""
    store = _store(db)
    record = store.get_run(run_id)
    events = store.events(record.run_id)
    if as_json:
        _json([e.as_dict() | {"at": iso(e.at)} for e in events])
        return
    t0 = events[0].at if events else 0.0
    for e in events:
        data = e.data
        bits = [f"{e.seq:>4}", f"+{e.at - t0:8.3f}s", f"{e.type:<17}"]
        if e.step:
            bits.append(f"{e.step}" + (f"#{e.attempt}" if e.attempt else ""))
        if "status" in data:
            bits.append(str(data["status"]))
        if data.get("reused"):
            bits.append(f"reused from run {data['reused'].get('run_id')}")
        if e.type == "run_started" and data.get("lineage"):
            lin = data["lineage"]
            bits.append(f"{lin.get('mode')} of run {lin.get('parent')}")
        if data.get("error"):
            bits.append(str(data["error"].get("message", "")))
        if data.get("retry_in") is not None:
            bits.append(f"retry in {data['retry_in']:g}s")
        if e.type == "attempt_started":
            bits.append(f"inputs={json.dumps(data.get('inputs'), ensure_ascii=False)[:120]}")
        if e.type == "model_call":
            bits += [str(data.get("purpose") or ""), str(data.get("model_id") or data.get("model"))]
            bits += ["cache hit"] if data.get("cache_hit") else []
            bits += [f"error: {str(data['error'])[:120]}"] if data.get("error") else []
        if e.type == "replay_diverged":
            bits.append(str(data.get("message", "")))
        if e.type == "plan_revised":
            bits.append(
                f"revision {data.get('revision')}, kept: {', '.join(data.get('kept') or []) or 'none'}"
            )
        out.print(escape("  ".join(bits)), soft_wrap=True)


@app.command("plan")
def plan_cmd(
    task: Annotated[
        str, typer.Option("--task", "-t", help="What the workflow should do, in plain words.")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="PROVIDER:MODEL, e.g. openai:gpt-4o-mini.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the plan here as YAML.")
    ] = None,
    max_repairs: Annotated[
        int,
        typer.Option("--max-repairs", min=0, max=10, help="Re-asks after a plan fails validation."),
    ] = 2,
    calls: Annotated[
        Path | None,
        typer.Option(
            "--calls", help="Write every model call (request, response, error, usage) as JSON."
        ),
    ] = None,
) -> None:
    """Ask a model for a plan; print it (or write it with -o) as a reviewable YAML workflow.

    The model can only name registered tools (`dagwright tools`); the plan is validated like a
    YAML workflow and its problems fed back for up to --max-repairs re-asks. Endpoint settings:
    DAGWRIGHT_MODEL_BASE_URL, DAGWRIGHT_MODEL_API_KEY (or OPENAI_API_KEY), DAGWRIGHT_MODEL_SEED."""
    from dagwright.agents.models import ModelCall, connect
    from dagwright.planner.llm import PlanningFailed, plan
    from dagwright.planner.loader import dump_workflow

    settings = _settings()
    registry = _registry_with(settings)
    recorded: list[ModelCall] = []
    try:
        provider = connect(model, _model_settings(settings))
        workflow = plan(
            task,
            registry,
            provider,
            max_repairs=max_repairs,
            examples=_examples(registry, None),
            record=recorded.append,
        )
    except PlanningFailed as exc:
        _die(f"no valid plan: {exc}", EXIT_FAILED)
    finally:
        _write_calls(calls, recorded)
    text = dump_workflow(workflow)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        err.print(f"plan written to {escape(str(output))} after {len(recorded)} model call(s); "
                  f"review it, then: dagwright run {escape(str(output))}")  # fmt: skip
    else:
        sys.stdout.write(text)


def _plan_for_run(
    task: str, model: str | None, pairs: list[str] | None, db: str | None = None
) -> tuple[Workflow, ToolRegistry, dict[str, Any], list[dict[str, Any]]]:
    """`run --task`: plan, then resolve inputs like a workflow file's. A plan that stays
    invalid is refused (PlanError, exit 2) with the model's last problems."""
    from dagwright.agents.models import ModelCall, connect
    from dagwright.planner.llm import PlanningFailed, plan
    from dagwright.planner.validate import resolve_inputs

    settings = _settings()
    model = model or settings.model
    if not model:
        _die("--task needs --model PROVIDER:MODEL (or DAGWRIGHT_MODEL)", EXIT_INVALID)
    registry = _registry_with(settings)
    recorded: list[ModelCall] = []
    try:
        provider = connect(model, _model_settings(settings))
        examples = _examples(registry, db)
        workflow = plan(task, registry, provider, examples=examples, record=recorded.append)
    except PlanningFailed as exc:
        raise PlanError([PlanIssue(f"the model gave no valid plan: {exc}", field="task")]) from None
    err.print(f"planned {len(workflow.steps)} steps after {len(recorded)} model call(s)")
    inputs = resolve_inputs(workflow, _parse_inputs(pairs), as_text=True)
    return workflow, registry, inputs, [c.as_dict() for c in recorded]


def _replanner(wf: Workflow, registry: ToolRegistry, model: str, settings: Settings) -> Any:
    """For steps with on_failure: replan — the planner's model (--model, else DAGWRIGHT_MODEL)."""
    if not model or not any(s.on_failure == "replan" for s in wf.steps):
        return None
    from dagwright.agents.models import connect
    from dagwright.planner.llm import replan

    provider = connect(model, _model_settings(settings))

    def replanner(workflow: Workflow, outputs: Any, failure: Any, record: Any) -> Workflow:
        return replan(workflow, outputs, failure, registry, provider, record=record)

    return replanner


def _examples(registry: ToolRegistry, db: str | None) -> list[str]:
    """Few-shot plans: the repository's examples, then recent successful runs of this store
    (when it exists: planning never creates a trace store)."""
    from dagwright.planner.llm import example_plans, examples_from_runs

    shown = example_plans(registry)
    target = db or _settings().db
    if "://" in target or Path(target).exists():
        try:
            store = open_store(target)
            shown += examples_from_runs(store, registry)
            store.close()
        except Exception:  # noqa: BLE001 - examples are a help, not a requirement
            pass
    return shown


def _registry_with(settings: Settings) -> ToolRegistry:
    registry = default_registry
    if settings.tools:
        registry = registry.copy()
        for module in settings.tools:
            registry.load_module(module)
    return registry


def _model_cache(settings: Settings) -> Any:
    if not settings.model_cache:
        return None  # the trace store's cache table
    from dagwright.agents.cache import RedisCache

    return RedisCache(settings.model_cache)


def _model_settings(settings: Settings) -> Any:
    from dagwright.agents.models import ModelSettings

    return ModelSettings.from_settings(
        settings, api_key=settings.model_api_key or os.environ.get("OPENAI_API_KEY") or None
    )


def _write_calls(path: Path | None, recorded: list[Any]) -> None:
    if path is not None:
        path.write_text(json.dumps([c.as_dict() for c in recorded], indent=2, default=str))


@app.command("worker")
def worker_cmd(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Processes (or threads) per worker.")
    ] = 2,
    pool: Annotated[
        str, typer.Option("--pool", help="prefork (default), threads (sleep/IO-bound steps), solo.")
    ] = "prefork",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
    name: Annotated[str | None, typer.Option("--name", "-n", help="Worker node name.")] = None,
) -> None:
    """Start a Celery worker that executes runs submitted with --executor celery.

    Same as `celery -A worker worker`. Uses DAGWRIGHT_BROKER and DAGWRIGHT_DB (the trace store
    shared with clients: PostgreSQL when workers run on several hosts)."""
    if pool not in ("prefork", "threads", "solo"):
        _die(f"--pool {pool!r}: use prefork, threads or solo", EXIT_INVALID)
    from dagwright.executors.celery_app import app as celery

    argv = ["worker", f"--concurrency={concurrency}", f"--pool={pool}", f"--loglevel={loglevel}"]
    argv += ["--without-gossip", "--without-mingle"]
    if name:
        argv.append(f"--hostname={name}")
    celery.worker_main(argv)


@app.command("cancel")
def cancel_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    db: DbOption = None,
) -> None:
    """Cancel a run executing on Celery workers: recorded at once, running steps revoked.

    (A local run is cancelled with Ctrl-C in the terminal running it.)"""
    store = _store(db)
    record = store.get_run(run_id)
    if record.executor != "celery":
        _die(f"run {record.run_id} runs on the {record.executor} executor: use Ctrl-C there", 1)
    from dagwright.executors import celery_app
    from dagwright.executors.distributed import Engine

    celery_app.cancel(record.run_id, Engine(store, default_registry))
    _, state = state_of(record, store.events(record.run_id))
    out.print(f"run {record.run_id}: ", _status_text(state.status))


@app.command("tools")
def tools_cmd(as_json: JsonOption = False) -> None:
    """List the registered tools and their arguments."""
    tools = list(default_registry)
    if as_json:
        _json(
            [
                {
                    "name": t.name,
                    "description": t.description,
                    "arguments": t.args_schema(),
                    "output": t.output_schema,
                }
                for t in tools
            ]
        )
        return
    for t in tools:
        props = t.args_schema().get("properties", {})
        required = set(t.args_schema().get("required", []))
        args = (
            ", ".join(
                f"{n}{'' if n in required else '?'}: {p.get('type', 'any')}"
                for n, p in props.items()
            )
            or "any arguments"
        )
        out.print(
            f"[bold]{t.name}[/bold]({escape(args)})  {escape(t.description.splitlines()[0] if t.description else '')}"
        )


def main() -> None:
    try:
        app()
    except PlanError as exc:
        _print_issues(exc)
        sys.exit(EXIT_INVALID)
    except DagwrightError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(EXIT_FAILED)


__all__ = ["app", "main"]
