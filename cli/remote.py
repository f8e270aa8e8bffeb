"""``dagwright submit``, ``status`` and ``follow``: runs through the queue API
(``dagwright.client``), or, for ``status`` and ``follow``, straight from the trace store."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from dagwright.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    DbOption,
    JsonOption,
    _die,
    _exit,
    _invalid,
    _json,
    _parse_inputs,
    _settings,
    _store,
    err,
    out,
)
from dagwright.cli.remote_view import EventLines, print_status
from dagwright.errors import PlanError, PlanIssue

if TYPE_CHECKING:
    from dagwright.client import Client

Json = dict[str, Any]

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api", help="The queue API's URL (default: DAGWRIGHT_API_URL).", show_default=False
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Bearer token for the API (default: DAGWRIGHT_API_TOKEN; prefer it: a flag shows in ps).",
        show_default=False,
    ),
]


def submit_cmd(
    target: Annotated[
        str,
        typer.Argument(
            metavar="FILE|NAME",
            help="A workflow file (its YAML is sent) or the name of a workflow the server knows.",
        ),
    ],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="A run input as NAME=VALUE (repeatable), typed by the workflow's declared inputs "
            "as for `run` (objects and arrays are JSON).",
            show_default=False,
        ),
    ] = None,
    api: ApiOption = None,
    token: TokenOption = None,
    priority: Annotated[
        int,
        typer.Option("--priority", min=-100, max=100, help="Higher runs first when work waits."),
    ] = 0,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Submitting again with this key returns the same run (safe retries).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the run's progress until it ends.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a run to the queue API (`dagwright serve`); print its id and how to follow it.

    An existing FILE is sent as YAML text (it may use registered tools only); otherwise the
    argument names a workflow the server knows. With --wait, follow the run to its end.

    Exit code: 0 submitted (with --wait: succeeded), 1 failed or the API refused, 2 invalid
    workflow or inputs (nothing recorded), 130 cancelled."""
    url, token = _endpoint(api, token)
    file = Path(target)
    text = None
    if file.is_file():
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _die(f"{file}: cannot read the workflow: {exc}", EXIT_INVALID)
    elif file.suffix in (".yaml", ".yml") or "/" in target:
        _die(f"{target}: no such file (a known workflow's name has no .yaml)", EXIT_INVALID)
    pairs = _parse_inputs(inputs)
    with _client(url, token) as client, _errors(url, as_json, file=target, invalid=(404, 413)):
        declared: Mapping[str, Any] = {}
        if pairs:
            declared = (
                _declared_in(text, target) if text is not None else _declared_by(client, target)
            )
        accepted = client.submit(
            None if text is not None else target,
            workflow_yaml=text,
            inputs=_typed(pairs, declared),
            priority=priority,
            idempotency_key=idempotency_key,
        )
        run_id = accepted["run_id"]
        if wait:
            _follow_api(client, run_id, as_json, _api_flag(api))
    if as_json:
        _json(accepted)
        return
    flag = escape(_api_flag(api))
    out.print(f"run [bold]{run_id}[/bold] submitted ({accepted.get('status', '?')})")
    out.print(f"follow: dagwright follow {run_id}{flag}")
    out.print(f"status: dagwright status {run_id}{flag}")


def status_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    api: ApiOption = None,
    token: TokenOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a run's status and summary: from the API (--api, DAGWRIGHT_API_URL) or straight
    from the trace store (--db, else DAGWRIGHT_DB); --json: the document `show --json` prints.

    Exit code 0 whatever the run's status; 1 when there is no such run."""
    url = _api_url(api, db)
    if url is not None:
        with _client(url, token or _settings().api_token) as client, _errors(url, as_json):
            summary = client.get(run_id)
    else:
        summary = _stored_summary(run_id, db)
    if as_json:
        _json(summary)
        return
    print_status(summary)


def follow_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    api: ApiOption = None,
    token: TokenOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a run's live progress until it ends: any run, from the API's event stream (--api,
    DAGWRIGHT_API_URL) or straight from the trace store (--db, else DAGWRIGHT_DB), e.g. one
    started with `run --executor celery --detach` or by the API. Ctrl-C stops following (the
    run goes on).

    Exit code as for `run`: 0 succeeded, 1 failed (or abandoned), 130 cancelled."""
    url = _api_url(api, db)
    if url is None:
        _follow_store(run_id, db, as_json)
    with _client(url, token or _settings().api_token) as client, _errors(url, as_json):
        _follow_api(client, run_id, as_json, _api_flag(api))


# -- where the run is --------------------------------------------------------------------------


def _endpoint(api: str | None, token: str | None) -> tuple[str, str | None]:
    settings = _settings()
    url = api or settings.api_url
    if not url:
        _die("no API to talk to: give --api URL or set DAGWRIGHT_API_URL", EXIT_INVALID)
    return url, token or settings.api_token or None


def _api_url(api: str | None, db: str | None) -> str | None:
    """The API to ask (--api, else DAGWRIGHT_API_URL unless --db), or None: the trace store."""
    if api and db:
        _die("give --api or --db, not both", EXIT_INVALID)
    if db:
        return None
    return api or _settings().api_url or None


def _api_flag(api: str | None) -> str:
    return f" --api {shlex.quote(api)}" if api else ""


def _client(url: str, token: str | None) -> Client:
    from dagwright.client import Client

    return Client(url, token or None)


@contextmanager
def _errors(
    url: str, as_json: bool, *, file: str | None = None, invalid: tuple[int, ...] = (413,)
) -> Iterator[None]:
    """The API's errors in one line (422: the located problems, as `validate` lists them) and
    the exit codes of `run`: 2 for bad input, else 1."""
    import httpx

    from dagwright.client import ApiError, RateLimited

    try:
        yield
    except RateLimited as exc:
        after = f" (retry in {exc.retry_after:g}s)" if exc.retry_after is not None else ""
        _die(f"{exc}{after}", EXIT_FAILED)
    except ApiError as exc:
        if exc.status == 422 and exc.errors:
            _invalid(PlanError([_issue(e, file) for e in exc.errors]), as_json, status="invalid")
        hint = " (send a token: DAGWRIGHT_API_TOKEN or --token)" if exc.status == 401 else ""
        code = EXIT_INVALID if exc.status in (422, *invalid) else EXIT_FAILED
        _die(f"{exc}{hint}", code)
    except httpx.TransportError as exc:
        _die(f"cannot reach the API at {url}: {exc or type(exc).__name__}", EXIT_FAILED)


def _issue(e: Mapping[str, Any], file: str | None) -> PlanIssue:
    """One located problem of a 422, naming the submitted file where the server saw text."""
    where = e.get("file")
    if file is not None and where == "<workflow_yaml>":
        where = file
    line = e.get("line")
    return PlanIssue(
        str(e.get("message") or ""),
        file=str(where) if where else None,
        line=line if isinstance(line, int) else None,
        step=str(e["step"]) if e.get("step") else None,
        field=str(e["field"]) if e.get("field") else None,
        hint=str(e["hint"]) if e.get("hint") else None,
    )


# -- inputs, typed as `run --input` types them -------------------------------------------------


def _declared_in(text: str, file: str) -> Mapping[str, Any]:
    """The inputs a workflow's YAML declares (as far as it parses: the server says the rest)."""
    from dagwright.planner.loader import loads_workflow
    from dagwright.planner.schema import Workflow

    try:
        return loads_workflow(text, file=file, limits=_settings().limits()).workflow.inputs
    except PlanError as exc:
        return exc.partial.inputs if isinstance(exc.partial, Workflow) else {}


def _declared_by(client: Client, name: str) -> Mapping[str, Any]:
    """The inputs the server's workflow ``name`` declares (empty when it is not listed)."""
    for entry in client.workflows().get("workflows", []):
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get("inputs") or {}
    return {}


def _typed(pairs: dict[str, str], declared: Mapping[str, Any]) -> Json:
    """``--input`` values converted to their declared types (``5`` for an integer); a value
    that does not convert, or an undeclared input, goes as text for the server to refuse."""
    from dagwright.planner.inputs import typed_input
    from dagwright.planner.schema import InputSpec

    typed: Json = {}
    for name, text in pairs.items():
        typed[name] = text
        spec = declared.get(name)
        if spec is None:
            continue
        try:
            spec = spec if isinstance(spec, InputSpec) else InputSpec.model_validate(spec)
            typed[name] = typed_input(spec, text, as_text=True)
        except ValueError:  # pydantic's ValidationError and JSON's errors are ValueErrors
            pass
    return typed


# -- following ---------------------------------------------------------------------------------


def _follow_api(client: Client, run_id: str, as_json: bool, flag: str) -> NoReturn:
    run = client.get(run_id)
    run_id = run["run_id"]
    try:
        if not as_json:
            lines = EventLines(run)
            for event in client.stream(run_id):
                line = lines.line(event)
                if line:
                    out.print(line, highlight=False)
        final = client.wait(run_id)
    except KeyboardInterrupt:
        _stopped(run_id, f"dagwright status {run_id}{flag}")
    if as_json:
        _json(final)
    else:
        print_status(final, again=f"dagwright status {run_id}{escape(flag)}")
    raise typer.Exit(_code(final["status"]))


class _Gone(Exception):
    """The followed local run's process is gone (its lease lapsed)."""


def _follow_store(run_id: str, db: str | None, as_json: bool) -> NoReturn:
    from dagwright.cli.ending import print_end
    from dagwright.cli.progress import Progress
    from dagwright.executors.lifecycle import fold_run, follow, lease_lapsed, seen_status
    from dagwright.executors.summary import run_summary
    from dagwright.planner.schema import Workflow

    heartbeat = _settings().heartbeat
    store = _store(db, create=False)
    record = store.get_run(run_id)
    workflow = Workflow.model_validate(record.workflow)
    progress = Progress(workflow, enabled=not as_json, live=out.is_terminal, console=out)
    checked = time.monotonic()

    def wait(seconds: float) -> None:  # and notice a local run whose process is gone
        nonlocal checked
        time.sleep(seconds)
        if time.monotonic() - checked > min(1.0, heartbeat):
            checked = time.monotonic()
            if lease_lapsed(store, record, time.time(), heartbeat):
                raise _Gone

    try:
        with progress:
            state = follow(store, record.run_id, on_event=progress.on_event, wait=wait, poll=0.1)
    except _Gone:
        record, state = fold_run(store, record.run_id)
    except KeyboardInterrupt:
        _stopped(record.run_id, f"dagwright status {record.run_id}")
    summary = run_summary(record, state, store.location())
    summary["status"] = seen_status(store, record, state.status, time.time(), heartbeat)
    store.close()
    if as_json:
        _json(summary)
    else:
        print_end(summary, db, source=record.source if not state.revisions else None)
    _exit(_code(summary["status"]))


def _stopped(run_id: str, again: str) -> NoReturn:
    err.print(f"stopped following run {run_id}; it goes on ({escape(again)})")
    raise typer.Exit(EXIT_CANCELLED)


def _code(status: str) -> int:
    return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(status, EXIT_FAILED)


# -- summaries ---------------------------------------------------------------------------------


def _stored_summary(run_id: str, db: str | None) -> Json:
    """A run's summary from the trace store: the document `show --json` prints."""
    from dagwright.executors.lifecycle import seen_status
    from dagwright.executors.summary import run_summary, state_of

    store = _store(db, create=False)
    record = store.get_run(run_id)
    _, state = state_of(record, store.events(record.run_id))
    summary = run_summary(record, state, store.location(), detail=True)
    summary["status"] = seen_status(
        store, record, summary["status"], time.time(), _settings().heartbeat
    )
    store.close()
    return summary


__all__ = ["follow_cmd", "status_cmd", "submit_cmd"]
