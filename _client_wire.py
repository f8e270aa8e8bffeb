"""The queue API's wire format, shared by ``dagwright.client``'s sync and async clients: the
requests each method makes, errors from problem documents, Server-Sent Events, and a stream's
progress across reconnections. No I/O here: the clients send and receive."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from dagwright import __version__
from dagwright.errors import DagwrightError

Json = dict[str, Any]
Events = list[Json]

FINAL = frozenset({"succeeded", "failed", "cancelled", "abandoned"})
"""A run in one of these statuses will not change any more."""
RECONNECTS = 8
"""Connection attempts in a row, with no event between them, before a stream gives up."""
STREAM_READ = 60.0
"""Seconds a stream waits for a byte (the server sends a ping every 15 s) before reconnecting."""
EVENTS_PAGE = 1000
_RETRYABLE = frozenset({502, 503, 504})


class ApiError(DagwrightError):
    """The API answered with an error: ``status`` and its problem document (RFC 9457)."""

    __module__ = "dagwright.client"

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        super().__init__(self._text())

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (multiprocessing, a task queue) whole
        return (type(self), (self.status, self.problem))

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or f"HTTP {self.status}")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")

    @property
    def errors(self) -> list[Json]:
        errors = self.problem.get("errors")
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    def _text(self) -> str:
        text = f"{self.status} {self.title}"
        if self.detail and self.detail != self.title:
            text += f": {self.detail}"
        for e in self.errors:
            where = ", ".join(
                part
                for part in (
                    (e.get("file") or "") + (f":{e['line']}" if e.get("line") else ""),
                    f"step '{e['step']}'" if e.get("step") else "",
                    f"field '{e['field']}'" if e.get("field") else "",
                )
                if part
            )
            text += f"\n  {where + ': ' if where else ''}{e.get('message', '')}"
            if e.get("hint"):
                text += f" ({e['hint']})"
        return text


class RateLimited(ApiError):
    """429: too many submissions; try again in ``retry_after`` seconds (None: not said)."""

    __module__ = "dagwright.client"

    def __init__(
        self, status: int, problem: Mapping[str, Any], retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, problem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.problem, self.retry_after))


# -- requests and responses (shared by both clients) -------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    body: Json | None = None
    headers: dict[str, str] = field(default_factory=dict)


def run_path(run_id: str, tail: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{tail}"


def diff_call(a: str, b: str) -> Call:
    return Call("GET", f"{run_path(a)}/diff/{quote(b, safe='')}")


def submit_call(
    workflow: str | None,
    workflow_yaml: str | None,
    task: str | None,
    model: str | None,
    inputs: Mapping[str, Any] | None,
    priority: int,
    idempotency_key: str | None,
) -> Call:
    given = {"workflow": workflow, "workflow_yaml": workflow_yaml, "task": task}
    body: Json = {k: v for k, v in given.items() if v is not None}
    if len(body) != 1:
        raise ValueError("give exactly one of workflow, workflow_yaml or task")
    if model is not None:
        body["model"] = model
    body["inputs"] = dict(inputs or {})
    body["priority"] = priority
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    return Call("POST", "/v1/runs", body=body, headers=headers)


When = float | datetime | str | None
"""A time for ``list``: Unix seconds, a datetime, or ISO 8601 text."""


def either(new: When, old: When) -> When:
    """A filter given by its name (``started_*``) or its former one (``created_*``)."""
    return new if new is not None else old


def _when(value: float | datetime | str | None) -> float | str | None:
    return value.timestamp() if isinstance(value, datetime) else value


def list_params(
    status: str | None,
    workflow: str | None,
    started_after: float | datetime | str | None,
    started_before: float | datetime | str | None,
    limit: int,
) -> dict[str, Any]:
    params = {
        "status": status,
        "workflow": workflow,
        "started_after": _when(started_after),
        "started_before": _when(started_before),
        "limit": limit,
    }
    return {k: v for k, v in params.items() if v is not None}


def resume_call(
    run_id: str,
    workflow: str | None,
    workflow_yaml: str | None,
    from_steps: Sequence[str] | None,
    inputs: Mapping[str, Any] | None,
) -> Call:
    body: Json = {"from": list(from_steps or []), "inputs": dict(inputs or {})}
    if workflow is not None:
        body["workflow"] = workflow
    if workflow_yaml is not None:
        body["workflow_yaml"] = workflow_yaml
    return Call("POST", run_path(run_id, "/resume"), body=body)


def fork_call(
    run_id: str, sets: Sequence[str] | Mapping[str, Any], from_steps: Sequence[str] | None
) -> Call:
    if isinstance(sets, Mapping):  # {"steps.x.with.n": 3}: each value sent as JSON, exactly
        sets = [f"{path}={json.dumps(value)}" for path, value in sets.items()]
    body: Json = {"set": list(sets), "from": list(from_steps or [])}
    return Call("POST", run_path(run_id, "/fork"), body=body)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After``: seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_of(response: httpx.Response) -> ApiError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):  # not a problem document: a proxy's page, say
        detail = response.text.strip()[:500]
        problem = {"title": response.reason_phrase or "HTTP error", "detail": detail}
    if response.status_code == 429:
        retry = _retry_after(response.headers.get("retry-after"))
        return RateLimited(response.status_code, problem, retry)
    return ApiError(response.status_code, problem)


def result_of(response: httpx.Response) -> Json:
    """The JSON object of a successful response; ApiError for an error."""
    if not response.is_success:
        raise error_of(response)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        detail = f"expected a JSON object, got {response.text[:200]!r}"
        raise ApiError(response.status_code, {"title": "Not a JSON object", "detail": detail})
    return data


# -- following a stream ----------------------------------------------------------------------


@dataclass
class Message:
    data: str
    event: str
    id: str | None


class SseParser:
    """Server-Sent Events, line by line (the WHATWG rules: ``data`` lines joined by newlines,
    a blank line dispatches, ``:`` starts a comment, the last ``id`` persists)."""

    def __init__(self) -> None:
        self.data: list[str] = []
        self.event = ""
        self.last_id: str | None = None
        self.retry: int | None = None

    def feed(self, line: str) -> Message | None:
        if not line:
            if not self.data:
                self.event = ""
                return None
            message = Message("\n".join(self.data), self.event or "message", self.last_id)
            self.data, self.event = [], ""
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


class Follow:
    """One stream's progress across its connections: where to continue, what was seen (so
    that nothing is repeated), and how long to wait before connecting again."""

    def __init__(self, run_id: str, after: int, deadline: float | None) -> None:
        self.run_id, self.last, self.deadline = run_id, after, deadline
        self.connections = 0
        self.failures = 0
        self.base_delay = 0.25
        self.done = False

    def call(self) -> Call:
        headers = {"Accept": "text/event-stream"}
        self.connections += 1
        if self.connections == 1:
            return Call(
                "GET", run_path(self.run_id, "/stream"), {"after": self.last}, None, headers
            )
        headers["Last-Event-ID"] = str(self.last)
        return Call("GET", run_path(self.run_id, "/stream"), None, None, headers)

    def timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        read = STREAM_READ
        if self.deadline is not None:
            read = max(0.05, min(read, self.deadline - time.monotonic()))
        return httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)

    def accept(self, message: Message, parser: SseParser) -> Json | None:
        """The event a message carries, or None for a repeat (or a message that is no event)."""
        if parser.retry is not None:
            self.base_delay = parser.retry / 1000
        try:
            event = json.loads(message.data)
            seq = int(event["seq"] if event.get("seq") is not None else message.id or "")
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ApiError(
                200, {"title": "Malformed event", "detail": message.data[:200]}
            ) from None
        if seq <= self.last:
            return None
        self.last, self.failures = seq, 0
        self.done = event.get("type") == "run_finished"
        return event  # type: ignore[no-any-return]

    def refused(self, response: httpx.Response) -> ApiError:
        """A stream the server did not open (its body read): raises the error, unless the
        server is briefly unable (502, 503, 504): then returns it, to connect again."""
        error = error_of(response)
        if response.status_code not in _RETRYABLE:
            raise error
        return error

    def pause(self, error: Exception | None) -> float:
        """Seconds to wait before connecting again after a drop (``error``) or an end without
        ``run_finished``; raises ``error`` after RECONNECTS drops in a row, TimeoutError past
        the deadline."""
        if error is not None:
            self.failures += 1
            if self.failures >= RECONNECTS:
                raise error
        delay = min(5.0, self.base_delay * 2.0 ** max(0, self.failures - 1))
        if self.deadline is not None and time.monotonic() + delay > self.deadline:
            raise TimeoutError(f"run {self.run_id} did not finish in time")
        return delay


def deadline_in(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def poll_pause(pause: float, deadline: float | None, run_id: str) -> float:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"run {run_id} did not finish in time")
        pause = min(pause, left)
    return pause


def stream_unavailable(exc: Exception) -> bool:
    """Worth falling back to polling: the stream could not be had, the run itself can."""
    return isinstance(exc, httpx.TransportError) or (
        isinstance(exc, ApiError) and (exc.status >= 500 or exc.status in (405, 406, 501))
    )


def default_headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"dagwright-client/{__version__}", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


__all__ = [
    "EVENTS_PAGE",
    "FINAL",
    "Json",
    "RECONNECTS",
    "STREAM_READ",
    "When",
    "ApiError",
    "Call",
    "Events",
    "Follow",
    "RateLimited",
    "SseParser",
    "default_headers",
    "deadline_in",
    "diff_call",
    "either",
    "error_of",
    "fork_call",
    "list_params",
    "poll_pause",
    "result_of",
    "resume_call",
    "run_path",
    "stream_unavailable",
    "submit_call",
]
