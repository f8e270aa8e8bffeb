"""Who may call the API, how much they may send, and how fast: bearer tokens, a body size limit,
and a token bucket per caller for submissions."""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dagwright.api.problems import Problem, response


class Guard:
    """Bearer tokens (none configured: open, for a loopback server) and a token bucket per
    caller: ``rate`` submissions per second sustained, ``burst`` at once."""

    def __init__(
        self,
        tokens: tuple[str, ...],
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def caller(self, request: Request) -> str:
        """Who is calling: the token's index (``token-N``), or the client address without
        tokens. 401 for a missing or wrong token."""
        if not self.tokens:
            return f"client-{request.client.host if request.client else 'unknown'}"
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            for i, token in enumerate(self.tokens):
                if hmac.compare_digest(given.encode(), token.encode()):
                    return f"token-{i}"
        raise Problem(
            401,
            "Unauthorized",
            "send a valid token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def take(self, caller: str) -> None:
        """One submission by ``caller``; 429 with ``Retry-After`` when its bucket is empty."""
        now = self.clock()
        with self._lock:
            level, at = self._buckets.get(caller, (float(self.burst), now))
            level = min(float(self.burst), level + (now - at) * self.rate)
            if level < 1.0:
                wait = (1.0 - level) / self.rate
                self._buckets[caller] = (level, now)
                raise Problem(
                    429,
                    "Too many requests",
                    f"more than {self.rate:g} submissions per second; retry in {wait:.2f}s",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            self._buckets[caller] = (level - 1.0, now)


class BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes gets 413 — by its Content-Length
    before anything is read, or while a chunked body streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = Problem(413, "Request too large", f"the body is over {self.limit:,} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = 0
                if size > self.limit:
                    await response(too_big)(scope, receive, send)
                    return
        seen = 0
        started = over = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooBig
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to its failed read (FastAPI: 400): 413 instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except _TooBig:
            pass
        if over and not started:
            await response(too_big)(scope, receive, send)


class _TooBig(Exception):
    pass


def loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["BodyLimit", "Guard", "loopback"]
