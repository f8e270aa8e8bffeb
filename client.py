"""A client of the queue API (``dagwright serve``), sync and async, on httpx.

    from dagwright.client import Client

    with Client("http://127.0.0.1:8080", token="s3cret") as api:
        run = api.submit("release-digest", inputs={"product": "dagwright"})
        for event in api.stream(run["run_id"]):
            print(event["seq"], event["type"], event["step"])
        print(api.get(run["run_id"])["output"])

``AsyncClient`` has the same methods as coroutines (``list`` and ``stream``: async iterators);
it lives in ``_client_async`` and is re-exported here. The requests both make and how they read
the answers (errors, Server-Sent Events, a stream's progress) are in ``_client_wire``.

Errors: ``ApiError`` carries the server's problem document (``status``, ``title``, ``detail``,
``errors``: the located problems of an invalid workflow); ``RateLimited`` (429) its
``retry_after`` seconds. A server that cannot be reached raises httpx's ``TransportError``.
``stream`` survives dropped connections: it connects again with ``Last-Event-ID`` set to the last
event's ``seq``, so no event is lost or repeated; ``wait`` follows the stream and falls back to
polling the run when no stream can be had.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from dagwright._client_async import AsyncClient
from dagwright._client_wire import (
    EVENTS_PAGE,
    FINAL,
    ApiError,
    Call,
    Follow,
    RateLimited,
    SseParser,
    When,
    deadline_in,
    default_headers,
    diff_call,
    either,
    fork_call,
    list_params,
    poll_pause,
    result_of,
    resume_call,
    run_path,
    stream_unavailable,
    submit_call,
)

Json = dict[str, Any]
Events = list[Json]


class Client:
    """The queue API at ``url`` (e.g. ``http://127.0.0.1:8080``), with a bearer ``token`` when
    the server has tokens. ``timeout``: seconds per request (a stream waits longer between
    events: the server pings it). ``transport``: an httpx transport (tests pass
    ``httpx.MockTransport`` or ``httpx.ASGITransport``)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url:
            raise ValueError("url: the API's address, e.g. http://127.0.0.1:8080")
        self.url = url
        self._timeout = httpx.Timeout(timeout)
        self._http = httpx.Client(
            base_url=url, headers=default_headers(token), timeout=self._timeout, transport=transport
        )
        self._sleep = time.sleep

    def _send(self, call: Call) -> Json:
        response = self._http.request(
            call.method, call.path, params=call.params, json=call.body, headers=call.headers
        )
        return result_of(response)

    def submit(
        self,
        workflow: str | None = None,
        *,
        workflow_yaml: str | None = None,
        task: str | None = None,
        model: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
    ) -> Json:
        """Submit a run of a known ``workflow`` (by name), of ``workflow_yaml`` (YAML text), or
        of a plan for ``task`` (by ``model``): exactly one. ``inputs`` are JSON values of the
        workflow's declared types. Returns ``{"run_id", "status", "links"}``; the same
        ``idempotency_key`` returns the same run (another body with it: ApiError 409)."""
        call = submit_call(workflow, workflow_yaml, task, model, inputs, priority, idempotency_key)
        return self._send(call)

    def get(self, run_id: str) -> Json:
        """The run (an id or a unique prefix), as ``dagwright show RUN --json`` prints it."""
        return self._send(Call("GET", run_path(run_id)))

    def list(
        self,
        status: str | None = None,
        workflow: str | None = None,
        started_after: When = None,
        started_before: When = None,
        limit: int = 50,
        *,
        created_after: When = None,
        created_before: When = None,
    ) -> Iterator[Json]:
        """Runs, newest first, fetched ``limit`` (1..500) at a time: the iterator requests the
        next page (``next_cursor``) when it reaches the end of one. ``started_after`` and
        ``started_before`` filter on ``started_at`` (``created_after``/``created_before``:
        their former names)."""
        params = list_params(
            status, workflow, either(started_after, created_after),
            either(started_before, created_before), limit,
        )  # fmt: skip
        while True:
            page = self._send(Call("GET", "/v1/runs", params))
            yield from page["runs"]
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    def events(self, run_id: str, after: int = 0) -> Events:
        """The run's trace events with ``seq > after``, as recorded so far."""
        found: Events = []
        while True:
            params = {"after": after, "limit": EVENTS_PAGE}
            page = self._send(Call("GET", run_path(run_id, "/events"), params))
            found += page["events"]
            if len(page["events"]) < EVENTS_PAGE:
                return found
            after = page["last_seq"]

    def stream(self, run_id: str, after: int = 0) -> Iterator[Json]:
        """The run's events with ``seq > after`` as they are recorded, until ``run_finished``
        (included). A dropped connection is opened again from the last event seen."""
        return self._follow(Follow(run_id, after, None))

    def _follow(self, follow: Follow) -> Iterator[Json]:
        while True:
            error: Exception | None = None
            try:
                call = follow.call()
                timeout = follow.timeout(self._timeout)
                with self._http.stream(
                    "GET", call.path, params=call.params, headers=call.headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        error = follow.refused(response)
                    else:
                        parser = SseParser()
                        for line in response.iter_lines():
                            message = parser.feed(line)
                            event = follow.accept(message, parser) if message else None
                            if event is not None:
                                yield event
                            if follow.done:
                                return
                if error is None and self.get(follow.run_id)["status"] in FINAL:
                    return  # ended without a run_finished after ``after``: nothing more comes
            except httpx.TransportError as exc:  # dropped, timed out, refused
                error = exc
            self._sleep(follow.pause(error))

    def wait(self, run_id: str, timeout: float | None = None) -> Json:
        """The run once it has ended (as ``get``). Follows the stream; polls the run when no
        stream can be had. TimeoutError after ``timeout`` seconds."""
        deadline = deadline_in(timeout)
        run = self.get(run_id)
        if run["status"] in FINAL:
            return run
        try:
            for _ in self._follow(Follow(run["run_id"], 0, deadline)):
                pass
        except (httpx.TransportError, ApiError) as exc:
            if not stream_unavailable(exc):
                raise
        pause = 0.2
        while True:
            run = self.get(run_id)
            if run["status"] in FINAL:
                return run
            self._sleep(poll_pause(pause, deadline, run_id))
            pause = min(2.0, pause * 1.5)

    def cancel(self, run_id: str) -> Json:
        """End the run as cancelled."""
        return self._send(Call("POST", run_path(run_id, "/cancel")))

    def resume(
        self,
        run_id: str,
        *,
        workflow: str | None = None,
        workflow_yaml: str | None = None,
        from_steps: Sequence[str] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Json:
        """A new run continuing the failed ``run_id``, reusing its succeeded steps; optionally
        under a fixed workflow (a known name, or YAML text), from given steps, with changed
        inputs."""
        return self._send(resume_call(run_id, workflow, workflow_yaml, from_steps, inputs))

    def fork(
        self,
        run_id: str,
        *,
        sets: Sequence[str] | Mapping[str, Any],
        from_steps: Sequence[str] | None = None,
    ) -> Json:
        """A new run trying a change from a step on: ``sets`` as ``["steps.x.with.n=3"]`` (the
        value JSON, else text) or ``{"steps.x.with.n": 3}`` (each value sent as JSON)."""
        return self._send(fork_call(run_id, sets, from_steps))

    def replay(self, run_id: str) -> Json:
        """Re-execute the run from its trace, calling no model; the replay's report."""
        return self._send(Call("POST", run_path(run_id, "/replay")))

    def diff(self, a: str, b: str) -> Json:
        """Two runs compared step by step."""
        return self._send(diff_call(a, b))

    def workflows(self) -> Json:
        """The server's known workflows: ``{"workflows": [...], "problems": [...]}``."""
        return self._send(Call("GET", "/v1/workflows"))

    def tools(self) -> Json:
        """The registered tools: ``{"tools": [{"name", "description", "args_schema"}]}``."""
        return self._send(Call("GET", "/v1/tools"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["FINAL", "ApiError", "AsyncClient", "Client", "RateLimited"]
