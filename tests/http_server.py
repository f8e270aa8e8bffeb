"""A local HTTP server for tests (stdlib ``ThreadingHTTPServer`` on 127.0.0.1): a few endpoints
that answer JSON, text, binary, errors, slowly or with redirects, and a log of every request.

    with HttpServer() as server:
        server.url("/json")          # http://127.0.0.1:PORT/json
        server.requests              # [Seen(method, path, headers, body), ...]

Endpoints (any method): ``/json``, ``/echo`` (the request as JSON), ``/text``, ``/bytes/N``
(N bytes of text), ``/gzip/N`` (N bytes of text, gzip-compressed), ``/binary``, ``/status/CODE``,
``/flaky/N`` (503 for the first N requests to that path, then JSON), ``/slow`` (waits until the
server stops and closes the connection unanswered), ``/redirect?to=URL`` (302), ``/loop`` (redirects to itself).
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class QuietHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` for test doubles: handler threads are daemons, and a client that
    left (a test's timeout, a cancelled run) is not reported; any other error in a handler prints
    its traceback as the standard server does."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # BrokenPipe, ConnectionReset: printed after the test, into the next one's
        super().handle_error(request, client_address)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpServer:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.hits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers.items()), body)
                path = urlsplit(self.path).path
                with server.lock:
                    server.requests.append(seen)
                    server.hits[path] += 1
                    hits = server.hits[path]
                server.answer(self, seen, path, hits)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_one

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def answer(self, h: BaseHTTPRequestHandler, seen: Seen, path: str, hits: int) -> None:
        parts = path.strip("/").split("/")
        if path == "/json":
            self.send(h, 200, json.dumps({"ok": True, "items": [1, 2, 3]}), "application/json")
        elif path == "/echo":
            record = {"method": seen.method, "headers": seen.headers,
                      "body": seen.body.decode("utf-8", "replace")}  # fmt: skip
            self.send(h, 200, json.dumps(record), "application/json")
        elif path == "/text":
            self.send(h, 200, "héllo, world", "text/plain; charset=utf-8")
        elif parts[0] == "bytes":
            self.send(h, 200, "x" * int(parts[1]), "text/plain")
        elif parts[0] == "gzip":
            data = gzip.compress(b"x" * int(parts[1]))
            self.send(h, 200, data, "text/plain", {"Content-Encoding": "gzip"})
        elif path == "/binary":
            self.send(h, 200, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png")
        elif parts[0] == "status":
            self.send(h, int(parts[1]), json.dumps({"error": f"status {parts[1]}"}),
                      "application/json")  # fmt: skip
        elif parts[0] == "flaky":
            if hits <= int(parts[1]):
                self.send(h, 503, "busy", "text/plain")
            else:
                self.send(h, 200, json.dumps({"after": hits - 1}), "application/json")
        elif path == "/slow":
            # answers nobody: the client gave up long before, and an answer written to its
            # closed socket after the test would print a BrokenPipe traceback into the next one
            self.stopping.wait(30)
        elif path == "/redirect":
            target = parse_qs(urlsplit(seen.path).query)["to"][0]
            self.send(h, 302, "", "text/plain", {"Location": target})
        elif path == "/loop":
            self.send(h, 302, "", "text/plain", {"Location": "/loop"})
        else:
            self.send(h, 404, "not found", "text/plain")

    @staticmethod
    def send(
        h: BaseHTTPRequestHandler,
        status: int,
        body: str | bytes,
        ctype: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Set-Cookie", "session=s3cr3t-cookie-value")
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def __enter__(self) -> HttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
