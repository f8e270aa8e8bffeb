"""``dagwright serve``: the queue API over HTTP (FastAPI on uvicorn)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from dagwright.cli.common import EXIT_INVALID, DbOption, _die, _settings, err


def serve_cmd(
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="The port.")] = 8080,
    executor_name: Annotated[
        str,
        typer.Option(
            "--executor",
            "-e",
            help="Where runs execute: local (this server's own threads, the embedded default; "
            "runs unfinished when it stopped continue when it starts again) or celery (the "
            "workers of DAGWRIGHT_BROKER).",
        ),
    ] = "local",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            max=64,
            help="Server processes (with --executor celery; the local executor runs in one "
            "process per trace store).",
        ),
    ] = 1,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Listen on a non-loopback address without DAGWRIGHT_API_TOKENS (anyone who "
            "reaches the port may submit runs).",
        ),
    ] = False,
    db: DbOption = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="uvicorn's: critical, error, warning, info, debug.")
    ] = "info",
) -> None:
    """Serve the queue API: POST /v1/runs, GET /v1/runs/{id}, its events and SSE stream, cancel,
    resume, fork, replay, diff; the OpenAPI document at /openapi.json (docs/api.md).

    Known workflows come from DAGWRIGHT_WORKFLOWS (default: workflows/); bearer tokens from
    DAGWRIGHT_API_TOKENS (comma-separated). Without tokens the server only listens on a loopback
    address, unless --insecure."""
    import uvicorn

    from dagwright.api import create_app
    from dagwright.api.security import loopback

    if executor_name not in ("local", "celery"):
        _die(f"--executor {executor_name!r}: use local or celery", EXIT_INVALID)
    settings = _settings()
    if db is not None:
        settings = settings.model_copy(update={"db": db})
    if not settings.api_tokens and not loopback(host) and not insecure:
        _die(
            f"--host {host}: with no DAGWRIGHT_API_TOKENS anyone who reaches the port could "
            "submit runs; set tokens, or pass --insecure",
            EXIT_INVALID,
        )
    if workers > 1 and executor_name != "celery":
        _die("--workers N needs --executor celery (the local executor runs in one process per "
             "trace store)", EXIT_INVALID)  # fmt: skip
    where = "this server's threads" if executor_name == "local" else f"Celery ({settings.broker})"
    err.print(f"dagwright API on http://{host}:{port}  runs on {where}  trace: {settings.db}")
    common: dict[str, Any] = {"host": host, "port": port, "log_level": log_level,
                              "timeout_graceful_shutdown": 10}  # fmt: skip
    if workers == 1:
        uvicorn.run(create_app(settings, executor=executor_name), **common)
        return
    # each process builds its own app from the environment: hand it this command's choices
    os.environ["DAGWRIGHT_API_EXECUTOR"] = executor_name
    if db is not None:
        os.environ["DAGWRIGHT_DB"] = db
    uvicorn.run("dagwright.api.app:app_from_env", factory=True, workers=workers, **common)


__all__ = ["serve_cmd"]
