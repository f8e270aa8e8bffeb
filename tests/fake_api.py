"""A TEST DOUBLE of the queue API: an in-memory stand-in that serves the contract of docs/api.md
(issue 11) to the client and the CLI, with the failures a real network has — dropped streams,
429s, problem documents — on demand. It is not the server: `dagwright serve` (api/) is tested
against itself in test_api.py.

``FakeApi`` is an httpx handler (``httpx.MockTransport(fake)``); ``served(fake)`` puts it on a
real socket (a stdlib HTTP/1.1 server, chunked streams cut mid-message when told) for the CLI
in a subprocess.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import yaml
from http_server import QuietHTTPServer

Json = dict[str, Any]

WORKFLOWS = {
    "hello": {
        "name": "hello",
        "file": "hello.yaml",
        "description": "greets",
        "inputs": {"n": {"type": "integer"}, "who": {"type": "string", "default": "you"}},
        "steps": 2,
    }
}
BAD_TOOL = {
    "file": "<workflow_yaml>",
    "line": 4,
    "step": "b",
    "field": "uses",
    "message": "unknown tool 'nope'",
    "hint": "registered tools: echo, sleep",
}


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body in chunks that, when ``cut``, ends as a dropped connection does."""

    def __init__(self, chunks: list[bytes], cut: bool) -> None:
        self.chunks, self.cut = chunks, cut

    def _dropped(self) -> httpx.RemoteProtocolError:
        return httpx.RemoteProtocolError("peer closed connection (incomplete chunked read)")

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.cut:
            raise self._dropped()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.cut:
            raise self._dropped()


def problem(status: int, title: str, detail: str = "", **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail or title}
    headers = extra.pop("headers", {})
    return httpx.Response(
        status, json=body | extra, headers={"content-type": "application/problem+json", **headers}
    )


def trace(run_id: str, steps: list[str], status: str, queued: bool = False) -> list[Json]:
    """A run's events: (queued for a concurrency slot, then admitted,) each step one attempt,
    then run_finished with ``status``."""
    events: list[Json] = [{"type": "run_started", "step": None, "attempt": None, "data": {}}]
    if queued:
        events += [
            {"type": "run_queued", "step": None, "attempt": None,
             "data": {"key": "acme", "limit": 2, "priority": 0}},
            {"type": "run_admitted", "step": None, "attempt": None, "data": {}},
        ]  # fmt: skip
    for sid in steps:
        ok = status == "succeeded" or sid != steps[-1]
        data = {"status": "succeeded" if ok else "failed", "output": {"id": sid} if ok else None,
                "error": None if ok else {"message": f"{sid} broke"}}  # fmt: skip
        events += [
            {"type": "attempt_started", "step": sid, "attempt": 1, "data": {}},
            {
                "type": "attempt_finished",
                "step": sid,
                "attempt": 1,
                "data": data | {"retry_in": None},
            },
            {"type": "step_finished", "step": sid, "attempt": 1, "data": data},
        ]
    error = None if status == "succeeded" else {"step": steps[-1], "message": f"{steps[-1]} broke"}
    events.append({"type": "run_finished", "step": None, "attempt": None,
                   "data": {"status": status, "output": None, "error": error}})  # fmt: skip
    return [e | {"seq": i, "run_id": run_id, "at": f"2026-11-23T10:00:{i:02d}.000+00:00"}
            for i, e in enumerate(events, 1)]  # fmt: skip


class FakeApi:
    """The API in memory. Knobs: ``token`` (401 without it), ``limited`` (the next N
    submissions get 429 with Retry-After: 3), ``cuts`` (per stream connection, in order:
    ``(n, "drop")`` sends n events, then half of the next, then drops the connection;
    ``(n, "end")`` ends the stream cleanly after n events), ``repeat`` (a reconnection first
    gets the event it already saw again), ``stream_status`` (answer streams with this status),
    ``polls`` (a run turns final after this many reads, or when its stream sends run_finished).
    ``requests`` records what came."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.runs: dict[str, Json] = {}
        self.order: list[str] = []
        self.keys: dict[str, tuple[str, str]] = {}
        self.requests: list[httpx.Request] = []
        self.limited = 0
        self.cuts: list[tuple[int, str]] = []
        self.repeat = False
        self.stream_status: int | None = None
        self.polls = 10**9
        self.lock = threading.Lock()

    # -- runs ---------------------------------------------------------------------------------
    def add_run(self, workflow: str = "hello", final: str = "succeeded", *, status: str = "running",
                steps: tuple[str, ...] = ("a", "b", "c"), run_id: str | None = None,
                queued: bool = False) -> str:  # fmt: skip
        run_id = run_id or f"{len(self.runs) + 1:04d}" + "f" * 28
        self.runs[run_id] = {
            "run_id": run_id, "workflow": workflow, "status": status, "final": final,
            "events": trace(run_id, list(steps), final, queued), "reads": 0, "inputs": {},
        }  # fmt: skip
        self.order.insert(0, run_id)
        return run_id

    def summary(self, run: Json) -> Json:
        done = run["status"] != "running"
        steps = {e["step"]: {"status": e["data"]["status"], "attempts": 1}
                 for e in run["events"] if e["type"] == "step_finished"}  # fmt: skip
        failed = run["status"] == "failed"
        return {
            "run_id": run["run_id"], "workflow": run["workflow"], "status": run["status"],
            "output": {"ok": True} if run["status"] == "succeeded" else None,
            "error": {"step": "c", "message": "c broke"} if failed else None,
            "inputs": run["inputs"], "lineage": None, "duration": 1.5 if done else None,
            "steps": steps if done else {}, "trace": "fake",
        }  # fmt: skip

    # -- the handler --------------------------------------------------------------------------
    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                return problem(401, "Unauthorized", "send a valid token",
                               headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            return self.route(request)

    def route(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        method = request.method
        if parts == ["v1", "runs"]:
            return self.submit(request) if method == "POST" else self.list(request)
        if parts == ["v1", "workflows"]:
            return httpx.Response(200, json={"workflows": list(WORKFLOWS.values()), "problems": []})
        if len(parts) < 3 or parts[:2] != ["v1", "runs"]:
            return problem(404, "Not found")
        run = self.runs.get(parts[2])
        if run is None:
            return problem(404, "Run not found", f"no run {parts[2]!r} in this trace store")
        tail = parts[3:]
        if tail == [] and method == "GET":
            run["reads"] += 1
            if run["reads"] >= self.polls:
                run["status"] = run["final"]
            return httpx.Response(200, json=self.summary(run))
        if tail == ["events"]:
            after = int(request.url.params.get("after", 0))
            limit = int(request.url.params.get("limit", 1000))
            events = [e for e in run["events"] if e["seq"] > after][:limit]
            last = events[-1]["seq"] if events else after
            return httpx.Response(200, json={"run_id": run["run_id"], "events": events,
                                             "last_seq": last, "finished": run["status"] != "running"})  # fmt: skip
        if tail == ["stream"]:
            return self.stream(request, run)
        if tail == ["cancel"] and method == "POST":
            run["status"] = run["final"] = "cancelled"
            return httpx.Response(202, json=self.accepted(run["run_id"]))
        return problem(404, "Not found")

    def accepted(self, run_id: str) -> Json:
        base = f"/v1/runs/{run_id}"
        status = self.runs[run_id]["status"]
        return {"run_id": run_id, "status": status,
                "links": {"self": base, "events": f"{base}/events", "stream": f"{base}/stream"}}  # fmt: skip

    def submit(self, request: httpx.Request) -> httpx.Response:
        if self.limited:
            self.limited -= 1
            return problem(429, "Too many requests", "retry in 2.50s", headers={"Retry-After": "3"})
        body = json.loads(request.content)
        given = [k for k in ("workflow", "workflow_yaml", "task") if body.get(k) is not None]
        if len(given) != 1:
            return problem(422, "Invalid request", errors=[{"field": None, "message": "one of"}])
        fingerprint = json.dumps(body, sort_keys=True)
        key = request.headers.get("idempotency-key")
        if key is not None and key in self.keys:
            held, run_id = self.keys[key]
            if held != fingerprint:
                return problem(409, "Idempotency key reused", f"the key names run {run_id}")
            return httpx.Response(202, json=self.accepted(run_id))
        if body.get("workflow_yaml") is not None:
            if "uses: nope" in body["workflow_yaml"]:
                return problem(422, "Invalid workflow", "1 problem: nothing was run or recorded",
                               errors=[BAD_TOOL])  # fmt: skip
            data = yaml.safe_load(body["workflow_yaml"])
            name, declared = data["name"], data.get("inputs") or {}
        elif body.get("workflow") in WORKFLOWS:
            name, declared = body["workflow"], WORKFLOWS[body["workflow"]]["inputs"]
        else:
            return problem(404, "Unknown workflow", f"no workflow {body.get('workflow')!r}")
        bad = self.mistyped(body.get("inputs") or {}, declared)
        if bad:
            return problem(422, "Invalid workflow", "1 problem", errors=[bad])
        final = "failed" if "fail" in name else "succeeded"
        run_id = self.add_run(name, final)
        self.runs[run_id]["inputs"] = body.get("inputs") or {}
        if key is not None:
            self.keys[key] = (fingerprint, run_id)
        return httpx.Response(
            202, json=self.accepted(run_id), headers={"Location": f"/v1/runs/{run_id}"}
        )

    @staticmethod
    def mistyped(inputs: Json, declared: Json) -> Json | None:
        """Strict JSON types, as the API checks them (``"3"`` is not an integer)."""
        kinds = {"integer": int, "string": str}
        for name, value in inputs.items():
            kind = kinds.get((declared.get(name) or {}).get("type", "string"))
            if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                return {"file": None, "line": None, "step": None, "field": f"inputs.{name}",
                        "message": f"input {name!r} must be {declared[name]['type']}", "hint": None}  # fmt: skip
        return None

    def list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        ids = [r for r in self.order
               if params.get("status") in (None, self.runs[r]["status"])
               and params.get("workflow") in (None, self.runs[r]["workflow"])]  # fmt: skip
        start = int(params["cursor"][1:]) if "cursor" in params else 0
        limit = int(params.get("limit", 50))
        page = ids[start : start + limit]
        more = start + limit < len(ids)
        runs = [{"run_id": r, "workflow": self.runs[r]["workflow"], "status": self.runs[r]["status"]}
                for r in page]  # fmt: skip
        return httpx.Response(
            200, json={"runs": runs, "next_cursor": f"c{start + limit}" if more else None}
        )

    def stream(self, request: httpx.Request, run: Json) -> httpx.Response:
        if self.stream_status is not None:
            return problem(self.stream_status, "No stream here")
        after = int(request.url.params.get("after", 0))
        if request.headers.get("last-event-id") is not None:
            after = max(after, int(request.headers["last-event-id"]))
        events = [e for e in run["events"] if e["seq"] > after]
        reconnection = "last-event-id" in request.headers
        if self.repeat and reconnection and after:
            events.insert(0, run["events"][after - 1])
        n, how = self.cuts.pop(0) if self.cuts else (len(events), "end")
        chunks = [b": ping\n\n", b"retry: 10\n\n"]
        for i, event in enumerate(events):
            text = f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
            raw = text.encode()
            if i == n:
                if how == "drop":
                    chunks.append(raw[: len(raw) // 2])  # half a message: never dispatched
                break
            chunks += [raw[: len(raw) // 2], raw[len(raw) // 2 :]]  # a line across two chunks
            if event["type"] == "run_finished":
                run["status"] = run["final"]
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Chunks(chunks, cut=how == "drop"))  # fmt: skip


@contextmanager
def served(fake: FakeApi) -> Iterator[str]:
    """The double on a real socket: yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle_one(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            request = httpx.Request(self.command, f"http://fake{self.path}",
                                    headers=list(self.headers.items()), content=body)  # fmt: skip
            response = fake(request)
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            stream = response.stream
            if not isinstance(stream, Chunks):
                content = response.read()
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in stream.chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            if stream.cut:  # the connection drops mid-body
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = handle_one

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
