"""TEST DOUBLE: a local OpenAI-compatible (and Anthropic Messages) HTTP server that serves
recorded responses.

It answers ``POST /v1/chat/completions`` with the replies queued in order (recorded tool-call or
text completions), logs every request, and fails loudly (HTTP 500) when it runs out of replies.
It is not a model: tests use it to exercise the real client stack (openai + instructor + HTTP).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from http_server import QuietHTTPServer


def tool_reply(
    name: str, arguments: dict[str, Any], *, model: str = "stub-model-2026-11-01"
) -> dict[str, Any]:
    """A recorded completion in which the model calls tool ``name`` with ``arguments``."""
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1795000000,
        "model": model,
        "choices": [{
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [{
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }],
            },
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    }  # fmt: skip


def anthropic_tool_reply(
    name: str, arguments: dict[str, Any], *, model: str = "claude-stub-2026-11-01"
) -> dict[str, Any]:
    """A recorded Anthropic Messages API reply in which the model uses tool ``name``."""
    return {
        "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "tool_use", "id": "toolu_1", "name": name, "input": arguments}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 120, "output_tokens": 40},
    }  # fmt: skip


def text_reply(text: str, *, model: str = "stub-model-2026-11-01") -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1795000000,
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


class OpenAIStub:
    """``replies`` are served in order; or ``respond(body)`` picks the recorded reply for each
    request (when requests arrive concurrently, in no fixed order). ``reject_auth``: every
    request gets a 401 whose body echoes its credentials (``Authorization``, ``x-api-key``), as
    some providers and proxies do. Each logged request keeps its headers (names in lower case)."""

    def __init__(
        self,
        replies: list[dict[str, Any]] | None = None,
        respond: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        reject_auth: bool = False,
    ) -> None:
        self.replies: deque[dict[str, Any]] = deque(replies or [])
        self.respond = respond
        self.reject_auth = reject_auth
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append(
                    {
                        "path": self.path,
                        "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                if stub.reject_auth:
                    sent = self.headers.get("Authorization") or self.headers.get("x-api-key")
                    self._send(401, {"error": {"message": f"invalid credentials: {sent}",
                                               "type": "invalid_request_error"}})  # fmt: skip
                    return
                known = self.path.endswith("/chat/completions") or self.path.endswith("/messages")
                if known and stub.respond is not None:
                    self._send(200, stub.respond(body))
                    return
                if not known or not stub.replies:
                    self._send(500, {"error": {"message": "stub: no recorded reply left"}})
                    return
                self._send(200, stub.replies.popleft())

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def root_url(self) -> str:
        """For clients that add /v1 themselves (Anthropic's)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OpenAIStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
