"""``dagwright run``: execute a workflow (a file, or a plan from a task) on the local executor or
on Celery workers, show its progress, then its end. ``resume`` and ``fork`` (``cli.derived``)
run the workflow of a run derived from a recorded one through ``_execute`` here too."""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from dagwright.cli import common
from dagwright.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    DbOption,
    DetachOption,
    ExecutorOption,
    InputOption,
    JsonOption,
    MaxParallelOption,
    _db_flag,
    _die,
    _exit,
    _invalid,
    _json,
    _prepare,
    _redacted,
    _settings,
    _store,
    err,
    out,
)
from dagwright.cli.ending import Output, OutputFileOption, OutputModeOption
from dagwright.cli.plan import _model_cache, _plan_for_run, _replanner
from dagwright.errors import PlanError

if TYPE_CHECKING:
    from dagwright.cli.progress import Progress
    from dagwright.executors.engine import RunState
    from dagwright.executors.local import LocalExecutor
    from dagwright.executors.store import TraceStore
    from dagwright.planner.schema import Workflow
    from dagwright.tools import ToolRegistry


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
    output_mode: OutputModeOption = "auto",
    output_file: OutputFileOption = None,
) -> None:
    """Validate, then run a workflow and record its trace; show progress, then the result.

    Exit code: 0 succeeded, 1 failed, 2 invalid workflow or inputs (nothing runs), 130 cancelled."""
    _check_executor(executor_name, detach)
    output = Output.chosen(output_mode, output_file)
    prelude: list[dict[str, Any]] = []
    if (file is None) == (task is None):
        _die("give a workflow FILE, or --task with --model (not both)", EXIT_INVALID)
    try:
        if task is not None:
            wf, registry, run_inputs, prelude = _plan_for_run(task, model, inputs, db)
        else:
            assert file is not None
            wf, registry, run_inputs = _prepare(
                file, inputs, inputs_required=True, check_secrets=executor_name == "local"
            )
    except PlanError as exc:
        _invalid(exc, as_json, status="invalid")
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
        output=output,
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
    run_id: str | None = None,
    output: Output | None = None,
) -> NoReturn:
    """Run a validated workflow on the chosen executor, print the result, exit with its code."""
    from dagwright.cli.ending import print_end
    from dagwright.cli.progress import Progress
    from dagwright.executors.engine import outcome
    from dagwright.executors.lifecycle import fold_run
    from dagwright.executors.local import LocalExecutor
    from dagwright.executors.summary import RunHead, StartedRun, run_summary

    store = _store(db)
    progress = Progress(wf, enabled=not as_json, live=out.is_terminal, console=out)
    # What this process made so far (the modules, the workflow, its parse) lives until it
    # exits: the collector need not walk it again at each full collection during the run (a
    # 50,000-step plan: ~15 % of a run's CPU time).
    gc.freeze()
    derived: dict[str, Any] = {"reused": reused, "lineage": lineage}
    interrupted = False
    state: RunState | None = None
    if executor_name == "celery":
        run_id, state = _run_on_celery(
            store, registry, wf, run_inputs, source, progress, detach, prelude or [],
            {**derived, "run_id": run_id},
        )  # fmt: skip
        if detach:
            if as_json:
                _json({"run_id": run_id, "status": outcome.RUNNING, "trace": store.location()})
            else:
                out.print(f"run [bold]{run_id}[/bold] submitted")
                out.print(f"follow: dagwright show {run_id}{escape(_db_flag(db))}")
            raise typer.Exit(EXIT_OK)
        interrupted = state is None
    else:
        settings = _settings()
        if db:  # --db: the run's store, and where its tools look (retrieve's indexes)
            settings = settings.model_copy(update={"db": db})
        local = LocalExecutor(
            store,
            registry,
            max_parallel=max_parallel or settings.max_parallel,
            on_event=progress.on_event,
            cache=_model_cache(settings),
            replanner=_replanner(wf, model or settings.model or "", settings),
            lease_every=settings.heartbeat,
            limits=settings.limits(),
            eval_timeout=settings.eval_timeout,
            secrets=settings.step_secrets(),
            settings=settings,
        )
        run_id = run_id or local.id_factory()
        try:
            with progress, _cancelled_by_signals(local):
                result = local.run(
                    wf, run_inputs, run_id=run_id, source=source, prelude=prelude, **derived
                )
            state = result.state
        except KeyboardInterrupt:
            interrupted = True
    head: RunHead
    if state is None:  # interrupted: fold what was recorded
        head, state = fold_run(store, run_id)
    else:  # the executor's own final state: no read of the record or the trace back
        head = StartedRun(run_id, wf.name, state.inputs, executor_name, lineage)
    # the steps only for --json: the lines printed after a run cost the same for any plan
    summary = _redacted(run_summary(head, state, store.location(), steps=as_json))
    output = output or Output()
    common.EXIT_AT_ONCE = True
    if as_json:
        if output.file is not None and summary["status"] == outcome.SUCCEEDED:
            err.print(f"output: {output.write(summary['output'])}")  # stdout is the JSON
        _json(summary)
    else:
        print_end(summary, db, source=source if not state.revisions else None, output=output)
    code = {outcome.SUCCEEDED: EXIT_OK, outcome.CANCELLED: EXIT_CANCELLED}.get(
        state.status, EXIT_FAILED
    )
    store.close()
    _exit(EXIT_CANCELLED if interrupted else code)


@contextmanager
def _cancelled_by_signals(local: LocalExecutor) -> Iterator[None]:
    """SIGTERM and SIGHUP (a supervisor stopping the process, a closed terminal) cancel a local
    run as Ctrl-C does: running attempts are recorded as cancelled, the run ends cancelled."""
    handled = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda *_: local.cancel()) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
) -> tuple[str, RunState | None]:
    """Submit to the Celery workers and, unless detached, follow the trace until the run ends
    (the run's final state; None when Ctrl-C cancelled it: recorded, running steps revoked).

    Submission is atomic: a broker that cannot be reached is found before anything is recorded
    (one line, exit 1); a send that fails after the run was recorded ends that run failed, so
    that no sweeper executes it later (one line, exit 1). When no worker answers a ping (and
    none started a step meanwhile), one line says so; the run stays queued and starts when a
    worker does."""
    from dagwright.executors.celery.app import create_app, runtime
    from dagwright.executors.celery.submit import (
        NotEnqueued,
        broker_problem,
        enqueue,
        shown_broker,
        visibility_problem,
        workers_answer,
    )
    from dagwright.executors.distributed.engine import Engine
    from dagwright.executors.lifecycle import follow

    settings = _settings()
    issue = visibility_problem(wf, settings)
    if issue is not None:
        _die(f"{issue.message}: {issue.hint}", EXIT_INVALID)
    workers = runtime(create_app(settings))
    problem = broker_problem(workers.app)
    if problem is not None:
        _die(f"{problem}: nothing was submitted (start it, or set DAGWRIGHT_BROKER)", EXIT_FAILED)
    dist = Engine(store, registry, tool_modules=settings.tools)
    try:
        run_id = enqueue(workers, dist, wf, inputs, source=source, prelude=prelude, **derived)
    except NotEnqueued as exc:
        _die(str(exc), EXIT_FAILED)
    if workers_answer(workers.app) is False and not _started(store, run_id):
        err.print(
            f"[yellow]no worker answered[/yellow] on {escape(shown_broker(workers.app))}: run "
            f"{run_id} is queued and starts when a worker starts (`dagwright worker`)",
            highlight=False,
        )
    if detach:
        return run_id, None

    def wait(seconds: float) -> None:  # woken at once when a worker records the run's end
        workers.wait_finished(run_id, seconds)

    try:
        with progress:
            return run_id, follow(store, run_id, on_event=progress.on_event, wait=wait)
    except KeyboardInterrupt:
        workers.cancel(run_id, dist)
        return run_id, None


def _started(store: TraceStore, run_id: str) -> bool:
    """Whether a worker started one of the run's attempts (it answers pings too slowly, busy)."""
    from dagwright.executors.engine import events as ev

    return any(e.type == ev.ATTEMPT_STARTED for e in store.events(run_id))


def _check_executor(executor_name: str, detach: bool) -> None:
    if executor_name not in ("local", "celery"):
        _die(f"--executor {executor_name!r}: use local or celery", EXIT_INVALID)
    if detach and executor_name != "celery":
        _die("--detach needs --executor celery (a local run lives in this process)", EXIT_INVALID)


__all__ = ["run_cmd"]
