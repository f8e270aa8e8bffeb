"""``dagwright resume`` and ``fork``: a new run derived from a recorded one (the parent, the
edited workflow and what is reused: ``executors.derived``), executed and shown as ``run`` does
(``cli.run._execute``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from dagwright.cli.common import (
    EXIT_INVALID,
    DbOption,
    DetachOption,
    ExecutorOption,
    FromOption,
    InputOption,
    JsonOption,
    MaxParallelOption,
    _die,
    _invalid,
    _parse_inputs,
    _settings,
    _store,
    err,
)
from dagwright.cli.run import _check_executor, _execute
from dagwright.errors import PlanError


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
    from dagwright.executors.derived import derived_run, describe
    from dagwright.tools import default_registry

    _check_executor(executor_name, detach)
    store = _store(db)
    try:
        record, derivation, registry, source, child = derived_run(
            store,
            run_id,
            mode=mode,
            registry=default_registry,
            tool_modules=_settings().tools,
            from_steps=list(from_steps or []),
            workflow_file=workflow_file,
            inputs=_parse_inputs(inputs),
            sets=list(sets or []),
            heartbeat=_settings().heartbeat,
            limits=_settings().limits(),
        )
    except PlanError as exc:
        _invalid(exc, as_json, status="invalid")
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
        run_id=child,
    )


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


__all__ = ["fork_cmd", "resume_cmd"]
