"""``http.request``: call an HTTP API from a step (httpx), safely and on the record.

- Refuses internal addresses (loopback, private, link-local, multicast, cloud metadata, …)
  after resolving the host, on every redirect hop, unless the step's ``allow_hosts`` names the
  host; connects to the very address it checked (``tools/_http_guard.py``).
- Failures are classified for the step's retry policy: 5xx, 408, 429, timeouts and broken
  connections are retryable, other 4xx are not; a failure of a POST or PATCH that may have
  reached the server has the kind ``non_idempotent``, retried only where ``retry_on`` lists it.
- The response is read up to ``max_bytes`` (decompressed; more fails the attempt, not
  retried); JSON when the server says JSON, else text; binary bodies are refused.
- Its output (response, timing, and the request with secret-looking headers redacted) is what
  the trace records and ``dagwright replay`` serves: a replay sends nothing.

docs/tools.md describes it for workflow authors.
"""

from __future__ import annotations

import json as jsonlib
import time
import zlib
from typing import Annotated, Any, Literal, NotRequired

import httpx
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from typing_extensions import TypedDict

from dagwright.errors import StepError
from dagwright.tools._http_guard import (
    Guard,
    GuardedTransport,
    Refused,
    Unresolved,
    allow_entry,
    redact_headers,
    safe_url,
)
from dagwright.tools.registry import ToolContext, tool

DEFAULT_MAX_BYTES = 1 << 20
MAX_REDIRECTS = 5
USER_AGENT = "dagwright (http.request)"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
"""RFC 9110's idempotent methods among those accepted; POST and PATCH count as idempotent only
with an ``Idempotency-Key`` header."""

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
Scalar = str | int | float | bool
HostPattern = Annotated[str, AfterValidator(allow_entry)]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class Timeouts(BaseModel):
    """Seconds to wait: ``connect`` for a connection (each address, each hop), ``read`` for
    each read of the response (and each write of the request)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    connect: Annotated[float, Field(gt=0, le=60)] = 5.0
    read: Annotated[float, Field(gt=0, le=300)] = 30.0


class RequestRecord(TypedDict):
    method: str
    url: str
    headers: dict[str, str]
    body_bytes: int


class HttpResponse(TypedDict):
    status: int
    headers: dict[str, str]
    url: str
    redirects: list[str]
    elapsed_ms: float
    request: RequestRecord
    json: NotRequired[Any]
    text: NotRequired[str]


@tool("http.request", secret_args=("headers", "params"))  # replay serves: nothing is sent again
def http_request(
    url: Annotated[str, Field(min_length=1, max_length=8192, pattern=r"(?i)^https?://")],
    method: Annotated[Method, BeforeValidator(_upper)] = "GET",
    params: dict[str, Scalar | list[Scalar]] | None = None,
    headers: dict[str, str] | None = None,
    json: Any = None,
    body: str | None = None,
    timeout: Timeouts = Timeouts(),  # noqa: B008 - frozen
    max_bytes: Annotated[int, Field(ge=1)] = DEFAULT_MAX_BYTES,
    allow_hosts: list[HostPattern] | None = None,
    follow_redirects: bool = True,
    ctx: ToolContext | None = None,
) -> HttpResponse:
    """Send an HTTP request; returns its status, headers and JSON or text (docs/tools.md).

    Internal addresses are refused unless `allow_hosts` names the host; the output also has
    the final url, redirects, elapsed_ms and the request (secret headers redacted)."""
    from dagwright.settings import tool_settings

    ceiling = tool_settings(ctx).http_max_bytes
    if max_bytes > ceiling:
        raise StepError(
            f"http.request: max_bytes {max_bytes:,} is above the limit of {ceiling:,} "
            "(DAGWRIGHT_HTTP_MAX_BYTES)",
            retryable=False,
        )
    if json is not None and body is not None:
        raise StepError("http.request: give `json` or `body`, not both", retryable=False)
    sent_headers = httpx.Headers({"user-agent": USER_AGENT, "accept-encoding": "gzip, deflate"})
    sent_headers.update(headers or {})
    idempotent = method in IDEMPOTENT or "idempotency-key" in sent_headers
    answered: list[int] = []  # a response came (a redirect's too): the request reached a server

    def on_response(response: httpx.Response) -> None:
        answered.append(response.status_code)

    client = httpx.Client(
        transport=GuardedTransport(Guard(allow_hosts or ())),
        timeout=httpx.Timeout(
            connect=timeout.connect, read=timeout.read, write=timeout.read, pool=timeout.connect
        ),
        follow_redirects=follow_redirects,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
        event_hooks={"response": [on_response]},
    )
    with client:
        try:
            request = client.build_request(
                method, url, params=params, headers=sent_headers, json=json, content=body
            )
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise StepError(
                f"http.request: invalid request to {url!r}: {exc}", retryable=False
            ) from None
        where = f"http.request {method} {safe_url(request.url)}"
        record = RequestRecord(
            method=method,
            url=safe_url(request.url),
            headers=redact_headers(request.headers.multi_items()),
            body_bytes=len(request.content),
        )
        started = time.perf_counter()
        try:
            response = client.send(request, stream=True)
            try:
                data = _read(response, max_bytes, where)
            finally:
                response.close()
        except Refused as exc:
            hop = " (on a redirect)" if answered else ""
            raise Refused(f"{where}{hop}: {exc}") from None
        except Unresolved as exc:
            raise _failure(
                f"{where}: {exc}", retryable=exc.retryable, kind="error", sent=bool(answered),
                idempotent=idempotent, method=method,
            ) from None  # fmt: skip
        except httpx.TooManyRedirects:
            raise StepError(
                f"{where}: more than {MAX_REDIRECTS} redirects", retryable=False
            ) from None
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
            raise StepError(f"{where}: {exc}", retryable=False) from None
        except httpx.TransportError as exc:
            raise _transport_failure(exc, where, bool(answered), idempotent, method) from None
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    if response.status_code >= 400:
        raise _status_failure(response, data, where, idempotent, method)
    out = HttpResponse(
        status=response.status_code,
        headers=redact_headers(response.headers.multi_items()),
        url=safe_url(response.url),
        redirects=[safe_url(r.url) for r in response.history],
        elapsed_ms=elapsed_ms,
        request=record,
    )
    payload = _payload(response, data, where)
    if "json" in payload:
        out["json"] = payload["json"]
    else:
        out["text"] = payload["text"]
    return out


def _failure(
    message: str, *, retryable: bool, kind: str, sent: bool, idempotent: bool, method: str
) -> StepError:
    """A StepError for the retry policy: a retryable failure of a request that may have
    reached the server, made by a non-idempotent method, has the kind ``non_idempotent``."""
    if retryable and sent and not idempotent:
        message += (
            f" ({method} is not idempotent: retried only where the step's retry_on lists "
            "non_idempotent, or with an Idempotency-Key header)"
        )
        kind = "non_idempotent"
    return StepError(message, retryable=retryable, kind=kind)


def _transport_failure(
    exc: httpx.TransportError, where: str, answered: bool, idempotent: bool, method: str
) -> StepError:
    """Connecting failed (nothing sent: safe to retry for any method), or the exchange broke
    after the request went out."""
    before = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    timed_out = isinstance(exc, httpx.TimeoutException)
    what = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return _failure(
        f"{where}: {what}",
        retryable=True,
        kind="timeout" if timed_out else "error",
        sent=answered or not before,
        idempotent=idempotent,
        method=method,
    )


def _status_failure(
    response: httpx.Response, data: bytes, where: str, idempotent: bool, method: str
) -> StepError:
    status = response.status_code
    retryable = status in (408, 429) or (status >= 500 and status != 501)
    snippet = data[:300].decode(response.charset_encoding or "utf-8", errors="replace").strip()
    message = f"{where}: {status} {response.reason_phrase}" + (f": {snippet}" if snippet else "")
    return _failure(
        message, retryable=retryable, kind="error", sent=True, idempotent=idempotent, method=method
    )


def _read(response: httpx.Response, cap: int, where: str) -> bytes:
    """The body, decompressed (gzip or deflate) at most ``cap`` bytes; more: not retryable."""
    too_big = StepError(
        f"{where}: the response is larger than max_bytes ({cap:,} bytes); raise max_bytes "
        "(up to DAGWRIGHT_HTTP_MAX_BYTES) or ask for less",
        retryable=False,
    )
    length = response.headers.get("content-length", "")
    codings = [
        c.strip().lower()
        for c in response.headers.get("content-encoding", "").split(",")
        if c.strip() and c.strip().lower() != "identity"
    ]
    if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
        raise StepError(f"{where}: unsupported Content-Encoding {codings}", retryable=False)
    if not codings and length.isdigit() and int(length) > cap:
        raise too_big
    decoder = _Decoder(codings[0] if codings else None)
    parts: list[bytes] = []
    size = raw = 0
    for chunk in response.iter_raw():
        raw += len(chunk)
        if raw > 2 * cap + 1024:  # compressed data that never ends (e.g. empty blocks)
            raise too_big
        try:
            parts_in = decoder.feed(chunk, cap - size + 1)
        except zlib.error as exc:
            raise StepError(f"{where}: corrupt compressed body: {exc}", retryable=False) from None
        for part in parts_in:
            size += len(part)
            if size > cap:
                raise too_big
            parts.append(part)
        if decoder.done:
            break
    return b"".join(parts)


class _Decoder:
    """Decompression bounded by the room left, so a small compressed body cannot expand past
    the cap in memory (one ``Content-Encoding`` at most: ``gzip, gzip`` is refused above)."""

    def __init__(self, coding: str | None) -> None:
        self.coding = coding
        self.z = zlib.decompressobj(31 if coding in ("gzip", "x-gzip") else 15) if coding else None
        self.started = False

    @property
    def done(self) -> bool:
        return self.z is not None and self.z.eof

    def feed(self, data: bytes, room: int) -> list[bytes]:
        if self.z is None:
            return [data]
        try:
            out = [self.z.decompress(data, room)]
        except zlib.error:
            if self.coding != "deflate" or self.started:
                raise
            self.z = zlib.decompressobj(-15)  # raw deflate, without the zlib header
            out = [self.z.decompress(data, room)]
        self.started = True
        while self.z.unconsumed_tail and sum(map(len, out)) < room:
            out.append(self.z.decompress(self.z.unconsumed_tail, room - sum(map(len, out))))
        return out


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _payload(response: httpx.Response, data: bytes, where: str) -> dict[str, Any]:
    """``{"json": …}`` when the server says JSON and it parses, else ``{"text": …}``; a body
    that is not text in its charset (UTF-8 by default) is refused."""
    mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if data and (mime == "application/json" or mime.endswith("+json")):
        try:
            return {"json": jsonlib.loads(data, parse_constant=_parse_constant)}
        except (ValueError, RecursionError):
            pass  # not JSON after all: returned as text
    charset = response.charset_encoding or "utf-8"
    try:
        text = data.decode(charset)
    except LookupError:  # a charset Python does not know: read as UTF-8
        text = data.decode("utf-8", errors="replace") if _utf8(data) else "\x00"
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        raise StepError(
            f"{where}: the response is binary ({mime or 'no content type'}, {len(data):,} "
            "bytes); http.request returns JSON or text: fetch files with a tool that stores "
            "them and returns their path",
            retryable=False,
        )
    return {"text": text}


__all__ = ["DEFAULT_MAX_BYTES", "MAX_REDIRECTS", "HttpResponse", "Timeouts", "http_request"]
