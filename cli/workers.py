"""``dagwright worker`` and ``dagwright cancel``: the Celery side of the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from dagwright.cli.common import EXIT_INVALID, DbOption, _die, _settings, _status_text, _store, out


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

    Same as `celery -A dagwright.worker worker`. Uses DAGWRIGHT_BROKER and DAGWRIGHT_DB (the trace store
    shared with clients: PostgreSQL when workers run on several hosts)."""
    if pool not in ("prefork", "threads", "solo"):
        _die(f"--pool {pool!r}: use prefork, threads or solo", EXIT_INVALID)
    from dagwright.executors.celery.app import create_app

    celery = create_app(_settings())

    argv = ["worker", f"--concurrency={concurrency}", f"--pool={pool}", f"--loglevel={loglevel}"]
    argv += ["--without-gossip", "--without-mingle"]
    if name:
        argv.append(f"--hostname={name}")
    celery.worker_main(argv)


def cancel_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    db: DbOption = None,
) -> None:
    """Cancel a run executing on Celery workers: recorded at once, running steps revoked.

    (A local run is cancelled with Ctrl-C in the terminal running it.)"""
    from dagwright.executors.summary import state_of
    from dagwright.tools import default_registry

    store = _store(db, create=False)
    record = store.get_run(run_id)
    if record.executor != "celery":
        _die(f"run {record.run_id} runs on the {record.executor} executor: use Ctrl-C there", 1)
    from dagwright.executors.celery.app import create_app, runtime
    from dagwright.executors.distributed.engine import Engine

    settings = _settings()
    engine = Engine(store, default_registry, tool_modules=settings.tools)
    runtime(create_app(settings)).cancel(record.run_id, engine)
    _, state = state_of(record, store.events(record.run_id))
    out.print(f"run {record.run_id}: ", _status_text(state.status))


__all__ = ["cancel_cmd", "worker_cmd"]
