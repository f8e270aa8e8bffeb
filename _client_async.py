"""``dagwright.client.AsyncClient``: the queue API's client as coroutines, the twin of the sync
``Client`` in ``dagwright.client`` (which re-exports it, and documents both). Both build their
requests and read the answers through ``_client_wire``; only the sending differs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from dagwright._client_wire import (
    EVENTS_PAGE,
    FINAL,
    ApiError,
    Call,
    Events,
    Follow,
    Json,
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


class AsyncClient:
    """``Client``'s methods as coroutines; ``list`` and ``stream`` are async iterators. Use it
    as ``async with AsyncClient(url, token) as api: ...`` (or ``await api.close()``)."""

    __module__ = "dagwright.client"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url:
            raise ValueError("url: the API's address, e.g. http://127.0.0.1:8080")
        self.url = url
        self._timeout = httpx.Timeout(timeout)
        self._http = httpx.AsyncClient(
            base_url=url, headers=default_headers(token), timeout=self._timeout, transport=transport
        )
        self._sleep = asyncio.sleep

    async def _send(self, call: Call) -> Json:
        response = await self._http.request(
            call.method, call.path, params=call.params, json=call.body, headers=call.headers
        )
        return result_of(response)

    async def submit(
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
        call = submit_call(workflow, workflow_yaml, task, model, inputs, priority, idempotency_key)
        return await self._send(call)

    async def get(self, run_id: str) -> Json:
        return await self._send(Call("GET", run_path(run_id)))

    async def list(
        self,
        status: str | None = None,
        workflow: str | None = None,
        started_after: When = None,
        started_before: When = None,
        limit: int = 50,
        *,
        created_after: When = None,
        created_before: When = None,
    ) -> AsyncIterator[Json]:
        params = list_params(
            status, workflow, either(started_after, created_after),
            either(started_before, created_before), limit,
        )  # fmt: skip
        while True:
            page = await self._send(Call("GET", "/v1/runs", params))
            for run in page["runs"]:
                yield run
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    async def events(self, run_id: str, after: int = 0) -> Events:
        found: Events = []
        while True:
            params = {"after": after, "limit": EVENTS_PAGE}
            page = await self._send(Call("GET", run_path(run_id, "/events"), params))
            found += page["events"]
            if len(page["events"]) < EVENTS_PAGE:
                return found
            after = page["last_seq"]

    def stream(self, run_id: str, after: int = 0) -> AsyncIterator[Json]:
        return self._follow(Follow(run_id, after, None))

    async def _follow(self, follow: Follow) -> AsyncIterator[Json]:
        while True:
            error: Exception | None = None
            try:
                call = follow.call()
                timeout = follow.timeout(self._timeout)
                async with self._http.stream(
                    "GET", call.path, params=call.params, headers=call.headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        error = follow.refused(response)
                    else:
                        parser = SseParser()
                        async for line in response.aiter_lines():
                            message = parser.feed(line)
                            event = follow.accept(message, parser) if message else None
                            if event is not None:
                                yield event
                            if follow.done:
                                return
                if error is None and (await self.get(follow.run_id))["status"] in FINAL:
                    return
            except httpx.TransportError as exc:
                error = exc
            await self._sleep(follow.pause(error))

    async def wait(self, run_id: str, timeout: float | None = None) -> Json:
        deadline = deadline_in(timeout)
        run = await self.get(run_id)
        if run["status"] in FINAL:
            return run
        try:
            async for _ in self._follow(Follow(run["run_id"], 0, deadline)):
                pass
        except (httpx.TransportError, ApiError) as exc:
            if not stream_unavailable(exc):
                raise
        pause = 0.2
        while True:
            run = await self.get(run_id)
            if run["status"] in FINAL:
                return run
            await self._sleep(poll_pause(pause, deadline, run_id))
            pause = min(2.0, pause * 1.5)

    async def cancel(self, run_id: str) -> Json:
        return await self._send(Call("POST", run_path(run_id, "/cancel")))

    async def resume(
        self,
        run_id: str,
        *,
        workflow: str | None = None,
        workflow_yaml: str | None = None,
        from_steps: Sequence[str] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Json:
        return await self._send(resume_call(run_id, workflow, workflow_yaml, from_steps, inputs))

    async def fork(
        self,
        run_id: str,
        *,
        sets: Sequence[str] | Mapping[str, Any],
        from_steps: Sequence[str] | None = None,
    ) -> Json:
        return await self._send(fork_call(run_id, sets, from_steps))

    async def replay(self, run_id: str) -> Json:
        return await self._send(Call("POST", run_path(run_id, "/replay")))

    async def diff(self, a: str, b: str) -> Json:
        return await self._send(diff_call(a, b))

    async def workflows(self) -> Json:
        return await self._send(Call("GET", "/v1/workflows"))

    async def tools(self) -> Json:
        return await self._send(Call("GET", "/v1/tools"))

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


__all__ = ["AsyncClient"]
