"""The SSRF guard of ``http.request``: which addresses it may connect to, checked where it
connects.

A request's host is resolved once, here; every address it resolves to must be a public one
(unless the step's ``allow_hosts`` names the host), and the connection goes to one of those
very addresses (no second resolution: DNS rebinding cannot swap in another). The check sits in
the httpcore network backend, so it runs for every connection httpx opens: the first request
and each redirect hop to another origin. The host name stays the request's: the ``Host``
header and TLS's SNI and certificate check use it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx

from dagwright.errors import StepError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
     "instance-data.ec2.internal"}
)  # fmt: skip
"""Cloud metadata services by name: refused before any lookup."""
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200",
              "192.0.0.192")
)  # fmt: skip
"""Cloud metadata services (AWS, ECS, AWS IPv6, Alibaba, Oracle): refused even when a
wildcard entry of ``allow_hosts`` matches the host; only an exact entry allows them."""
SHARED = ipaddress.ip_network("100.64.0.0/10")
IETF_PROTOCOL = ipaddress.ip_network("192.0.0.0/24")
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPAT = ipaddress.ip_network("::/96")

_HOST_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_HOST_LABEL}(\.{_HOST_LABEL})*$")
_NUMERIC_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class Refused(StepError):
    """A request the SSRF guard refused (not retryable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class Unresolved(StepError):
    """A host name that did not resolve before any byte was sent (retried as ``error`` when the
    lookup may succeed later)."""


def allow_entry(value: str) -> str:
    """One ``allow_hosts`` entry, normalized: a host name, ``*.`` and a domain, or an IP
    address (IPv6 with or without brackets). Raises ValueError saying what is accepted."""
    entry = value.strip().lower().rstrip(".")
    if entry.startswith("[") and entry.endswith("]"):
        entry = entry[1:-1]
    try:
        return ipaddress.ip_address(entry).compressed
    except ValueError:
        pass
    name = entry[2:] if entry.startswith("*.") else entry
    if not _HOSTNAME.match(name) or _numeric_ipv4(name) is not None:
        raise ValueError(
            f"{value!r} is not a host: write a host name (api.example.com), a wildcard "
            "(*.example.com) or an IP address, without scheme, port or path"
        )
    return entry


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address of a host written as inet_aton reads numbers (``2130706433``,
    ``0x7f.1``, ``127.1``, ``0177.0.0.1``), or None when the host is not all numbers.
    Raises Refused for numbers that make no address."""
    parts = host.split(".")
    if not all(_NUMERIC_PART.match(p) for p in parts) or len(parts) > 4:
        return None
    values = []
    for part in parts:
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                raise Refused(f"{host!r} is not a valid address (bad octal number {part!r})")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        raise Refused(f"{host!r} is not a valid IPv4 address")
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address a host is written as (an IP literal, or numbers inet_aton would read)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _numeric_ipv4(host)


def _embedded(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4)."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in IPV4_COMPAT and int(addr) > 1:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if any(addr in net for net in NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def refusal(addr: IPAddress) -> str | None:
    """Why ``addr`` may not be connected to without ``allow_hosts``, or None (a public one)."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded(addr)
        if inner is not None:
            why = refusal(inner)
            return f"{why} (it carries {inner})" if why else None
    checks: list[tuple[bool, str]] = [
        (addr in METADATA_ADDRESSES, "a cloud metadata address"),
        (addr.is_loopback, "a loopback address"),
        (addr.is_unspecified, "the unspecified address"),
        (addr.is_link_local, "a link-local address"),
        (addr.is_multicast, "a multicast address"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in SHARED,
         "in the shared address space 100.64.0.0/10"),
        (addr.is_reserved, "a reserved address"),
        (addr.is_private, "a private address"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in IETF_PROTOCOL,
         "a special-purpose address"),
        (not addr.is_global, "not a public address"),
    ]  # fmt: skip
    return next((why for hit, why in checks if hit), None)


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order (tests replace this)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Guard:
    """The rules for one request: which hosts ``allow_hosts`` names."""

    def __init__(self, allow_hosts: Iterable[str]) -> None:
        entries = {allow_entry(h) for h in allow_hosts}
        self.exact = {e for e in entries if not e.startswith("*.")}
        self.suffixes = tuple(e[1:] for e in entries if e.startswith("*."))  # ".example.com"

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``; raises Refused or Unresolved."""
        name = host.lower().rstrip(".")
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        literal = literal_address(name)
        key = literal.compressed if isinstance(literal, ipaddress.IPv6Address) else name
        exact = key in self.exact
        allowed = exact or name.endswith(self.suffixes)
        if name in METADATA_HOSTS and not exact:
            raise Refused(_refused(host, "it names a cloud metadata service"))
        if literal is not None:
            found = [literal.compressed]
        else:
            try:
                found = resolve(name, port)
            except (OSError, UnicodeError) as exc:
                permanent = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME
                raise Unresolved(
                    f"could not resolve {host!r}: {exc}", retryable=not permanent
                ) from None
            if not found:
                raise Unresolved(f"{host!r} resolves to no address")
        for text in found:
            addr = ipaddress.ip_address(text)
            why = refusal(addr)
            if why is None or (allowed and (exact or addr not in METADATA_ADDRESSES)):
                continue
            if literal is None:
                raise Refused(_refused(host, f"it resolves to {addr}, which is {why}"))
            raise Refused(_refused(host, f"{addr} is {why}"))
        return found


def _refused(host: str, why: str) -> str:
    return (
        f"refused to connect to {host!r}: {why}; a step may reach such a host only when its "
        "allow_hosts names it (e.g. allow_hosts: ['internal.example.com'])"
    )


class _GuardedBackend(httpcore.SyncBackend):
    """Connects to the addresses the guard validated, never to a second lookup's."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.guard.addresses(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(
                    address, port, timeout, local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


_ssl_lock = threading.Lock()
_ssl: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """One TLS context (certifi's roots, no SSL_CERT_* from the environment), built once."""
    global _ssl
    with _ssl_lock:
        if _ssl is None:
            _ssl = httpx.create_ssl_context(trust_env=False)
        return _ssl


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool on the guarded backend (HTTP/1.1, no proxy:
    a proxy would connect for us, past the guard)."""

    def __init__(self, guard: Guard, *, retries: int = 0) -> None:
        context = _ssl_context()
        super().__init__(verify=context, trust_env=False, retries=retries)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=4,
            network_backend=_GuardedBackend(guard),
        )


def safe_url(url: httpx.URL | str) -> str:
    """A URL as recorded: no user info, secret-looking query values redacted."""
    u = httpx.URL(url) if isinstance(url, str) else url
    if u.userinfo:
        u = u.copy_with(username=None, password=None)
    if u.query and any(SECRET_NAME.search(k) for k in u.params):
        pairs = [(k, REDACTED if SECRET_NAME.search(k) else v) for k, v in u.params.multi_items()]
        u = u.copy_with(params=pairs)
    return str(u)


REDACTED = "[REDACTED]"
SECRET_NAME = re.compile(
    r"auth|cookie|token|secret|api[-_]?key|apikey|passw|session|signature|credential|"
    r"^key$|^sig$",
    re.IGNORECASE,
)
"""Header and query parameter names whose values are never recorded."""


def redact_headers(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Headers as recorded: lower-case names, repeated ones joined, secret-looking values
    replaced by ``[REDACTED]``."""
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        shown = REDACTED if SECRET_NAME.search(key) else value
        out[key] = f"{out[key]}, {shown}" if key in out else shown
    return out


__all__ = [
    "Guard",
    "GuardedTransport",
    "Refused",
    "Unresolved",
    "allow_entry",
    "literal_address",
    "redact_headers",
    "refusal",
    "resolve",
    "safe_url",
]
